#!/bin/sh
# Installs the Debian packages instar needs to build and test, if missing.
# Run as root on Debian 12 (make demo / make check call this).
set -e
pkgs="build-essential pkg-config libseccomp-dev zlib1g-dev libzstd-dev libbz2-dev qemu-utils python3-pytest python3-pytest-xdist clang strace"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
        exit 1
    fi
    echo "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
# The newer qemu-img oracle (10.0) for the differential suite, when the
# project's shared tools are beside the checkout.  Optional: the suite runs
# against Debian's 7.2 alone without it.
oracle_tool="$(dirname "$0")/../../shared/tools/install-qemu-oracle"
if [ -x "$oracle_tool" ] && [ ! -x /opt/qemu-oracle/bin/qemu-img ] && [ "$(id -u)" = 0 ]; then
    "$oracle_tool" /opt/qemu-oracle >/dev/null 2>&1 || echo "note: qemu-img 10.0 oracle not installed; testing against 7.2 only" >&2
fi
exit 0
