// A route with a Proxy-Wasm plugin (loom_headers): the plugin's request and response headers
// must be on every answer.
import http from 'k6/http';
import { check } from 'k6';
import { options as suiteOptions, target } from './common.js';

export const options = suiteOptions('plugins');

export default function () {
  const response = http.get(`${target}/plugins/x?vu=${__VU}`);
  check(response, {
    'status is 200': (r) => r.status === 200,
    'the plugin set the request header': (r) => r.json('headers.x-gateway') === 'loom',
    'the plugin set the response header': (r) => r.headers['X-Served-By'] === 'loom',
  });
}
