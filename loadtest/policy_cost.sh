#!/usr/bin/env bash
# Instructions per request that each built-in policy adds, counted exactly with callgrind
# (see ../shared/notes/measuring.md): Loom runs alone under callgrind with one worker thread,
# the echo backend and h2load outside it. For each route, Loom is started twice and sent N1
# and N2 requests; (I(N2) - I(N1)) / (N2 - N1) cancels start-up and shutdown out.
#
# Usage: loadtest/policy_cost.sh [--binary target/release/loom] [--n1 1000] [--n2 4000]
#                                [--routes "plain cors security_headers access_log"]
# Needs: valgrind, h2load (apt-get install -y valgrind nghttp2-client), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

binary=target/release/loom
n1=1000
n2=4000
routes="plain cors security_headers access_log transform ip_restriction request_size_limit compression"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --n1) n1=$2; shift 2 ;;
    --n2) n2=$2; shift 2 ;;
    --routes) routes=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in valgrind h2load; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind nghttp2-client" >&2; exit 1; }
done
[ -x "$binary" ] || { echo "missing $binary: cargo build --release --bins" >&2; exit 1; }
echo_binary=target/release/loom-echo
[ -x "$echo_binary" ] || { echo "missing $echo_binary: cargo build --release --bins" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo_port=$(free_port)
"$echo_binary" --listen "127.0.0.1:$echo_port" --threads 1 >/dev/null &
pids+=($!)
wait_port "$echo_port"

loom_port=$(free_port)
admin_port=$(free_port)
# The `plain` route has no chain; every other route has exactly one policy, named as the route.
# Every path has the same length, so that routing and path handling cost the same everywhere.
declare -A paths=([plain]=/p0 [cors]=/p1 [security_headers]=/p2 [access_log]=/p3 [transform]=/p4
  [ip_restriction]=/p5 [request_size_limit]=/p6 [compression]=/p7)
# A build without policies (before they existed) only has the plain route.
write_config() {
  local with_policies=$1
  cat >"$work/loom.yaml" <<YAML
server:
  threads: 1
  pid_file: $work/loom.pid
  upgrade_sock: $work/upgrade.sock
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
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
  - id: plain
    path: /p0
    upstream: echo
YAML
  [ "$with_policies" = yes ] || return 0
  cat >>"$work/loom.yaml" <<YAML
  - {id: cors, path: /p1, upstream: echo, plugins: [cors]}
  - {id: security_headers, path: /p2, upstream: echo, plugins: [security_headers]}
  - {id: access_log, path: /p3, upstream: echo, plugins: [access_log]}
  - {id: transform, path: /p4, upstream: echo, plugins: [transform]}
  - {id: ip_restriction, path: /p5, upstream: echo, plugins: [ip_restriction]}
  - {id: request_size_limit, path: /p6, upstream: echo, plugins: [request_size_limit]}
  - {id: compression, path: /p7, upstream: echo, plugins: [compression]}
plugins:
  - {name: cors, type: cors, config: {allow_origins: ["https://app.example.com"], max_age: 600}}
  - {name: security_headers, type: security_headers}
  - {name: access_log, type: access_log, config: {path: "$work/access.log"}}
  - name: transform
    type: transform
    config: {request: {set_headers: {x-client: "\${client_ip}", x-route: "\${route_id}"}}}
  - {name: ip_restriction, type: ip_restriction, config: {allow: ["127.0.0.0/8"]}}
  - {name: request_size_limit, type: request_size_limit, config: {max_body_size: 1MB}}
  - {name: compression, type: compression, config: {min_size: 1MB}}
YAML
}

# Instructions of one Loom run that serves $2 requests to route $1.
instructions() {
  local route=$1 count=$2 output="$work/callgrind.out"
  rm -f "$output"
  valgrind --tool=callgrind --callgrind-out-file="$output" "$binary" -c "$work/loom.yaml" \
    >"$work/loom.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$admin_port/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  # Browsers send Origin on cross-site requests: the CORS route gets an allowed one.
  h2load --h1 -n "$count" -c 8 -m 1 -H "origin: https://app.example.com" \
    "http://127.0.0.1:$loom_port${paths[$route]}" >"$work/h2load.log"
  grep -q "$count succeeded" "$work/h2load.log" || { cat "$work/h2load.log" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  awk '/^summary:/ {print $2}' "$output"
}

write_config yes
if ! "$binary" -t -c "$work/loom.yaml" >/dev/null 2>&1; then
  echo "($binary has no built-in policies: measuring the plain route only)" >&2
  write_config no
  routes=plain
fi

printf '| route | instructions per request |\n|---|---|\n'
for route in $routes; do
  first=$(instructions "$route" "$n1")
  second=$(instructions "$route" "$n2")
  printf '| %s | %s |\n' "$route" "$(( (second - first) / (n2 - n1) ))"
done
