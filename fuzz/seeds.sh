#!/bin/sh
# seeds.sh OUTDIR - seed corpora for the fuzz targets: small images of
# every format made by qemu-img (and qemu-io for some data), plus the
# hostile corpus of tests/integration/hostile.py, sorted by format into
# OUTDIR/<fmt>/.  Seeds stay small: libFuzzer mutates whole files.
set -eu
out=${1:-build-fuzz/seeds}
here=$(cd "$(dirname "$0")/.." && pwd)
QEMU_IMG=${QEMU_IMG:-/usr/bin/qemu-img}
QEMU_IO=${QEMU_IO:-$(command -v qemu-io || echo /usr/bin/qemu-io)}
PYTHON=${PYTHON:-$(test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

mkdir -p "$out"
out=$(cd "$out" && pwd)
# qemu-img makes a data file named relative to the working directory.
cd "$tmp"
for f in raw qcow2 qcow qed vmdk vpc vhdx vdi luks parallels bochs cloop dmg iso tree; do
    mkdir -p "$out/$f"
done

# mk FMT NAME SIZE [OPTIONS]: an image with a little data written into it.
mk() {
    fmt=$1 name=$2 size=$3
    shift 3
    "$QEMU_IMG" create -q -f "$fmt" "$@" "$tmp/$name" "$size" || return 0
    "$QEMU_IO" -f "$fmt" -c "write -P 0x5a 0 4k" -c "write -P 0xa5 96k 8k" \
        -c "write -z 160k 4k" "$tmp/$name" >/dev/null 2>&1 || true
    cp "$tmp/$name" "$out/$fmt/$name"
}
secret="--object secret,id=s0,data=pw"

mk qcow2 v3.qcow2 256k -o cluster_size=4k
mk qcow2 v2.qcow2 256k -o compat=0.10,cluster_size=4k
mk qcow2 small-cl.qcow2 64k -o cluster_size=512
mk qcow2 l2ext.qcow2 256k -o cluster_size=16k,extended_l2=on
mk qcow2 refbits.qcow2 256k -o cluster_size=4k,refcount_bits=1
mk qcow2 lazy.qcow2 256k -o cluster_size=4k,lazy_refcounts=on
mk qcow2 backed.qcow2 256k -o cluster_size=4k -b base.raw -F raw -u
mk qcow2 zstd.qcow2 256k -o cluster_size=4k,compression_type=zstd
mk qcow2 datafile.qcow2 256k -o cluster_size=4k,data_file=data.raw,data_file_raw=on
"$QEMU_IMG" convert -q -c -O qcow2 -o cluster_size=4k "$out/qcow2/v3.qcow2" "$out/qcow2/compressed.qcow2" || true
"$QEMU_IMG" convert -q -c -O qcow2 -o cluster_size=4k,compression_type=zstd "$out/qcow2/v3.qcow2" "$out/qcow2/compressed-zstd.qcow2" || true
cp "$out/qcow2/v3.qcow2" "$tmp/snap.qcow2"
"$QEMU_IMG" snapshot -c s1 "$tmp/snap.qcow2" && "$QEMU_IMG" snapshot -c s2 "$tmp/snap.qcow2" && cp "$tmp/snap.qcow2" "$out/qcow2/" || true
cp "$out/qcow2/v3.qcow2" "$tmp/bm.qcow2"
"$QEMU_IMG" bitmap --add "$tmp/bm.qcow2" b0 2>/dev/null && cp "$tmp/bm.qcow2" "$out/qcow2/" || true
"$QEMU_IMG" create -q -f qcow2 $secret -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=4k "$out/qcow2/luks.qcow2" 64k || true

mk qcow small.qcow 256k
"$QEMU_IMG" convert -q -c -O qcow "$out/qcow/small.qcow" "$out/qcow/compressed.qcow" || true
mk qcow backed.qcow 256k -b base.raw -F raw -u
mk qed small.qed 256k -o cluster_size=4k,table_size=1
mk qed backed.qed 256k -o cluster_size=4k,table_size=1 -b base.raw -F raw -u
mk vmdk sparse.vmdk 256k
mk vmdk stream.vmdk 256k -o subformat=streamOptimized
mk vmdk flat.vmdk 64k -o subformat=monolithicFlat
cp "$tmp/flat-flat.vmdk" "$out/raw/flat-extent.raw" 2>/dev/null || true
mk vmdk split.vmdk 64k -o subformat=twoGbMaxExtentSparse
mk vmdk v3.vmdk 256k -o compat6=on
mk vpc dynamic.vpc 256k
mk vpc fixed.vpc 64k -o subformat=fixed
mk vhdx dynamic.vhdx 4M -o block_size=1M,log_size=1M
# Its regions sit at 1 MiB boundaries (BAT at 2 MiB, metadata at 3 MiB): the
# smallest useful vhdx is 4 MiB, so keep that much of it.
truncate -s 4M "$out/vhdx/dynamic.vhdx"
mk vdi dynamic.vdi 256k
mk vdi static.vdi 64k -o static=on
mk parallels small.parallels 256k -o cluster_size=4k
"$QEMU_IMG" create -q -f luks $secret -o key-secret=s0,iter-time=10 "$out/luks/small.luks" 64k || true

# A raw disk with an MBR (safe mode reads raw only with a partition table).
"$PYTHON" - "$out/raw/mbr.raw" <<'PY'
import struct, sys
mbr = bytearray(64 * 1024)
mbr[446:462] = bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 1, 127)
mbr[510:512] = b"\x55\xaa"
open(sys.argv[1], "wb").write(mbr)
PY

# bochs, cloop, dmg, iso (qemu-img cannot make them) and the hostile corpus.
"$PYTHON" "$here/tests/integration/hostile.py" --seeds "$out"
# libFuzzer mutates whole inputs (and the smoke run caps them at 256 KiB,
# 4 MiB for vhdx): big seeds only slow it down.
find "$out" -type f -size +1024k ! -path '*/vhdx/*' -delete
find "$out/vhdx" -type f -size +4096k -delete
echo "seeds in $out: $(find "$out" -type f | wc -l) files"
