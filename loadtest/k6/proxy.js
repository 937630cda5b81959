// Plain proxying in front of the echo backend.
//   loadtest/run.sh proxy                 (starts everything; see loadtest/run.sh)
//   k6 run -e TARGET=http://127.0.0.1:8080 -e VUS=64 -e DURATION=30s loadtest/k6/proxy.js
//                                         (against the README's quick start setup)
// Checks every answer, so a run with failed checks means Loom dropped or broke requests.
import http from 'k6/http';
import { check } from 'k6';
import { options as suiteOptions, target } from './common.js';

export const options = suiteOptions('proxy');

export default function () {
  const response = http.get(`${target}/api/bench?vu=${__VU}`);
  check(response, {
    'status is 200': (r) => r.status === 200,
    'path rewritten by strip_prefix': (r) => r.json('path') === '/bench',
    'request id echoed': (r) => r.headers['X-Request-Id'] !== undefined,
  });
}
