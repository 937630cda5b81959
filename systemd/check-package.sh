#!/usr/bin/env bash
# Builds the Debian package from an existing build (`cargo deb --no-build`) and checks it
# without touching this machine's system: its files, conffiles and maintainer scripts
# (`dpkg-deb -c`, `-I`, `-e`), then the packaged binary validating the packaged config and
# the packaged units (systemd/check-units.sh), all inside a scratch root.
#
# Usage: systemd/check-package.sh [--profile release]   (default: dev, the test build)
# Needs: cargo-deb (cargo install cargo-deb --version 3.8.0 --locked), dpkg-deb, systemd-analyze.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=dev
[ "${1:-}" = "--profile" ] && profile=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "check-package: $*" >&2; exit 1; }

# The dev profile is what the tests build; cargo-deb warns that packages are for releases.
cargo deb --no-build --profile "$profile" --fast -o "$work/loom.deb" 2>"$work/cargo-deb.log" \
  || { cat "$work/cargo-deb.log" >&2; fail "cargo deb failed"; }

contents=$(dpkg-deb -c "$work/loom.deb")
for path in ./usr/bin/loom ./etc/loom/loom.yaml ./usr/lib/systemd/system/loom.service \
  ./usr/lib/systemd/system/loom-stream.service ./usr/share/doc/loom/README.md; do
  grep -q " $path\$" <<<"$contents" || fail "the package has no $path"
done
grep -q -- "-rwxr-xr-x 0/0 .* ./usr/bin/loom$" <<<"$contents" || fail "usr/bin/loom is not root-owned 755"
grep -q -- "-rw-r----- 0/0 .* ./etc/loom/loom.yaml$" <<<"$contents" || fail "the config is not 640"

dpkg-deb -e "$work/loom.deb" "$work/control"
grep -qx /etc/loom/loom.yaml "$work/control/conffiles" || fail "/etc/loom/loom.yaml is not a conffile"
postinst="$work/control/postinst"
for script in postinst postrm prerm; do
  sh -n "$work/control/$script" || fail "$script is not valid sh"
done
grep -q "adduser --system --group" "$postinst" || fail "postinst creates no loom system user"
grep -q "install -d -o loom -g loom .*/var/lib/loom .*/var/log/loom" "$postinst" \
  || fail "postinst creates no /var/lib/loom and /var/log/loom"
grep -q "deb-systemd-helper enable loom.service" "$postinst" || fail "postinst does not enable loom.service"
# Enabled, never started by the install; an upgrade reloads a running gateway (socket
# handoff) instead of restarting it.
if grep -qE "deb-systemd-invoke (start|restart|try-restart) loom.service|deb-systemd-invoke start" "$postinst"; then
  fail "postinst starts a service or restarts the gateway: $(grep -E 'deb-systemd-invoke (start|restart|try-restart)' "$postinst")"
fi
grep -q "deb-systemd-invoke reload loom.service" "$postinst" || fail "an upgrade does not reload the gateway"
if grep -q "deb-systemd-helper enable loom-stream.service" "$postinst" \
  && ! grep -q "was-enabled loom-stream.service" "$postinst"; then
  fail "postinst enables loom-stream.service on a fresh install"
fi

# A scratch root: the packaged binary checks the packaged config with the service's
# directories moved inside it.
dpkg-deb -x "$work/loom.deb" "$work/root"
mkdir -p "$work/root/var/log/loom" "$work/root/var/lib/loom" "$work/root/run/loom"
sed -e "s#/var/#$work/root/var/#g" -e "s#/run/#$work/root/run/#g" \
  "$work/root/etc/loom/loom.yaml" >"$work/loom.yaml"
"$work/root/usr/bin/loom" -t -c "$work/loom.yaml" || fail "the packaged config does not validate"
mkdir -p "$work/units/systemd"
cp "$work/root/usr/lib/systemd/system/"*.service "$work/units/systemd/"
cp systemd/check-units.sh "$work/units/systemd/"
"$work/units/systemd/check-units.sh" "$work/root/usr/bin/loom" >/dev/null \
  || fail "the packaged units do not pass check-units.sh"
echo "check-package: $(du -h "$work/loom.deb" | cut -f1) package: files, conffile, user and directories, enabled not started, config and units valid"
