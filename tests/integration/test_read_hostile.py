"""Hostile images through the read layer: bounded, a clear error where
qemu-img fails, the same answer where it does not."""
import struct
import zlib

import pytest

from conftest import assert_same, instar, qemu_img, qemu_io, run, QEMU_IMG

MB = 1 << 20


def l2_table_offset(path):
    with open(path, "rb") as f:
        hdr = f.read(104)
        cluster_bits = struct.unpack(">I", hdr[20:24])[0]
        l1_off = struct.unpack(">Q", hdr[40:48])[0]
        f.seek(l1_off)
        l1e = struct.unpack(">Q", f.read(8))[0]
    return l1e & 0x00fffffffffffe00, 1 << cluster_bits, l1_off


def patch_l2(path, index, value):
    l2, _, _ = l2_table_offset(path)
    with open(path, "r+b") as f:
        f.seek(l2 + 8 * index)
        f.write(struct.pack(">Q", value))


def read_l2(path, index):
    l2, _, _ = l2_table_offset(path)
    with open(path, "rb") as f:
        f.seek(l2 + 8 * index)
        return struct.unpack(">Q", f.read(8))[0]


def base_image(tmp_path, compressed=False):
    qemu_img("create", "-q", "-f", "qcow2", "src.qcow2", "8M", cwd=tmp_path)
    qemu_io("-c", "write -P 0x5a 0 1M", "-c", "write -P 0x11 4M 64k", "src.qcow2",
            cwd=tmp_path)
    if compressed:
        qemu_img("convert", "-c", "-O", "qcow2", "src.qcow2", "h.qcow2", cwd=tmp_path)
    else:
        qemu_img("convert", "-O", "qcow2", "src.qcow2", "h.qcow2", cwd=tmp_path)
    return "h.qcow2"


def same_outcome(oracle, tmp_path, name):
    """map (JSON) and compare-with-itself: same stdout and exit status as
    qemu-img; instar's errors are one line."""
    for args in (["map", "--output=json", name], ["compare", name, name]):
        _, i = assert_same(oracle, args, tmp_path)
        assert len(i.stderr.decode().strip().splitlines()) <= 1, i.stderr


def test_l2_entry_beyond_eof(tmp_path, oracle):
    name = base_image(tmp_path)
    patch_l2(tmp_path / name, 1, (1 << 40) | (1 << 63))
    same_outcome(oracle, tmp_path, name)


def test_l2_table_beyond_eof(tmp_path, oracle):
    name = base_image(tmp_path)
    _, _, l1_off = l2_table_offset(tmp_path / name)
    with open(tmp_path / name, "r+b") as f:
        f.seek(l1_off)
        f.write(struct.pack(">Q", (1 << 40) | (1 << 63)))
    same_outcome(oracle, tmp_path, name)


def test_unaligned_l2_entry(tmp_path, oracle):
    name = base_image(tmp_path)
    e = read_l2(tmp_path / name, 2)
    patch_l2(tmp_path / name, 2, e + 512)
    for args in (["map", "--output=json", name], ["compare", name, name]):
        q = run([oracle.path, *args], cwd=tmp_path)
        i = instar(*args, cwd=tmp_path, version=oracle.version)
        assert i.returncode == q.returncode and i.returncode != 0
        assert len(i.stderr.decode().strip().splitlines()) == 1, i.stderr


def test_compressed_cluster_inflating_past_its_size(tmp_path, oracle):
    """A compressed cluster whose stream holds twice the cluster: reading
    stops at the cluster's end (qemu keeps the first cluster too)."""
    name = base_image(tmp_path, compressed=True)
    e = read_l2(tmp_path / name, 0)
    _, cs, _ = l2_table_offset(tmp_path / name)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -12)
    data = bomb.compress(b"\x42" * (cs * 64)) + bomb.flush()
    with open(tmp_path / name, "ab") as f:
        f.seek(0, 2)
        off = f.tell()
        off_al = (off + 511) // 512 * 512
        f.write(b"\0" * (off_al - off) + data + b"\0" * 512)
    shift = 62 - (cs.bit_length() - 1 - 8)
    nsect = (len(data) + 511) // 512
    nsect = min(nsect, (1 << (cs.bit_length() - 1 - 8)))
    patch_l2(tmp_path / name, 0, (1 << 62) | ((nsect - 1) << shift) | off_al)
    same_outcome(oracle, tmp_path, name)
    qemu_img("convert", "-O", "raw", name, "flat.raw", cwd=tmp_path)
    r = instar("compare", "-F", "raw", name, "flat.raw", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_corrupt_compressed_stream(tmp_path, oracle):
    name = base_image(tmp_path, compressed=True)
    e = read_l2(tmp_path / name, 0)
    _, cs, _ = l2_table_offset(tmp_path / name)
    shift = 62 - (cs.bit_length() - 1 - 8)
    coff = e & ((1 << shift) - 1)
    with open(tmp_path / name, "r+b") as f:
        f.seek(coff)
        f.write(b"\xff" * 64)
    for args in (["compare", name, name],):
        q = run([oracle.path, *args], cwd=tmp_path)
        i = instar(*args, cwd=tmp_path, version=oracle.version)
        assert (i.returncode, i.stdout) == (q.returncode, q.stdout)
        assert i.returncode == 4


@pytest.mark.parametrize("n", [1, 2, 3])
def test_backing_loops_are_refused_when_reading(tmp_path, n):
    names = [f"l{i}.qcow2" for i in range(n)]
    for i, name in enumerate(names):
        target = names[(i + 1) % n] if n > 1 else "./l0.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", target, "-F", "qcow2",
                 name, "1M", cwd=tmp_path)
    for args in (["map", names[0]], ["compare", names[0], names[0]]):
        r = instar(*args, cwd=tmp_path)
        assert r.returncode in (1, 2)
        err = r.stderr.decode()
        assert len(err.strip().splitlines()) == 1 and "loop" in err, err


def test_chain_deeper_than_limit_when_reading(tmp_path):
    qemu_img("create", "-q", "-f", "qcow2", "c0.qcow2", "1M", cwd=tmp_path)
    for i in range(1, 20):
        qemu_img("create", "-q", "-f", "qcow2", "-b", f"c{i-1}.qcow2", "-F", "qcow2",
                 f"c{i}.qcow2", cwd=tmp_path)
    r = instar("map", "c19.qcow2", cwd=tmp_path)
    assert r.returncode == 1 and b"deeper than the limit" in r.stderr
    r = instar("map", "--max-depth", "25", "c19.qcow2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
