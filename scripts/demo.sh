#!/bin/sh
# make demo: create a small qcow2 image and show what instar says about it.
set -e
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
qemu-img create -q -f qcow2 "$dir/demo.qcow2" 1G
qemu-io -c 'write -P 0x5a 0 4M' "$dir/demo.qcow2" >/dev/null
echo "\$ instar info demo.qcow2"
cd "$dir" && "$OLDPWD/instar" info demo.qcow2
