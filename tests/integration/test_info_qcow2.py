"""qcow2 info: instar against every qemu-img oracle, human and JSON.

Images come from qemu-img/qemu-io over the option space, from patches
to those images (dirty/corrupt bits, snapshot extra data, bitmap flags),
and from a small generator for hostile headers.  Hostile images must fail
in instar exactly where and how they fail in qemu-img.
"""
import os
import random
import struct
from pathlib import Path

import pytest

from conftest import (QEMU_IMG, assert_info_same, assert_same, instar,
                      qemu_img, qemu_io, run, run_calibrated)

MAGIC = b"QFI\xfb"
EXT_END = 0
EXT_BACKING_FMT = 0xE2792ACA
EXT_FEATURES = 0x6803F857
EXT_CRYPTO = 0x0537BE77
EXT_BITMAPS = 0x23852875
EXT_DATA_FILE = 0x44415441


# ---------------------------------------------------------------- helpers

def create(tmp, name, size="64M", *opts, fmt="qcow2"):
    args = ["create", "-q", "-f", fmt]
    if opts:
        args += ["-o", ",".join(opts)]
    qemu_img(*args, name, size, cwd=tmp)
    return name


def same(oracle, tmp, name, **kw):
    assert_info_same(oracle, tmp, name, **kw)


def same_error(oracle, tmp, name, check_stderr=True, extra=()):
    """Both fail (or both succeed) alike; with check_stderr, same message."""
    q, i = assert_same(oracle, ["info", *extra, name], tmp,
                       check_stderr=check_stderr)
    assert_same(oracle, ["info", *extra, "--output=json", name], tmp,
                check_stderr=check_stderr)
    return q, i


def expect_failure(oracle, tmp, name, fragment=None, check_stderr=True):
    q, _ = same_error(oracle, tmp, name, check_stderr=check_stderr)
    assert q.returncode == 1, q.stdout
    if fragment:
        assert fragment in q.stderr.decode(), q.stderr


def read_header(path):
    data = Path(path).read_bytes()
    return bytearray(data)


def patch(path, offset, fmt, *values):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def get(path, offset, fmt):
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))


def set_incompat(path, bits):
    (v,) = get(path, 72, ">Q")
    patch(path, 72, ">Q", v | bits)


def set_autoclear(path, bits, clear=0):
    (v,) = get(path, 88, ">Q")
    patch(path, 88, ">Q", (v | bits) & ~clear)


def extensions(path):
    """[(offset of the extension header, magic, length)] of a v3 image."""
    data = Path(path).read_bytes()
    (hlen,) = struct.unpack_from(">I", data, 100)
    (bfo,) = struct.unpack_from(">Q", data, 8)
    (cbits,) = struct.unpack_from(">I", data, 20)
    end = bfo or (1 << cbits)
    off, out = hlen, []
    while off + 8 <= end:
        magic, length = struct.unpack_from(">II", data, off)
        if magic == 0:
            break
        out.append((off, magic, length))
        off += 8 + ((length + 7) & ~7)
    return out


def find_ext(path, magic):
    for off, m, length in extensions(path):
        if m == magic:
            return off, length
    raise AssertionError(f"no extension {magic:#x} in {path}")


def ext(magic, payload):
    pad = (-len(payload)) % 8
    return struct.pack(">II", magic, len(payload)) + payload + b"\0" * pad


def feature(ftype, bit, name):
    return struct.pack(">BB46s", ftype, bit, name.encode())


def make_qcow2(path, *, version=3, cluster_bits=16, size=64 << 20,
               crypt=0, l1_size=None, l1_offset=None, rt_offset=None,
               rt_clusters=1, nb_snapshots=0, snapshots_offset=0,
               incompat=0, compat=0, autoclear=0, refcount_order=4,
               header_length=None, compression_type=0, exts=b"",
               backing=None, backing_offset=None, backing_size=None,
               tail=b"", tail_offset=None, raw_header=None):
    """A minimal qcow2 file: header and extensions in cluster 0, refcount
    table in cluster 1, refcount block in cluster 2, L1 table in cluster 3;
    `tail` goes at `tail_offset` (default cluster 4)."""
    c = 1 << cluster_bits if 9 <= cluster_bits <= 21 else 65536
    if l1_size is None:
        l2_bits = (cluster_bits if 9 <= cluster_bits <= 21 else 16) - 3
        span = 1 << ((cluster_bits if 9 <= cluster_bits <= 21 else 16) + l2_bits)
        l1_size = max(1, (size + span - 1) // span) if size < (1 << 62) else 1
    l1_offset = 3 * c if l1_offset is None else l1_offset
    rt_offset = c if rt_offset is None else rt_offset
    bname = backing.encode() if isinstance(backing, str) else backing
    if header_length is None:
        header_length = 72 if version == 2 else 112
    h = struct.pack(">4sIQIIQIIQQIIQ", MAGIC, version, 0, 0, cluster_bits,
                    size, crypt, l1_size, l1_offset, rt_offset, rt_clusters,
                    nb_snapshots, snapshots_offset)
    if version >= 3:
        h += struct.pack(">QQQII", incompat, compat, autoclear,
                         refcount_order, header_length)
        h += bytes([compression_type]) + b"\0" * 7
    if raw_header is not None:
        h = raw_header
    start = header_length if version >= 3 else 72
    body = bytearray(max(5 * c, (tail_offset or 4 * c) + len(tail)))
    body[:len(h)] = h
    body[start:start + len(exts)] = exts
    if bname is not None:
        boff = backing_offset if backing_offset is not None else \
            start + len(exts) + 8
        bsize = backing_size if backing_size is not None else len(bname)
        struct.pack_into(">QI", body, 8, boff, bsize)
        body[boff:boff + len(bname)] = bname
    if c <= len(body) - 8:
        struct.pack_into(">Q", body, c, 2 * c)          # refcount table
        for i in range(5):
            struct.pack_into(">H", body, 2 * c + 2 * i, 1)
    t = 4 * c if tail_offset is None else tail_offset
    body[t:t + len(tail)] = tail
    Path(path).write_bytes(bytes(body))
    return path.name if isinstance(path, Path) else path


def snapshot_entry(id_str, name, *, vm_state=0, date=(1700000000, 5),
                   clock=1234567891234, extra=None, l1_offset=0, l1_size=0):
    """One snapshot table entry (8-byte aligned)."""
    if extra is None:
        extra = struct.pack(">QQ", vm_state, 64 << 20)
    idb = id_str.encode() if isinstance(id_str, str) else id_str
    nb = name.encode() if isinstance(name, str) else name
    e = struct.pack(">QIHHIIQII", l1_offset, l1_size, len(idb), len(nb),
                    date[0], date[1], clock, vm_state & 0xFFFFFFFF, len(extra))
    e += extra + idb + nb
    return e + b"\0" * ((-len(e)) % 8)


def bitmap_entry(name, *, table_offset, table_size=1, flags=2, type_=1,
                 gran_bits=16, extra=b"", name_size=None):
    nb = name.encode() if isinstance(name, str) else name
    e = struct.pack(">QIIBBHI", table_offset, table_size, flags, type_,
                    gran_bits, len(nb) if name_size is None else name_size,
                    len(extra))
    e += extra + nb
    return e + b"\0" * ((-len(e)) % 8)


def bitmaps_ext(nb, dir_size, dir_offset, reserved=0):
    return ext(EXT_BITMAPS, struct.pack(">IIQQ", nb, reserved, dir_size,
                                        dir_offset))


# ---------------------------------------------------- the option space

@pytest.mark.parametrize("cluster", ["512", "1K", "4K", "64K", "256K", "2M"])
@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_cluster_sizes_and_compat(oracle, tmp_path, cluster, compat):
    create(tmp_path, "a.qcow2", "100M", f"cluster_size={cluster}",
           f"compat={compat}")
    same(oracle, tmp_path, "a.qcow2")


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32, 64])
def test_refcount_bits(oracle, tmp_path, bits):
    create(tmp_path, "a.qcow2", "10M", f"refcount_bits={bits}")
    same(oracle, tmp_path, "a.qcow2")


@pytest.mark.parametrize("opts", [
    ("lazy_refcounts=on",),
    ("extended_l2=on",),
    ("extended_l2=on", "cluster_size=16K"),
    ("extended_l2=on", "cluster_size=2M"),
    ("compression_type=zstd",),
    ("compression_type=zlib",),
    ("preallocation=metadata",),
    ("preallocation=metadata", "extended_l2=on"),
    ("lazy_refcounts=on", "compression_type=zstd", "extended_l2=on",
     "refcount_bits=64", "cluster_size=128K"),
], ids=lambda o: ",".join(o))
def test_options(oracle, tmp_path, opts):
    create(tmp_path, "a.qcow2", "256M", *opts)
    same(oracle, tmp_path, "a.qcow2")


@pytest.mark.parametrize("size,opts", [
    ("0", ()),
    ("512", ()),
    ("1000", ()),              # qemu rounds the create size up
    ("1P", ()),
    ("2E", ("cluster_size=2M",)),
    ("100G", ("cluster_size=512",)),
])
def test_sizes(oracle, tmp_path, size, opts):
    create(tmp_path, "a.qcow2", size, *opts)
    same(oracle, tmp_path, "a.qcow2")


def test_size_not_sector_multiple(oracle, tmp_path):
    """qemu counts whole sectors: the header's size rounds down."""
    make_qcow2(tmp_path / "a.qcow2", size=(1 << 20) + 1000)
    same(oracle, tmp_path, "a.qcow2")


def test_written_data_and_compressed(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c",
            "write -c -P 0x11 4M 64k", "-c", "write -z 8M 1M", "a.qcow2",
            cwd=tmp_path)
    same(oracle, tmp_path, "a.qcow2")


# --------------------------------------------------------- data files

def test_data_file(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M", "data_file=a.data")
    same(oracle, tmp_path, "a.qcow2")


def test_data_file_raw(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M", "data_file=a.data", "data_file_raw=on")
    same(oracle, tmp_path, "a.qcow2")


def test_data_file_missing_is_not_opened(oracle, tmp_path):
    """qemu-img info names the data file but does not open it."""
    create(tmp_path, "a.qcow2", "64M", "data_file=a.data")
    os.unlink(tmp_path / "a.data")
    same(oracle, tmp_path, "a.qcow2")


def test_data_file_absolute_and_hostile_names(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M", f"data_file={tmp_path}/sub.data")
    same(oracle, tmp_path, "a.qcow2")
    make_qcow2(tmp_path / "b.qcow2", incompat=4,
               exts=ext(EXT_DATA_FILE, b"/etc/shadow"))
    same(oracle, tmp_path, "b.qcow2")


@pytest.mark.parametrize("incompat,autoclear,payload", [
    (4, 0, None),           # data file bit, no name: still "has" one
    (0, 2, None),           # data-file-raw without a data file
    (0, 0, b"x.data"),      # a name without the bit
    (4, 2, b""),            # empty name
    (4, 0, b"a\0b"),        # NUL inside the name
])
def test_data_file_odd_headers(oracle, tmp_path, incompat, autoclear, payload):
    exts = ext(EXT_DATA_FILE, payload) if payload is not None else b""
    make_qcow2(tmp_path / "a.qcow2", incompat=incompat, autoclear=autoclear,
               exts=exts)
    same(oracle, tmp_path, "a.qcow2")


# ------------------------------------------------------ backing files

def test_backing_qcow2(oracle, tmp_path):
    create(tmp_path, "base.qcow2", "64M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             "top.qcow2", cwd=tmp_path)
    same(oracle, tmp_path, "top.qcow2")
    same(oracle, tmp_path, "top.qcow2", chain=True)
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b",
             "top.qcow2", "-F", "qcow2", "v2.qcow2", cwd=tmp_path)
    same(oracle, tmp_path, "v2.qcow2")
    same(oracle, tmp_path, "v2.qcow2", chain=True)


def test_backing_chain_three_deep_with_snapshots(oracle, tmp_path):
    create(tmp_path, "b0.qcow2", "32M", "compat=0.10")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "b0.qcow2", "-F", "qcow2",
             "b1.qcow2", "64M", cwd=tmp_path)
    qemu_img("snapshot", "-c", "mid", "b1.qcow2", cwd=tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "b1.qcow2", "-F", "qcow2",
             "-o", "cluster_size=4K", "b2.qcow2", cwd=tmp_path)
    same(oracle, tmp_path, "b2.qcow2", chain=True)


def strip_backing_format(path):
    """Turns the backing format extension into an unknown one (ignored)."""
    off, _ = find_ext(path, EXT_BACKING_FMT)
    patch(path, off, ">I", 0x12345678)


def test_backing_without_format(oracle, tmp_path):
    create(tmp_path, "base.qcow2", "64M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             "top.qcow2", cwd=tmp_path)
    strip_backing_format(tmp_path / "top.qcow2")
    same(oracle, tmp_path, "top.qcow2")
    same(oracle, tmp_path, "top.qcow2", chain=True)


def write_mbr_raw(path, size=8 << 20):
    data = bytearray(size)
    struct.pack_into("<BBBBBBBBII", data, 446, 0x80, 0, 2, 0, 0x83, 0, 0, 0,
                     1, size // 512 - 1)
    data[510:512] = b"\x55\xaa"
    Path(path).write_bytes(bytes(data))


def test_backing_raw_with_mbr(oracle, tmp_path):
    write_mbr_raw(tmp_path / "disk.raw")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "disk.raw", "-F", "raw",
             "top.qcow2", cwd=tmp_path)
    same(oracle, tmp_path, "top.qcow2")
    same(oracle, tmp_path, "top.qcow2", chain=True)
    # Without a declared format the backing file is probed.
    strip_backing_format(tmp_path / "top.qcow2")
    same(oracle, tmp_path, "top.qcow2")
    same(oracle, tmp_path, "top.qcow2", chain=True)


@pytest.mark.parametrize("fmt", ["vmdk", "vpc", "qed", "vdi"])
def test_backing_other_formats(oracle, tmp_path, fmt):
    create(tmp_path, f"base.{fmt}", "32M", fmt=fmt)
    qemu_img("create", "-q", "-f", "qcow2", "-b", f"base.{fmt}", "-F", fmt,
             "top.qcow2", cwd=tmp_path)
    # Only the top image is opened: other drivers are not involved.
    same(oracle, tmp_path, "top.qcow2")


def test_backing_relative_and_absolute_in_subdirs(oracle, tmp_path):
    sub = tmp_path / "images" / "deep"
    sub.mkdir(parents=True)
    create(sub, "base.qcow2", "16M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "deep/base.qcow2", "-F",
             "qcow2", "images/rel.qcow2", cwd=tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(sub / "base.qcow2"),
             "-F", "qcow2", "images/abs.qcow2", cwd=tmp_path)
    create(tmp_path / "images", "base.qcow2", "8M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F",
             "qcow2", "images/deep/up.qcow2", cwd=tmp_path)
    # "../base.qcow2" leaves the image's directory: allow it for the chain.
    allow = ("--allow-path", str(tmp_path))
    for name in ("images/rel.qcow2", "images/abs.qcow2",
                 "images/deep/up.qcow2"):
        same(oracle, tmp_path, name)
        same(oracle, tmp_path, name, chain=True, instar_args=allow)
    same(oracle, sub, "up.qcow2")


@pytest.mark.parametrize("name", [
    "b" * 1023,                    # qemu's limit
    "dir/with space/and:colon.img",
    "nbd://example.com/x",         # protocol names are shown, not opened
    "a\0hidden",                   # NUL ends the name
    "",                            # empty name: no backing file
])
def test_backing_names_stored_in_image(oracle, tmp_path, name):
    make_qcow2(tmp_path / "a.qcow2", backing=name)
    same(oracle, tmp_path, "a.qcow2")


def test_backing_missing(oracle, tmp_path):
    """Without --backing-chain the backing file is only named."""
    make_qcow2(tmp_path / "a.qcow2", backing="gone.qcow2",
               exts=ext(EXT_BACKING_FMT, b"qcow2"))
    same(oracle, tmp_path, "a.qcow2")
    q, _ = assert_same(oracle, ["info", "--backing-chain", "a.qcow2"], tmp_path,
                       check_stderr=True)
    assert q.returncode == 1


def test_odd_bytes_in_names(oracle, tmp_path):
    """Invalid UTF-8 and control characters in names from the image."""
    snapshot_image(tmp_path / "a.qcow2", [
        snapshot_entry(b"\xff\xfe", b"bad\xc3\x28utf8\x01ctl\x7f",
                       extra=struct.pack(">QQQ", 1, 2, 3)),
        snapshot_entry("\u00e9\u4e2d", "\U0001F600 emoji",
                       extra=struct.pack(">QQQ", 1, 2, 3)),
    ], backing=b"back\xff\x80name")
    same(oracle, tmp_path, "a.qcow2")
    bitmap_image(tmp_path / "b.qcow2",
                 [bitmap_entry(b"b\xffm\x01", table_offset=6 * 65536)])
    same(oracle, tmp_path, "b.qcow2")


def test_backing_format_extension_only(oracle, tmp_path):
    """A backing format without a backing file is not shown."""
    make_qcow2(tmp_path / "a.qcow2", exts=ext(EXT_BACKING_FMT, b"raw"))
    same(oracle, tmp_path, "a.qcow2")


def test_backing_format_odd_values(oracle, tmp_path):
    make_qcow2(tmp_path / "a.qcow2", backing="base.img",
               exts=ext(EXT_BACKING_FMT, b"fifteen-chars!!"))
    same(oracle, tmp_path, "a.qcow2")
    make_qcow2(tmp_path / "b.qcow2", backing="base.img",
               exts=ext(EXT_BACKING_FMT, b"") + ext(EXT_BACKING_FMT, b"vmdk"))
    same(oracle, tmp_path, "b.qcow2")


# ---------------------------------------------------------- snapshots

def test_snapshots_after_writes(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M")
    for i, name in enumerate(["first", "second snapshot", "third-üñí"]):
        qemu_io("-f", "qcow2", "-c", f"write -P {i + 1} {i}M 64k", "a.qcow2",
                cwd=tmp_path)
        qemu_img("snapshot", "-c", name, "a.qcow2", cwd=tmp_path)
    qemu_img("snapshot", "-d", "second snapshot", "a.qcow2", cwd=tmp_path)
    qemu_img("snapshot", "-c", "fourth", "a.qcow2", cwd=tmp_path)
    same(oracle, tmp_path, "a.qcow2")


def test_snapshots_v2(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M", "compat=0.10")
    qemu_img("snapshot", "-c", "s1", "a.qcow2", cwd=tmp_path)
    qemu_img("snapshot", "-c", "s2", "a.qcow2", cwd=tmp_path)
    same(oracle, tmp_path, "a.qcow2")


def snapshot_image(path, entries, **kw):
    table = b"".join(entries)
    return make_qcow2(path, nb_snapshots=len(entries),
                      snapshots_offset=4 * 65536, tail=table, **kw)


@pytest.mark.parametrize("extra", [
    b"",                                                   # old v2 style
    struct.pack(">Q", 5 << 30),                            # 64-bit vm state
    struct.pack(">QQ", 5 << 30, 1 << 30),                  # + disk size
    struct.pack(">QQQ", 1 << 33, 64 << 20, 987654321),     # + icount
    struct.pack(">QQQ", 0, 64 << 20, 0xFFFFFFFFFFFFFFFF),  # icount unset
    struct.pack(">QQQQ", 7, 64 << 20, 42, 0xDEAD),         # unknown extra
    struct.pack(">QQQ", 0x8000000000000000, 0, 1 << 63),   # int64 wrap
    b"\1\2\3\4\5",                                         # partial field
    b"\xff" * 1024,                                        # qemu's maximum
], ids=["none", "vm64", "disk", "icount", "icount-unset", "unknown",
        "wrap", "partial", "max"])
def test_snapshot_extra_data(oracle, tmp_path, extra):
    snapshot_image(tmp_path / "a.qcow2", [
        snapshot_entry("1", "one", vm_state=123456, extra=extra),
        snapshot_entry("2", "two", extra=extra, date=(0xFFFFFFFF, 999999999),
                       clock=0xFFFFFFFFFFFFFFFF),
    ])
    same(oracle, tmp_path, "a.qcow2")


def test_snapshot_long_and_odd_names(oracle, tmp_path):
    """qemu keeps 127 bytes of an id and 255 of a name."""
    snapshot_image(tmp_path / "a.qcow2", [
        snapshot_entry("9" * 200, "n" * 300),
        snapshot_entry("", ""),
        snapshot_entry("id\0tail", "name\0tail"),
        snapshot_entry("1", "x" * 65535),
        snapshot_entry("dup", "same"),
        snapshot_entry("dup", "same"),
        snapshot_entry("tab\there", "quote\"back\\slash"),
    ])
    same(oracle, tmp_path, "a.qcow2")


def test_many_snapshots(oracle, tmp_path):
    entries = [snapshot_entry(str(i), f"snap{i}") for i in range(300)]
    snapshot_image(tmp_path / "a.qcow2", entries)
    same(oracle, tmp_path, "a.qcow2")


# ------------------------------------------------------------ bitmaps

def test_bitmaps(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "1G")
    qemu_img("bitmap", "--add", "a.qcow2", "b0", cwd=tmp_path)
    qemu_img("bitmap", "--add", "--granularity", "512", "a.qcow2", "small",
             cwd=tmp_path)
    qemu_img("bitmap", "--add", "--granularity", "2M", "--disable", "a.qcow2",
             "disabled", cwd=tmp_path)
    qemu_io("-f", "qcow2", "-c", "write 0 1M", "a.qcow2", cwd=tmp_path)
    same(oracle, tmp_path, "a.qcow2")


def test_bitmap_in_use_flag(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M")
    qemu_img("bitmap", "--add", "a.qcow2", "b0", cwd=tmp_path)
    qemu_img("bitmap", "--add", "--disable", "a.qcow2", "b1", cwd=tmp_path)
    off, _ = find_ext(tmp_path / "a.qcow2", EXT_BITMAPS)
    (dir_off,) = get(tmp_path / "a.qcow2", off + 8 + 16, ">Q")
    # Both entries are 24 + 2 bytes of name, padded to 32.
    for e in (dir_off, dir_off + 32):
        (flags,) = get(tmp_path / "a.qcow2", e + 12, ">I")
        patch(tmp_path / "a.qcow2", e + 12, ">I", flags | 1)
    same(oracle, tmp_path, "a.qcow2")


def test_bitmaps_without_autoclear_bit(oracle, tmp_path):
    """qemu warns (stderr) that the bitmaps are stale and shows none."""
    create(tmp_path, "a.qcow2", "64M")
    qemu_img("bitmap", "--add", "a.qcow2", "b0", cwd=tmp_path)
    set_autoclear(tmp_path / "a.qcow2", 0, clear=1)
    same(oracle, tmp_path, "a.qcow2")


def test_bitmaps_v2_ignored(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M", "compat=0.10")
    make_qcow2(tmp_path / "b.qcow2", version=2,
               exts=bitmaps_ext(1, 32, 4 * 65536))
    same(oracle, tmp_path, "b.qcow2")


def bitmap_image(path, entries, nb=None, size=64 << 20, dir_size=None,
                 tail_extra=b"", **kw):
    d = b"".join(entries)
    return make_qcow2(path, size=size, autoclear=1,
                      exts=bitmaps_ext(len(entries) if nb is None else nb,
                                       len(d) if dir_size is None else dir_size,
                                       4 * 65536),
                      tail=d + tail_extra, **kw)


def test_bitmap_generated_flags(oracle, tmp_path):
    table = 6 * 65536
    bitmap_image(tmp_path / "a.qcow2", [
        bitmap_entry("auto", table_offset=table, flags=2),
        bitmap_entry("none", table_offset=table, flags=0),
        bitmap_entry("inuse", table_offset=table, flags=1, table_size=99),
        bitmap_entry("both", table_offset=table, flags=3),
        bitmap_entry("inuse", table_offset=table, flags=1),   # repeat skipped
        bitmap_entry("g31", table_offset=table, gran_bits=31),
        bitmap_entry("x" * 1023, table_offset=table, gran_bits=9,
                     table_size=1),
    ])
    same(oracle, tmp_path, "a.qcow2")


# ------------------------------------------------- dirty, corrupt, crypto

def test_dirty_bit(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M", "lazy_refcounts=on")
    set_incompat(tmp_path / "a.qcow2", 1)
    same(oracle, tmp_path, "a.qcow2")


def test_corrupt_bit(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M")
    set_incompat(tmp_path / "a.qcow2", 2)
    same(oracle, tmp_path, "a.qcow2")


def test_dirty_and_corrupt(oracle, tmp_path):
    create(tmp_path, "a.qcow2", "64M", "compression_type=zstd")
    set_incompat(tmp_path / "a.qcow2", 3)
    same(oracle, tmp_path, "a.qcow2")


def test_aes_encryption(oracle, tmp_path):
    qemu_img("create", "-q", "--object", "secret,id=sec0,data=abc", "-f",
             "qcow2", "-o", "encrypt.format=aes,encrypt.key-secret=sec0",
             "a.qcow2", "16M", cwd=tmp_path)
    same(oracle, tmp_path, "a.qcow2")
    qemu_img("create", "-q", "--object", "secret,id=sec0,data=abc", "-f",
             "qcow2", "-o", "encrypt.format=aes,encrypt.key-secret=sec0,"
             "compat=0.10", "b.qcow2", "16M", cwd=tmp_path)
    same(oracle, tmp_path, "b.qcow2")


def create_luks(tmp, name, *opts):
    """qemu-img times PBKDF2 with CPU usage, which fails now and then on a
    busy machine ("Unable to get accurate CPU usage"): retry."""
    args = [QEMU_IMG, "create", "-q", "--object", "secret,id=sec0,data=abc",
            "-f", "qcow2", "-o",
            ",".join(["encrypt.format=luks", "encrypt.key-secret=sec0", *opts]),
            name, "16M"]
    r = run_calibrated(args, cwd=tmp)
    assert r is not None and r.returncode == 0, r and r.stderr.decode()
    return name


def test_luks_encryption(oracle, tmp_path):
    create_luks(tmp_path, "x.qcow2")
    same(oracle, tmp_path, "x.qcow2")


def test_luks_options(oracle, tmp_path):
    create_luks(tmp_path, "x.qcow2", "encrypt.cipher-alg=aes-128",
                "encrypt.cipher-mode=cbc", "encrypt.ivgen-alg=essiv",
                "encrypt.ivgen-hash-alg=sha256", "encrypt.hash-alg=sha1",
                "encrypt.iter-time=10", "cluster_size=4K")
    same(oracle, tmp_path, "x.qcow2")


def test_luks_damaged(oracle, tmp_path):
    """The LUKS header inside the image is checked at open."""
    create_luks(tmp_path, "x.qcow2", "encrypt.iter-time=10")
    off, _ = find_ext(tmp_path / "x.qcow2", EXT_CRYPTO)
    (hdr,) = get(tmp_path / "x.qcow2", off + 8, ">Q")
    data = bytearray((tmp_path / "x.qcow2").read_bytes())
    data[hdr + 8:hdr + 16] = b"bogus\0\0\0"       # cipher name
    (tmp_path / "y.qcow2").write_bytes(bytes(data))
    expect_failure(oracle, tmp_path, "y.qcow2")
    data = bytearray((tmp_path / "x.qcow2").read_bytes())
    data[hdr:hdr + 4] = b"XXXX"                    # magic
    (tmp_path / "z.qcow2").write_bytes(bytes(data))
    expect_failure(oracle, tmp_path, "z.qcow2")


def test_luks_without_crypto_header(oracle, tmp_path):
    """KNOWN DIVERGENCE: with the LUKS method but no crypto header
    extension, qemu-img info dies of SIGSEGV (a NULL crypto context in
    qcow2_refresh_limits).  instar fails cleanly with the message qemu
    gives when it opens such an image for I/O."""
    make_qcow2(tmp_path / "a.qcow2", crypt=2)
    q = run([oracle.path, "info", "a.qcow2"], cwd=tmp_path)
    assert q.returncode < 0 or q.returncode == 1
    i = instar("info", "a.qcow2", cwd=tmp_path, version=oracle.version)
    assert i.returncode == 1 and i.stdout == b""
    assert i.stderr.decode() == ("instar: Could not open 'a.qcow2': Missing "
                                 "CRYPTO header for crypt method 2\n")


def test_open_for_io_errors(oracle, tmp_path):
    """Opened to read guest data (here by map), an image is checked as
    qemu opens it for I/O: no key for encryption, the data file must
    exist (relative to the current directory, not the image's)."""
    qemu_img("create", "-q", "--object", "secret,id=sec0,data=abc", "-f",
             "qcow2", "-o", "encrypt.format=aes,encrypt.key-secret=sec0",
             "aes.qcow2", "16M", cwd=tmp_path)
    create_luks(tmp_path, "luks.qcow2", "encrypt.iter-time=10")
    make_qcow2(tmp_path / "nohdr.qcow2", crypt=2)
    make_qcow2(tmp_path / "noname.qcow2", incompat=4)
    make_qcow2(tmp_path / "rawonly.qcow2", autoclear=2)
    (tmp_path / "sub").mkdir()
    create(tmp_path / "sub", "df.qcow2", "16M", "data_file=df.data")
    for name in ("aes.qcow2", "luks.qcow2", "nohdr.qcow2", "noname.qcow2",
                 "rawonly.qcow2", "sub/df.qcow2"):
        q, _ = assert_same(oracle, ["map", name], tmp_path, check_stderr=True)
        assert q.returncode == 1


# ---------------------------------------------- hostile and corrupt input

def big_snapshot_table(path, count):
    """count entries of 66600 bytes each (over qemu's 64 MiB table limit
    from entry 1008 on), written sparsely: only the fixed headers."""
    make_qcow2(path, nb_snapshots=count, snapshots_offset=4 * 65536)
    off = 4 * 65536
    with open(path, "r+b") as f:
        for i in range(count):
            off = (off + 7) & ~7
            f.seek(off)
            f.write(struct.pack(">QIHHIIQII", 0, 0, 1, 65535, 0, 0, 0, 0, 1024))
            off += 40 + 1024 + 1 + 65535
        f.truncate(off)


def truncated(path, n):
    make_qcow2(path)
    path.write_bytes(path.read_bytes()[:n])


HOSTILE = {
    "truncated-8": lambda p: p.write_bytes(MAGIC + b"\0\0\0\3"),
    "truncated-40": lambda p: truncated(p, 40),
    "truncated-100": lambda p: truncated(p, 100),
    "version-4": lambda p: make_qcow2(p, version=4),
    "version-huge": lambda p: make_qcow2(p, version=0xFFFFFFFF),
    "cluster-bits-8": lambda p: make_qcow2(p, cluster_bits=8),
    "cluster-bits-22": lambda p: make_qcow2(p, cluster_bits=22),
    "cluster-bits-huge": lambda p: make_qcow2(p, cluster_bits=0xFFFFFFFF),
    "header-length-short": lambda p: make_qcow2(p, header_length=100),
    "header-length-104": lambda p: make_qcow2(p, header_length=104),
    "header-length-105": lambda p: make_qcow2(p, header_length=105,
                                              compression_type=1),
    "header-length-weird": lambda p: make_qcow2(p, header_length=4097,
                                                cluster_bits=12),
    "header-length-200": lambda p: make_qcow2(
        p, header_length=200, exts=ext(EXT_DATA_FILE, b"d.raw")),
    "header-length-cluster": lambda p: make_qcow2(p, header_length=65536),
    "header-length-too-big": lambda p: make_qcow2(p, header_length=65537),
    "backing-offset-beyond-cluster": lambda p: make_qcow2(
        p, backing="x", backing_offset=65537),
    "backing-name-1024": lambda p: make_qcow2(p, backing="a" * 1024),
    "backing-name-past-cluster": lambda p: make_qcow2(
        p, backing="abc", backing_offset=65534, backing_size=3),
    "backing-size-huge": lambda p: make_qcow2(
        p, backing="abc", backing_size=0xFFFFFFFF),
    "compression-unknown": lambda p: make_qcow2(p, compression_type=7),
    "compression-zstd-no-bit": lambda p: make_qcow2(p, compression_type=1),
    "compression-zlib-bit": lambda p: make_qcow2(p, incompat=8),
    "unknown-incompat": lambda p: make_qcow2(p, incompat=1 << 40),
    "unknown-incompat-many": lambda p: make_qcow2(
        p, incompat=(1 << 5) | (1 << 63) | 1),
    "unknown-incompat-named": lambda p: make_qcow2(
        p, incompat=(1 << 5) | (1 << 9) | (1 << 60),
        exts=ext(EXT_FEATURES, feature(0, 5, "fancy") + feature(1, 9, "compat")
                 + feature(0, 9, "nine") + feature(0, 60, "z" * 46)
                 + feature(0, 0, "dirty bit"))),
    "unknown-incompat-feature-shift": lambda p: make_qcow2(
        p, incompat=1 << 6, exts=ext(EXT_FEATURES, feature(0, 70, "wrapped"))),
    "unknown-incompat-table-after-bad-ext": lambda p: make_qcow2(
        p, incompat=1 << 7, exts=ext(EXT_BACKING_FMT, b"x" * 20)
        + ext(EXT_FEATURES, feature(0, 7, "seven"))),
    "unknown-incompat-table-after-crypto": lambda p: make_qcow2(
        p, incompat=1 << 7, crypt=2,
        exts=ext(EXT_CRYPTO, struct.pack(">QQ", 0, 0))
        + ext(EXT_FEATURES, feature(0, 7, "seven"))),
    "unknown-incompat-partial-table": lambda p: make_qcow2(
        p, incompat=1 << 8, exts=ext(EXT_FEATURES, feature(0, 8, "eight")[:20])),
    "subcluster-too-small": lambda p: make_qcow2(p, incompat=16,
                                                 cluster_bits=13),
    "refcount-order-7": lambda p: make_qcow2(p, refcount_order=7),
    "no-refcount-table": lambda p: make_qcow2(p, rt_clusters=0),
    "refcount-table-too-large": lambda p: make_qcow2(p, rt_clusters=129),
    "refcount-table-unaligned": lambda p: make_qcow2(p, rt_offset=65537),
    "refcount-table-offset-overflow": lambda p: make_qcow2(
        p, rt_offset=0x7FFFFFFFFFFF0000),
    "refcount-table-beyond-eof": lambda p: make_qcow2(p, rt_offset=1 << 40),
    "refcount-table-beyond-qemu-max": lambda p: make_qcow2(
        p, rt_offset=0x7FFFFFFFC0000000 - 65536, rt_clusters=2),
    "snapshot-count-absurd": lambda p: make_qcow2(
        p, nb_snapshots=0xFFFFFFFF, snapshots_offset=4 * 65536),
    "snapshot-count-65537": lambda p: make_qcow2(
        p, nb_snapshots=65537, snapshots_offset=4 * 65536),
    "snapshot-offset-unaligned-empty": lambda p: make_qcow2(
        p, snapshots_offset=12345),
    "snapshot-offset-overflow": lambda p: make_qcow2(
        p, nb_snapshots=2, snapshots_offset=0x7FFFFFFFFFFF0000),
    "snapshot-table-beyond-eof": lambda p: make_qcow2(
        p, nb_snapshots=3, snapshots_offset=1 << 40),
    "snapshot-table-beyond-qemu-max": lambda p: make_qcow2(
        p, nb_snapshots=3, snapshots_offset=0x7FFFFFFFC0000000),
    # 65536 entries pass the header check; the last ones cannot be read.
    "snapshot-65536-entries-past-max": lambda p: make_qcow2(
        p, nb_snapshots=65536,
        snapshots_offset=0x7FFFFFFFC0000000 - 65536 * 40 + 65536),
    "l1-huge": lambda p: make_qcow2(p, l1_size=0xFFFFFFFF),
    "l1-too-large": lambda p: make_qcow2(p, l1_size=(32 << 20) // 8 + 1),
    "l1-max": lambda p: make_qcow2(p, l1_size=(32 << 20) // 8),
    "l1-unaligned": lambda p: make_qcow2(p, l1_offset=3 * 65536 + 8),
    "l1-offset-overflow": lambda p: make_qcow2(p, l1_offset=0x7FFFFFFFFFFF0000,
                                               l1_size=8192 * 4),
    "l1-beyond-qemu-max": lambda p: make_qcow2(p, l1_offset=0x7FFFFFFFC0000000),
    "l1-below-qemu-max": lambda p: make_qcow2(p, l1_offset=0x7FFFFFFFB0000000),
    "l1-too-small": lambda p: make_qcow2(p, size=1 << 40, l1_size=1),
    "l1-empty-zero-size": lambda p: make_qcow2(p, size=0, l1_size=0),
    "image-too-big": lambda p: make_qcow2(p, size=1 << 62, cluster_bits=9,
                                          l1_size=1),
    "size-int64-max": lambda p: make_qcow2(p, size=(1 << 63) - 1,
                                           cluster_bits=21, l1_size=1 << 22),
    "size-negative": lambda p: make_qcow2(p, size=1 << 63, l1_size=1),
    "size-wraps": lambda p: make_qcow2(p, size=(1 << 64) - 512, l1_size=1),
    "crypt-method-3": lambda p: make_qcow2(p, crypt=3),
    "crypt-method-negative": lambda p: make_qcow2(p, crypt=0x80000001),
    "ext-too-large": lambda p: make_qcow2(
        p, exts=struct.pack(">II", 0xABCD, 70000)),
    "ext-header-straddles-end": lambda p: make_qcow2(
        p, backing="b", backing_offset=116),
    "backing-format-16": lambda p: make_qcow2(
        p, exts=ext(EXT_BACKING_FMT, b"x" * 16)),
    "crypto-ext-without-luks": lambda p: make_qcow2(
        p, exts=ext(EXT_CRYPTO, struct.pack(">QQ", 65536 * 4, 4096))),
    "crypto-ext-with-aes": lambda p: make_qcow2(
        p, crypt=1, exts=ext(EXT_CRYPTO, struct.pack(">QQ", 65536 * 4, 4096))),
    "crypto-ext-bad-size": lambda p: make_qcow2(
        p, crypt=2, exts=ext(EXT_CRYPTO, struct.pack(">QQI", 0, 0, 0))),
    "crypto-ext-unaligned": lambda p: make_qcow2(
        p, crypt=2, exts=ext(EXT_CRYPTO, struct.pack(">QQ", 100, 4096))),
    "crypto-ext-short-header": lambda p: make_qcow2(
        p, crypt=2, exts=ext(EXT_CRYPTO, struct.pack(">QQ", 65536 * 4, 100))),
    "luks-header-zeros": lambda p: make_qcow2(
        p, crypt=2, exts=ext(EXT_CRYPTO, struct.pack(">QQ", 65536 * 4, 4096))),
    "luks-header-beyond-eof": lambda p: make_qcow2(
        p, crypt=2, exts=ext(EXT_CRYPTO, struct.pack(">QQ", 1 << 40, 4096))),
    "luks-header-below-qemu-max": lambda p: make_qcow2(
        p, crypt=2, exts=ext(EXT_CRYPTO, struct.pack(
            ">QQ", 0x7FFFFFFFC0000000 - 65536, 4096))),
    "luks-header-beyond-qemu-max": lambda p: make_qcow2(
        p, crypt=2, exts=ext(EXT_CRYPTO, struct.pack(
            ">QQ", 0x7FFFFFFFC0000000, 4096))),
    "luks-header-negative-offset": lambda p: make_qcow2(
        p, crypt=2, exts=ext(EXT_CRYPTO, struct.pack(">QQ", 1 << 63, 4096))),
    "bitmaps-ext-bad-length": lambda p: make_qcow2(
        p, autoclear=1, exts=ext(EXT_BITMAPS, b"\0" * 16)),
    "bitmaps-ext-reserved": lambda p: make_qcow2(
        p, autoclear=1, exts=bitmaps_ext(1, 32, 4 * 65536, reserved=1)),
    "bitmaps-ext-too-many": lambda p: make_qcow2(
        p, autoclear=1, exts=bitmaps_ext(65536, 32, 4 * 65536)),
    "bitmaps-ext-zero": lambda p: make_qcow2(
        p, autoclear=1, exts=bitmaps_ext(0, 32, 4 * 65536)),
    "bitmaps-ext-unaligned": lambda p: make_qcow2(
        p, autoclear=1, exts=bitmaps_ext(1, 32, 4 * 65536 + 8)),
    "bitmaps-ext-dir-too-big": lambda p: make_qcow2(
        p, autoclear=1, exts=bitmaps_ext(1, 1024 * 65535 + 1, 4 * 65536)),
    "bitmaps-dir-size-zero": lambda p: make_qcow2(
        p, autoclear=1, exts=bitmaps_ext(1, 0, 4 * 65536)),
    "bitmaps-dir-beyond-qemu-max": lambda p: make_qcow2(
        p, autoclear=1, exts=bitmaps_ext(1, 32, 0x7FFFFFFFC0000000)),
    "bitmaps-dir-beyond-eof": lambda p: make_qcow2(
        p, autoclear=1, exts=bitmaps_ext(1, 32, 1 << 40)),
    "bitmaps-more-than-header": lambda p: bitmap_image(p, [
        bitmap_entry("a", table_offset=6 * 65536),
        bitmap_entry("b", table_offset=6 * 65536)], nb=1),
    "bitmaps-less-than-header": lambda p: bitmap_image(p, [
        bitmap_entry("a", table_offset=6 * 65536)], nb=2),
    "bitmaps-broken-dir": lambda p: bitmap_image(p, [
        bitmap_entry("a", table_offset=6 * 65536)], dir_size=20),
    "bitmaps-dir-trailing": lambda p: bitmap_image(p, [
        bitmap_entry("a", table_offset=6 * 65536)], dir_size=40),
    "bitmaps-name-past-dir": lambda p: bitmap_image(p, [
        bitmap_entry("a", table_offset=6 * 65536, name_size=100)],
        dir_size=32),
    "bitmaps-extra-data": lambda p: bitmap_image(p, [
        bitmap_entry("a", table_offset=6 * 65536, extra=b"\0" * 8)]),
    "bitmaps-extra-data-wraps": lambda p: bitmap_image(p, [
        bitmap_entry("a", table_offset=6 * 65536)[:20]
        + struct.pack(">I", 0xFFFFFFF0) + b"a" + b"\0" * 7]),
    "bitmaps-bad-type": lambda p: bitmap_image(p, [
        bitmap_entry("typ", table_offset=6 * 65536, type_=2)]),
    "bitmaps-bad-granularity": lambda p: bitmap_image(p, [
        bitmap_entry("g8", table_offset=6 * 65536, gran_bits=8)]),
    "bitmaps-granularity-32": lambda p: bitmap_image(p, [
        bitmap_entry("g32", table_offset=6 * 65536, gran_bits=32)]),
    "bitmaps-reserved-flags": lambda p: bitmap_image(p, [
        bitmap_entry("fl", table_offset=6 * 65536, flags=4)]),
    "bitmaps-table-offset-zero": lambda p: bitmap_image(p, [
        bitmap_entry("t0", table_offset=0)]),
    "bitmaps-table-unaligned": lambda p: bitmap_image(p, [
        bitmap_entry("tu", table_offset=6 * 65536 + 512)]),
    "bitmaps-table-size-zero": lambda p: bitmap_image(p, [
        bitmap_entry("ts", table_offset=6 * 65536, table_size=0)]),
    "bitmaps-table-too-small": lambda p: bitmap_image(p, [
        bitmap_entry("small", table_offset=6 * 65536, gran_bits=9)],
        size=1 << 40),
    "bitmaps-table-phys-too-big": lambda p: bitmap_image(p, [
        bitmap_entry("phys", table_offset=6 * 65536, table_size=8193)]),
    "bitmaps-table-wrong-size": lambda p: bitmap_image(p, [
        bitmap_entry("wrong", table_offset=6 * 65536, table_size=2)]),
    "bitmaps-duplicate-name": lambda p: bitmap_image(p, [
        bitmap_entry("dup", table_offset=6 * 65536),
        bitmap_entry("dup", table_offset=6 * 65536)]),
    "bitmaps-duplicate-after-nul": lambda p: bitmap_image(p, [
        bitmap_entry("dup\0one", table_offset=6 * 65536),
        bitmap_entry("dup\0two", table_offset=6 * 65536)]),
    "bitmaps-table-bad-entry": lambda p: bitmap_image(p, [
        bitmap_entry("bad", table_offset=5 * 65536)],
        tail_extra=b"\0" * (65536 - 32) + struct.pack(">Q", 1 << 60)),
    "bitmaps-table-entry-unaligned": lambda p: bitmap_image(p, [
        bitmap_entry("una", table_offset=5 * 65536)],
        tail_extra=b"\0" * (65536 - 32) + struct.pack(">Q", 0x10200)),
    "bitmaps-table-entry-all-ones": lambda p: bitmap_image(p, [
        bitmap_entry("ones", table_offset=5 * 65536)],
        tail_extra=b"\0" * (65536 - 32) + struct.pack(">Q", 0x10001)),
    "bitmaps-table-beyond-qemu-max": lambda p: bitmap_image(p, [
        bitmap_entry("far", table_offset=0x7FFFFFFFC0000000)]),
    "bitmaps-zero-size-image": lambda p: bitmap_image(p, [
        bitmap_entry("zero", table_offset=6 * 65536)], size=0),
    "snapshot-extra-too-big": lambda p: snapshot_image(p, [
        snapshot_entry("1", "a", extra=b"\0" * 1025)]),
    "snapshot-table-too-big": lambda p: big_snapshot_table(p, 1100),
    "snapshot-id-beyond-qemu-max": lambda p: make_qcow2(
        p, nb_snapshots=1, snapshots_offset=0x7FFFFFFFBFFF0000,
        tail=b""),
    "garbage-after-magic": lambda p: p.write_bytes(
        MAGIC + b"\0\0\0\3" + random.Random(1234).randbytes(4096)),
}


# KNOWN DIVERGENCE: for these qemu prints a second line, a hint to run
# "qemu-img check -r all"; instar's messages are one line.
HINT_CASES = {"snapshot-extra-too-big", "snapshot-table-too-big"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile(oracle, tmp_path, case):
    HOSTILE[case](tmp_path / "h.qcow2")
    if case not in HINT_CASES:
        same_error(oracle, tmp_path, "h.qcow2")
        return
    q, i = same_error(oracle, tmp_path, "h.qcow2", check_stderr=False)
    assert q.returncode == 1
    qerr = q.stderr.decode().splitlines()
    ierr = i.stderr.decode().splitlines()
    assert len(qerr) == 2 and "qemu-img check -r all" in qerr[1]
    assert ierr == [qerr[0].replace("qemu-img:", "instar:")]


@pytest.mark.parametrize("case", ["unknown-incompat", "l1-huge",
                                  "version-4", "snapshot-count-absurd"])
def test_hostile_forced_format(oracle, tmp_path, case):
    p = tmp_path / "h.img"
    HOSTILE[case](p)
    same_error(oracle, tmp_path, "h.img", extra=("-f", "qcow2"))


def test_not_qcow2_with_forced_format(oracle, tmp_path):
    write_mbr_raw(tmp_path / "d.raw", 1 << 20)
    same_error(oracle, tmp_path, "d.raw", extra=("-f", "qcow2"))


def test_hostile_never_crash_on_bit_flips(tmp_path):
    """Every single-bit flip of a header with snapshots, bitmaps and
    extensions: instar exits 0 or 1 with one line, never crashes."""
    create(tmp_path, "a.qcow2", "64M")
    qemu_img("bitmap", "--add", "a.qcow2", "b0", cwd=tmp_path)
    qemu_img("snapshot", "-c", "s1", "a.qcow2", cwd=tmp_path)
    base = (tmp_path / "a.qcow2").read_bytes()
    rnd = random.Random(7)
    for n in range(150):
        data = bytearray(base)
        pos = rnd.randrange(0, 512) if n % 3 else rnd.randrange(0, len(data))
        data[pos] ^= 1 << rnd.randrange(8)
        (tmp_path / "f.qcow2").write_bytes(bytes(data))
        r = instar("info", "--output=json", "f.qcow2", cwd=tmp_path)
        assert r.returncode in (0, 1), (pos, r.stderr)
        if r.returncode:
            assert len(r.stderr.splitlines()) == 1, (pos, r.stderr)
