#!/usr/bin/env bash
# Throughput of a route whose rate limit is decided locally against one whose limit is decided
# in Redis (one EVALSHA round trip per request), in the same run: rounds alternate between the
# two routes so that machine noise hits both alike. The limits are far above what the run
# sends, so every request is decided and none is refused (checked: all answers are 2xx).
#
# Usage: loadtest/limit_throughput.sh [--rounds 3] [--requests 20000] [--connections 16]
# Needs: h2load, redis-server (apt-get install -y nghttp2-client redis-server), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

rounds=3
requests=20000
connections=16
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in h2load redis-server; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nghttp2-client redis-server" >&2; exit 1; }
done
for binary in target/release/loom target/release/loom-echo; do
  [ -x "$binary" ] || { echo "missing $binary: cargo build --release --bins" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo_port=$(free_port)
target/release/loom-echo --listen "127.0.0.1:$echo_port" --threads 1 >/dev/null &
pids+=($!)
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)
loom_port=$(free_port)
admin_port=$(free_port)
cat >"$work/loom.yaml" <<YAML
server:
  threads: 1
  pid_file: $work/loom.pid
  upgrade_sock: $work/upgrade.sock
admin:
  address: "127.0.0.1:$admin_port"
reload:
  watch: false
listeners:
  - name: http
    address: "127.0.0.1:$loom_port"
upstreams:
  - name: echo
    endpoints: ["127.0.0.1:$echo_port"]
routes:
  - {id: local, path: /local, upstream: echo, plugins: [local]}
  - {id: redis, path: /redis, upstream: echo, plugins: [shared]}
plugins:
  - {name: local, type: rate_limit, config: {rate: 1000000, period: 1s, key: client_ip}}
  - name: shared
    type: rate_limit
    config:
      rate: 1000000
      period: 1s
      key: client_ip
      policy: redis
      on_redis_error: deny     # a Redis failure shows as a non-2xx answer, never as speed
      redis: {url: "redis://127.0.0.1:$redis_port/0", timeout: 500ms}
YAML
wait_port "$echo_port"
wait_port "$redis_port"
target/release/loom -c "$work/loom.yaml" >"$work/loom.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$admin_port/ready" >/dev/null 2>&1 && break
  sleep 0.05
done

# Requests per second of one h2load run against PATH.
run() {
  h2load --h1 -n "$requests" -c "$connections" -m 1 "http://127.0.0.1:$loom_port$1" >"$work/h2load.log"
  grep -q "status codes: $requests 2xx" "$work/h2load.log" || { cat "$work/h2load.log" "$work/loom.log" >&2; exit 1; }
  awk '/^finished in/ {gsub(",", "", $4); print $4}' "$work/h2load.log"
}

run /local >/dev/null
run /redis >/dev/null
declare -a local_rates redis_rates
for round in $(seq 1 "$rounds"); do
  local_rates+=("$(run /local)")
  redis_rates+=("$(run /redis)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
printf '| limit decided | requests per second (median of %s rounds) | rounds |\n|---|---|---|\n' "$rounds"
printf '| locally (GCRA in memory) | %s | %s |\n' "$(median "${local_rates[@]}")" "${local_rates[*]}"
printf '| in Redis (one EVALSHA per request) | %s | %s |\n' "$(median "${redis_rates[@]}")" "${redis_rates[*]}"
