#!/usr/bin/env bash
# Cost of Proxy-Wasm plugins on the request path: one Loom process, three routes to the same
# echo backend with 0, 1 and 5 header plugins (loom_headers: one request header set, one
# response header set each). wrk runs against each route in turn, in alternating rounds so
# drift affects all alike, and the script prints req/s, p50, p99, the ratio to the plain
# route and the added median latency.
#
# Usage: loadtest/plugins_overhead.sh [--workers N] [--duration 10s] [--rounds 2]
# Needs: wrk (apt-get install -y wrk) and the built plugins (plugins/build.sh).
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
[ -f plugins/dist/loom_headers.wasm ] || { echo "missing plugins: run plugins/build.sh" >&2; exit 1; }

cargo build --release --bins >&2
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo_port=$(free_port); loom_port=$(free_port); admin_port=$(free_port)
target/release/loom-echo --listen "127.0.0.1:$echo_port" --threads 1 >/dev/null &
pids+=($!)
wait_port "$echo_port"

plugin_entries=""
for index in 1 2 3 4 5; do
  plugin_entries+="  - name: headers$index
    path: loom_headers.wasm
    config: {request: {set: {x-plugin-$index: \"on\"}}, response: {set: {x-plugin-$index: \"on\"}}}
"
done
cat > "$work/loom.yaml" <<LOOM
server:
  threads: $workers
  pid_file: $work/loom.pid
  upgrade_sock: $work/loom.sock
  grace_period_seconds: 0
listeners:
  - name: http
    address: "127.0.0.1:$loom_port"
plugin_dir: $PWD/plugins/dist
plugin_cache_dir: $PWD/target/plugin-cache
plugins:
$plugin_entries
routes:
  - id: zero
    path: /zero/*
    strip_prefix: true
    upstream: echo
  - id: one
    path: /one/*
    strip_prefix: true
    upstream: echo
    plugins: [headers1]
  - id: five
    path: /five/*
    strip_prefix: true
    upstream: echo
    plugins: [headers1, headers2, headers3, headers4, headers5]
upstreams:
  - name: echo
    endpoints: ["127.0.0.1:$echo_port"]
admin:
  address: "127.0.0.1:$admin_port"
LOOM
RUST_LOG=warn target/release/loom -c "$work/loom.yaml" &
pids+=($!)
wait_port "$loom_port"

# wrk's latency lines, in milliseconds.
percentile() {
  awk -v want="$1" '$1==want {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}'
}

routes=(zero one five)
declare -A total p50 p99
for route in "${routes[@]}"; do
  total[$route]=0; p50[$route]=0; p99[$route]=0
  wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$loom_port/$route/bytes/128" >/dev/null
done
for round in $(seq 1 "$rounds"); do
  for route in "${routes[@]}"; do
    output=$(wrk -t1 -c"$connections" -d"$duration" --latency "http://127.0.0.1:$loom_port/$route/bytes/128")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$output")
    median=$(percentile 50% <<<"$output")
    tail=$(percentile 99% <<<"$output")
    total[$route]=$(awk -v a="${total[$route]}" -v b="$rps" 'BEGIN{print a+b}')
    p50[$route]=$(awk -v a="${p50[$route]}" -v b="$median" -v r="$rounds" 'BEGIN{print a+b/r}')
    p99[$route]=$(awk -v a="${p99[$route]}" -v b="$tail" 'BEGIN{print (a>b)?a:b}')
    printf 'round %d %-5s %10.0f req/s  p50 %6.3f ms  p99 %6.2f ms\n' "$round" "$route" "$rps" "$median" "$tail"
  done
done
echo
for route in "${routes[@]}"; do
  awk -v name="$route" -v t="${total[$route]}" -v base="${total[zero]}" -v r="$rounds" \
      -v m="${p50[$route]}" -v bm="${p50[zero]}" -v p="${p99[$route]}" 'BEGIN {
    printf "%-5s plugins: %9.0f req/s  ratio %.3f  mean p50 %.3f ms (+%.1f us)  worst p99 %.2f ms\n",
      name, t/r, t/base, m, (m-bm)*1000, p }'
done
