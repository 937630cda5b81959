// Shared by the k6 scenarios: where the gateway is, and the options every scenario uses
// (any failed check or failed request fails the run).
export const target = __ENV.TARGET || 'http://127.0.0.1:8080';
export const tlsTarget = __ENV.TLS_TARGET || 'https://127.0.0.1:8443';

export function options(scenario) {
  return {
    vus: Number(__ENV.VUS || 16),
    duration: __ENV.DURATION || '20s',
    insecureSkipTLSVerify: true,
    tags: { scenario },
    thresholds: {
      checks: ['rate==1.0'],
      http_req_failed: ['rate==0'],
    },
    summaryTrendStats: ['avg', 'p(50)', 'p(90)', 'p(99)', 'max'],
  };
}
