#!/usr/bin/env bash
# Instructions per request that each built-in policy adds, counted exactly with callgrind
# (see ../shared/notes/measuring.md): Loom runs alone under callgrind with one worker thread,
# the echo backend and h2load outside it. For each route, Loom is started twice and sent N1
# and N2 requests; (I(N2) - I(N1)) / (N2 - N1) cancels start-up and shutdown out.
#
# Usage: loadtest/policy_cost.sh [--binary target/release/loom] [--n1 1000] [--n2 4000]
#                                [--routes "plain cors security_headers access_log"]
#                                [--tracing-rate 0.01] [--keep DIR]
# With --keep, every callgrind profile is kept in DIR as ROUTE-COUNT.callgrind, for
# callgrind_annotate (compare two routes' profiles to see where a policy's instructions go).
# With --tracing-rate, OpenTelemetry tracing is on at that sample rate and spans go to a local
# OTLP/HTTP sink that answers 200 (export and encoding are counted: they run in Loom).
# Needs: valgrind, h2load, openssl, htpasswd (apt-get install -y valgrind nghttp2-client openssl
# apache2-utils), python3, a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

binary=target/release/loom
n1=1000
n2=4000
tracing_rate=
keep=
routes="plain cors security_headers access_log transform ip_restriction request_size_limit compression key_auth rate_limit key_auth_rate_limit jwt_rs256 jwt_es256 basic_auth"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --n1) n1=$2; shift 2 ;;
    --n2) n2=$2; shift 2 ;;
    --routes) routes=$2; shift 2 ;;
    --tracing-rate) tracing_rate=$2; shift 2 ;;
    --keep) keep=$2; mkdir -p "$keep"; shift 2 ;;
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
tracing_section=
if [ -n "$tracing_rate" ]; then
  collector_port=$(free_port)
  python3 - "$collector_port" <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
  pids+=($!)
  wait_port "$collector_port"
  tracing_section="tracing: {enabled: true, endpoint: \"http://127.0.0.1:$collector_port\", sample_rate: $tracing_rate, batch_timeout: 100ms}"
fi
# The `plain` route has no chain; every other route has exactly one policy, named as the route.
# Every path has the same length, so that routing and path handling cost the same everywhere.
declare -A paths=([plain]=/p0 [cors]=/p1 [security_headers]=/p2 [access_log]=/p3 [transform]=/p4
  [ip_restriction]=/p5 [request_size_limit]=/p6 [compression]=/p7 [key_auth]=/p8 [rate_limit]=/p9
  [key_auth_rate_limit]=/pa [jwt_rs256]=/pb [jwt_es256]=/pc [basic_auth]=/pd
  [key_auth_rate_limit_quiet]=/pe)

# Keys and credentials for the auth routes: made here, signed by the openssl CLI.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl pkey -in "$work/rsa.pem" -pubout -out "$work/rsa.pub"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ec.pem" 2>/dev/null
openssl pkey -in "$work/ec.pem" -pubout -out "$work/ec.pub"
declare -A credentials=(
  [key_auth]="x-api-key: bench-key"
  [key_auth_rate_limit]="x-api-key: bench-key"
  [key_auth_rate_limit_quiet]="x-api-key: bench-key"
  [jwt_rs256]="authorization: Bearer $(loadtest/jwt_token.py RS256 "$work/rsa.pem" rsa-1)"
  [jwt_es256]="authorization: Bearer $(loadtest/jwt_token.py ES256 "$work/ec.pem" ec-1)"
  # bench:bench, whose bcrypt check is cached after the first request.
  [basic_auth]="authorization: Basic YmVuY2g6YmVuY2g="
)
# Cost 4 keeps the first (uncached) checks short under callgrind; later requests hit the cache.
bcrypt_hash=$(htpasswd -nbB -C 4 bench bench | cut -d: -f2)
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
$tracing_section
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
  - {id: key_auth, path: /p8, upstream: echo, plugins: [key_auth]}
  - {id: rate_limit, path: /p9, upstream: echo, plugins: [rate_limit]}
  - {id: key_auth_rate_limit, path: /pa, upstream: echo, plugins: [key_auth, rate_limit]}
  - {id: jwt_rs256, path: /pb, upstream: echo, plugins: [jwt]}
  - {id: jwt_es256, path: /pc, upstream: echo, plugins: [jwt]}
  - {id: basic_auth, path: /pd, upstream: echo, plugins: [basic_auth]}
  - {id: key_auth_rate_limit_quiet, path: /pe, upstream: echo, plugins: [key_auth, rate_limit_quiet]}
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
  - name: key_auth
    type: key_auth
    config: {keys: [{consumer: bench, key_sha256: "$(printf %s bench-key | sha256sum | cut -d' ' -f1)"}]}
  # Far above what the run sends: every request is decided, none refused.
  - {name: rate_limit, type: rate_limit, config: {rate: 100000, period: 1s, key: consumer}}
  # The same limit without the three RateLimit-* response headers.
  - name: rate_limit_quiet
    type: rate_limit
    config: {rate: 100000, period: 1s, key: consumer, headers: none}
  - name: jwt
    type: jwt_auth
    config:
      issuer: https://issuer.example
      audience: api
      keys:
        - {kid: rsa-1, algorithm: RS256, public_key_file: "$work/rsa.pub"}
        - {kid: ec-1, algorithm: ES256, public_key_file: "$work/ec.pub"}
  - name: basic_auth
    type: basic_auth
    config: {users: [{username: bench, password: "$bcrypt_hash"}]}
YAML
}

# Instructions of one Loom run that serves $2 requests to route $1, with the request headers of
# route $3 (default: $1's own).
loom_ready() { curl -sf "http://127.0.0.1:$admin_port/ready" >/dev/null 2>&1; }
instructions() {
  local route=$1 count=$2 headers_of=${3:-$1} output="$work/callgrind.out"
  callgrind_start "$output" "$work/loom.log" loom_ready "$binary" -c "$work/loom.yaml" || exit 1
  # Browsers send Origin on cross-site requests: the CORS route gets an allowed one.
  local extra=(-H "origin: https://app.example.com")
  [ -n "${credentials[$headers_of]:-}" ] && extra+=(-H "${credentials[$headers_of]}")
  callgrind_load "$count" "http://127.0.0.1:$loom_port${paths[$route]}" "${extra[@]}" || exit 1
  callgrind_stop "$output" TERM "${keep:+$keep/$route-$count${3:+-as-$3}.callgrind}"
}

write_config yes
if ! "$binary" -t -c "$work/loom.yaml" >/dev/null 2>&1; then
  echo "($binary has no built-in policies: measuring the plain route only)" >&2
  write_config no
  routes=plain
fi

# Routes that need credentials are also compared with the plain route sent the same request
# headers, so that parsing a header the client sends anyway is not counted as the policy's.
printf '| route | instructions per request | plain route, same request headers | policy cost |\n|---|---|---|---|\n'
for route in $routes; do
  first=$(instructions "$route" "$n1")
  second=$(instructions "$route" "$n2")
  cost=$(( (second - first) / (n2 - n1) ))
  if [ "$route" != plain ] && [ -n "${credentials[$route]:-}" ]; then
    first=$(instructions plain "$n1" "$route")
    second=$(instructions plain "$n2" "$route")
    baseline=$(( (second - first) / (n2 - n1) ))
    printf '| %s | %s | %s | %s |\n' "$route" "$cost" "$baseline" "$(( cost - baseline ))"
  else
    printf '| %s | %s | | |\n' "$route" "$cost"
  fi
done

# Next to the JWT routes: what checking their token costs outside the gateway.
cost_binary=target/release/examples/jwt_verify_cost
if [[ " $routes " == *" jwt_"* ]] && [ -x "$cost_binary" ]; then
  check_cost() {
    local algorithm=$1 key=$2 token=$3 mode=$4 count output="$work/callgrind.check"
    local totals=()
    for count in "$n1" "$n2"; do
      valgrind --tool=callgrind --callgrind-out-file="$output" "$cost_binary" "$algorithm" "$key" \
        "$token" "$mode" "$count" >/dev/null 2>&1
      totals+=("$(awk '/^summary:/ {print $2}' "$output")")
    done
    echo $(( (totals[1] - totals[0]) / (n2 - n1) ))
  }
  printf '\n| check outside the gateway | instructions per check |\n|---|---|\n'
  for algorithm in RS256 ES256; do
    if [ "$algorithm" = RS256 ]; then key=$work/rsa.pub; token=${credentials[jwt_rs256]#authorization: Bearer }
    else key=$work/ec.pub; token=${credentials[jwt_es256]#authorization: Bearer }; fi
    printf '| %s signature only (jsonwebtoken::crypto::verify) | %s |\n' "$algorithm" "$(check_cost "$algorithm" "$key" "$token" signature)"
    printf '| %s whole token (jsonwebtoken::decode) | %s |\n' "$algorithm" "$(check_cost "$algorithm" "$key" "$token" decode)"
  done
elif [[ " $routes " == *" jwt_"* ]]; then
  echo "(build $cost_binary with cargo build --release --example jwt_verify_cost for the bare JWT costs)" >&2
fi
