#!/usr/bin/env bash
# Loom next to its peers on this machine, in one run (../shared/notes/measuring.md, second
# method): CPU time per request under load, how each scales from one worker thread to two,
# and resident memory idle and holding 10,000 idle keep-alive clients.
#
# Usage: loadtest/peers.sh [--cpu] [--scaling] [--memory]   (default: --cpu)
#                          [--rounds 3] [--duration 8s] [--connections 64] [--hold 10000]
#                          [--targets "nginx haproxy caddy bare_pingora loom ..."]
#                          [--binary target/release/loom] [--bare target/release/examples/bare_pingora]
#
# --cpu      one worker each; the proxy pinned to CPU 1, wrk and the backend to CPU 0; wrk -t1
#            for --duration per round, the targets alternated round by round. CPU time per
#            request is the proxy's utime + stime (its children included) over the requests
#            wrk completed. Prints medians of req/s, CPU µs per request, p50 and p99, and the CPU
#            ratios to nginx and to bare Pingora.
# --scaling  nginx, bare Pingora and Loom with one and then two worker threads, nothing pinned
#            (the proxy, wrk -t2 and the backend share both CPUs); prints req/s and CPU µs per
#            request at each and the 2-worker/1-worker throughput ratio.
# --memory   resident memory (VmRSS) of each target idle after start, and holding --hold idle
#            keep-alive connections that each made one request (loadtest/hold_connections.py).
#            loom_five_plugins is Loom with five Proxy-Wasm plugins loaded, held on their route.
#
# Targets: nginx (proxy_pass, upstream keep-alive), haproxy (http-reuse always), caddy
# (reverse_proxy, GOMAXPROCS = workers), bare_pingora (loadtest/bare_pingora.rs, the floor Loom
# builds on), loom (a plain route), loom_headers_plugin (the shipped loom_headers Proxy-Wasm
# plugin on the route), loom_five_plugins (five of them), loom_policies (cors,
# security_headers, access_log and a local rate_limit). The backend is nginx answering 128 bytes.
# Needs: wrk nginx haproxy caddy (apt-get install -y wrk nginx haproxy caddy), a release build
# with the example (cargo build --release --bins --example bare_pingora) and plugins/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

binary=target/release/loom
bare=target/release/examples/bare_pingora
rounds=3
duration=8s
connections=64
hold=10000
haproxy_max_connections=9990
targets="nginx haproxy caddy bare_pingora loom loom_headers_plugin loom_policies"
modes=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu | --scaling | --memory) modes+=("${1#--}"); shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --bare) bare=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ ${#modes[@]} -gt 0 ] || modes=(cpu)
for tool in wrk nginx haproxy caddy python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx haproxy caddy" >&2; exit 1; }
done
require_release_build "$binary" "$bare"

make_work_directory

backend_port=$(free_port)
proxy_port=$(free_port)
admin_port=$(free_port)
declare -A paths=([loom_headers_plugin]=/p1 [loom_five_plugins]=/p2 [loom_policies]=/p3)

# The backend: nginx answering 128 bytes, with WORKERS processes on CPUS.
start_backend() {
  local workers=$1 cpus=$2
  write_backend_nginx_config "$work/backend.conf" "$work" "$backend_port" "$workers"
  taskset -c "$cpus" nginx -c "$work/backend.conf" -p "$work" &
  backend_pid=$!
  pids+=("$backend_pid")
  wait_port "$backend_port"
}
stop_backend() { kill -QUIT "$backend_pid" 2>/dev/null || true; wait "$backend_pid" 2>/dev/null || true; }

# Writes every peer's configuration for WORKERS worker threads.
write_configs() {
  local workers=$1
  write_proxy_nginx_config "$work/nginx.conf" "$work" "$proxy_port" "$backend_port" "$workers"
  cat >"$work/haproxy.cfg" <<HAPROXY
global
  nbthread $workers
  # haproxy reserves two files per connection, and the open-file limit here is 20,000.
  maxconn $haproxy_max_connections
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend proxy
  bind 127.0.0.1:$proxy_port
  default_backend backend
backend backend
  server backend 127.0.0.1:$backend_port
HAPROXY
  cat >"$work/Caddyfile" <<CADDY
{
  admin off
  auto_https off
  log {
    level ERROR
  }
}
http://127.0.0.1:$proxy_port {
  bind 127.0.0.1
  reverse_proxy 127.0.0.1:$backend_port
}
CADDY
  local header_plugins
  header_plugins="$(header_plugin_entries)
"
  # Plain Loom loads no plugin at all; the plugin and policy targets share one config.
  loom_bench_preamble "$work" "$workers" "$admin_port" "$proxy_port" "$backend_port" >"$work/loom-plain.yaml"
  cat >>"$work/loom-plain.yaml" <<YAML
routes:
  - {id: plain, path: /p0, upstream: backend}
YAML
  cp "$work/loom-plain.yaml" "$work/loom.yaml"
  cat >>"$work/loom.yaml" <<YAML
  - {id: headers_plugin, path: /p1, upstream: backend, plugins: [headers1]}
  - {id: five_plugins, path: /p2, upstream: backend, plugins: [headers1, headers2, headers3, headers4, headers5]}
  - {id: policies, path: /p3, upstream: backend, plugins: [cors, security_headers, access_log, rate_limit]}
plugin_dir: $PWD/plugins/dist
plugin_cache_dir: $PWD/target/plugin-cache
plugins:
$header_plugins  - {name: cors, type: cors, config: {allow_origins: ["https://app.example.com"], max_age: 600}}
  - {name: security_headers, type: security_headers}
  - {name: access_log, type: access_log, config: {path: "$work/access.log"}}
  # Far above what the run sends: every request is decided, none refused.
  - {name: rate_limit, type: rate_limit, config: {rate: 1000000, period: 1s, key: client_ip}}
YAML
  for config in loom-plain loom; do
    "$binary" -t -c "$work/$config.yaml" >"$work/check.log" 2>&1 || { cat "$work/check.log" >&2; exit 1; }
  done
}

loom_ready() { curl -sf "http://127.0.0.1:$admin_port/ready" >/dev/null 2>&1; }

# Starts TARGET with WORKERS worker threads on CPUS and waits until it serves; sets target_pid.
start_target() {
  local target=$1 workers=$2 cpus=$3
  case "$target" in
    nginx) taskset -c "$cpus" nginx -c "$work/nginx.conf" -p "$work" >"$work/$target.log" 2>&1 & ;;
    haproxy) taskset -c "$cpus" haproxy -db -f "$work/haproxy.cfg" >"$work/$target.log" 2>&1 & ;;
    caddy) GOMAXPROCS=$workers taskset -c "$cpus" caddy run --adapter caddyfile --config "$work/Caddyfile" \
      >"$work/$target.log" 2>&1 & ;;
    bare_pingora) taskset -c "$cpus" "$bare" "127.0.0.1:$proxy_port" "127.0.0.1:$backend_port" "$workers" \
      >"$work/$target.log" 2>&1 & ;;
    loom) RUST_LOG=warn taskset -c "$cpus" "$binary" -c "$work/loom-plain.yaml" >"$work/$target.log" 2>&1 & ;;
    loom_*) RUST_LOG=warn taskset -c "$cpus" "$binary" -c "$work/loom.yaml" >"$work/$target.log" 2>&1 & ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
  esac
  target_pid=$!
  pids+=("$target_pid")
  wait_port "$proxy_port" || { echo "$target did not start:" >&2; cat "$work/$target.log" >&2; exit 1; }
  if [[ "$target" == loom* ]]; then
    for _ in $(seq 1 600); do loom_ready && break; sleep 0.1; done
  fi
  # Every target must answer 200 before it is measured: a refusal would measure the refusal.
  curl -sf -o /dev/null -H 'origin: https://app.example.com' "http://127.0.0.1:$proxy_port$(path_of "$target")" \
    || { echo "$target does not answer 200:" >&2; cat "$work/$target.log" >&2; exit 1; }
}
stop_target() {
  # nginx without a master stops on QUIT, Pingora at once on INT, the others on TERM.
  case "$1" in
    nginx) kill -QUIT "$target_pid" 2>/dev/null || true ;;
    bare_pingora | loom*) kill -INT "$target_pid" 2>/dev/null || true ;;
    *) kill -TERM "$target_pid" 2>/dev/null || true ;;
  esac
  wait "$target_pid" 2>/dev/null || true
  # The next target binds the same port.
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$proxy_port") 2>/dev/null || return 0; sleep 0.05; done
}
path_of() { echo "${paths[$1]:-/p0}"; }
# utime + stime of PID and of its live children (nginx's workers under its master).
cpu_ticks() {
  local pid total=0 ticks
  for pid in "$1" $(pgrep -P "$1" || true); do
    ticks=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + ticks))
  done
  echo "$total"
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# wrk's latency figure ("812.00us", "2.10ms", "1.02s") in milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) sub(/ms$/, "", v);
  else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }; printf "%.2f", v }'; }

# Runs wrk (THREADS threads, on CPUS) against the running target for --duration; prints
# "req/s cpu_µs_per_request p50_ms p99_ms".
load_round() {
  local target=$1 threads=$2 cpus=$3 output requests before after
  wrk -t"$threads" -c"$connections" -d1s "http://127.0.0.1:$proxy_port$(path_of "$target")" \
    -H 'origin: https://app.example.com' >/dev/null
  before=$(cpu_ticks "$target_pid")
  output=$(taskset -c "$cpus" wrk -t"$threads" -c"$connections" -d"$duration" --latency \
    -H 'origin: https://app.example.com' "http://127.0.0.1:$proxy_port$(path_of "$target")")
  after=$(cpu_ticks "$target_pid")
  if grep -q "Non-2xx" <<<"$output"; then echo "$target answered non-2xx under load:" >&2; echo "$output" >&2; exit 1; fi
  requests=$(awk '/requests in/ {print $1}' <<<"$output")
  awk -v out="$output" -v r="$requests" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    -v p50="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$output")")" \
    -v p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$output")")" \
    'BEGIN { n = split(out, lines, "\n"); for (i = 1; i <= n; i++) if (lines[i] ~ /Requests\/sec/) { split(lines[i], f, " "); rps = f[2] }
             printf "%.0f %.1f %s %s\n", rps, t * 1000000 / hz / r, p50, p99 }'
}
# The median of column COLUMN of the ';'-separated rounds on stdin.
median() { tr ';' '\n' | awk -v column="$1" 'NF { print $column }' | sort -g |
  awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

run_cpu() {
  write_configs 1
  start_backend 1 0
  declare -A results
  local round target
  for round in $(seq 1 "$rounds"); do
    for target in $targets; do
      start_target "$target" 1 1
      results[$target]+="$(load_round "$target" 1 0);"
      stop_target "$target"
    done
  done
  stop_backend
  local nginx_cpu bare_cpu
  nginx_cpu=$(median 2 <<<"${results[nginx]:-}")
  bare_cpu=$(median 2 <<<"${results[bare_pingora]:-}")
  printf '\nCPU per request: one worker pinned to CPU 1, wrk -t1 -c%s and the backend on CPU 0, %s rounds of %s, medians\n\n' \
    "$connections" "$rounds" "$duration"
  printf '| target | req/s | CPU µs per request | / nginx | / bare Pingora | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|\n'
  for target in $targets; do
    local cpu
    cpu=$(median 2 <<<"${results[$target]}")
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$target" "$(median 1 <<<"${results[$target]}")" "$cpu" \
      "$(ratio "$cpu" "$nginx_cpu")" "$(ratio "$cpu" "$bare_cpu")" \
      "$(median 3 <<<"${results[$target]}")" "$(median 4 <<<"${results[$target]}")"
  done
}

run_scaling() {
  local scaling_targets="" target workers round
  for target in nginx bare_pingora loom; do
    [[ " $targets " == *" $target "* ]] && scaling_targets+=" $target"
  done
  declare -A results
  for round in $(seq 1 "$rounds"); do
    for workers in 1 2; do
      write_configs "$workers"
      start_backend 2 0,1
      for target in $scaling_targets; do
        start_target "$target" "$workers" 0,1
        results[$target-$workers]+="$(load_round "$target" 2 0,1);"
        stop_target "$target"
      done
      stop_backend
    done
  done
  printf '\nScaling: 1 and 2 worker threads, nothing pinned (proxy, wrk -t2 -c%s and backend share 2 CPUs), %s rounds of %s, medians\n\n' \
    "$connections" "$rounds" "$duration"
  printf '| target | req/s, 1 worker | req/s, 2 workers | 2 / 1 | CPU µs per request, 1 / 2 workers | p99 ms, 1 / 2 workers |\n|---|---|---|---|---|---|\n'
  for target in $scaling_targets; do
    local one two
    one=$(median 1 <<<"${results[$target-1]}")
    two=$(median 1 <<<"${results[$target-2]}")
    printf '| %s | %s | %s | %s | %s / %s | %s / %s |\n' "$target" "$one" "$two" "$(ratio "$two" "$one")" \
      "$(median 2 <<<"${results[$target-1]}")" "$(median 2 <<<"${results[$target-2]}")" \
      "$(median 4 <<<"${results[$target-1]}")" "$(median 4 <<<"${results[$target-2]}")"
  done
}

run_memory() {
  local memory_targets="$targets" target idle held holding
  [[ " $memory_targets " == *" loom_five_plugins "* ]] || memory_targets+=" loom_five_plugins"
  write_configs 1
  start_backend 1 0
  printf '\nResident memory (VmRSS), one worker: idle after start and one request, then holding %s idle keep-alive clients\n\n' "$hold"
  printf '| target | idle MiB | with %s idle connections MiB | KiB per connection |\n|---|---|---|---|\n' "$hold"
  for target in $memory_targets; do
    if [ "$target" = haproxy ] && [ "$hold" -gt "$haproxy_max_connections" ]; then
      echo "haproxy skipped: it cannot hold more than $haproxy_max_connections connections under this machine's open-file limit" >&2
      continue
    fi
    start_target "$target" 1 1
    idle=$(rss_kib "$target_pid")
    coproc holder { python3 loadtest/hold_connections.py 127.0.0.1 "$proxy_port" "$hold" "$(path_of "$target")"; }
    read -r _ holding <&"${holder[0]}"
    held=$(rss_kib "$target_pid")
    # Closing its stdin lets the holder close every connection and exit.
    local holder_input=${holder[1]}
    exec {holder_input}>&-
    wait "$holder_PID" 2>/dev/null || true
    [ "$holding" = "$hold" ] || echo "$target: only $holding of $hold connections got a 2xx answer" >&2
    printf '| %s | %.1f | %.1f | %.1f |\n' "$target" "$(awk -v k="$idle" 'BEGIN { print k / 1024 }')" \
      "$(awk -v k="$held" 'BEGIN { print k / 1024 }')" "$(awk -v a="$idle" -v b="$held" -v n="$holding" 'BEGIN { print (b - a) / n }')"
    stop_target "$target"
  done
  stop_backend
}

for mode in "${modes[@]}"; do
  "run_$mode"
done
