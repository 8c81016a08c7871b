"""qemu-img info on QED images: instar against both qemu-imgs.

Images come from qemu-img create; hostile variants patch the 64-byte
header of a real image (qemu's block/qed.c bdrv_qed_do_open order).
Backing files are references: info reports them and opens nothing.
"""
import struct

import pytest

from conftest import assert_info_same, assert_same, qemu_img, qemu_io

UNSAFE = ("--unsafe-quirks",)


def make(tmp_path, name, size="1M", *opts):
    qemu_img("create", "-f", "qed", *opts, name, size, cwd=tmp_path)
    return tmp_path / name


def patch(path, offset, fmt, value):
    data = bytearray(path.read_bytes())
    values = value if isinstance(value, tuple) else (value,)
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("size", ["512", "1M", "100M", "1G", "10T"])
def test_qed_sizes(oracle, tmp_path, size):
    make(tmp_path, "t.qed", size)
    assert_info_same(oracle, tmp_path, "t.qed")


@pytest.mark.parametrize("cluster,table", [
    ("4096", "2"), ("4096", "16"), ("65536", "1"), ("65536", "4"),
    ("1M", "8"), ("2M", "2"), ("4M", "1"),
])
def test_qed_cluster_and_table_size(oracle, tmp_path, cluster, table):
    # table_size=1 makes an image qemu itself cannot open (its table
    # offset check rejects a one-cluster table): instar agrees.
    make(tmp_path, "t.qed", "16M", "-o", f"cluster_size={cluster},table_size={table}")
    assert_info_same(oracle, tmp_path, "t.qed")
    assert_info_same(oracle, tmp_path, "t.qed", extra=["-f", "qed"])


@pytest.mark.parametrize("fmt", [None, "raw", "qed", "qcow2"])
def test_qed_backing(oracle, tmp_path, fmt):
    qemu_img("create", "-f", fmt or "raw", "base.img", "1M", cwd=tmp_path)
    opts = ["-b", "base.img"] + (["-F", fmt] if fmt else ["-F", "raw"])
    make(tmp_path, "t.qed", "2M", *opts)
    assert_info_same(oracle, tmp_path, "t.qed")
    # The backing file is never opened by info: removing it changes nothing.
    (tmp_path / "base.img").unlink()
    assert_info_same(oracle, tmp_path, "t.qed")


def test_qed_backing_names(oracle, tmp_path):
    for name in ["sub/dir/base.img", "/nonexistent/abs.img", "a b.img", "x:y.img"]:
        qemu_img("create", "-f", "qed", "-u", "-b", name, "-F", "raw", "t.qed", "1M",
                 cwd=tmp_path)
        assert_info_same(oracle, tmp_path, "t.qed")


def test_qed_with_data_and_dirty(oracle, tmp_path):
    p = make(tmp_path, "t.qed", "4M")
    qemu_io("-c", "write -P 0x11 0 128k", "t.qed", cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "t.qed")
    # QED_F_NEED_CHECK: read-only info checks nothing (and qemu does not
    # report the flag as dirty).
    patch(p, 16, "<Q", 0x2)
    assert_info_same(oracle, tmp_path, "t.qed")


HOSTILE = {
    "magic": (0, "<I", 0x00444552),
    "features": (16, "<Q", 0x8),
    "features_high": (16, "<Q", 1 << 63),
    "cluster_small": (4, "<I", 2048),
    "cluster_big": (4, "<I", 128 << 20),
    "cluster_not_pow2": (4, "<I", 65536 + 4096),
    "table_zero": (8, "<I", 0),
    "table_big": (8, "<I", 32),
    "table_not_pow2": (8, "<I", 3),
    "image_unaligned": (48, "<Q", 1000),
    "image_huge": (48, "<Q", 1 << 62),
    "l1_unaligned": (40, "<Q", 65536 + 512),
    "l1_in_header": (40, "<Q", 0),
    "l1_beyond_eof": (40, "<Q", 1 << 40),
    "l1_wraps": (40, "<Q", 2 ** 64 - 65536),
    "header_size_huge": (12, "<I", 0xffffffff),
    "header_size_zero": (12, "<I", 0),
    "backing_flag_no_name": (16, "<Q", 0x1),
    "compat_features": (24, "<Q", 0xff),
    "autoclear_features": (32, "<Q", 0xff),
    # 64 MiB clusters and 16-cluster tables: qemu's maximum image size
    # wraps to 0 in 64 bits, so every size is invalid.
    "max_size_wraps": (4, "<II", (64 << 20, 16)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_qed_hostile(oracle, tmp_path, case):
    p = make(tmp_path, "t.qed", "2M")
    patch(p, *HOSTILE[case])
    for extra in ([], ["-f", "qed"]):
        _, i = assert_same(oracle, ["info", *extra, "t.qed"], tmp_path,
                           instar_args=UNSAFE, check_stderr=True)
        assert_same(oracle, ["info", "--output=json", *extra, "t.qed"], tmp_path,
                    instar_args=UNSAFE)
        assert len(i.stderr.splitlines()) <= 1


@pytest.mark.parametrize("off,size", [
    (64, 4095),             # longest name qemu accepts
    (64, 4096),             # too long for bs->backing_file
    (0xffff0000, 16),       # beyond the header clusters
    (65536 - 8, 8),         # ends exactly at the header's end
    (65536 - 8, 9),         # one byte past it
    (60000, 4000),          # past end of file: reads as zeros
])
def test_qed_backing_hostile(oracle, tmp_path, off, size):
    p = make(tmp_path, "t.qed", "2M")
    data = bytearray(p.read_bytes())
    struct.pack_into("<Q", data, 16, 0x1)
    struct.pack_into("<II", data, 56, off, size)
    name = b"b" * 8000
    if off < len(data):
        data[off:off + min(size, len(data) - off)] = name[:min(size, len(data) - off)]
    p.write_bytes(bytes(data))
    for extra in ([], ["-f", "qed"]):
        _, i = assert_same(oracle, ["info", *extra, "t.qed"], tmp_path,
                           instar_args=UNSAFE, check_stderr=True)
        assert_same(oracle, ["info", "--output=json", *extra, "t.qed"], tmp_path,
                    instar_args=UNSAFE)


@pytest.mark.parametrize("length", [0, 4, 40, 63, 64, 4096, 65536])
def test_qed_truncated(oracle, tmp_path, length):
    p = make(tmp_path, "t.qed", "2M")
    p.write_bytes(p.read_bytes()[:length])
    for extra in ([], ["-f", "qed"]):
        _, i = assert_same(oracle, ["info", *extra, "t.qed"], tmp_path,
                           instar_args=UNSAFE, check_stderr=True)
        assert len(i.stderr.splitlines()) <= 1
