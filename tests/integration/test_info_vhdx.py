"""vhdx info: instar against every qemu-img oracle, human and JSON.

Images come from qemu-img/qemu-io over the option space (subformat,
block_size, log_size, block_state_zero, sizes) and from a small patcher
that rewrites headers, the region table, metadata items, BAT entries and
log entries with correct CRC-32C checksums where the case needs them.
Hostile images must fail in instar where and as qemu-img fails (exit 1,
no stdout, the same final message), and never crash or hang.

Known divergence (test_log_search_loop_does_not_hang): qemu's log search
never finishes on a log whose pass ends where it began; qemu-img hangs
there, instar fails with a one-line message.
"""
import random
import struct
import subprocess
import uuid

import pytest

from conftest import INSTAR, assert_info_same, qemu_img, qemu_io, run

KiB = 1024
MiB = 1 << 20
GiB = 1 << 30
HEADERS = (64 * KiB, 128 * KiB)
REGION_TABLE = 192 * KiB

BAT_GUID = uuid.UUID("2dc27766-f623-4200-9d64-115e9bfd4a08").bytes_le
META_GUID = uuid.UUID("8b7ca206-4790-4b9a-b8fe-575f050f886e").bytes_le
FILE_PARAMS = uuid.UUID("caa16737-fa36-4d43-b3b6-33f0aa44e76b").bytes_le
VIRTUAL_SIZE = uuid.UUID("2fa54224-cd1b-4876-b211-5dbed83bf4b8").bytes_le
PAGE83 = uuid.UUID("beca12ab-b2e6-4523-93ef-c309e000c746").bytes_le
LOGICAL_SECTOR = uuid.UUID("8141bf1d-a96f-4709-ba47-f233a8faab5f").bytes_le
PHYS_SECTOR = uuid.UUID("cda348c7-445d-4471-9cc9-e9885251c556").bytes_le
PARENT_LOCATOR = uuid.UUID("a8d35f2d-b30b-454d-abf7-d3d84834ab0c").bytes_le
LOG_GUID = uuid.UUID("11111111-2222-3333-4444-555555555555").bytes_le


# ---------------------------------------------------------------- CRC-32C

def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def with_crc(buf):
    """buf with its checksum field (bytes 4..7) set to the CRC-32C."""
    b = bytearray(buf)
    b[4:8] = b"\0\0\0\0"
    b[4:8] = struct.pack("<I", crc32c(bytes(b)))
    return bytes(b)


# ---------------------------------------------------------------- file patching

def read_at(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n).ljust(n, b"\0")


def write_at(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def flip_at(path, off, n=1):
    """Invert n bytes, so the field surely changes (the header's GUIDs
    are random: writing a constant may leave them as they were)."""
    write_at(path, off, bytes(b ^ 0xff for b in read_at(path, off, n)))


HDR_FMT = "<4sIQ16s16s16sHHIQ"
HDR_FIELDS = ["signature", "checksum", "seq", "file_write_guid",
              "data_write_guid", "log_guid", "log_version", "version",
              "log_length", "log_offset"]


def get_header(path, idx):
    return dict(zip(HDR_FIELDS, struct.unpack(HDR_FMT, read_at(path, HEADERS[idx], 80))))


def put_header(path, idx, fix=True, **fields):
    buf = bytearray(read_at(path, HEADERS[idx], 4096))
    h = dict(zip(HDR_FIELDS, struct.unpack(HDR_FMT, bytes(buf[:80]))))
    h.update(fields)
    buf[:80] = struct.pack(HDR_FMT, *(h[k] for k in HDR_FIELDS))
    write_at(path, HEADERS[idx], with_crc(buf) if fix else bytes(buf))


def current_header(path):
    """The index qemu uses (highest sequence number)."""
    return 0 if get_header(path, 0)["seq"] > get_header(path, 1)["seq"] else 1


def get_regions(path):
    rt = read_at(path, REGION_TABLE, 64 * KiB)
    count = struct.unpack("<I", rt[8:12])[0]
    return [dict(zip(["guid", "offset", "length", "bits"],
                     struct.unpack("<16sQII", rt[16 + 32 * i:48 + 32 * i])))
            for i in range(min(count, 2047))]


def put_regions(path, entries, count=None, fix=True, signature=b"regi"):
    buf = bytearray(64 * KiB)
    buf[:16] = struct.pack("<4sIII", signature, 0,
                           len(entries) if count is None else count, 0)
    for i, e in enumerate(entries):
        buf[16 + 32 * i:48 + 32 * i] = struct.pack(
            "<16sQII", e["guid"], e["offset"], e["length"], e["bits"])
    write_at(path, REGION_TABLE, with_crc(buf) if fix else bytes(buf))


def region(path, guid):
    return next(r for r in get_regions(path) if r["guid"] == guid)


def get_meta(path):
    off = region(path, META_GUID)["offset"]
    tbl = read_at(path, off, 64 * KiB)
    count = struct.unpack("<H", tbl[10:12])[0]
    items = [dict(zip(["guid", "offset", "length", "bits", "reserved"],
                      struct.unpack("<16sIIII", tbl[32 + 32 * i:64 + 32 * i])))
             for i in range(min(count, 2047))]
    return off, items


def put_meta(path, items, count=None, signature=b"metadata"):
    off, _ = get_meta(path)
    buf = bytearray(read_at(path, off, 64 * KiB))
    buf[:32] = struct.pack("<8sHH20s", signature, 0,
                           len(items) if count is None else count, b"")
    for i, it in enumerate(items):
        buf[32 + 32 * i:64 + 32 * i] = struct.pack(
            "<16sIIII", it["guid"], it["offset"], it["length"], it["bits"],
            it["reserved"])
    write_at(path, off, bytes(buf))


def set_meta_value(path, guid, data):
    off, items = get_meta(path)
    it = next(i for i in items if i["guid"] == guid)
    write_at(path, off + it["offset"], data)


def get_bat(path, i):
    off = region(path, BAT_GUID)["offset"]
    return struct.unpack("<Q", read_at(path, off + 8 * i, 8))[0]


def put_bat(path, i, value):
    off = region(path, BAT_GUID)["offset"]
    write_at(path, off + 8 * i, struct.pack("<Q", value))


def zero_desc(seq, file_offset=1 * MiB, length=4096, sig=b"zero"):
    return struct.pack("<4sIQQQ", sig, 0, length, file_offset, seq)


def data_desc(seq, file_offset=1 * MiB):
    return struct.pack("<4sIQQQ", b"desc", 0, 0, file_offset, seq)


def data_sector(seq):
    return struct.pack("<4sI4084sI", b"data", seq >> 32, b"\xaa" * 4084,
                       seq & 0xFFFFFFFF)


def log_entry(seq, descs=(), data=(), guid=LOG_GUID, good_crc=True,
              entry_length=None, flushed=4 * MiB, last=4 * MiB):
    count = len(descs)
    desc_sectors = -(-(count + 2) // 128)
    total = (desc_sectors + len(data)) * 4096
    if entry_length is None:
        entry_length = total
    buf = bytearray(desc_sectors * 4096)
    buf[:64] = struct.pack("<4sIIIQII16sQQ", b"loge", 0, entry_length, 0, seq,
                           count, 0, guid, flushed, last)
    for i, d in enumerate(descs):
        buf[64 + 32 * i:96 + 32 * i] = d
    full = bytearray(bytes(buf) + b"".join(data))
    crc = crc32c(bytes(full))
    full[4:8] = struct.pack("<I", crc if good_crc else crc ^ 1)
    return bytes(full)


def arm_log(path, guid=LOG_GUID, **hdr):
    """Gives the current header a log GUID (so the log is live)."""
    idx = current_header(path)
    put_header(path, idx, log_guid=guid, **hdr)
    return get_header(path, idx)


# ---------------------------------------------------------------- comparison

def create(tmp, name, size, *opts):
    args = ["create", "-q", "-f", "vhdx"]
    if opts:
        args += ["-o", ",".join(opts)]
    qemu_img(*args, name, str(size), cwd=tmp)
    return tmp / name


def same(oracle, tmp, name="t.vhdx", extra=()):
    assert_info_same(oracle, tmp, name, extra=extra)


def open_message(err):
    """The "Could not open ..." line without the program name (qemu may
    print error_report lines before it and a hint after it)."""
    lines = [ln for ln in err.decode(errors="replace").splitlines()
             if ": Could not open '" in ln]
    return lines[-1].split(": ", 1)[1] if lines else ""


def same_error(oracle, tmp, name="t.vhdx", extra=()):
    """Both fail: exit 1, no stdout, and (with message) the same
    "Could not open" line."""
    env = {"INSTAR_QEMU_VERSION": oracle.version}
    for mode in ([], ["--output=json"]):
        q = run([oracle.path, "info", *extra, *mode, name], cwd=tmp)
        i = run([INSTAR, "info", *extra, *mode, name], cwd=tmp, env=env)
        assert q.returncode == 1, q.stdout
        assert i.returncode == 1 and i.stdout == b"", i.stdout
        assert len(i.stderr.decode().splitlines()) == 1, i.stderr
        assert open_message(i.stderr) == open_message(q.stderr), (i.stderr, q.stderr)
    return q.stderr.decode()


def same_outcome(oracle, tmp, name="t.vhdx", extra=()):
    q = run([oracle.path, "info", *extra, name], cwd=tmp)
    if q.returncode:
        return same_error(oracle, tmp, name, extra=extra)
    same(oracle, tmp, name, extra=extra)
    return ""


# ---------------------------------------------------------------- option space

@pytest.mark.parametrize("block_size", ["1M", "8M", "32M", "256M"])
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_block_sizes(oracle, tmp_path, block_size, subformat):
    create(tmp_path, "t.vhdx", 64 * MiB, f"block_size={block_size}",
           f"subformat={subformat}")
    same(oracle, tmp_path)


@pytest.mark.parametrize("log_size", ["1M", "4M"])
@pytest.mark.parametrize("zero", ["on", "off"])
def test_log_size_and_block_state_zero(oracle, tmp_path, log_size, zero):
    create(tmp_path, "t.vhdx", 100 * MiB, f"log_size={log_size}",
           f"block_state_zero={zero}")
    same(oracle, tmp_path)


@pytest.mark.parametrize("size", [0, 512, 1 * MiB, 10000000, 1 * GiB, 127 * GiB,
                                  2 * 1024 * GiB, 64 * 1024 * GiB])
def test_sizes_dynamic(oracle, tmp_path, size):
    create(tmp_path, "t.vhdx", size)
    same(oracle, tmp_path)


@pytest.mark.parametrize("size", [1 * MiB, 10000000, 300 * MiB])
def test_sizes_fixed(oracle, tmp_path, size):
    create(tmp_path, "t.vhdx", size, "subformat=fixed")
    same(oracle, tmp_path)


@pytest.mark.parametrize("zero", ["on", "off"])
def test_written_data(oracle, tmp_path, zero):
    create(tmp_path, "t.vhdx", 256 * MiB, "block_size=1M", f"block_state_zero={zero}")
    qemu_io("-f", "vhdx", "-c", "write -P 0xab 0 3M", "-c", "write 17M 64k",
            "-c", "write -z 40M 2M", "-c", "write -P 7 255M 1M", "t.vhdx",
            cwd=tmp_path)
    same(oracle, tmp_path)


def test_written_data_many_chunks(oracle, tmp_path):
    """More than chunk_ratio payload blocks: sector-bitmap entries are
    interleaved in the BAT."""
    create(tmp_path, "t.vhdx", 5 * GiB, "block_size=1M")
    qemu_io("-f", "vhdx", "-c", "write 0 1M", "-c", "write 4095M 2M",
            "-c", "write 4097M 1M", "t.vhdx", cwd=tmp_path)
    same(oracle, tmp_path)
    same(oracle, tmp_path, extra=["-f", "vhdx"])


# ---------------------------------------------------------------- headers

def test_identical_headers_same_sequence(oracle, tmp_path):
    """Disk2VHD writes two identical headers: not an error."""
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    write_at(p, HEADERS[0], read_at(p, HEADERS[1], 4096))
    same(oracle, tmp_path)


def test_conflicting_headers_same_sequence(oracle, tmp_path):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    seq = get_header(p, 1)["seq"]
    put_header(p, 0, seq=seq, data_write_guid=b"\x42" * 16)
    put_header(p, 1, seq=seq)
    assert "No valid VHDX header found" in same_error(oracle, tmp_path)


@pytest.mark.parametrize("which", [0, 1])
def test_one_header_corrupt(oracle, tmp_path, which):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    flip_at(p, HEADERS[which] + 20, 2)
    same(oracle, tmp_path)


def test_both_headers_corrupt(oracle, tmp_path):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    flip_at(p, HEADERS[0] + 20)
    flip_at(p, HEADERS[1] + 20)
    assert "No valid VHDX header found" in same_error(oracle, tmp_path)


@pytest.mark.parametrize("fields", [
    {"version": 2}, {"signature": b"HEAD"}, {"log_offset": 1 * MiB + 4096},
    {"log_offset": 512 * KiB}, {"log_version": 1}, {"log_offset": 1 << 62},
    {"log_length": 0}, {"log_length": 3 * MiB},
])
def test_current_header_fields(oracle, tmp_path, fields):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    put_header(p, current_header(p), **fields)
    same_outcome(oracle, tmp_path)


def test_older_header_wins_when_newer_is_bad(oracle, tmp_path):
    p = create(tmp_path, "t.vhdx", 64 * MiB, "log_size=4M")
    cur = current_header(p)
    put_header(p, 1 - cur, seq=get_header(p, cur)["seq"] + 5, log_offset=3 * MiB + 17)
    same_error(oracle, tmp_path)


# ---------------------------------------------------------------- log

def test_log_needs_replay(oracle, tmp_path):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    h = arm_log(p)
    write_at(p, h["log_offset"], log_entry(1, [zero_desc(1)]))
    assert "needs to be replayed" in same_error(oracle, tmp_path)


def test_log_needs_replay_data_descriptor(oracle, tmp_path):
    p = create(tmp_path, "t.vhdx", 64 * MiB, "log_size=4M")
    h = arm_log(p)
    entry = log_entry(7, [data_desc(7), zero_desc(7, 2 * MiB, 8192)],
                      data=[data_sector(7)])
    write_at(p, h["log_offset"] + 3 * MiB, entry)
    same_error(oracle, tmp_path)


def test_log_sequence_of_entries(oracle, tmp_path):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    h = arm_log(p)
    e1 = log_entry(3, [zero_desc(3)])
    e2 = log_entry(4, [data_desc(4)], data=[data_sector(4)])
    write_at(p, h["log_offset"] + 8192, e1 + e2)
    same_error(oracle, tmp_path)


@pytest.mark.parametrize("case", ["bad_crc", "other_guid", "seq_zero", "empty",
                                  "too_long", "not_sector_multiple"])
def test_log_entries_that_are_not_valid(oracle, tmp_path, case):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    h = arm_log(p)
    entry = {
        "bad_crc": lambda: log_entry(1, [zero_desc(1)], good_crc=False),
        "other_guid": lambda: log_entry(1, [zero_desc(1)], guid=b"\x99" * 16),
        "seq_zero": lambda: log_entry(0, []),
        "empty": lambda: b"",
        "too_long": lambda: log_entry(1, [], entry_length=2 * MiB),
        "not_sector_multiple": lambda: log_entry(1, [], entry_length=4100),
    }[case]()
    write_at(p, h["log_offset"], entry)
    same(oracle, tmp_path)


@pytest.mark.parametrize("desc", [
    zero_desc(2),                       # sequence mismatch
    zero_desc(1, file_offset=1 * MiB + 5),
    zero_desc(1, length=100),
    zero_desc(1, sig=b"what"),
])
def test_log_bad_descriptor_fails_open(oracle, tmp_path, desc):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    h = arm_log(p)
    write_at(p, h["log_offset"], log_entry(1, [zero_desc(1), desc]))
    same_error(oracle, tmp_path)


@pytest.mark.parametrize("count", [125, 126, 127, 300])
def test_log_many_descriptors(oracle, tmp_path, count):
    """126 descriptors fill the first log sector.  With more, qemu reads
    every descriptor sector over the first one and checks the rest of its
    buffer (never written): the open fails with EINVAL."""
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    h = arm_log(p)
    descs = [zero_desc(9, 1 * MiB + 4096 * i) for i in range(count)]
    write_at(p, h["log_offset"], log_entry(9, descs))
    msg = same_error(oracle, tmp_path)
    assert ("needs to be replayed" in msg) == (count <= 126)


def test_log_wraps_around(oracle, tmp_path):
    """An entry that starts in the last log sector and wraps to the start."""
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    h = arm_log(p)
    e = log_entry(5, [zero_desc(5)], data=[data_sector(5)])
    write_at(p, h["log_offset"] + h["log_length"] - 4096, e[:4096])
    write_at(p, h["log_offset"], e[4096:])
    same_error(oracle, tmp_path)


def test_log_guid_without_length(oracle, tmp_path):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    arm_log(p, log_length=0)
    same(oracle, tmp_path)
    arm_log(p, log_length=1 * MiB + 4096)
    same_error(oracle, tmp_path)


def test_log_search_loop_does_not_hang(oracle, tmp_path):
    """DIVERGENCE (deliberate): entry A (valid) covers the first half of
    the log, entry B (valid header, bad CRC) the second half.  qemu's
    search pass from 0 wraps back to 0 and starts again, forever; instar
    detects the repeated pass and fails with one line."""
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    h = arm_log(p)
    half = h["log_length"] // 2
    a = log_entry(1, [], data=[b"\0" * 4096] * (half // 4096 - 1))
    b = log_entry(2, [], data=[b"\0" * 4096] * (half // 4096 - 1), good_crc=False)
    write_at(p, h["log_offset"], a + b)
    with pytest.raises(subprocess.TimeoutExpired):
        run([oracle.path, "info", "t.vhdx"], cwd=tmp_path, timeout=5)
    i = run([INSTAR, "info", "t.vhdx"], cwd=tmp_path, timeout=30,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert i.returncode == 1 and i.stdout == b""
    assert len(i.stderr.decode().splitlines()) == 1


# ---------------------------------------------------------------- region table

def test_region_table_bad_crc(oracle, tmp_path):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    write_at(p, REGION_TABLE + 100, b"\x01")
    assert "Invalid argument" in same_error(oracle, tmp_path)


@pytest.mark.parametrize("case", [
    "count_2047", "count_2048", "signature", "overlap", "overlap_log",
    "dup_bat", "dup_meta", "no_meta", "no_bat", "unknown_required",
    "unknown_optional", "bat_len_0", "bat_len_huge", "bat_len_4g",
    "bat_far", "meta_far", "meta_past_eof", "zero_length_region",
])
def test_region_table(oracle, tmp_path, case):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    rs = get_regions(p)
    bat = next(r for r in rs if r["guid"] == BAT_GUID)
    meta = next(r for r in rs if r["guid"] == META_GUID)
    other = {"guid": b"\x77" * 16, "offset": 32 * MiB, "length": MiB, "bits": 0}
    kw = {}
    if case == "count_2047":
        kw["count"] = 2047
    elif case == "count_2048":
        kw["count"] = 2048
    elif case == "signature":
        kw["signature"] = b"rega"
    elif case == "overlap":
        meta["offset"] = bat["offset"] + 4096
    elif case == "overlap_log":
        bat["offset"] = 1 * MiB
    elif case == "dup_bat":
        rs.append(dict(bat, offset=40 * MiB))
    elif case == "dup_meta":
        rs.append(dict(meta, offset=40 * MiB))
    elif case == "no_meta":
        rs.remove(meta)
    elif case == "no_bat":
        rs.remove(bat)
    elif case == "unknown_required":
        rs.append(dict(other, bits=1))
    elif case == "unknown_optional":
        rs.append(other)
    elif case == "bat_len_0":
        bat["length"] = 0
    elif case == "bat_len_huge":
        bat["length"] = 0x7FFFFE08
    elif case == "bat_len_4g":
        bat["length"] = 0xFFFFFFF8
    elif case == "bat_far":
        bat["offset"] = 1 << 62
    elif case == "meta_far":
        meta["offset"] = 0x7FFFFFFFFFFF0000
    elif case == "meta_past_eof":
        meta["offset"] = 1 << 40
    elif case == "zero_length_region":
        rs.append(dict(other, offset=bat["offset"] + 4096, length=0))
    put_regions(p, rs, **kw)
    same_outcome(oracle, tmp_path)


# ---------------------------------------------------------------- metadata

@pytest.mark.parametrize("item,value", [
    (LOGICAL_SECTOR, struct.pack("<I", 4096)),
    (LOGICAL_SECTOR, struct.pack("<I", 0)),
    (PHYS_SECTOR, struct.pack("<I", 12345)),
    (FILE_PARAMS, struct.pack("<II", 512 * KiB, 0)),
    (FILE_PARAMS, struct.pack("<II", 3 * MiB, 0)),
    (FILE_PARAMS, struct.pack("<II", 512 * MiB, 0)),
    (FILE_PARAMS, struct.pack("<II", 8 * MiB, 2)),      # has_parent
    (FILE_PARAMS, struct.pack("<II", 8 * MiB, 1)),      # leave blocks allocated
    (FILE_PARAMS, struct.pack("<II", 1 * MiB, 0)),      # BAT now too small
    (VIRTUAL_SIZE, struct.pack("<Q", 64 * MiB + 100)),
    (VIRTUAL_SIZE, struct.pack("<Q", 1)),
    (VIRTUAL_SIZE, struct.pack("<Q", 0)),
    (VIRTUAL_SIZE, struct.pack("<Q", 1 << 50)),
    (VIRTUAL_SIZE, struct.pack("<Q", (1 << 62) + 8 * MiB)),
    (VIRTUAL_SIZE, struct.pack("<Q", (1 << 63) + 8 * MiB)),
    (VIRTUAL_SIZE, struct.pack("<Q", 0xFFFFFFFFFFFFFFFF)),
], ids=lambda v: v.hex() if isinstance(v, bytes) else str(v))
def test_metadata_values(oracle, tmp_path, item, value):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    set_meta_value(p, item, value)
    same_outcome(oracle, tmp_path)


@pytest.mark.parametrize("case", ["parent_locator", "unknown_required",
                                  "unknown_optional", "duplicate", "missing",
                                  "count_2047", "count_2048", "signature",
                                  "item_offset_far"])
def test_metadata_table(oracle, tmp_path, case):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    _, items = get_meta(p)
    extra = {"guid": b"\x55" * 16, "offset": 64 * KiB + 4096, "length": 8,
             "bits": 0, "reserved": 0}
    kw = {}
    if case == "parent_locator":
        items.append(dict(extra, guid=PARENT_LOCATOR))
    elif case == "unknown_required":
        items.append(dict(extra, bits=4))
    elif case == "unknown_optional":
        items.append(dict(extra, bits=3))
    elif case == "duplicate":
        items.append(dict(items[0]))
    elif case == "missing":
        items = [i for i in items if i["guid"] != PAGE83]
    elif case == "count_2047":
        kw["count"] = 2047
    elif case == "count_2048":
        kw["count"] = 2048
    elif case == "signature":
        kw["signature"] = b"metadatx"
    elif case == "item_offset_far":
        for i in items:
            if i["guid"] == VIRTUAL_SIZE:
                i["offset"] = 0xFFFFFFF0
    put_meta(p, items, **kw)
    same_outcome(oracle, tmp_path)


# ---------------------------------------------------------------- BAT

PRESENT = 6


@pytest.mark.parametrize("index,value", [
    (0, (1 << 40) | PRESENT),                   # start past EOF
    (0, 0xFFFFFFFFFFF00000 | PRESENT),          # offset overflow
    (0, 0x7FFFFFFFFFF00000 | PRESENT),
    (0, (3 * MiB) | PRESENT),                   # over the metadata region
    (0, (1 * MiB) | PRESENT),                   # over the log
    (0, 0 | PRESENT),                           # the header section
    (0, (8 * MiB) | 7),                         # partially present: no check
    (0, (1 << 40) | 2),                         # zero state: offset ignored
    (3, (1 << 40) | 1),
    (7, (1 << 40) | PRESENT),                   # the last entry
])
def test_bat_entries(oracle, tmp_path, index, value):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    qemu_io("-f", "vhdx", "-c", "write 0 1M", "t.vhdx", cwd=tmp_path)
    put_bat(p, index, value)
    same_outcome(oracle, tmp_path)


def test_bat_end_past_eof(oracle, tmp_path):
    p = create(tmp_path, "t.vhdx", 64 * MiB)
    qemu_io("-f", "vhdx", "-c", "write 0 1M", "t.vhdx", cwd=tmp_path)
    size = p.stat().st_size
    put_bat(p, 1, ((size - MiB) & ~(MiB - 1)) | PRESENT)
    with open(p, "r+b") as f:
        f.truncate(size - 4096)
    same_outcome(oracle, tmp_path)


def test_sector_bitmap_entry(oracle, tmp_path):
    """Entry chunk_ratio (4096 with 1 MiB blocks) is a sector bitmap: it
    must lie in the file but is not checked against the regions."""
    p = create(tmp_path, "t.vhdx", 5 * GiB, "block_size=1M")
    put_bat(p, 4096, (3 * MiB) | PRESENT)
    same_outcome(oracle, tmp_path)
    put_bat(p, 4096, (1 << 40) | PRESENT)
    same_outcome(oracle, tmp_path)


@pytest.mark.parametrize("length", [0, 8, 4096, 64 * KiB, 64 * KiB + 100,
                                    128 * KiB, 192 * KiB, 200 * KiB, 1 * MiB,
                                    2 * MiB, 2 * MiB + 8, 3 * MiB, 3 * MiB + 100,
                                    4 * MiB, 5 * MiB - 1])
def test_truncated(oracle, tmp_path, length):
    p = create(tmp_path, "t.vhdx", 64 * MiB, "block_size=1M")
    qemu_io("-f", "vhdx", "-c", "write 0 2M", "t.vhdx", cwd=tmp_path)
    with open(p, "r+b") as f:
        f.truncate(length)
    same_outcome(oracle, tmp_path, extra=["-f", "vhdx"])
    if length >= 8:
        same_outcome(oracle, tmp_path)


@pytest.mark.parametrize("cut", [512, 1000, 1 * MiB, 2 * MiB + 512, 9 * MiB])
def test_fixed_truncated(oracle, tmp_path, cut):
    p = create(tmp_path, "t.vhdx", 32 * MiB, "subformat=fixed")
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - cut)
    same_outcome(oracle, tmp_path)


def test_not_vhdx_with_format(oracle, tmp_path):
    (tmp_path / "t.vhdx").write_bytes(b"vhdxfilX" + b"\0" * 4096)
    same_error(oracle, tmp_path, extra=["-f", "vhdx"])
    (tmp_path / "t.vhdx").write_bytes(b"vhdxfile")
    same_error(oracle, tmp_path)


def test_garbage_never_crashes(tmp_path):
    """Random mutations of the structures with checksums fixed up: instar
    exits 0 or 1 with one line, quickly."""
    rnd = random.Random(4321)
    p = create(tmp_path, "base.vhdx", 64 * MiB, "block_size=1M")
    qemu_io("-f", "vhdx", "-c", "write 0 3M", "base.vhdx", cwd=tmp_path)
    base = p.read_bytes()
    areas = [(HEADERS[0], 4096), (HEADERS[1], 4096), (REGION_TABLE, 64 * KiB),
             (2 * MiB, 4096), (3 * MiB, 64 * KiB)]
    for n in range(60):
        d = bytearray(base)
        start, length = rnd.choice(areas)
        for _ in range(rnd.randint(1, 6)):
            d[start + rnd.randrange(min(length, 256))] = rnd.randrange(256)
        if start in HEADERS or start == REGION_TABLE:
            d[start:start + length] = with_crc(d[start:start + length])
        (tmp_path / "m.vhdx").write_bytes(bytes(d))
        r = run([INSTAR, "info", "m.vhdx"], cwd=tmp_path, timeout=30)
        assert r.returncode in (0, 1), r.stderr
        if r.returncode:
            assert len(r.stderr.decode().splitlines()) == 1, r.stderr
