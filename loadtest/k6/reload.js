// Plain proxying while loadtest/run.sh reloads the config several times (SIGHUP, each time
// with a changed file). No request may fail.
import http from 'k6/http';
import { check } from 'k6';
import { options as suiteOptions, target } from './common.js';

export const options = suiteOptions(__ENV.SCENARIO || 'reload');

export default function () {
  const response = http.get(`${target}/api/reload?vu=${__VU}`);
  check(response, {
    'status is 200': (r) => r.status === 200,
    'path rewritten by strip_prefix': (r) => r.json('path') === '/reload',
  });
}
