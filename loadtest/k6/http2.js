// HTTP/2 over TLS (ALPN h2) to the gateway's https listener.
import http from 'k6/http';
import { check } from 'k6';
import { options as suiteOptions, tlsTarget } from './common.js';

export const options = suiteOptions('http2');

export default function () {
  const response = http.get(`${tlsTarget}/api/h2?vu=${__VU}`);
  check(response, {
    'status is 200': (r) => r.status === 200,
    'spoken over HTTP/2': (r) => r.proto === 'HTTP/2.0',
  });
}
