#!/bin/sh
# Installs the Debian packages fourbit builds and tests with (strace: tests/t_hardening.sh
# checks the directory fsync after a rename; clang + libclang-rt-14-dev, Debian 12's
# libFuzzer: `make fuzz`, which CI runs). Idempotent: packages already present are left
# alone, and nothing is done when everything is there.
#   scripts/install-deps.sh          install what is missing (needs root)
#   scripts/install-deps.sh --check  only report what is missing (exit 1 if anything is)
set -eu
PKGS="build-essential pkg-config libyaml-dev libjansson-dev libxxhash-dev libopenblas-dev libpcre2-dev strace clang libclang-rt-14-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    [ "${1:-}" = "--check" ] || echo "install-deps: all packages present ($PKGS)"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "install-deps: missing:$missing" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing:$missing" >&2
    echo "install-deps: run as root: apt-get install$missing" >&2
    exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
