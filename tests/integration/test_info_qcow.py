"""qemu-img info on qcow (version 1) images: instar against both qemu-imgs.

Images come from qemu-img create, or from a small generator of the
48-byte big-endian header for values qemu-img would not write (see
qemu's block/qcow.c qcow_open for the checks).  Backing files are
references: info reports them and opens nothing.
"""
import struct

import pytest

from conftest import assert_info_same, assert_same, qemu_img, qemu_io

UNSAFE = ("--unsafe-quirks",)


def qcow1(size=1 << 20, cluster_bits=12, l2_bits=9, crypt=0, l1_off=None,
          backing=b"", backing_off=None, backing_size=None, version=1,
          magic=0x514649fb, total=None):
    """A qcow v1 image with an empty L1 table."""
    shift = cluster_bits + l2_bits
    l1_size = (size + (1 << shift) - 1) >> shift if size < 2 ** 63 else 1
    if backing_off is None:
        backing_off = 48 if backing else 0
    if backing_size is None:
        backing_size = len(backing)
    if l1_off is None:
        l1_off = -(-(48 + len(backing)) // (1 << cluster_bits)) << cluster_bits
    h = struct.pack(">IIQIIQBBHIQ", magic, version, backing_off, backing_size, 0,
                    size, cluster_bits, l2_bits, 0, crypt, l1_off)
    data = h + backing
    if total is None:
        total = min(l1_off + l1_size * 8, 1 << 20) if l1_off < (1 << 40) else len(data)
    return data.ljust(max(total, len(data)), b"\0")


@pytest.mark.parametrize("size", ["512", "1M", "10M", "1G", "1T", "1000000"])
def test_qcow_sizes(oracle, tmp_path, size):
    qemu_img("create", "-f", "qcow", "t.qcow", size, cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "t.qcow")
    assert_info_same(oracle, tmp_path, "t.qcow", extra=["-f", "qcow"])


def test_qcow_with_data(oracle, tmp_path):
    qemu_img("create", "-f", "qcow", "t.qcow", "4M", cwd=tmp_path)
    qemu_io("-c", "write -P 0x22 64k 128k", "t.qcow", cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "t.qcow")


@pytest.mark.parametrize("fmt", ["raw", "qcow", "qcow2"])
def test_qcow_backing(oracle, tmp_path, fmt):
    qemu_img("create", "-f", fmt, "base.img", "1M", cwd=tmp_path)
    qemu_img("create", "-f", "qcow", "-b", "base.img", "-F", fmt, "t.qcow", cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "t.qcow")
    (tmp_path / "base.img").unlink()
    assert_info_same(oracle, tmp_path, "t.qcow")


def test_qcow_encrypted(oracle, tmp_path):
    qemu_img("create", "--object", "secret,id=sec0,data=abc", "-f", "qcow", "-o",
             "encrypt.format=aes,encrypt.key-secret=sec0", "t.qcow", "1M", cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "t.qcow")


CASES = {
    "ok": dict(),
    "odd_size": dict(size=1048577),
    "two_bytes": dict(size=2),
    "tiny": dict(size=1),
    "zero": dict(size=0),
    "version2": dict(version=2),
    "version7": dict(version=7),
    "cluster_small": dict(cluster_bits=8),
    "cluster_big": dict(cluster_bits=17),
    "l2_small": dict(l2_bits=5),
    "l2_big": dict(l2_bits=14),
    "crypt_aes": dict(crypt=1),
    "crypt_bad": dict(crypt=2),
    "too_large": dict(size=2 ** 64 - 10),
    "too_large_l1": dict(size=1 << 62, cluster_bits=9, l2_bits=6),
    "l1_read_too_long": dict(size=(2 ** 31 // 8 - 1) << 21),
    "l1_at_limit": dict(l1_off=(1 << 63) - (1 << 30) - 8),
    "l1_past_limit": dict(l1_off=(1 << 63) - (1 << 30) - 7),
    "l1_wraps": dict(l1_off=2 ** 64 - 512),
    "backing": dict(backing=b"base.img"),
    "backing_1023": dict(backing=b"a" * 1023),
    "backing_1024": dict(backing=b"a" * 1024),
    "backing_nul": dict(backing=b"ab\0cd"),
    "backing_empty": dict(backing_off=48, backing_size=0),
    "backing_past_eof": dict(backing_off=1 << 30, backing_size=10),
    "backing_at_limit": dict(backing_off=(1 << 63) - (1 << 30) - 1, backing_size=1),
    "backing_past_limit": dict(backing_off=1 << 63, backing_size=1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_qcow_generated(oracle, tmp_path, case):
    (tmp_path / "t.qcow").write_bytes(qcow1(**CASES[case]))
    for extra in ([], ["-f", "qcow"]):
        _, i = assert_same(oracle, ["info", *extra, "t.qcow"], tmp_path,
                           instar_args=UNSAFE)
        assert_same(oracle, ["info", "--output=json", *extra, "t.qcow"], tmp_path,
                    instar_args=UNSAFE)
        assert len(i.stderr.splitlines()) <= 1


@pytest.mark.parametrize("case", ["tiny", "cluster_big", "l2_small", "crypt_bad",
                                  "too_large", "l1_wraps", "backing_1024"])
def test_qcow_error_messages(oracle, tmp_path, case):
    (tmp_path / "t.qcow").write_bytes(qcow1(**CASES[case]))
    assert_same(oracle, ["info", "-f", "qcow", "t.qcow"], tmp_path, check_stderr=True)


def test_qcow_v2_hint(oracle, tmp_path):
    """-f qcow on a qcow2 image: same message; qemu adds a second line (the
    hint "Try the 'qcow2' driver instead."), which instar leaves out."""
    qemu_img("create", "-f", "qcow2", "t.img", "1M", cwd=tmp_path)
    q, i = assert_same(oracle, ["info", "-f", "qcow", "t.img"], tmp_path)
    assert i.stderr.decode().splitlines()[0].split(": ", 1)[1] == \
        q.stderr.decode().splitlines()[0].split(": ", 1)[1]


@pytest.mark.parametrize("length", [0, 4, 8, 47, 48, 100])
def test_qcow_truncated(oracle, tmp_path, length):
    (tmp_path / "t.qcow").write_bytes(qcow1()[:length])
    for extra in ([], ["-f", "qcow"]):
        _, i = assert_same(oracle, ["info", *extra, "t.qcow"], tmp_path,
                           instar_args=UNSAFE, check_stderr=True)
        assert len(i.stderr.splitlines()) <= 1


def test_qcow_qed_backing_chain(oracle, tmp_path):
    """--backing-chain through qcow and qed layers (qcow stores no backing
    format: the next layer is probed)."""
    qemu_img("create", "-f", "qcow", "base.qcow", "1M", cwd=tmp_path)
    qemu_img("create", "-f", "qed", "-b", "base.qcow", "-F", "qcow", "mid.qed", cwd=tmp_path)
    qemu_img("create", "-f", "qcow", "-b", "mid.qed", "-F", "qed", "top.qcow", cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "top.qcow", chain=True)
    assert_info_same(oracle, tmp_path, "mid.qed", chain=True)
