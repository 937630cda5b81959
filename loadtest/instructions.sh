#!/usr/bin/env bash
# Instructions per request of Loom next to its peers, counted exactly with callgrind (the
# method of ../shared/notes/measuring.md): each proxy runs alone under callgrind with one
# worker, the backend (nginx answering 128 bytes) and h2load run outside it. Every proxy is
# started twice and sent N1 and N2 requests; (I(N2) - I(N1)) / (N2 - N1) cancels start-up and
# shutdown out. Counts do not drift with machine load: run it before every hot-path commit.
#
# Usage: loadtest/instructions.sh [--binary target/release/loom] [--n1 1000] [--n2 4000]
#                                 [--targets "nginx bare_pingora plain headers_plugin ..."]
#                                 [--keep DIR] [--rps DURATION]
#                                 [--plugin FILE.wasm [--plugin-root-id ID]]
# Targets: nginx (proxy_pass with keep-alive), bare_pingora (loadtest/bare_pingora.rs, the
# floor), and Loom routes: plain (no policy), headers_plugin (the shipped loom_headers Proxy-Wasm
# plugin: one request and one response header), five_plugins (five of them), policies (the
# built-in cors, security_headers, access_log and a local rate_limit on one route). Cache targets
# (not run unless named): cache_hit (a caching route answering from its store), cache_miss (a
# caching route whose backend says no-store: lookup, fetch, nothing stored) and nginx_cache_hit
# (nginx's proxy_cache answering from its cache). With --plugin, the target wasm_plugin is added:
# a route whose chain is that one Proxy-Wasm module (built with any SDK), with its root_id if
# given; compare it with plain for what the plugin adds per request.
# With --keep, every callgrind profile is kept in DIR as TARGET-COUNT.callgrind for
# callgrind_annotate. With --rps, each target also runs natively, pinned to CPU 1 with wrk
# (64 connections) and the backend on CPU 0, for DURATION, three rounds alternating the
# targets: the medians of req/s and of CPU time per request (the proxy's utime + stime over the
# requests completed) follow the instructions table (measuring.md's second method; needs wrk).
# Needs: valgrind, h2load, nginx (apt-get install -y valgrind nghttp2-client nginx), a release
# build with the example (cargo build --release --bins --example bare_pingora) and the plugins
# (plugins/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

binary=target/release/loom
bare=target/release/examples/bare_pingora
n1=1000
n2=4000
targets="nginx bare_pingora plain headers_plugin five_plugins policies"
keep=
rps=
plugin=
plugin_root_id=
while [ $# -gt 0 ]; do
  case "$1" in
    --plugin) plugin=$2; shift 2 ;;
    --plugin-root-id) plugin_root_id=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --bare) bare=$2; shift 2 ;;
    --n1) n1=$2; shift 2 ;;
    --n2) n2=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --keep) keep=$2; mkdir -p "$keep"; shift 2 ;;
    --rps) rps=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in valgrind h2load nginx; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind nghttp2-client nginx" >&2; exit 1; }
done
require_release_build "$binary" "$bare"

make_work_directory

# The backend: nginx answering a 128-byte body, outside callgrind.
backend_port=$(free_port)
write_backend_nginx_config "$work/backend.conf" "$work" "$backend_port"
taskset -c 0 nginx -c "$work/backend.conf" -p "$work" &
pids+=($!)
wait_port "$backend_port"

proxy_port=$(free_port)
admin_port=$(free_port)

write_proxy_nginx_config "$work/nginx.conf" "$work" "$proxy_port" "$backend_port"

# nginx's own cache in front of the same backend, for the cache targets.
mkdir -p "$work/nginx-cache"
sed -e "s|location / {|location / {\n      proxy_cache answers;\n      proxy_cache_valid 200 60s;|" \
  -e "s|upstream backend|proxy_cache_path $work/nginx-cache keys_zone=answers:10m;\n  upstream backend|" \
  "$work/nginx.conf" >"$work/nginx-cache.conf"

# Plugin paths must stay inside plugin_dir: the shipped modules and the one given with --plugin
# are copied into one.
mkdir -p "$work/plugins"
cp plugins/dist/*.wasm "$work/plugins/"
plugin_entries=""
plugin_route=""
if [ -n "$plugin" ]; then
  [ -f "$plugin" ] || { echo "missing $plugin" >&2; exit 1; }
  cp "$plugin" "$work/plugins/measured.wasm"
  plugin_entries+="  - {name: measured, path: measured.wasm${plugin_root_id:+, root_id: \"$plugin_root_id\"}}
"
  plugin_route="  - {id: wasm_plugin, path: /p6, upstream: backend, plugins: [measured]}
"
  case " $targets " in *" wasm_plugin "*) ;; *) targets+=" wasm_plugin" ;; esac
fi
plugin_entries+="$(header_plugin_entries)
"
# Every path has the same length, so that routing costs the same on every route.
declare -A paths=([plain]=/p0 [headers_plugin]=/p1 [five_plugins]=/p2 [policies]=/p3
  [nginx]=/p0 [bare_pingora]=/p0 [cache_hit]=/p4 [cache_miss]=/p5 [nginx_cache_hit]=/p4
  [wasm_plugin]=/p6)
loom_bench_preamble "$work" 1 "$admin_port" "$proxy_port" "$backend_port" >"$work/loom.yaml"
cat >>"$work/loom.yaml" <<YAML
plugin_dir: $work/plugins
plugin_cache_dir: $PWD/target/plugin-cache
routes:
  - {id: plain, path: /p0, upstream: backend}
  - {id: headers_plugin, path: /p1, upstream: backend, plugins: [headers1]}
  - {id: five_plugins, path: /p2, upstream: backend, plugins: [headers1, headers2, headers3, headers4, headers5]}
  - {id: policies, path: /p3, upstream: backend, plugins: [cors, security_headers, access_log, rate_limit]}
  - {id: cache_hit, path: /p4, upstream: backend, cache: {enabled: true, default_ttl: 600s}}
  - {id: cache_miss, path: /p5, upstream: backend, cache: {enabled: true, default_ttl: 600s}}
$plugin_route
plugins:
$plugin_entries  - {name: cors, type: cors, config: {allow_origins: ["https://app.example.com"], max_age: 600}}
  - {name: security_headers, type: security_headers}
  - {name: access_log, type: access_log, config: {path: "$work/access.log"}}
  # Far above what the run sends: every request is decided, none refused.
  - {name: rate_limit, type: rate_limit, config: {rate: 100000, period: 1s, key: client_ip}}
YAML
"$binary" -t -c "$work/loom.yaml" >"$work/check.log" 2>&1 || { cat "$work/check.log" >&2; exit 1; }
loom_ready() { curl -sf "http://127.0.0.1:$admin_port/ready" >/dev/null 2>&1; }
port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$proxy_port") 2>/dev/null; }

# One run first, under valgrind without a tool: it compiles the plugins into the cache, so that
# every measured run starts the same way. The cache is keyed by the CPU features the compiler
# sees, and valgrind's virtual CPU has fewer than the machine, so a warm-up outside valgrind
# would leave the first measured run compiling every module.
valgrind --tool=none -q "$binary" -c "$work/loom.yaml" >"$work/warm-up.log" 2>&1 &
warm_up=$!
for _ in $(seq 1 6000); do
  loom_ready && break
  sleep 0.1
done
kill -TERM "$warm_up"
wait "$warm_up" 2>/dev/null || true

# Starts target $1 under callgrind, sends it $2 requests and prints the instructions it ran.
instructions() {
  local target=$1 count=$2 output="$work/callgrind.out" command ready=loom_ready signal=TERM
  case "$target" in
    nginx) command=(nginx -c "$work/nginx.conf" -p "$work") ready=port_open
      # nginx without a master process stops on QUIT once its connections are done.
      signal=QUIT ;;
    nginx_cache_hit) command=(nginx -c "$work/nginx-cache.conf" -p "$work") ready=port_open
      signal=QUIT ;;
    bare_pingora) command=("$bare" "127.0.0.1:$proxy_port" "127.0.0.1:$backend_port" 1) ready=port_open
      # Pingora's default graceful shutdown on TERM waits 5 minutes; INT stops it at once.
      signal=INT ;;
    *) command=("$binary" -c "$work/loom.yaml") ;;
  esac
  callgrind_start "$output" "$work/$target.log" "$ready" "${command[@]}" || exit 1
  # Browsers send Origin on cross-site requests: the policies route gets an allowed one.
  callgrind_load "$count" "http://127.0.0.1:$proxy_port${paths[$target]}" \
    -H "origin: https://app.example.com" || exit 1
  callgrind_stop "$output" "$signal" "${keep:+$keep/$target-$count.callgrind}"
}

declare -A cost
printf '| target | instructions per request | / bare Pingora | / nginx | / plain route |\n|---|---|---|---|---|\n'
for target in $targets; do
  first=$(instructions "$target" "$n1")
  second=$(instructions "$target" "$n2")
  cost[$target]=$(( (second - first) / (n2 - n1) ))
  ratio() { [ -n "${cost[$1]:-}" ] && awk -v a="${cost[$target]}" -v b="${cost[$1]}" 'BEGIN { printf "%.2f", a / b }'; }
  printf '| %s | %s | %s | %s | %s |\n' "$target" "${cost[$target]}" "$(ratio bare_pingora)" \
    "$(ratio nginx)" "$(ratio plain)"
done

[ -n "$rps" ] || exit 0
command -v wrk >/dev/null || { echo "missing wrk: apt-get install -y wrk" >&2; exit 1; }
# The command that runs target $1 natively.
native_command() {
  case "$1" in
    nginx) echo nginx -c "$work/nginx.conf" -p "$work" ;;
    nginx_cache_hit) echo nginx -c "$work/nginx-cache.conf" -p "$work" ;;
    bare_pingora) echo "$bare" "127.0.0.1:$proxy_port" "127.0.0.1:$backend_port" 1 ;;
    *) echo "$binary" -c "$work/loom.yaml" ;;
  esac
}
# Runs target $1 pinned to CPU 1 under wrk for $rps; prints "req/s cpu_microseconds_per_request".
native_round() {
  local target=$1 pid output requests ticks_before ticks_after
  # shellcheck disable=SC2046
  taskset -c 1 $(native_command "$target") >"$work/$target-native.log" 2>&1 &
  pid=$!
  if [[ "$target" == nginx* || "$target" == bare_pingora ]]; then wait_port "$proxy_port"; else
    for _ in $(seq 1 600); do loom_ready && break; sleep 0.1; done; fi
  # One request first, so that a cache target measures hits.
  curl -sf -o /dev/null "http://127.0.0.1:$proxy_port${paths[$target]}" || true
  ticks_before=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")
  output=$(taskset -c 0 wrk -t1 -c64 -d"$rps" "http://127.0.0.1:$proxy_port${paths[$target]}")
  ticks_after=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")
  requests=$(awk '/requests in/ {print $1}' <<<"$output")
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  awk -v out="$output" -v r="$requests" -v t=$((ticks_after - ticks_before)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { split(out, lines, "\n"); for (i in lines) if (lines[i] ~ /Requests\/sec/) { split(lines[i], f, " "); rps = f[2] }
             printf "%s %.1f\n", rps, t * 1000000 / hz / r }'
}
declare -A rounds
for round in 1 2 3; do
  for target in $targets; do
    rounds[$target]+="$(native_round "$target");"
  done
done
median() { tr ';' '\n' | awk -v column="$1" 'NF { print $column }' | sort -n | sed -n 2p; }
printf '\n| target | req/s (median of 3, one worker on one pinned CPU) | CPU µs per request |\n|---|---|---|\n'
for target in $targets; do
  printf '| %s | %s | %s |\n' "$target" "$(median 1 <<<"${rounds[$target]}")" "$(median 2 <<<"${rounds[$target]}")"
done
