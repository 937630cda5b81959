// A route with the built-in policies: key_auth, rate_limit (far above the load), cors and
// security_headers. Every request is authenticated and allowed.
import http from 'k6/http';
import { check } from 'k6';
import { options as suiteOptions, target } from './common.js';

export const options = suiteOptions('policies');

const headers = { 'x-api-key': __ENV.API_KEY || 'bench-key', origin: 'https://app.example.com' };

export default function () {
  const response = http.get(`${target}/policies/x`, { headers });
  check(response, {
    'status is 200': (r) => r.status === 200,
    'the consumer reached the upstream': (r) => r.json('headers.x-consumer') === 'bench',
    'the key did not': (r) => r.json('headers.x-api-key') === undefined,
    'cors answered the origin': (r) =>
      r.headers['Access-Control-Allow-Origin'] === 'https://app.example.com',
    'security headers are set': (r) => r.headers['X-Content-Type-Options'] === 'nosniff',
    'rate limit budget is announced': (r) => r.headers['Ratelimit-Remaining'] !== undefined,
  });
}
