#!/usr/bin/env bash
# Checks the shipped units as systemd would load them: `systemd-analyze verify` must print
# nothing (no warning), and `systemd-analyze security --offline=true` must rate each unit at
# most 3.0 ("OK"). The units name /usr/bin/loom; the copies checked here point at the build.
#
# Usage: systemd/check-units.sh [BINARY]   (default: target/debug/loom)
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:-target/debug/loom}")
[ -x "$binary" ] || { echo "missing $binary: build it first" >&2; exit 1; }
limit=3.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for unit in systemd/*.service; do
  name=$(basename "$unit")
  sed "s#/usr/bin/loom#$binary#g" "$unit" >"$work/$name"
  warnings=$(systemd-analyze verify "$work/$name" 2>&1 || true)
  if [ -n "$warnings" ]; then
    echo "$name: systemd-analyze verify complained:" >&2
    echo "$warnings" >&2
    status=1
  fi
  report=$(systemd-analyze security --offline=true "$work/$name" 2>&1)
  score=$(echo "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  if [ -z "$score" ]; then
    echo "$name: no exposure level in:" >&2
    echo "$report" >&2
    status=1
  elif awk -v score="$score" -v limit="$limit" 'BEGIN { exit !(score > limit) }'; then
    echo "$name: exposure $score is above $limit:" >&2
    echo "$report" | grep '✗' >&2
    status=1
  else
    echo "$name: verify clean, exposure $score (limit $limit)"
  fi
done
exit $status
