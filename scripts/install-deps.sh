#!/bin/sh
# Installs the Debian packages fourbit builds and tests with (strace: tests/t_hardening.sh
# checks the directory fsync after a rename; clang + libclang-rt-14-dev, Debian 12's
# libFuzzer: `make fuzz`, which CI runs). Idempotent: packages already present are left
# alone, and nothing is done when everything is there.
#   scripts/install-deps.sh          install what is missing (needs root)
#   scripts/install-deps.sh --check  only report what is missing (exit 1 if anything is)
#   scripts/install-deps.sh --aarch64 [--check]
#                                    the same for the aarch64 cross build instead: cross gcc,
#                                    qemu-user and the :arm64 libraries (scripts/cross-aarch64.sh;
#                                    adds the arm64 dpkg architecture)
set -eu
PKGS="build-essential pkg-config libyaml-dev libjansson-dev libxxhash-dev libopenblas-dev libpcre2-dev strace clang libclang-rt-14-dev"
ARCH=""
if [ "${1:-}" = "--aarch64" ]; then
    shift
    ARCH=arm64
    PKGS="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static pkg-config
          libyaml-dev:arm64 libjansson-dev:arm64 libxxhash-dev:arm64 libopenblas-dev:arm64 libpcre2-dev:arm64"
fi
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    # shellcheck disable=SC2086
    [ "${1:-}" = "--check" ] || echo "install-deps: all packages present ($(echo $PKGS))"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "install-deps: missing:$missing" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing:$missing" >&2
    [ -z "$ARCH" ] || echo "install-deps: run as root: dpkg --add-architecture $ARCH && apt-get update" >&2
    echo "install-deps: run as root: apt-get install$missing" >&2
    exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
if [ -n "$ARCH" ] && ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
    dpkg --add-architecture "$ARCH"
fi
apt-get -o DPkg::Lock::Timeout=600 update -qq
# shellcheck disable=SC2086
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing
