#!/usr/bin/env bash
# Happy-path cost of the circuit breaker, retries (with budget), bulkhead and passive health:
# one Loom process, two routes to the same echo backend, one plain and one with every
# resilience feature configured. wrk runs against each route in turn (alternating rounds, so
# drift affects both alike) and the script prints req/s, p99 and the guarded/plain ratio.
#
# Usage: loadtest/resilience_overhead.sh [--workers N] [--duration 10s] [--rounds 2]
# Needs: wrk (apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

workers=1
duration=10s
rounds=2
connections=64
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "missing wrk: apt-get install -y wrk" >&2; exit 1; }

cargo build --release --bins >&2
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo_port=$(free_port); loom_port=$(free_port); admin_port=$(free_port)
target/release/loom-echo --listen "127.0.0.1:$echo_port" --threads 1 >/dev/null &
pids+=($!)
wait_port "$echo_port"

cat > "$work/loom.yaml" <<LOOM
server:
  threads: $workers
  pid_file: $work/loom.pid
  upgrade_sock: $work/loom.sock
  grace_period_seconds: 0
listeners:
  - name: http
    address: "127.0.0.1:$loom_port"
routes:
  - id: plain
    path: /plain/*
    strip_prefix: true
    upstream: plain
  - id: guarded
    path: /guarded/*
    strip_prefix: true
    upstream: guarded
upstreams:
  - name: plain
    endpoints: ["127.0.0.1:$echo_port"]
    retry:
      max_retries: 0
  - name: guarded
    endpoints: ["127.0.0.1:$echo_port"]
    circuit_breaker: {failure_threshold: 5, failure_ratio: 0.5, min_requests: 20, window: 10s, timeout: 30s}
    retry:
      max_retries: 2
      retry_on: [connect_error, timeout, reset, 502, 503, 504]
    retry_budget: {budget_percent: 20, min_retry_concurrency: 3}
    outlier_detection: {consecutive_failures: 5}
    max_concurrent_requests: 100000
    max_concurrent_requests_per_endpoint: 100000
admin:
  address: "127.0.0.1:$admin_port"
LOOM
RUST_LOG=warn target/release/loom -c "$work/loom.yaml" &
pids+=($!)
wait_port "$loom_port"


for route in plain guarded; do wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$loom_port/$route/bytes/128" >/dev/null; done
plain_total=0; guarded_total=0; plain_p99=0; guarded_p99=0
for round in $(seq 1 "$rounds"); do
  read -r rps p99 < <(measure "http://127.0.0.1:$loom_port/plain/bytes/128")
  plain_total=$(awk -v a="$plain_total" -v b="$rps" 'BEGIN{print a+b}'); plain_p99=$(awk -v a="$plain_p99" -v b="$p99" 'BEGIN{print (a>b)?a:b}')
  printf 'round %d plain   %10.0f req/s  p99 %6.2f ms\n' "$round" "$rps" "$p99"
  read -r rps p99 < <(measure "http://127.0.0.1:$loom_port/guarded/bytes/128")
  guarded_total=$(awk -v a="$guarded_total" -v b="$rps" 'BEGIN{print a+b}'); guarded_p99=$(awk -v a="$guarded_p99" -v b="$p99" 'BEGIN{print (a>b)?a:b}')
  printf 'round %d guarded %10.0f req/s  p99 %6.2f ms\n' "$round" "$rps" "$p99"
done
awk -v p="$plain_total" -v g="$guarded_total" -v r="$rounds" -v pp="$plain_p99" -v gp="$guarded_p99" 'BEGIN {
  printf "\nmean plain %.0f req/s, guarded %.0f req/s: guarded/plain %.3f; worst p99 plain %.2f ms, guarded %.2f ms\n", p/r, g/r, g/p, pp, gp }'
