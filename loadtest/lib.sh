# Shared helpers for the load-test scripts (sourced, not run).

# A TCP port that is free right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Waits until something accepts connections on 127.0.0.1:PORT (up to 15 s).
wait_port() {
  for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2
  return 1
}

# Runs wrk against URL with $connections connections for $duration and prints
# "requests_per_second p99_milliseconds".
measure() {
  local output rps p99
  output=$(wrk -t1 -c"$connections" -d"$duration" --latency "$1")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$output")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$output")
  echo "$rps $p99"
}

# The callgrind method of ../shared/notes/measuring.md, shared by instructions.sh and
# policy_cost.sh: start a proxy under callgrind, send it N requests, stop it, read the total.

# Starts "$@" under callgrind, writing its profile to OUTPUT and its output to LOG, and waits
# until the function READY succeeds; sets `callgrind_pid`. Under valgrind, bare Pingora now
# and then never finishes starting (its threads are serialised there): a run not ready within
# 60 s is killed and started again. Counts are per run, so a retried run counts the same.
# Usage: callgrind_start OUTPUT LOG READY COMMAND...
callgrind_start() {
  local output=$1 log=$2 ready=$3 attempt
  shift 3
  for attempt in 1 2 3; do
    rm -f "$output"
    valgrind --tool=callgrind --callgrind-out-file="$output" "$@" >"$log" 2>&1 &
    callgrind_pid=$!
    pids+=("$callgrind_pid")
    for _ in $(seq 1 600); do
      "$ready" && return 0
      sleep 0.1
    done
    echo "$1 did not start under callgrind within 60 s (attempt $attempt)" >&2
    kill -KILL "$callgrind_pid" 2>/dev/null || true
    wait "$callgrind_pid" 2>/dev/null || true
  done
  cat "$log" >&2
  return 1
}

# Sends COUNT requests to URL with h2load (8 connections; extra h2load arguments after URL)
# and fails unless every answer was a 2xx: a refused request would measure the refusal.
# Usage: callgrind_load COUNT URL [H2LOAD ARGUMENTS...]
callgrind_load() {
  local count=$1 url=$2 report
  shift 2
  report=$(h2load --h1 -n "$count" -c 8 -m 1 "$@" "$url")
  grep -q "$count succeeded" <<<"$report" && grep -q "status codes: $count 2xx" <<<"$report" \
    || { echo "$report" >&2; return 1; }
}

# Stops `callgrind_pid` with SIGNAL (TERM unless given), waits for its profile OUTPUT, copies
# it to KEEP_AS when that is set, and prints the instructions it counted.
# Usage: callgrind_stop OUTPUT [SIGNAL] [KEEP_AS]
callgrind_stop() {
  local output=$1 signal=${2:-TERM} keep_as=${3:-}
  kill -"$signal" "$callgrind_pid"
  wait "$callgrind_pid" 2>/dev/null || true
  [ -z "$keep_as" ] || cp "$output" "$keep_as"
  awk '/^summary:/ {print $2}' "$output"
}

# Peer configurations shared by instructions.sh and peers.sh.

# Writes FILE: nginx answering 128 bytes on 127.0.0.1:PORT with WORKERS processes (its pid and
# error log under DIR); /p5 also says Cache-Control: no-store (the cache-miss target).
# Usage: write_backend_nginx_config FILE DIR PORT [WORKERS]
write_backend_nginx_config() {
  local file=$1 dir=$2 port=$3 workers=${4:-1} body
  body=$(printf '%0128d' 0)
  cat >"$file" <<NGINX
worker_processes $workers;
daemon off;
pid $dir/backend.pid;
error_log $dir/backend-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$port reuseport;
    keepalive_requests 1000000;
    location / { default_type text/plain; return 200 "$body"; }
    location /p5 { default_type text/plain; add_header Cache-Control no-store; return 200 "$body"; }
  }
}
NGINX
}

# Writes FILE: nginx as a keep-alive reverse proxy on 127.0.0.1:LISTEN in front of
# 127.0.0.1:BACKEND. One worker runs without a master process (so that it is the process
# measured); more need the master.
# Usage: write_proxy_nginx_config FILE DIR LISTEN BACKEND [WORKERS]
write_proxy_nginx_config() {
  local file=$1 dir=$2 listen=$3 backend=$4 workers=${5:-1} master="master_process off;"
  [ "$workers" -eq 1 ] || master=""
  cat >"$file" <<NGINX
worker_processes $workers;
$master
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$backend; keepalive 64; }
  server {
    listen 127.0.0.1:$listen;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
}

# Prints the `plugins:` entries headers1 ... headers5: the shipped loom_headers Proxy-Wasm
# plugin setting one request and one response header each.
header_plugin_entries() {
  local index
  for index in 1 2 3 4 5; do
    printf '  - name: headers%s\n    path: loom_headers.wasm\n    config: {request: {set: {x-plugin-%s: "on"}}, response: {set: {x-plugin-%s: "on"}}}\n' \
      "$index" "$index" "$index"
  done
}

# Prints the start of a benchmark Loom config: WORKERS threads, files under DIR, the admin
# API on ADMIN, one listener on LISTEN, and the upstream `backend` at 127.0.0.1:BACKEND.
# Usage: loom_bench_preamble DIR WORKERS ADMIN LISTEN BACKEND
loom_bench_preamble() {
  cat <<YAML
server:
  threads: $2
  pid_file: $1/loom.pid
  upgrade_sock: $1/upgrade.sock
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
admin:
  address: "127.0.0.1:$3"
reload:
  watch: false
listeners:
  - name: http
    address: "127.0.0.1:$4"
upstreams:
  - name: backend
    endpoints: ["127.0.0.1:$5"]
YAML
}

# Fails unless the release binaries BINARY and BARE (loadtest/bare_pingora.rs) and the shipped
# plugins are built.
# Usage: require_release_build BINARY BARE
require_release_build() {
  [ -x "$1" ] || { echo "missing $1: cargo build --release --bins" >&2; exit 1; }
  [ -x "$2" ] || { echo "missing $2: cargo build --release --example bare_pingora" >&2; exit 1; }
  [ -f plugins/dist/loom_headers.wasm ] || { echo "missing plugins: run plugins/build.sh" >&2; exit 1; }
}

# Makes the scratch directory `work` and the list `pids` of processes to stop; both are
# cleaned up when the script exits, however it exits.
make_work_directory() {
  work=$(mktemp -d)
  pids=()
  trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"' EXIT
}
