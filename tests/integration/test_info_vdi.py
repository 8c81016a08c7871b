"""qemu-img info on VDI images: instar against both qemu-imgs.

Images come from qemu-img create; hostile variants patch the header of
a real image (see qemu's block/vdi.c for the checks and their order).
"""
import json
import struct

import pytest

from conftest import assert_info_same, assert_same, instar, qemu_img, qemu_io

HEADER = 512
UNSAFE = ("--unsafe-quirks",)


def make(tmp_path, name, size, static=False):
    opts = ["-o", "static=on"] if static else []
    qemu_img("create", "-f", "vdi", *opts, name, str(size), cwd=tmp_path)
    return tmp_path / name


def patch(path, offset, fmt, value):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("size", ["512", "100000", "1M", "10M", "1G", "2T"])
@pytest.mark.parametrize("static", [False, True])
def test_vdi_sizes(oracle, tmp_path, size, static):
    if static and size in ("1G", "2T"):
        pytest.skip("static images allocate the whole disk")
    make(tmp_path, "t.vdi", size, static)
    assert_info_same(oracle, tmp_path, "t.vdi")
    assert_info_same(oracle, tmp_path, "t.vdi", extra=["-f", "vdi"])


def test_vdi_with_data(oracle, tmp_path):
    make(tmp_path, "t.vdi", "4M")
    qemu_io("-c", "write -P 0x5a 1M 64k", "t.vdi", cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "t.vdi")


def test_vdi_odd_disk_size_rounds_up(oracle, tmp_path):
    # VBoxManage convertfromraw writes odd sizes; qemu rounds up to a sector.
    p = make(tmp_path, "t.vdi", "1M")
    patch(p, 368, "<Q", 1048576 - 100)
    assert_info_same(oracle, tmp_path, "t.vdi")


def test_vdi_extra_detail(tmp_path):
    """--extra-detail adds instar's own VDI section (qemu-img has none)."""
    make(tmp_path, "t.vdi", "10M")
    r = instar("info", "--extra-detail", "--output=json", "t.vdi", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    spec = json.loads(r.stdout)["format-specific"]
    assert spec["type"] == "vdi"
    d = spec["data"]
    assert d["image-type"] == "dynamic"
    assert d["block-size"] == 1048576
    assert d["blocks-in-image"] == 10
    assert d["blocks-allocated"] == 0
    assert len(d["uuid"]) == 36
    make(tmp_path, "s.vdi", "2M", static=True)
    r = instar("info", "--extra-detail", "--output=json", "s.vdi", cwd=tmp_path)
    d = json.loads(r.stdout)["format-specific"]["data"]
    assert d["image-type"] == "static" and d["blocks-allocated"] == 2
    # Without the flag the output has no format-specific section.
    r = instar("info", "--output=json", "t.vdi", cwd=tmp_path)
    assert "format-specific\": {\n        \"type\": \"vdi\"" not in r.stdout.decode()


# (offset, struct format, value): each breaks one of qemu's checks.
HOSTILE = {
    "signature": (64, "<I", 0xbeda1000),
    "version": (68, "<I", 0x00010000),
    "version_major": (68, "<I", 0x00020001),
    "bmap_unaligned": (340, "<I", 0x201),
    "data_unaligned": (344, "<I", 0x1001),
    "sector_size": (360, "<I", 4096),
    "block_size": (376, "<I", 4096),
    "block_size_zero": (376, "<I", 0),
    "disk_too_big_for_bmap": (368, "<Q", 3 << 20),
    "disk_max": (368, "<Q", 0x3fffffff * (1 << 20) + 1),
    "disk_huge": (368, "<Q", 2 ** 64 - 1),
    "link_uuid": (424, "<B", 1),
    "parent_uuid": (440, "<B", 1),
    "too_many_blocks": (384, "<I", 0x40000000),
    "all_blocks": (384, "<I", 0xffffffff),
    "bmap_beyond_eof": (340, "<I", 0xfffffe00),
    "data_beyond_eof": (344, "<I", 0xfffffe00),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_vdi_hostile(oracle, tmp_path, case):
    p = make(tmp_path, "t.vdi", "2M")
    patch(p, *HOSTILE[case])
    # A damaged signature no longer probes: qemu-img falls back to raw,
    # which instar does only with --unsafe-quirks.
    for extra in ([], ["-f", "vdi"]):
        q, i = assert_same(oracle, ["info", *extra, "t.vdi"], tmp_path,
                           instar_args=UNSAFE, check_stderr=True)
        assert_same(oracle, ["info", "--output=json", *extra, "t.vdi"], tmp_path,
                    instar_args=UNSAFE)
        assert len(i.stderr.splitlines()) <= 1


@pytest.mark.parametrize("length", [0, 1, 63, 64, 100, 400, 511])
def test_vdi_truncated(oracle, tmp_path, length):
    p = make(tmp_path, "t.vdi", "2M")
    p.write_bytes(p.read_bytes()[:length])
    # qemu probes a zero-padded buffer; with -f it reads zeros past the end.
    _, i = assert_same(oracle, ["info", "-f", "vdi", "t.vdi"], tmp_path, check_stderr=True)
    assert len(i.stderr.splitlines()) <= 1
    assert_same(oracle, ["info", "t.vdi"], tmp_path, instar_args=UNSAFE)
