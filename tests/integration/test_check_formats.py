"""instar check on vdi, vpc, vhdx and vmdk.

Images come from qemu-img create/convert and qemu-io, then small Python
patchers corrupt one thing at a time.  Each case runs in both modes:

- --unsafe-quirks: byte-for-byte qemu-img (stdout, exit status, stderr
  with the program name normalised), human and JSON, against both oracles;
- the safe default: asserted against what the corruption is (counters in
  the fixed JSON schema, exit 2 for corruptions, 3 for leaks only).  On
  clean images the safe human output equals qemu-img's too.

Known divergences (safe mode, by design): corruptions qemu-img does not
look for (footer copies, checksums of the copies qemu ignores, overlapping
blocks, blocks past EOF in vdi, leaks) make instar exit 2 or 3 where
qemu-img exits 0; vpc is checked at all (qemu-img: not supported, 63).
Unsafe mode: a VHDX whose log needs replaying cannot be repaired
(`check -r all`): instar does not replay VHDX logs; qemu-img does.
"""
import json
import shutil
import struct

import pytest

from conftest import INSTAR, QEMU_IMG, assert_same, instar, qemu_img, qemu_io, run
from test_info_vhdx import (BAT_GUID, META_GUID, arm_log, current_header,
                            flip_at, get_bat, get_header, log_entry,
                            put_bat, put_header, read_at, region, write_at,
                            zero_desc)

MiB = 1 << 20
UNSAFE = ["--unsafe-quirks"]
COUNTERS = ["check-errors", "image-end-offset", "corruptions", "leaks",
            "corruptions-fixed", "leaks-fixed", "total-clusters",
            "allocated-clusters", "fragmented-clusters", "compressed-clusters"]


# ---------------------------------------------------------------- helpers

def create(tmp, fmt, name, size, opts="", writes=()):
    args = ["create", "-q", "-f", fmt]
    if opts:
        args += ["-o", opts]
    qemu_img(*args, name, str(size), cwd=tmp)
    cmds = []
    for i, (off, ln) in enumerate(writes):
        cmds += ["-c", f"write -P {0x21 + i} {off} {ln}"]
    if cmds:
        qemu_io("-f", fmt, *cmds, name, cwd=tmp)
    return tmp / name


def unsafe_same(oracle, tmp, name, extra=()):
    """--unsafe-quirks: qemu-img's output exactly, human and JSON."""
    assert_same(oracle, ["check", *extra, name], tmp, instar_args=UNSAFE,
                check_stderr=True)
    assert_same(oracle, ["check", *extra, "--output=json", name], tmp,
                instar_args=UNSAFE, check_stderr=True)


def safe_human_same(oracle, tmp, name, extra=()):
    """A clean image: the safe default prints what qemu-img prints."""
    assert_same(oracle, ["check", *extra, name], tmp)


def safe(tmp, name, *args):
    """The safe default: (exit status, counters, stderr lines)."""
    r = instar("check", *args, "--output=json", name, cwd=tmp)
    d = json.loads(r.stdout) if r.stdout.strip() else {}
    if d:
        assert all(k in d for k in COUNTERS), d
    return r.returncode, d, r.stderr.decode().splitlines()


def expect_corrupt(tmp, name, corruptions=1, leaks=None, pattern=None):
    rc, d, err = safe(tmp, name)
    assert rc == 2, (rc, d, err)
    assert d["corruptions"] == corruptions, (d, err)
    if leaks is not None:
        assert d["leaks"] == leaks, (d, err)
    if pattern:
        assert any(pattern in ln for ln in err), err
    # Every problem has its line.
    assert len(err) >= corruptions, err
    # The human report says the same.
    r = instar("check", name, cwd=tmp)
    assert r.returncode == 2
    assert f"{corruptions} errors were found on the image." in r.stdout.decode()
    return d, err


def expect_clean(tmp, name):
    rc, d, err = safe(tmp, name)
    assert rc == 0 and d["corruptions"] == 0 and d["leaks"] == 0, (rc, d, err)
    assert err == []


def patch(path, offset, fmt, *values):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def unpack(path, offset, fmt):
    return struct.unpack_from(fmt, path.read_bytes(), offset)


# ---------------------------------------------------------------- vdi

VDI_BMAP, VDI_DATA, VDI_BLOCKS, VDI_ALLOC = 340, 344, 384, 388


def vdi(tmp, static=False, size="8M", writes=((0, "64k"), ("3M", "1M"), ("5M", "4k"))):
    return create(tmp, "vdi", "t.vdi", size, "static=on" if static else "",
                  () if static else writes)


def vdi_entry(p, i):
    bmap = unpack(p, VDI_BMAP, "<I")[0]
    return unpack(p, bmap + 4 * i, "<I")[0]


def set_vdi_entry(p, i, v):
    bmap = unpack(p, VDI_BMAP, "<I")[0]
    patch(p, bmap + 4 * i, "<I", v)


@pytest.mark.parametrize("kind", ["empty", "data", "static"])
def test_vdi_clean(oracle, tmp_path, kind):
    if kind == "empty":
        create(tmp_path, "vdi", "t.vdi", "5M")
    else:
        vdi(tmp_path, static=kind == "static")
    unsafe_same(oracle, tmp_path, "t.vdi")
    safe_human_same(oracle, tmp_path, "t.vdi")
    expect_clean(tmp_path, "t.vdi")


def test_vdi_repair_not_supported(oracle, tmp_path):
    vdi(tmp_path)
    for mode in ("leaks", "all"):
        shutil.copy(tmp_path / "t.vdi", tmp_path / "c.vdi")
        unsafe_same(oracle, tmp_path, "c.vdi", extra=["-r", mode])
        r = instar("check", "-r", mode, "c.vdi", cwd=tmp_path)
        assert r.returncode == 63 and "does not support checks" in r.stderr.decode()


def test_vdi_entry_too_large(oracle, tmp_path):
    p = vdi(tmp_path)
    set_vdi_entry(p, 1, 1000)
    unsafe_same(oracle, tmp_path, "t.vdi")
    expect_corrupt(tmp_path, "t.vdi", 1, pattern="block index 1 too large, is 1000")


def test_vdi_block_used_twice(oracle, tmp_path):
    p = vdi(tmp_path)
    set_vdi_entry(p, 7, vdi_entry(p, 0))
    unsafe_same(oracle, tmp_path, "t.vdi")
    expect_corrupt(tmp_path, "t.vdi", 2, pattern="also used by")


def test_vdi_allocated_count_wrong(oracle, tmp_path):
    p = vdi(tmp_path)
    patch(p, VDI_ALLOC, "<I", 9)
    unsafe_same(oracle, tmp_path, "t.vdi")
    expect_corrupt(tmp_path, "t.vdi", 1, pattern="allocated blocks mismatch, is 3, should be 9")


def test_vdi_block_past_eof(oracle, tmp_path):
    """qemu-img does not notice; the safe check does."""
    p = vdi(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[:len(data) - MiB])          # drop the last block
    unsafe_same(oracle, tmp_path, "t.vdi")
    expect_corrupt(tmp_path, "t.vdi", 1, pattern="after the end of the file")


def test_vdi_leaked_block(oracle, tmp_path):
    p = vdi(tmp_path)
    set_vdi_entry(p, 5, 0xffffffff)                 # unreference block 2
    patch(p, VDI_ALLOC, "<I", 2)
    unsafe_same(oracle, tmp_path, "t.vdi")
    rc, d, err = safe(tmp_path, "t.vdi")
    assert rc == 3 and d["leaks"] == 1 and d["corruptions"] == 0, (d, err)
    assert any("Leaked block 2" in ln for ln in err)


def test_vdi_bmap_overlaps_data(oracle, tmp_path):
    p = vdi(tmp_path)
    patch(p, VDI_DATA, "<I", 512)
    unsafe_same(oracle, tmp_path, "t.vdi")
    rc, d, err = safe(tmp_path, "t.vdi")
    assert rc == 2 and d["corruptions"] >= 1
    assert any("overlaps the header or the block map" in ln for ln in err)


def test_vdi_garbage_map(oracle, tmp_path):
    p = vdi(tmp_path, size="64M")
    bmap = unpack(p, VDI_BMAP, "<I")[0]
    data = bytearray(p.read_bytes())
    for i in range(64):
        data[bmap + 4 * i:bmap + 4 * i + 4] = struct.pack("<I", (i * 2654435761) % 80)
    p.write_bytes(bytes(data))
    unsafe_same(oracle, tmp_path, "t.vdi")
    rc, d, err = safe(tmp_path, "t.vdi")
    assert rc == 2 and d["corruptions"] > 1


def test_vdi_extra_detail_statistics(tmp_path):
    vdi(tmp_path)
    r = instar("--extra-detail", "check", "--output=json", "t.vdi", cwd=tmp_path)
    d = json.loads(r.stdout)
    assert r.returncode == 0
    assert d["total-clusters"] == 8 and d["allocated-clusters"] == 3
    assert d["image-end-offset"] == (tmp_path / "t.vdi").stat().st_size


# ---------------------------------------------------------------- vpc

F_CHECKSUM = 64


def vhd_checksum(buf, skip):
    return ~sum(b for i, b in enumerate(buf) if not skip <= i < skip + 4) & 0xffffffff


def fix_footer(buf):
    b = bytearray(buf)
    struct.pack_into(">I", b, F_CHECKSUM, vhd_checksum(b, F_CHECKSUM))
    return bytes(b)


def vhd(tmp, writes=((0, "64k"), ("3M", "64k"), ("9M", "2M"))):
    return create(tmp, "vpc", "t.vhd", "16M", "", writes)


def vhd_layout(p):
    data = p.read_bytes()
    dyn = struct.unpack_from(">Q", data, 16)[0]
    bat, entries, bsize = struct.unpack_from(">QII", data, dyn + 16)
    return dyn, bat, entries, bsize


def vhd_bat(p, i):
    _, bat, _, _ = vhd_layout(p)
    return unpack(p, bat + 4 * i, ">I")[0]


def set_vhd_bat(p, i, v):
    _, bat, _, _ = vhd_layout(p)
    patch(p, bat + 4 * i, ">I", v)


def test_vpc_clean(oracle, tmp_path):
    vhd(tmp_path)
    unsafe_same(oracle, tmp_path, "t.vhd")          # qemu: not supported
    expect_clean(tmp_path, "t.vhd")
    rc, d, _ = safe(tmp_path, "t.vhd")
    # 16M rounds up to a CHS geometry: 9 BAT entries of 2 MiB.
    assert d["allocated-clusters"] == 4 and d["total-clusters"] == 9
    assert d["image-end-offset"] == (tmp_path / "t.vhd").stat().st_size


def test_vpc_clean_empty_and_fixed(oracle, tmp_path):
    create(tmp_path, "vpc", "e.vhd", "4M")
    create(tmp_path, "vpc", "f.vhd", "4M", "subformat=fixed")
    for n in ("e.vhd", "f.vhd"):
        unsafe_same(oracle, tmp_path, n)
        expect_clean(tmp_path, n)


def test_vpc_repair_refused(tmp_path):
    vhd(tmp_path)
    r = instar("check", "-r", "all", "t.vhd", cwd=tmp_path)
    assert r.returncode == 63, r.stderr


def test_vpc_end_footer_checksum(oracle, tmp_path):
    p = vhd(tmp_path)
    size = p.stat().st_size
    patch(p, size - 512 + F_CHECKSUM, ">I", 0x12345678)
    unsafe_same(oracle, tmp_path, "t.vhd")
    expect_corrupt(tmp_path, "t.vhd", 1, pattern="footer at the end of the file")


def test_vpc_footer_copies_differ(oracle, tmp_path):
    p = vhd(tmp_path)
    data = bytearray(p.read_bytes())
    end = len(data) - 512
    foot = bytearray(data[end:])
    foot[0x48] ^= 0xff                                # a byte of the UUID
    data[end:] = fix_footer(foot)
    p.write_bytes(bytes(data))
    unsafe_same(oracle, tmp_path, "t.vhd")
    expect_corrupt(tmp_path, "t.vhd", 1, pattern="differs from the footer")


def test_vpc_front_footer_checksum(oracle, tmp_path):
    """qemu refuses to open it; the safe check reports it."""
    p = vhd(tmp_path)
    patch(p, F_CHECKSUM, ">I", 0x12345678)
    unsafe_same(oracle, tmp_path, "t.vhd")
    d, err = expect_corrupt(tmp_path, "t.vhd", 2, pattern="checksum is wrong")


def test_vpc_dynamic_header_checksum(oracle, tmp_path):
    p = vhd(tmp_path)
    dyn, _, _, _ = vhd_layout(p)
    patch(p, dyn + 36, ">I", 0x1234)
    unsafe_same(oracle, tmp_path, "t.vhd")
    expect_corrupt(tmp_path, "t.vhd", 1, pattern="dynamic header checksum")


def test_vpc_block_past_eof(oracle, tmp_path):
    """qemu refuses to open it (truncated image); the safe check counts."""
    p = vhd(tmp_path)
    set_vhd_bat(p, 2, 0x100000)
    unsafe_same(oracle, tmp_path, "t.vhd")
    expect_corrupt(tmp_path, "t.vhd", 1, pattern="points after the end of the data")


def test_vpc_blocks_overlap(oracle, tmp_path):
    p = vhd(tmp_path)
    set_vhd_bat(p, 5, vhd_bat(p, 0))
    unsafe_same(oracle, tmp_path, "t.vhd")
    expect_corrupt(tmp_path, "t.vhd", 1, pattern="overlaps block")


def test_vpc_block_over_metadata(oracle, tmp_path):
    p = vhd(tmp_path)
    _, bat, _, _ = vhd_layout(p)
    set_vhd_bat(p, 0, bat // 512)
    unsafe_same(oracle, tmp_path, "t.vhd")
    rc, d, err = safe(tmp_path, "t.vhd")
    assert rc == 2 and any("overlaps the image's metadata" in ln for ln in err), err


def test_vpc_leaked_block(oracle, tmp_path):
    p = vhd(tmp_path)
    set_vhd_bat(p, 1, 0xffffffff)
    unsafe_same(oracle, tmp_path, "t.vhd")
    rc, d, err = safe(tmp_path, "t.vhd")
    assert rc == 3 and d["leaks"] == 1 and d["corruptions"] == 0, (d, err)


def test_vpc_fixed_truncated(tmp_path):
    p = create(tmp_path, "vpc", "f.vhd", "4M", "subformat=fixed")
    data = p.read_bytes()
    p.write_bytes(data[:MiB] + data[-512:])
    rc, d, err = safe(tmp_path, "f.vhd", "-f", "vpc")
    assert rc == 2 and any("fixed disk" in ln for ln in err), err


# ---------------------------------------------------------------- vhdx

def vhdx(tmp, opts="", size=64 * MiB, writes=((0, "1M"), ("40M", "3M"))):
    return create(tmp, "vhdx", "t.vhdx", size, opts, writes)


def present(p):
    """(index, entry) of the fully present BAT entries."""
    out = []
    i = 0
    while True:
        e = get_bat(p, i)
        if i > 4096:
            break
        if e & 7 == 6:
            out.append((i, e))
        i += 1
    return out


@pytest.mark.parametrize("opts", ["", "block_size=1M", "subformat=fixed",
                                  "subformat=fixed,block_state_zero=off",
                                  "log_size=4M,block_size=2M"])
def test_vhdx_clean(oracle, tmp_path, opts):
    vhdx(tmp_path, opts)
    unsafe_same(oracle, tmp_path, "t.vhdx")
    safe_human_same(oracle, tmp_path, "t.vhdx")
    expect_clean(tmp_path, "t.vhdx")


def test_vhdx_repair_clean(oracle, tmp_path):
    """-r on a clean image: nothing to do (qemu also rewrites the headers
    when it opens read-write; the report is the same)."""
    vhdx(tmp_path)
    for tool in ("q", "i"):
        shutil.copy(tmp_path / "t.vhdx", tmp_path / f"{tool}.vhdx")
    q = run([oracle.path, "check", "-r", "all", "q.vhdx"], cwd=tmp_path)
    i = instar("check", "-r", "all", "i.vhdx", cwd=tmp_path, version=oracle.version)
    assert (i.stdout, i.returncode) == (q.stdout, q.returncode)


def test_vhdx_block_past_eof(oracle, tmp_path):
    p = vhdx(tmp_path)
    i, e = present(p)[-1]
    put_bat(p, i, (e & 7) | (4096 * MiB))
    unsafe_same(oracle, tmp_path, "t.vhdx")
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern="points after end of file")


def test_vhdx_block_end_past_eof(oracle, tmp_path):
    p = vhdx(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[:len(data) - MiB])
    unsafe_same(oracle, tmp_path, "t.vhdx")
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern="end offset")


def test_vhdx_block_over_region(oracle, tmp_path):
    p = vhdx(tmp_path)
    i, e = present(p)[0]
    put_bat(p, i, 6 | region(p, META_GUID)["offset"])
    unsafe_same(oracle, tmp_path, "t.vhdx")
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern="overlaps the metadata regions")


def test_vhdx_block_over_log(oracle, tmp_path):
    p = vhdx(tmp_path, "block_size=1M")
    i, e = present(p)[0]
    put_bat(p, i, 6 | MiB)
    unsafe_same(oracle, tmp_path, "t.vhdx")
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern="overlaps the log")


def test_vhdx_blocks_share_space(oracle, tmp_path):
    """qemu-img does not notice two BAT entries naming one block."""
    p = vhdx(tmp_path, "block_size=1M")
    (i0, e0), (i1, _) = present(p)[:2]
    put_bat(p, i1, e0)
    unsafe_same(oracle, tmp_path, "t.vhdx")
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern="share file space")


def test_vhdx_invalid_block_state(oracle, tmp_path):
    p = vhdx(tmp_path)
    i, e = present(p)[0]
    put_bat(p, i, (e & ~7) | 4)
    unsafe_same(oracle, tmp_path, "t.vhdx")
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern="invalid payload block state 4")


@pytest.mark.parametrize("which", [0, 1])
def test_vhdx_one_header_bad(oracle, tmp_path, which):
    """qemu uses the other header silently; the safe check reports it."""
    p = vhdx(tmp_path)
    flip_at(p, 64 * 1024 * (which + 1) + 100)
    unsafe_same(oracle, tmp_path, "t.vhdx")
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern=f"VHDX header {which + 1}")


def test_vhdx_conflicting_headers(oracle, tmp_path):
    """Both valid, same sequence number, different contents: qemu cannot
    open it, and neither mode of instar does."""
    p = vhdx(tmp_path)
    cur = current_header(p)
    put_header(p, 1 - cur, seq=get_header(p, cur)["seq"], log_length=2 * MiB)
    unsafe_same(oracle, tmp_path, "t.vhdx")
    r = instar("check", "t.vhdx", cwd=tmp_path)
    assert r.returncode == 1 and b"No valid VHDX header found" in r.stderr


def test_vhdx_region_table_copy(oracle, tmp_path):
    p = vhdx(tmp_path)
    flip_at(p, 256 * 1024 + 40)
    unsafe_same(oracle, tmp_path, "t.vhdx")
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern="region table copy 2")


def test_vhdx_region_table_copies_differ(oracle, tmp_path):
    p = vhdx(tmp_path)
    rt = bytearray(read_at(p, 192 * 1024, 64 * 1024))
    rt[16 + 32 * 2 + 4] ^= 1                      # an unused entry byte
    from test_info_vhdx import with_crc
    write_at(p, 256 * 1024, with_crc(rt))
    unsafe_same(oracle, tmp_path, "t.vhdx")
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern="differ")


def test_vhdx_metadata_item_outside_region(oracle, tmp_path):
    from test_info_vhdx import get_meta, put_meta, PAGE83
    p = vhdx(tmp_path)
    _, items = get_meta(p)
    for it in items:
        if it["guid"] == PAGE83:
            it["offset"] = 1 * MiB - 8
            it["length"] = 16
    put_meta(p, items)
    rc, d, err = safe(tmp_path, "t.vhdx")
    q = run([oracle.path, "check", "t.vhdx"], cwd=tmp_path)
    if q.returncode == 0:
        unsafe_same(oracle, tmp_path, "t.vhdx")
    assert rc == 2 and any("metadata item" in ln for ln in err), err


def test_vhdx_dirty_log(oracle, tmp_path):
    """qemu-img cannot check it read-only (open fails); the safe check
    reports the log as a corruption instead."""
    p = vhdx(tmp_path)
    h = arm_log(p)
    write_at(p, h["log_offset"], log_entry(1, [zero_desc(1, 8 * MiB)]))
    q = run([oracle.path, "check", "t.vhdx"], cwd=tmp_path)
    i = instar("--unsafe-quirks", "check", "t.vhdx", cwd=tmp_path,
               version=oracle.version)
    assert q.returncode == i.returncode == 1 and i.stdout == q.stdout == b""
    assert b"needs to be replayed" in i.stderr
    expect_corrupt(tmp_path, "t.vhdx", 1, pattern="never replayed")


@pytest.mark.parametrize("mode", [UNSAFE, []], ids=["unsafe", "safe"])
def test_vhdx_dirty_log_repair(oracle, tmp_path, mode):
    """check -r all replays the log (qemu counts it as one fixed
    corruption); afterwards both copies are clean and read the same."""
    from test_info_vhdx import data_desc, data_sector
    p = vhdx(tmp_path, "block_size=1M")
    i0, e0 = present(p)[0]
    block = e0 & ~0xfffff
    h = arm_log(p)
    entry = log_entry(5, [data_desc(5, block + 8192), zero_desc(5, block, 4096)],
                      data=[data_sector(5)], flushed=p.stat().st_size,
                      last=p.stat().st_size)
    write_at(p, h["log_offset"], entry)
    for tool in ("q", "i"):
        shutil.copy(p, tmp_path / f"{tool}.vhdx")
    q = run([oracle.path, "check", "-r", "all", "q.vhdx"], cwd=tmp_path)
    i = run([INSTAR, "check", *mode, "-r", "all", "i.vhdx"], cwd=tmp_path,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert i.stdout == q.stdout and i.returncode == q.returncode, (i, q)
    assert b"1 corruptions" in i.stdout
    for n in ("q.vhdx", "i.vhdx"):
        r = run([oracle.path, "check", n], cwd=tmp_path)
        assert r.returncode == 0, r
    c = run([oracle.path, "compare", "q.vhdx", "i.vhdx"], cwd=tmp_path)
    assert c.returncode == 0, c


def test_vhdx_log_replay_killed_anywhere(tmp_path):
    """A replay killed before any of its writes leaves an image that a
    second `check -r all` (instar's or qemu-img's) replays completely."""
    from test_info_vhdx import data_desc, data_sector
    p = vhdx(tmp_path, "block_size=1M")
    block = present(p)[0][1] & ~0xfffff
    h = arm_log(p)
    write_at(p, h["log_offset"],
             log_entry(5, [data_desc(5, block + 8192), zero_desc(5, block, 8192)],
                       data=[data_sector(5)], flushed=p.stat().st_size,
                       last=p.stat().st_size))
    shutil.copy(p, tmp_path / "ref.vhdx")
    qemu_img("check", "-r", "all", "ref.vhdx", cwd=tmp_path)
    killed = 0
    for n in range(1, 7):
        shutil.copy(p, tmp_path / "k.vhdx")
        r = run([INSTAR, "--x-test-kill-after-writes", str(n), "check", "-r", "all",
                 "k.vhdx"], cwd=tmp_path)
        killed += r.returncode != 0
        fixer = [QEMU_IMG] if n % 2 else [INSTAR]
        r = run([*fixer, "check", "-r", "all", "k.vhdx"], cwd=tmp_path)
        assert r.returncode == 0, (n, r)
        r = run([QEMU_IMG, "check", "k.vhdx"], cwd=tmp_path)
        assert r.returncode == 0, (n, r)
        c = run([QEMU_IMG, "compare", "ref.vhdx", "k.vhdx"], cwd=tmp_path)
        assert c.returncode == 0, (n, c)
    assert killed >= 2


def test_vhdx_differencing(oracle, tmp_path):
    """qemu cannot open differencing VHDX files (--unsafe-quirks: the same
    failure); the safe check reads them: sector bitmaps and partially
    present blocks are valid there."""
    from test_read_vhdx_diff import (PARTIAL_SECTORS, STATES, make_diff,
                                     make_parent)
    make_parent(tmp_path / "parent.vhdx")
    make_diff(tmp_path / "child.vhdx", [("relative_path", "parent.vhdx")],
              STATES, PARTIAL_SECTORS)
    unsafe_same(oracle, tmp_path, "child.vhdx")
    expect_clean(tmp_path, "child.vhdx")


def test_vhdx_extra_detail_statistics(tmp_path):
    vhdx(tmp_path, "block_size=1M")
    r = instar("--extra-detail", "check", "--output=json", "t.vhdx", cwd=tmp_path)
    d = json.loads(r.stdout)
    assert r.returncode == 0 and d["allocated-clusters"] == 4
    assert d["total-clusters"] == 64


# ---------------------------------------------------------------- vmdk

def vmdk(tmp, sub="monolithicSparse", size="16M", writes=((0, "128k"), ("5M", "64k"), ("9M", "1M"))):
    if sub == "streamOptimized":
        create(tmp, "vmdk", "src.vmdk", size, "", writes)
        qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
                 "src.vmdk", "t.vmdk", cwd=tmp)
        return tmp / "t.vmdk"
    return create(tmp, "vmdk", "t.vmdk", size, f"subformat={sub}",
                  writes if "Flat" not in sub else ())


def vmdk_header(p):
    (magic, ver, flags, cap, gran, doff, dsz, gtes, rgd, gd, go) = struct.unpack_from(
        "<4sIIQQQQIQQQ", p.read_bytes(), 0)
    return dict(flags=flags, cap=cap, gran=gran, gtes=gtes, rgd=rgd, gd=gd, go=go)


def gte(p, index, redundant=False):
    """Byte offset of the GT entry for grain `index`."""
    h = vmdk_header(p)
    gd = (h["rgd"] if redundant else h["gd"]) * 512
    l1 = index // h["gtes"]
    gt = unpack(p, gd + 4 * l1, "<I")[0] * 512
    return gt + 4 * (index % h["gtes"])


@pytest.mark.parametrize("sub", ["monolithicSparse", "streamOptimized",
                                 "monolithicFlat", "twoGbMaxExtentSparse",
                                 "twoGbMaxExtentFlat"])
def test_vmdk_clean(oracle, tmp_path, sub):
    vmdk(tmp_path, sub)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    safe_human_same(oracle, tmp_path, "t.vmdk")
    expect_clean(tmp_path, "t.vmdk")


@pytest.mark.parametrize("opts", ["zeroed_grain=on", "compat6=on"])
def test_vmdk_clean_options(oracle, tmp_path, opts):
    create(tmp_path, "vmdk", "t.vmdk", "8M", opts, ((0, "64k"), ("1M", "4k")))
    qemu_io("-c", "write -z 4M 64k", "t.vmdk", cwd=tmp_path)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    safe_human_same(oracle, tmp_path, "t.vmdk")
    expect_clean(tmp_path, "t.vmdk")


def test_vmdk_zeroed_grain_leaks(oracle, tmp_path):
    """Zeroing an allocated grain (zeroed_grain=on) makes its GTE "zero"
    and leaves the grain unreferenced: qemu-img does not count that; the
    safe check reports the leaked grain (exit 3)."""
    create(tmp_path, "vmdk", "t.vmdk", "8M", "zeroed_grain=on", ((0, "64k"),))
    qemu_io("-c", "write -z 0 64k", "t.vmdk", cwd=tmp_path)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    rc, d, err = safe(tmp_path, "t.vmdk")
    assert rc == 3 and d["leaks"] == 1 and d["corruptions"] == 0, (d, err)


def test_vmdk_repair_not_supported(oracle, tmp_path):
    vmdk(tmp_path)
    unsafe_same(oracle, tmp_path, "t.vmdk", extra=["-r", "all"])
    r = instar("check", "-r", "leaks", "t.vmdk", cwd=tmp_path)
    assert r.returncode == 63


def test_vmdk_grain_past_eof(oracle, tmp_path):
    """qemu stops at the first bad grain and fails the check."""
    p = vmdk(tmp_path)
    h = vmdk_header(p)
    idx = (5 * MiB) // (h["gran"] * 512)
    for red in (False, True):
        patch(p, gte(p, idx, red), "<I", 0x100000)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    expect_corrupt(tmp_path, "t.vmdk", 1, pattern="points after EOF")


def test_vmdk_two_grains_past_eof(oracle, tmp_path):
    """The safe check reports both; qemu only the first."""
    p = vmdk(tmp_path)
    for red in (False, True):
        patch(p, gte(p, 0, red), "<I", 0x100000)
        patch(p, gte(p, 1, red), "<I", 0x100080)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    expect_corrupt(tmp_path, "t.vmdk", 2)


def test_vmdk_truncated(oracle, tmp_path):
    p = vmdk(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[:len(data) - 32768])
    unsafe_same(oracle, tmp_path, "t.vmdk")
    expect_corrupt(tmp_path, "t.vmdk", 1, pattern="ends after EOF")


def test_vmdk_grains_overlap(oracle, tmp_path):
    p = vmdk(tmp_path)
    g0 = unpack(p, gte(p, 0), "<I")[0]
    for red in (False, True):
        patch(p, gte(p, 100, red), "<I", g0)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    expect_corrupt(tmp_path, "t.vmdk", 1, pattern="a grain at offset")


def test_vmdk_grain_over_metadata(oracle, tmp_path):
    p = vmdk(tmp_path)
    h = vmdk_header(p)
    for red in (False, True):
        patch(p, gte(p, 3, red), "<I", h["gd"])
    unsafe_same(oracle, tmp_path, "t.vmdk")
    rc, d, err = safe(tmp_path, "t.vmdk")
    assert rc == 2 and any("overlaps" in ln for ln in err), err


def test_vmdk_redundant_table_differs(oracle, tmp_path):
    p = vmdk(tmp_path)
    patch(p, gte(p, 0, True), "<I", 0)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    expect_corrupt(tmp_path, "t.vmdk", 1, pattern="redundant grain table 0 differs")


def test_vmdk_redundant_directory_entry_missing(oracle, tmp_path):
    p = vmdk(tmp_path)
    h = vmdk_header(p)
    patch(p, h["rgd"] * 512, "<I", 0)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    expect_corrupt(tmp_path, "t.vmdk", 1, pattern="redundant copy")


def test_vmdk_leaked_grain(oracle, tmp_path):
    p = vmdk(tmp_path)
    h = vmdk_header(p)
    idx = (5 * MiB) // (h["gran"] * 512)
    for red in (False, True):
        patch(p, gte(p, idx, red), "<I", 0)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    rc, d, err = safe(tmp_path, "t.vmdk")
    assert rc == 3 and d["leaks"] == 1 and d["corruptions"] == 0, (d, err)


def test_vmdk_stream_grain_past_eof(oracle, tmp_path):
    p = vmdk(tmp_path, "streamOptimized")
    h = vmdk_header(p)
    for red in (False, True):
        patch(p, gte(p, 0, red), "<I", 0x100000)
    unsafe_same(oracle, tmp_path, "t.vmdk")
    expect_corrupt(tmp_path, "t.vmdk", 1)


def test_vmdk_flat_extent_short(oracle, tmp_path):
    vmdk(tmp_path, "monolithicFlat")
    f = tmp_path / "t-flat.vmdk"
    f.write_bytes(f.read_bytes()[:MiB])
    unsafe_same(oracle, tmp_path, "t.vmdk")
    expect_corrupt(tmp_path, "t.vmdk", 1, pattern="flat extent 0")


def test_vmdk_flat_extent_empty(oracle, tmp_path):
    """qemu's one test for a flat extent: its start must be inside the file."""
    vmdk(tmp_path, "monolithicFlat")
    (tmp_path / "t-flat.vmdk").write_bytes(b"")
    unsafe_same(oracle, tmp_path, "t.vmdk")
    expect_corrupt(tmp_path, "t.vmdk", 1)


def test_vmdk_extra_detail_statistics(tmp_path):
    vmdk(tmp_path)
    r = instar("--extra-detail", "check", "--output=json", "t.vmdk", cwd=tmp_path)
    d = json.loads(r.stdout)
    assert r.returncode == 0
    assert d["allocated-clusters"] == 2 + 1 + 16 and d["total-clusters"] == 256


# ---------------------------------------------------------------- qed
# qemu's qed check already validates everything it can: both modes match it.

def qed(tmp, writes=((0, "64k"), ("5M", "128k"), ("9M", "64k"))):
    return create(tmp, "qed", "t.qed", "16M", "", writes)


def qed_hdr(p):
    cs, ts, hs, feat = unpack(p, 4, "<IIIQ")
    l1 = unpack(p, 40, "<Q")[0]
    return cs, ts, hs, feat, l1


def qed_l2(p, l1_index=0):
    cs, ts, hs, feat, l1 = qed_hdr(p)
    return unpack(p, l1 + 8 * l1_index, "<Q")[0]


def both_modes_same(oracle, tmp, name, extra=()):
    """qemu's qed check is the safe one too: the same stdout and exit
    status (the safe default adds a stderr line per problem)."""
    unsafe_same(oracle, tmp, name, extra)
    assert_same(oracle, ["check", *extra, name], tmp)


def repair_same(oracle, tmp, name, mode="all", instar_args=()):
    """Each tool repairs its own copy: same report; afterwards qemu-img
    finds both copies in the same state, with the same content."""
    ext = name.rsplit(".", 1)[1]
    for tool in ("q", "i"):
        shutil.copy(tmp / name, tmp / f"{tool}.{ext}")
    q = run([oracle.path, "check", "-r", mode, f"q.{ext}"], cwd=tmp)
    i = run([INSTAR, "check", *instar_args, "-r", mode, f"i.{ext}"], cwd=tmp,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert (i.stdout, i.returncode) == (q.stdout, q.returncode), (i, q)
    qa = run([oracle.path, "check", f"q.{ext}"], cwd=tmp)
    ia = run([oracle.path, "check", f"i.{ext}"], cwd=tmp)
    assert (ia.stdout, ia.returncode) == (qa.stdout, qa.returncode)
    c = run([oracle.path, "compare", f"q.{ext}", f"i.{ext}"], cwd=tmp)
    assert c.returncode == 0, c


def test_qed_clean(oracle, tmp_path):
    qed(tmp_path)
    both_modes_same(oracle, tmp_path, "t.qed")
    expect_clean(tmp_path, "t.qed")


def test_qed_data_cluster_past_eof(oracle, tmp_path):
    p = qed(tmp_path)
    l2 = qed_l2(p)
    patch(p, l2 + 8 * 3, "<Q", 1 << 40)
    both_modes_same(oracle, tmp_path, "t.qed")
    expect_corrupt(tmp_path, "t.qed", 1)
    for mode in ("leaks", "all"):
        repair_same(oracle, tmp_path, "t.qed", mode)


def test_qed_cluster_used_twice(oracle, tmp_path):
    p = qed(tmp_path)
    l2 = qed_l2(p)
    first = unpack(p, l2, "<Q")[0]
    patch(p, l2 + 8 * 7, "<Q", first)
    both_modes_same(oracle, tmp_path, "t.qed")
    expect_corrupt(tmp_path, "t.qed", 1)
    repair_same(oracle, tmp_path, "t.qed")


def test_qed_bad_l2_offset(oracle, tmp_path):
    p = qed(tmp_path)
    cs, ts, hs, feat, l1 = qed_hdr(p)
    patch(p, l1, "<Q", 12345)
    both_modes_same(oracle, tmp_path, "t.qed")
    rc, d, _ = safe(tmp_path, "t.qed")
    assert rc == 2 and d["corruptions"] == 1
    repair_same(oracle, tmp_path, "t.qed")


def test_qed_leaked_cluster(oracle, tmp_path):
    p = qed(tmp_path)
    l2 = qed_l2(p)
    patch(p, l2 + 8 * ((5 << 20) // 65536), "<Q", 0)
    both_modes_same(oracle, tmp_path, "t.qed")
    rc, d, _ = safe(tmp_path, "t.qed")
    assert rc == 3 and d["leaks"] == 1
    repair_same(oracle, tmp_path, "t.qed", "leaks")


def test_qed_needs_check_flag(oracle, tmp_path):
    p = qed(tmp_path)
    cs, ts, hs, feat, l1 = qed_hdr(p)
    patch(p, 16, "<Q", feat | 2)
    both_modes_same(oracle, tmp_path, "t.qed")
    repair_same(oracle, tmp_path, "t.qed")
    assert unpack(tmp_path / "i.qed", 16, "<Q")[0] == unpack(tmp_path / "q.qed", 16, "<Q")[0]


# ---------------------------------------------------------------- parallels
# qemu's check differs between 7.2 and 10.0: --unsafe-quirks follows the
# version; the safe default is 10.0's check.  -r is not implemented.

def prl(tmp, writes=((0, "64k"), ("5M", "1M"), ("9M", "64k"))):
    return create(tmp, "parallels", "t.prl", "64M", "", writes)


def set_prl_bat(p, i, v):
    patch(p, 64 + 4 * i, "<I", v)


def prl_bat(p, i):
    return unpack(p, 64 + 4 * i, "<I")[0]


@pytest.mark.parametrize("writes", [(), ((0, "64k"), ("5M", "1M"), ("9M", "64k"))],
                         ids=["empty", "data"])
def test_parallels_clean(oracle, tmp_path, writes):
    prl(tmp_path, writes)
    unsafe_same(oracle, tmp_path, "t.prl")
    safe_human_same(oracle, tmp_path, "t.prl")
    expect_clean(tmp_path, "t.prl")


def test_parallels_unclean(oracle, tmp_path):
    p = prl(tmp_path)
    patch(p, 44, "<I", 0x746F6E59)
    unsafe_same(oracle, tmp_path, "t.prl")
    expect_corrupt(tmp_path, "t.prl", 1, pattern="not closed correctly")


def test_parallels_cluster_outside(oracle, tmp_path):
    """qemu 10.0 aborts on this image (an assertion in its duplicate
    check): compared with 7.2 only."""
    p = prl(tmp_path)
    set_prl_bat(p, 20, 100000)
    if oracle.major < 10:
        unsafe_same(oracle, tmp_path, "t.prl")
    expect_corrupt(tmp_path, "t.prl", 1, pattern="cluster 20 is outside image")


def test_parallels_leak(oracle, tmp_path):
    p = prl(tmp_path)
    with open(p, "ab") as f:
        f.write(b"\0" * (3 * MiB))
    unsafe_same(oracle, tmp_path, "t.prl")
    rc, d, err = safe(tmp_path, "t.prl")
    assert rc == 3 and d["leaks"] == 3, (d, err)


def test_parallels_duplicate(oracle, tmp_path):
    """Two entries naming one cluster: qemu 10.0 finds it, 7.2 does not."""
    p = prl(tmp_path)
    set_prl_bat(p, 3, prl_bat(p, 0))
    unsafe_same(oracle, tmp_path, "t.prl")
    expect_corrupt(tmp_path, "t.prl", 1, pattern="duplicate offset in BAT entry 3")


def test_parallels_duplicate_last(oracle, tmp_path):
    """The same, in the last allocated entry: qemu 10.0's check then fails
    ("Check failed: Device or resource busy", exit 1), and so does
    instar."""
    p = prl(tmp_path)
    set_prl_bat(p, 30, prl_bat(p, 0))
    for args in (["check", "t.prl"], ["check", "--output=json", "t.prl"]):
        assert_same(oracle, args, tmp_path, instar_args=UNSAFE, check_stderr=True)
    expect_corrupt(tmp_path, "t.prl", 1, pattern="duplicate offset in BAT entry 30")


@pytest.mark.parametrize("data_off", [0, 1, 1 << 20])
def test_parallels_data_off(oracle, tmp_path, data_off):
    p = prl(tmp_path)
    patch(p, 48, "<I", data_off)
    unsafe_same(oracle, tmp_path, "t.prl")
    expect_corrupt(tmp_path, "t.prl", 1, pattern="data_off")


def test_parallels_repair_not_implemented(tmp_path):
    prl(tmp_path)
    r = instar("check", "-r", "all", "t.prl", cwd=tmp_path)
    assert r.returncode == 63


# ---------------------------------------------------------------- hostile

@pytest.mark.parametrize("fmt,name", [("vdi", "t.vdi"), ("vpc", "t.vhd"),
                                      ("vhdx", "t.vhdx"), ("vmdk", "t.vmdk"),
                                      ("qed", "t.qed"), ("parallels", "t.prl")])
def test_garbage_never_crashes(tmp_path, fmt, name):
    """Random bytes over the metadata: exit 0-3 with a report, or 1 with a
    one-line error; never a crash or a hang."""
    import random
    rnd = random.Random(fmt)
    create(tmp_path, fmt, name, "8M", "", ((0, "64k"), ("2M", "1M")))
    orig = (tmp_path / name).read_bytes()
    for _ in range(25):
        data = bytearray(orig)
        for _ in range(rnd.randint(1, 40)):
            data[rnd.randrange(min(len(data), 4 * MiB + 65536))] = rnd.randrange(256)
        (tmp_path / "g").write_bytes(bytes(data))
        for args in ([], UNSAFE):
            r = run([INSTAR, "check", *args, "-f", fmt, "g"], cwd=tmp_path, timeout=30)
            assert r.returncode in (0, 1, 2, 3, 63), r
            if r.returncode == 1 and not r.stdout:
                assert len(r.stderr.decode().splitlines()) >= 1
