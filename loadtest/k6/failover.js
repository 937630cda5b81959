// Two backends behind retries and health checks; loadtest/run.sh kills one mid-run and
// restores it. No request may fail.
import http from 'k6/http';
import { check } from 'k6';
import { options as suiteOptions, target } from './common.js';

export const options = suiteOptions('failover');

export default function () {
  const response = http.get(`${target}/failover/x`);
  check(response, {
    'status is 200': (r) => r.status === 200,
    'a backend of the pair answered': (r) => ['a', 'b'].includes(r.json('instance')),
  });
}
