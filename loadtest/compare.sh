#!/usr/bin/env bash
# Throughput and p99 latency, in one run on this machine, of:
#   1. the echo backend directly,
#   2. nginx as a keep-alive reverse proxy in front of it,
#   3. Loom in front of it,
#   4. bare Pingora (no routing, headers or metrics) in front of it: the floor Loom builds on,
# with the same worker count for nginx and Loom and keep-alive on both sides. Prints req/s,
# p99 and Loom's ratio to nginx, plus Loom's resident memory idle and under load.
#
# Usage: loadtest/compare.sh [--workers N] [--duration 10s] [--connections 64] [--path /bytes/128]
# Needs: wrk and nginx (apt-get install -y wrk nginx); builds Loom in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

workers=1
duration=10s
connections=64
path=/bytes/128
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --path) path=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx" >&2; exit 1; }
done

cargo build --release --bins --example bare_pingora >&2
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT


echo_port=$(free_port); nginx_port=$(free_port); loom_port=$(free_port); admin_port=$(free_port); bare_port=$(free_port)

# The backend gets its own threads so it is not the bottleneck for either proxy.
target/release/loom-echo --listen "127.0.0.1:$echo_port" --threads 1 --name bench >/dev/null &
pids+=($!)
wait_port "$echo_port"

cat > "$work/nginx.conf" <<NGINX
worker_processes $workers;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream echo { server 127.0.0.1:$echo_port; keepalive 128; }
  server {
    listen 127.0.0.1:$nginx_port;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_port "$nginx_port"

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
  - id: all
    path: /*
    upstream: echo
upstreams:
  - name: echo
    endpoints: ["127.0.0.1:$echo_port"]
admin:
  address: "127.0.0.1:$admin_port"
LOOM
RUST_LOG=warn target/release/loom -c "$work/loom.yaml" &
loom_pid=$!
pids+=($loom_pid)
wait_port "$loom_port"

target/release/examples/bare_pingora "127.0.0.1:$bare_port" "127.0.0.1:$echo_port" "$workers" 2>/dev/null &
pids+=($!)
wait_port "$bare_port"

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }


# Warm up every path (connection pools, caches).
for port in "$echo_port" "$nginx_port" "$loom_port" "$bare_port"; do
  wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$port$path" >/dev/null
done

loom_idle_rss=$(rss_kib "$loom_pid")
read -r direct_rps direct_p99 < <(measure "http://127.0.0.1:$echo_port$path")
read -r nginx_rps nginx_p99 < <(measure "http://127.0.0.1:$nginx_port$path")
measure "http://127.0.0.1:$loom_port$path" > "$work/loom.out" &
measuring=$!
sleep $(( ${duration%s} / 2 ))
loom_load_rss=$(rss_kib "$loom_pid")
wait "$measuring"
read -r loom_rps loom_p99 < "$work/loom.out"
read -r bare_rps bare_p99 < <(measure "http://127.0.0.1:$bare_port$path")

printf '\n%-22s %12s %10s\n' "target ($workers worker)" "req/s" "p99 ms"
printf '%-22s %12.0f %10.2f\n' "echo backend direct" "$direct_rps" "$direct_p99"
printf '%-22s %12.0f %10.2f\n' "nginx reverse proxy" "$nginx_rps" "$nginx_p99"
printf '%-22s %12.0f %10.2f\n' "loom" "$loom_rps" "$loom_p99"
printf '%-22s %12.0f %10.2f\n' "bare pingora (floor)" "$bare_rps" "$bare_p99"
awk -v lr="$loom_rps" -v nr="$nginx_rps" -v lp="$loom_p99" -v np="$nginx_p99" \
  -v br="$bare_rps" \
  'BEGIN { printf "\nloom / nginx throughput: %.2f   p99: %.2f   loom / bare pingora: %.2f\n", lr / nr, lp / np, lr / br }'
printf 'loom resident memory: idle %d KiB, under load %d KiB\n' "$loom_idle_rss" "$loom_load_rss"
