#!/usr/bin/env bash
# Builds every Proxy-Wasm plugin of this workspace for wasm32-unknown-unknown and copies the
# modules to dist/.
#
# Toolchain, first match wins:
#   1. rustup with the wasm32-unknown-unknown target installed: plain `cargo build`.
#   2. Debian's rustc-web, cargo-web, rust-web-src and lld: the standard library is built from
#      source (-Zbuild-std), because rustup cannot download the wasm32 one on every machine.
#   3. Neither: say which apt packages are missing and stop (or install them with --install).
set -euo pipefail

readonly TARGET=wasm32-unknown-unknown
readonly APT_PACKAGES=(rustc-web cargo-web rust-web-src lld)
readonly DEBIAN_RUSTC=/usr/bin/rustc
readonly DEBIAN_CARGO=/usr/bin/cargo
readonly DEBIAN_STD_SOURCE=/usr/lib/rustlib/src/rust/library

usage() {
    cat <<'EOF'
Usage: build.sh [--install]

Builds every plugin of this workspace to wasm32-unknown-unknown (release profile) and copies
the .wasm files to dist/.

  --install   when no wasm32 toolchain is found, install Debian's
              (apt-get install -y rustc-web cargo-web rust-web-src lld; needs root)
EOF
}

install_missing=false
for argument in "$@"; do
    case "$argument" in
        --install) install_missing=true ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "build.sh: unknown option '$argument'" >&2
            usage >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")"
export CARGO_TARGET_DIR="$PWD/target"

have_rustup_target() {
    command -v rustup >/dev/null 2>&1 &&
        rustup target list --installed 2>/dev/null | grep -q "^${TARGET}\$"
}

package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

# The apt packages of the Debian toolchain that are not installed (on stdout, one per line).
missing_debian_packages() {
    local package
    for package in "${APT_PACKAGES[@]}"; do
        package_installed "$package" || echo "$package"
    done
}

have_debian_toolchain() {
    [[ -x "$DEBIAN_RUSTC" && -x "$DEBIAN_CARGO" && -d "$DEBIAN_STD_SOURCE" ]] &&
        command -v wasm-ld >/dev/null 2>&1 &&
        [[ -z "$(missing_debian_packages)" ]]
}

install_debian_toolchain() {
    local -a missing
    mapfile -t missing < <(missing_debian_packages)
    if [[ ${#missing[@]} -eq 0 ]]; then
        missing=("${APT_PACKAGES[@]}")
    fi
    local -a as_root=()
    if [[ $EUID -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "build.sh: --install needs root (or sudo) to run apt-get" >&2
            exit 1
        fi
        as_root=(sudo)
    fi
    echo "build.sh: installing ${missing[*]}"
    "${as_root[@]}" apt-get update
    "${as_root[@]}" apt-get install -y "${missing[@]}"
}

build_with_rustup() {
    echo "build.sh: toolchain: rustup ($(rustc --version)) with the $TARGET target"
    cargo build --release --target "$TARGET"
}

build_with_debian() {
    echo "build.sh: toolchain: Debian $("$DEBIAN_RUSTC" --version), std built from source"
    # RUSTC_BOOTSTRAP lets a stable compiler take -Zbuild-std; wasm-ld is lld's wasm linker,
    # which Debian does not ship as rust-lld.
    RUSTC="$DEBIAN_RUSTC" RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld \
        "$DEBIAN_CARGO" build --release --target "$TARGET" -Zbuild-std=std,panic_abort
}

started=$SECONDS
if have_rustup_target; then
    build_with_rustup
else
    if ! have_debian_toolchain && $install_missing; then
        install_debian_toolchain
    fi
    if have_debian_toolchain; then
        build_with_debian
    else
        mapfile -t missing < <(missing_debian_packages)
        cat >&2 <<EOF
build.sh: no toolchain that can build $TARGET.
  rustup's $TARGET target is not installed, and Debian's wasm32 toolchain is incomplete
  (missing packages: ${missing[*]:-none, but $DEBIAN_RUSTC, $DEBIAN_CARGO, $DEBIAN_STD_SOURCE or wasm-ld is absent}).
Either install the Debian packages (as root):
    apt-get update && apt-get install -y ${APT_PACKAGES[*]}
  or run: $0 --install
or, where rustup can download it: rustup target add $TARGET
EOF
        exit 1
    fi
fi
elapsed=$((SECONDS - started))

readonly OUTPUT_DIR="$CARGO_TARGET_DIR/$TARGET/release"
mkdir -p dist
rm -f dist/*.wasm
shopt -s nullglob
modules=("$OUTPUT_DIR"/*.wasm)
if [[ ${#modules[@]} -eq 0 ]]; then
    echo "build.sh: the build produced no .wasm files in $OUTPUT_DIR" >&2
    exit 1
fi
cp "${modules[@]}" dist/

echo "build.sh: built ${#modules[@]} plugins in ${elapsed}s; dist/:"
for module in dist/*.wasm; do
    printf '  %-34s %9d bytes\n' "$(basename "$module")" "$(stat -c %s "$module")"
done
