"""vmdk info: instar against every qemu-img oracle, human and JSON.

Images come from qemu-img over the option space (every subformat, adapter
types, hardware/tools versions, zeroed grains, backing files, sizes that
split into 2 GB extents), and from small generators for what qemu-img
does not write: VMDK3 (COWD) files, streamOptimized footers, seSparse,
vmfs descriptors, nested descriptors, and hostile or corrupt headers and
descriptors.  Hostile files must fail in instar where and as they fail in
qemu-img, and extent names are followed only as the host policy allows.

Known divergences (each asserted below with its reason):
- a descriptor with no usable RW extent: qemu-img aborts on an assertion
  (exit 134); instar exits 1 with a message.
- sizes bdrv_getlength() cannot express: qemu-img prints "Can't get image
  size 'F'..." without the "Could not open 'F': " prefix instar's host
  always adds; stdout and exit status are the same.
- an error message holding a newline: instar's host folds it into one line.
"""
import os
import struct
import time
import zlib

import pytest

from conftest import assert_info_same, assert_same, instar, qemu_img, qemu_io, run

SECRET = b"SECRET-vmdk-4b1d-do-not-leak\n" * 64

# ---------------------------------------------------------------- helpers


def create(tmp, name, size="64M", *opts, backing=None):
    args = ["create", "-q", "-f", "vmdk"]
    if opts:
        args += ["-o", ",".join(opts)]
    if backing:
        args += ["-b", backing, "-F", "vmdk"]
    qemu_img(*args, name, size, cwd=tmp)
    return name


def same_error(oracle, tmp, name, check_stderr=True, extra=()):
    q, i = assert_same(oracle, ["info", *extra, name], tmp, check_stderr=check_stderr)
    assert_same(oracle, ["info", *extra, "--output=json", name], tmp,
                check_stderr=check_stderr)
    return q, i


def expect_failure(oracle, tmp, name, fragment=None, check_stderr=True, extra=()):
    q, _ = same_error(oracle, tmp, name, check_stderr=check_stderr, extra=extra)
    assert q.returncode == 1, q.stdout
    if fragment:
        assert fragment in q.stderr.decode(), q.stderr


def vmdk4_header(*, version=1, flags=3, capacity=2048, granularity=128,
                 desc_offset=1, desc_size=20, gtes=512, rgd=0, gd=21,
                 grain_offset=128, compress=0, magic=b"KDMV"):
    h = magic + struct.pack("<IIQQQQIQQQ", version, flags, capacity, granularity,
                            desc_offset, desc_size, gtes, rgd, gd, grain_offset)
    h += b"\0" + b"\n \r\n" + struct.pack("<H", compress)
    return h.ljust(512, b"\0")


def desc(create_type="monolithicFlat", extents=(), cid="abcdef01",
         parent="ffffffff", extra=b"", nl=b"\n"):
    lines = [b"# Disk DescriptorFile", b"version=1", b"CID=" + cid.encode(),
             b"parentCID=" + parent.encode(),
             b'createType="' + create_type.encode() + b'"']
    if extra:
        lines.append(extra)
    lines += [b"", b"# Extent description"]
    lines += [e.encode() if isinstance(e, str) else e for e in extents]
    lines += [b"", b"# The Disk Data Base", b"#DDB", b'ddb.adapterType = "ide"']
    return nl.join(lines) + nl


SPARSE_DESC = desc("monolithicSparse", ['RW 2048 SPARSE "x.vmdk"'], cid="12345678")


def write_sparse(path, descriptor=SPARSE_DESC, size=None, **kw):
    """A monolithicSparse-like VMDK4 file: header, descriptor, no grains."""
    data = vmdk4_header(**kw) + descriptor.ljust(20 * 512, b"\0")
    if size is None:
        data = data.ljust(128 * 512, b"\0")
    else:
        data = data[:size].ljust(size, b"\0")
    path.write_bytes(data)


def marker(val, size, typ):
    return struct.pack("<QII", val, size, typ).ljust(512, b"\0")


def write_stream(path, footer=None, eos_type=0, **kw):
    """streamOptimized with the grain directory offset in a footer."""
    kw.setdefault("gd", 2**64 - 1)
    kw.setdefault("compress", 1)
    kw.setdefault("flags", 0x30003)
    kw.setdefault("version", 3)
    d = SPARSE_DESC.replace(b"monolithicSparse", b"streamOptimized")
    body = (vmdk4_header(**kw) + d.ljust(20 * 512, b"\0")).ljust(128 * 512, b"\0")
    fk = dict(kw, gd=200)
    fk.update(footer or {})
    path.write_bytes(body + marker(1, 0, 3) + vmdk4_header(**fk) + marker(0, 0, eos_type))


def write_cowd(path, *, sectors=2048, granularity=16, l1_offset=4, l1_size=1,
               descriptor=b"# Disk\nCID=11\nparentCID=22\n", size=4608):
    h = b"COWD" + struct.pack("<10I", 1, 3, sectors, granularity, l1_offset, l1_size,
                              0, 0, 0, 0)
    data = h.ljust(512, b"\0") + descriptor if descriptor else h
    path.write_bytes(data.ljust(size, b"\0"))


def write_sesparse(path, *, capacity=2048, grain_size=8, gt_size=64, flags=0,
                   reserved=(0, 0, 0, 0), voff=1, gd_off=2, gd_size=1, const_pad=0,
                   vmagic=0xCAFECAFE, replay=0, magic=0xCAFEBABE,
                   version=0x200000001):
    c = struct.pack("<26Q", magic, version, capacity, grain_size, gt_size, flags,
                    *reserved, voff, 1, 0, 0, 0, 0, gd_off, gd_size, 3, 1, 0, 0,
                    0, 0, 4, 1)
    c = c.ljust(512, b"\0")
    if const_pad:
        c = c[:300] + b"\1" + c[301:]
    v = struct.pack("<4Q", vmagic, 0, 0, replay).ljust(512, b"\0")
    path.write_bytes((c + v).ljust(8192, b"\0"))


# ---------------------------------------------------------------- qemu-img made

SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized"]


@pytest.mark.parametrize("subformat", SUBFORMATS)
@pytest.mark.parametrize("size", ["1M", "64M", "3G"])
def test_subformats(oracle, tmp_path, subformat, size):
    create(tmp_path, "t.vmdk", size, f"subformat={subformat}")
    assert_info_same(oracle, tmp_path, "t.vmdk")


@pytest.mark.parametrize("subformat", ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
def test_100g_splits_into_50_extents(oracle, tmp_path, subformat):
    create(tmp_path, "big.vmdk", "100G", f"subformat={subformat}")
    assert_info_same(oracle, tmp_path, "big.vmdk")


def test_200g_has_100_extent_files(oracle, tmp_path):
    create(tmp_path, "big.vmdk", "200G", "subformat=twoGbMaxExtentFlat")
    assert_info_same(oracle, tmp_path, "big.vmdk")


def test_sizes_odd(oracle, tmp_path):
    create(tmp_path, "zero.vmdk", "0")
    create(tmp_path, "odd.vmdk", "1000")
    create(tmp_path, "huge.vmdk", "2T")
    for name in ("zero.vmdk", "odd.vmdk", "huge.vmdk"):
        assert_info_same(oracle, tmp_path, name)


@pytest.mark.parametrize("opts", [
    ("adapter_type=ide",), ("adapter_type=buslogic",), ("adapter_type=lsilogic",),
    ("adapter_type=legacyESX",), ("hwversion=4",), ("hwversion=6",),
    ("hwversion=undefined",), ("compat6=on",), ("zeroed_grain=on",),
    ("toolsversion=10240",), ("zeroed_grain=on", "subformat=twoGbMaxExtentSparse"),
    ("adapter_type=lsilogic", "subformat=monolithicFlat"),
    ("compat6=on", "subformat=streamOptimized"),
])
def test_create_options(oracle, tmp_path, opts):
    create(tmp_path, "t.vmdk", "3G", *opts)
    assert_info_same(oracle, tmp_path, "t.vmdk")


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_converted_data(oracle, tmp_path, subformat):
    (tmp_path / "data.raw").write_bytes(os.urandom(1 << 20) + b"\0" * (2 << 20) +
                                        os.urandom(300000))
    qemu_img("convert", "-O", "vmdk", "-o", f"subformat={subformat}", "data.raw",
             "t.vmdk", cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "t.vmdk")


def test_written_with_qemu_io(oracle, tmp_path):
    create(tmp_path, "t.vmdk", "5G", "subformat=twoGbMaxExtentSparse")
    qemu_io("-f", "vmdk", "-c", "write -P 7 0 1M", "-c", "write -P 9 3G 64k",
            "-c", "write -z 4G 1M", "t.vmdk", cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "t.vmdk")


@pytest.mark.parametrize("subformat", ["monolithicSparse", "twoGbMaxExtentSparse",
                                       "streamOptimized"])
def test_backing_file(oracle, tmp_path, subformat):
    create(tmp_path, "base.vmdk", "64M")
    create(tmp_path, "top.vmdk", "64M", f"subformat={subformat}", backing="base.vmdk")
    assert_info_same(oracle, tmp_path, "top.vmdk")
    assert_info_same(oracle, tmp_path, "top.vmdk", chain=True)


def chain_in_subdir(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    create(sub, "base.vmdk", "64M", "subformat=twoGbMaxExtentFlat")
    create(sub, "mid.vmdk", "64M", backing="base.vmdk")
    create(sub, "top.vmdk", "64M", "subformat=twoGbMaxExtentSparse", backing="mid.vmdk")
    return sub


def test_backing_chain_and_subdirectories(oracle, tmp_path):
    sub = chain_in_subdir(tmp_path)
    for name in ("sub/top.vmdk", "sub/base.vmdk"):
        assert_info_same(oracle, tmp_path, name)
    assert_info_same(oracle, tmp_path, "sub/mid.vmdk", chain=True)
    assert_info_same(oracle, sub, "mid.vmdk", chain=True)


def test_backing_chain_three_deep(oracle, tmp_path):
    sub = chain_in_subdir(tmp_path)
    assert_info_same(oracle, sub, "top.vmdk", chain=True)
    assert_info_same(oracle, tmp_path, "sub/top.vmdk", chain=True)


def test_explicit_format(oracle, tmp_path):
    create(tmp_path, "t.vmdk", "64M", "subformat=twoGbMaxExtentSparse")
    assert_info_same(oracle, tmp_path, "t.vmdk", extra=("-f", "vmdk"))


# ---------------------------------------------------------------- crafted, valid

def test_cowd_vmdk3(oracle, tmp_path):
    write_cowd(tmp_path / "c.vmdk")
    write_cowd(tmp_path / "g0.vmdk", granularity=0)
    for name in ("c.vmdk", "g0.vmdk"):
        assert_info_same(oracle, tmp_path, name)


def test_cowd_without_cid_fails(oracle, tmp_path):
    write_cowd(tmp_path / "c.vmdk", descriptor=b"")
    expect_failure(oracle, tmp_path, "c.vmdk", "Invalid argument")


@pytest.mark.parametrize("kw", [
    dict(granularity=2**21 + 1), dict(l1_size=32 * 1024 * 1024 + 1),
])
def test_cowd_limits(oracle, tmp_path, kw):
    write_cowd(tmp_path / "c.vmdk", **kw)
    expect_failure(oracle, tmp_path, "c.vmdk")


def test_stream_optimized_footer(oracle, tmp_path):
    write_stream(tmp_path / "s.vmdk")
    assert_info_same(oracle, tmp_path, "s.vmdk")


@pytest.mark.parametrize("footer,eos,msg", [
    ({}, 1, "Invalid footer"),
    ({"magic": b"XXXX"}, 0, "Invalid footer"),
    ({"version": 9}, 0, "Unsupported VMDK version 9"),
    ({"gtes": 1000}, 0, "L2 table size too big"),
])
def test_stream_optimized_bad_footer(oracle, tmp_path, footer, eos, msg):
    write_stream(tmp_path / "s.vmdk", footer=footer, eos_type=eos)
    expect_failure(oracle, tmp_path, "s.vmdk", msg)


def test_stream_footer_uncompressed_is_monolithic(oracle, tmp_path):
    write_stream(tmp_path / "s.vmdk", footer={"compress": 0})
    assert_info_same(oracle, tmp_path, "s.vmdk")


@pytest.mark.parametrize("size", [1000, 1536])
def test_stream_footer_short_file(oracle, tmp_path, size):
    write_sparse(tmp_path / "s.vmdk", gd=2**64 - 1, grain_offset=0, size=size)
    expect_failure(oracle, tmp_path, "s.vmdk")


def test_stream_extent_footer_offset_quirk(oracle, tmp_path):
    """qemu reads a listed streamOptimized extent's footer at an offset
    taken from the descriptor file's size."""
    write_stream(tmp_path / "s.vmdk")
    d = desc("monolithicFlat", ['RW 2048 SPARSE "s.vmdk"'])
    (tmp_path / "short.vmdk").write_bytes(d)
    (tmp_path / "padded.vmdk").write_bytes(
        d.ljust((tmp_path / "s.vmdk").stat().st_size, b"#"))
    expect_failure(oracle, tmp_path, "short.vmdk", "Failed to read footer")
    assert_info_same(oracle, tmp_path, "padded.vmdk")


@pytest.mark.parametrize("kw", [
    {}, dict(version=3), dict(version=2), dict(flags=0x20003), dict(flags=1),
    dict(flags=7), dict(rgd=30), dict(capacity=0, desc_offset=0),
    dict(capacity=2**53), dict(granularity=8), dict(granularity=2**21),
    dict(gtes=1), dict(capacity=1), dict(grain_offset=0),
    dict(capacity=2**40, granularity=1, gtes=1),    # L1 size truncates to 0
    dict(capacity=2**32 + 5, granularity=2**31, gtes=2),
])
def test_sparse_header_variants(oracle, tmp_path, kw):
    write_sparse(tmp_path / "x.vmdk", **kw)
    assert_info_same(oracle, tmp_path, "x.vmdk")


@pytest.mark.parametrize("kw", [{}, dict(gd_off=2**55), dict(capacity=4096)])
def test_sesparse(oracle, tmp_path, kw):
    write_sesparse(tmp_path / "se.raw", **kw)
    (tmp_path / "se.vmdk").write_bytes(desc("seSparse", ['RW 2048 SESPARSE "se.raw"']))
    assert_info_same(oracle, tmp_path, "se.vmdk")


@pytest.mark.parametrize("kw", [
    dict(magic=1), dict(version=1), dict(grain_size=16), dict(gt_size=32),
    dict(flags=1), dict(reserved=(0, 0, 5, 0)), dict(const_pad=1),
    dict(vmagic=5), dict(replay=1), dict(voff=2**60), dict(gd_size=2**20),
    dict(gd_off=2**54), dict(capacity=2**64 - 8),
])
def test_sesparse_bad(oracle, tmp_path, kw):
    write_sesparse(tmp_path / "se.raw", **kw)
    (tmp_path / "se.vmdk").write_bytes(desc("seSparse", ['RW 2048 SESPARSE "se.raw"']))
    expect_failure(oracle, tmp_path, "se.vmdk")


@pytest.mark.parametrize("create_type,lines", [
    ("vmfs", ['RW 2048 VMFS "flat.img"']),
    ("vmfsSparse", ['RW 2048 VMFSSPARSE "c.vmdk"']),
    ("vmfsSparse", ['RW 2048 VMFSSPARSE "x.vmdk"']),
    ("monolithicFlat", ['RW 2048 FLAT "flat.img" 0', 'RW 2048 SPARSE "x.vmdk"']),
    ("twoGbMaxExtentSparse", ['RW 2048 SPARSE "c.vmdk"', 'RW 2048 SPARSE "x.vmdk"']),
    ("monolithicFlat", ['RW 1000 FLAT "flat.img" 0', 'RW 1048 FLAT "flat.img" 1000']),
    ("monolithicFlat", ['RDONLY 2048 FLAT "missing" 0', 'NOACCESS 5 FLAT "gone" 0',
                        'RW 2048 FLAT "flat.img" 0', 'RW 0 FLAT "flat.img" 0',
                        'RW -5 FLAT "flat.img" 0', 'RW 7 ZERO "nothing"',
                        'RW 9 SPARSEX "nothing"', 'RW2048 FLAT "nothing" 0']),
    ("monolithicFlat", ['RW 2048 FLAT "flat.img" 0 trailing words']),
    ("monolithicFlat", ['  RW   2048   FLAT   "flat.img"    0']),
    ("monolithicFlat", ['RW 2048 FLAT "d.vmdk" 0']),
    ("monolithicFlat", ['RW 99999999999999999999 FLAT "flat.img" 0']),
    ("monolithicFlat", ['RW 4611686018427387903 FLAT "flat.img" 0',
                        'RW 4611686018427387903 FLAT "flat.img" 0',
                        'RW 4611686018427387903 FLAT "flat.img" 0',
                        'RW 4611686018427387907 FLAT "flat.img" 0']),
])
def test_descriptor_extents(oracle, tmp_path, create_type, lines):
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    write_cowd(tmp_path / "c.vmdk")
    write_sparse(tmp_path / "x.vmdk")
    (tmp_path / "d.vmdk").write_bytes(desc(create_type, lines))
    q, _ = same_error(oracle, tmp_path, "d.vmdk")


def test_blank_line_repeats_extent(oracle, tmp_path):
    """sscanf skips newlines: a blank line before an extent line parses it
    twice, and qemu adds the extent twice."""
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    lines = ['RW 2048 FLAT "flat.img" 0', "", "", 'RW 100 FLAT "flat.img" 0']
    (tmp_path / "d.vmdk").write_bytes(desc("monolithicFlat", lines))
    assert_info_same(oracle, tmp_path, "d.vmdk")


def test_nested_descriptors(oracle, tmp_path):
    """A sparse file with capacity 0 and a descriptor lists more extents."""
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    write_sparse(tmp_path / "x.vmdk")
    inner = desc("twoGbMaxExtentFlat", ['RW 2048 FLAT "flat.img" 0',
                                        'RW 2048 SPARSE "x.vmdk"'], cid="1")
    write_sparse(tmp_path / "inner.vmdk", inner, capacity=0)
    (tmp_path / "outer.vmdk").write_bytes(
        desc("monolithicFlat", ['RW 4096 SPARSE "inner.vmdk"', 'RW 100 FLAT "flat.img" 0'],
             cid="2"))
    write_sparse(tmp_path / "top.vmdk", desc("monolithicFlat", ['RW 2048 FLAT "flat.img" 0']),
                 capacity=0)
    assert_info_same(oracle, tmp_path, "outer.vmdk")
    assert_info_same(oracle, tmp_path, "top.vmdk")


def test_nesting_loop_fails(tmp_path):
    """A capacity-0 sparse file listing itself: qemu recurses until it
    runs out of file descriptors; instar stops at a depth limit."""
    write_sparse(tmp_path / "loop.vmdk",
                 desc("monolithicFlat", ['RW 2048 SPARSE "loop.vmdk"']), capacity=0)
    r = instar("info", "loop.vmdk", cwd=tmp_path)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr


@pytest.mark.parametrize("variant", [
    "crlf", "cid_first", "cid_negative", "cid_big", "cid_0x", "cid_0xg",
    "cid_spaces", "parent_hint", "parent_hint_unterminated", "parent_hint_empty",
    "parent_hint_long", "giant", "comments_before_version", "space_lines",
])
def test_descriptor_text_variants(oracle, tmp_path, variant):
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    write_sparse(tmp_path / "base.vmdk")
    d = desc("monolithicFlat", ['RW 2048 FLAT "flat.img" 0'])
    if variant == "crlf":
        d = d.replace(b"\n", b"\r\n")
    elif variant == "cid_first":
        d = d.replace(b"CID=abcdef01\nparentCID=ffffffff", b"parentCID=77\nCID=5")
    elif variant == "cid_negative":
        d = d.replace(b"CID=abcdef01", b"CID=  -0x5")
    elif variant == "cid_big":
        d = d.replace(b"CID=abcdef01", b"CID=123456789abcdef0123")
    elif variant == "cid_0x":
        d = d.replace(b"CID=abcdef01", b"CID=0X1f")
    elif variant == "cid_0xg":
        d = d.replace(b"CID=abcdef01", b"CID=0xg")
    elif variant == "cid_spaces":
        d = d.replace(b"CID=abcdef01", b"CID=\n\n  +beef")
    elif variant == "parent_hint":
        d = d.replace(b"parentCID=ffffffff", b'parentCID=12\nparentFileNameHint="base.vmdk"')
    elif variant == "parent_hint_unterminated":
        d = d.replace(b"parentCID=ffffffff", b'parentCID=12\nparentFileNameHint="base.vmdk')
    elif variant == "parent_hint_empty":
        d = d.replace(b"parentCID=ffffffff", b'parentCID=12\nparentFileNameHint=""')
    elif variant == "parent_hint_long":
        d = d.replace(b"parentCID=ffffffff",
                      b'parentCID=12\nparentFileNameHint="' + b"a" * 4096 + b'"')
    elif variant == "giant":
        d = d + b"#" * (2 << 20) + b'\nRW 2048 FLAT "flat.img" 0\n'
    elif variant == "comments_before_version":
        d = b"# one\n#two\n" + d
    elif variant == "space_lines":
        d = b"   \n \r\n" + d
    (tmp_path / "d.vmdk").write_bytes(d)
    same_error(oracle, tmp_path, "d.vmdk")


@pytest.mark.parametrize("variant,msg", [
    ("no_create_type", "invalid VMDK image descriptor"),
    ("create_type_127", "Unsupported image type"),
    ("create_type_128", "invalid VMDK image descriptor"),
    ("monolithic_sparse_text", "Unsupported image type 'monolithicSparse'"),
    ("stream_text", "Unsupported image type 'streamOptimized'"),
    ("flat_no_offset", "Invalid extent line"),
    ("flat_negative_offset", "Invalid extent line"),
    ("vmfs_offset", "Invalid extent line"),
    ("sparse_offset", "Invalid extent line"),
    ("zero_offset", "Invalid extent line"),
    ("missing_extent", "Could not open 'missing.img': No such file or directory"),
    ("sparse_not_vmdk", "Image not in VMDK format"),
    ("sparse_tiny", "File is too small, not a valid image"),
    ("no_cid", "Invalid argument"),
    ("cid_beyond_10k", "Invalid argument"),
    ("cid_no_digits", "Invalid argument"),
    ("long_fname_flat", "Invalid extent line"),
])
def test_descriptor_errors(oracle, tmp_path, variant, msg):
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    (tmp_path / "tiny.img").write_bytes(b"")
    ext = ['RW 2048 FLAT "flat.img" 0']
    ct = "monolithicFlat"
    head = b""
    if variant == "create_type_127":
        ct = "a" * 127
    elif variant == "create_type_128":
        ct = "a" * 128
    elif variant == "monolithic_sparse_text":
        ct = "monolithicSparse"
    elif variant == "stream_text":
        ct = "streamOptimized"
    elif variant == "flat_no_offset":
        ext = ['RW 2048 FLAT "flat.img"']
    elif variant == "flat_negative_offset":
        ext = ['RW 2048 FLAT "flat.img" -1']
    elif variant == "vmfs_offset":
        ext = ['RW 2048 VMFS "flat.img" 5']
    elif variant == "sparse_offset":
        ext = ['RW 2048 SPARSE "flat.img" 0']
    elif variant == "zero_offset":
        ext = ['RW 2048 ZERO "flat.img" 0']
    elif variant == "missing_extent":
        ext = ['RW 2048 FLAT "missing.img" 0']
    elif variant == "sparse_not_vmdk":
        ext = ['RW 2048 SPARSE "flat.img"']
    elif variant == "sparse_tiny":
        ext = ['RW 2048 SPARSE "tiny.img"']
    elif variant == "long_fname_flat":
        ext = ['RW 2048 FLAT "' + "f" * 600 + '" 0']
    d = desc(ct, ext)
    if variant == "no_create_type":
        d = d.replace(b"createType", b"kreateType")
    elif variant == "no_cid":
        d = d.replace(b"CID", b"XID")
    elif variant == "cid_beyond_10k":
        d = b"# x\nversion=1\n" + b"#" * (20 * 512) + b"\n" + d.replace(b"version=1\n", b"")
    elif variant == "cid_no_digits":
        d = d.replace(b"CID=abcdef01", b"CID=zz")
    (tmp_path / "d.vmdk").write_bytes(head + d)
    expect_failure(oracle, tmp_path, "d.vmdk", msg)


def test_create_type_with_newline_message(oracle, tmp_path):
    """qemu's message spans lines; instar's host prints one line (stderr
    only: status and stdout agree)."""
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    d = desc("monolithicFlat", ['RW 2048 FLAT "flat.img" 0']).replace(
        b'createType="monolithicFlat"', b"createType")
    (tmp_path / "d.vmdk").write_bytes(d)
    expect_failure(oracle, tmp_path, "d.vmdk", "Unsupported image type", check_stderr=False)


def test_forced_format_on_other_files(oracle, tmp_path):
    (tmp_path / "text").write_bytes(b"hello world, no descriptor here\n")
    (tmp_path / "small").write_bytes(b"abc")
    (tmp_path / "empty").write_bytes(b"")
    expect_failure(oracle, tmp_path, "text", "invalid VMDK image descriptor",
                   extra=("-f", "vmdk"))
    # qemu sees whole sectors: only an empty file is too small.
    expect_failure(oracle, tmp_path, "small", "invalid VMDK image descriptor",
                   extra=("-f", "vmdk"))
    expect_failure(oracle, tmp_path, "empty", "File is too small", extra=("-f", "vmdk"))


# ---------------------------------------------------------------- hostile headers

@pytest.mark.parametrize("kw,msg", [
    (dict(version=4), "Unsupported VMDK version 4"),
    (dict(version=0xFFFFFFFF), "Unsupported VMDK version 4294967295"),
    (dict(gtes=513), "L2 table size too big"),
    (dict(granularity=0), "L1 entry size is invalid"),
    (dict(gtes=0), "L1 entry size is invalid"),
    (dict(granularity=2**32, gtes=1), "L1 entry size is invalid"),
    (dict(granularity=2**21 + 1), "Invalid granularity, image may be corrupt"),
    (dict(granularity=2**63), "L1 entry size is invalid"),
    (dict(granularity=2**40 + 1, gtes=1), "Invalid granularity"),
    (dict(capacity=2**54 - 2**21), "L1 size too big"),
    (dict(capacity=2**25 + 1, granularity=1, gtes=1), "L1 size too big"),
    (dict(grain_offset=1000), "File truncated, expecting at least 512000 bytes"),
    (dict(grain_offset=2**60), "File truncated"),
    (dict(capacity=2**64 - 5), "Could not refresh total sector count: File too large"),
    (dict(capacity=2**54), "File too large"),
    (dict(capacity=2**54 - 1, granularity=2**21), "File too large"),
    (dict(capacity=2**64 - 1, granularity=2**21), "File too large"),
    (dict(gd=2**54), "Could not read l1 table from extent"),
    (dict(gd=2**54 - 1), "Could not read l1 table from extent"),
    (dict(flags=3, rgd=2**54), "Could not read l1 backup table from extent"),
    (dict(capacity=0, desc_offset=2**54), "Could not read from file"),
])
def test_hostile_sparse_headers(oracle, tmp_path, kw, msg):
    write_sparse(tmp_path / "x.vmdk", **kw)
    expect_failure(oracle, tmp_path, "x.vmdk", msg)


@pytest.mark.parametrize("capacity", [2**63, 2**63 + 1, 2**63 + 2**21, 2**62,
                                      2**63 + 2**32 - 5, "flat_sum"])
def test_sizes_getlength_cannot_express(oracle, tmp_path, capacity):
    """qemu-img says "Can't get image size 'F'..." with no "Could not open"
    prefix; so does instar."""
    if capacity == "flat_sum":
        (tmp_path / "flat.img").write_bytes(b"\0" * 4096)
        (tmp_path / "x.vmdk").write_bytes(desc("monolithicFlat", [
            'RW 4611686018427387903 FLAT "flat.img" 0',
            'RW 4611686018427387907 FLAT "flat.img" 0']))
    else:
        write_sparse(tmp_path / "x.vmdk", capacity=capacity, granularity=2**21)
    q, i = same_error(oracle, tmp_path, "x.vmdk", check_stderr=False)
    assert q.returncode == 1
    qe = q.stderr.decode().strip().replace("qemu-img: ", "")
    ie = i.stderr.decode().strip().replace("instar: ", "")
    assert qe.startswith("Can't get image size") and qe == ie, (qe, ie)


def test_capacity_at_qemu_limit(oracle, tmp_path):
    """BDRV_MAX_LENGTH is 2^63 - 2^30: one sector more is too large."""
    write_sparse(tmp_path / "ok.vmdk", capacity=(2**63 - 2**30) // 512, granularity=2**21)
    write_sparse(tmp_path / "big.vmdk", capacity=(2**63 - 2**30) // 512 + 1,
                 granularity=2**21)
    assert_info_same(oracle, tmp_path, "ok.vmdk")
    expect_failure(oracle, tmp_path, "big.vmdk", "File too large")


@pytest.mark.parametrize("size", [4, 8, 60, 79, 511, 512, 600])
def test_truncated_headers(oracle, tmp_path, size):
    write_sparse(tmp_path / "x.vmdk", size=size, grain_offset=0)
    write_cowd(tmp_path / "c.vmdk", size=size)
    same_error(oracle, tmp_path, "x.vmdk")
    same_error(oracle, tmp_path, "c.vmdk")


def test_no_usable_extent(oracle, tmp_path):
    """Known divergence: qemu-img aborts (status 134) on a descriptor
    without a usable RW extent; instar exits 1."""
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    (tmp_path / "ro.vmdk").write_bytes(desc("monolithicFlat", ['RDONLY 2048 FLAT "flat.img" 0']))
    (tmp_path / "nul.vmdk").write_bytes(
        desc("monolithicFlat", ["\0RW 2048 FLAT \"flat.img\" 0"]))
    for name in ("ro.vmdk", "nul.vmdk"):
        r = instar("info", name, cwd=tmp_path, version=oracle.version)
        assert r.returncode == 1 and r.stdout == b"", r.stderr
        assert len(r.stderr.splitlines()) == 1, r.stderr


def test_nul_bytes_in_descriptor(oracle, tmp_path):
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    (tmp_path / "d.vmdk").write_bytes(
        desc("monolithicFlat", ['RW 2048 FLAT "flat.img" 0']).replace(b"CID=ab", b"CID=ab\0"))
    (tmp_path / "e.vmdk").write_bytes(
        desc("monolithicFlat", ['RW 2048 FLAT "flat.img" 0']).replace(b"createType", b"\0createType"))
    same_error(oracle, tmp_path, "d.vmdk")
    expect_failure(oracle, tmp_path, "e.vmdk", "invalid VMDK image descriptor")


def test_many_blank_lines_are_fast(tmp_path):
    """qemu would add the extent once per blank line above it; instar caps
    the extent count and stays linear."""
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    d = desc("monolithicFlat", [b"\n" * 900000 + b'RW 2048 FLAT "flat.img" 0'])
    (tmp_path / "d.vmdk").write_bytes(d)
    (tmp_path / "s.vmdk").write_bytes(d.replace(b"\n\n\n", b" \n \t"))
    for name in ("d.vmdk", "s.vmdk"):
        t = time.monotonic()
        r = instar("info", name, cwd=tmp_path)
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
        assert time.monotonic() - t < 10


def test_long_tokens_are_fast(oracle, tmp_path):
    (tmp_path / "flat.img").write_bytes(b"\0" * (1 << 20))
    d = desc("monolithicFlat", ['RW 2048 FLAT "flat.img" 0'])
    (tmp_path / "digits.vmdk").write_bytes(d + b"RW " + b"9" * 900000 + b"\n")
    (tmp_path / "spaces.vmdk").write_bytes(d + b"RW" + b" " * 900000 + b"1 FLAT\n")
    for name in ("digits.vmdk", "spaces.vmdk"):
        t = time.monotonic()
        same_error(oracle, tmp_path, name)
        r = instar("info", name, cwd=tmp_path)
        assert time.monotonic() - t < 20


# ---------------------------------------------------------------- hostile names

@pytest.fixture
def layout(tmp_path):
    img = tmp_path / "img"
    out = tmp_path / "outside"
    img.mkdir()
    out.mkdir()
    (out / "secret").write_bytes(SECRET)
    write_sparse(out / "secret.vmdk", SPARSE_DESC + SECRET)
    return img, out


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "json", "protocol",
                                  "absolute_sparse", "symlink_dir"])
def test_extent_outside_is_refused(layout, oracle, kind):
    img, out = layout
    typ, tail = "FLAT", " 0"
    if kind == "absolute":
        ref = str(out / "secret")
    elif kind == "absolute_sparse":
        ref, typ, tail = str(out / "secret.vmdk"), "SPARSE", ""
    elif kind == "dotdot":
        ref = "../outside/secret"
    elif kind == "symlink":
        os.symlink(out / "secret", img / "link.raw")
        ref = "link.raw"
    elif kind == "symlink_dir":
        os.symlink(out, img / "linkdir")
        ref = "linkdir/secret"
    elif kind == "json":
        ref = "json:{}"
    else:
        ref = "nbd:127.0.0.1:10809"
    (img / "d.vmdk").write_bytes(desc("monolithicFlat", [f'RW 8 {typ} "{ref}"{tail}']))
    for args in (["info", "d.vmdk"], ["info", "--output=json", "d.vmdk"],
                 ["info", "--backing-chain", "d.vmdk"]):
        r = instar(*args, cwd=img, version=oracle.version)
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert len(err.strip().splitlines()) == 1, err
        assert ref in err, err
        assert b"SECRET" not in r.stdout and b"SECRET" not in r.stderr


def test_allow_path_admits_extent(layout, oracle):
    """With --allow-path the outside file is a legitimate extent."""
    img, out = layout
    (img / "d.vmdk").write_bytes(desc("monolithicFlat", [f'RW 8 FLAT "{out}/secret" 0']))
    r = instar("info", "--allow-path", str(out), "--output=json", "d.vmdk", cwd=img,
               version=oracle.version)
    assert r.returncode == 0, r.stderr
    assert b"SECRET" not in r.stdout


def test_hostile_parent_hint_is_only_printed(layout, oracle):
    """Without --backing-chain the parent hint is a name, never opened."""
    img, out = layout
    (img / "flat.img").write_bytes(b"\0" * 4096)
    d = desc("monolithicFlat", ['RW 8 FLAT "flat.img" 0'],
             extra=f'parentFileNameHint="{out}/secret.vmdk"'.encode())
    (img / "d.vmdk").write_bytes(d)
    assert_info_same(oracle, img, "d.vmdk")
    r = instar("info", "--backing-chain", "d.vmdk", cwd=img, version=oracle.version)
    assert r.returncode == 1 and b"SECRET" not in r.stdout + r.stderr


# ---------------------------------------------------------------- reading

def sparse_with_tables(path, l2, grains=b"", compress=0, flags=3):
    """64 KiB grains; grain directory at sector 21, one grain table at 22,
    grains from sector 26."""
    data = (vmdk4_header(gd=21, grain_offset=26, compress=compress, flags=flags) +
            SPARSE_DESC.ljust(20 * 512, b"\0")).ljust(21 * 512, b"\0")
    data += struct.pack("<I", 22).ljust(512, b"\0")
    data += b"".join(struct.pack("<I", x) for x in l2).ljust(2048, b"\0")
    path.write_bytes(data + grains)


GRAIN = bytes(range(256)) * 256


def deflated(data, size=None):
    c = zlib.compress(data)
    return struct.pack("<QI", 0, len(c) if size is None else size) + c


def check_reads(oracle, tmp, name, readable=True):
    """map as qemu-img maps it; content as qemu-img convert reads it."""
    for extra in ([], ["--output=json"]):
        assert_same(oracle, ["map", *extra, name], tmp)
    q = run([oracle.path, "convert", "-O", "raw", name, "out.raw"], cwd=tmp)
    assert (q.returncode == 0) == readable, q.stderr
    if not readable:
        qemu_img("create", "-q", "-f", "raw", "out.raw", "1M", cwd=tmp)
    q, i = assert_same(oracle, ["compare", "-F", "raw", name, "out.raw"], tmp)
    if readable:
        assert i.stdout == b"Images are identical.\n"


def test_read_stream_optimized(oracle, tmp_path):
    (tmp_path / "a.raw").write_bytes(os.urandom(1 << 20) + b"\0" * (2 << 20) +
                                     os.urandom(300000))
    qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "a.raw",
             "s.vmdk", cwd=tmp_path)
    check_reads(oracle, tmp_path, "s.vmdk")


def test_read_across_2g_extents(oracle, tmp_path):
    create(tmp_path, "s.vmdk", "5G", "subformat=twoGbMaxExtentSparse")
    qemu_io("-f", "vmdk", "-c", "write -P 7 2047M 2M", "-c", "write -z 4G 1M",
            "-c", "write -P 3 4095M 1M", "s.vmdk", cwd=tmp_path)
    create(tmp_path, "f.vmdk", "3G", "subformat=twoGbMaxExtentFlat")
    qemu_io("-f", "vmdk", "-c", "write -P 7 2047M 2M", "f.vmdk", cwd=tmp_path)
    check_reads(oracle, tmp_path, "s.vmdk")
    check_reads(oracle, tmp_path, "f.vmdk")


def test_read_zeroed_grains_over_backing(oracle, tmp_path):
    create(tmp_path, "base.vmdk", "16M", "zeroed_grain=on")
    qemu_io("-f", "vmdk", "-c", "write -P 1 0 8M", "base.vmdk", cwd=tmp_path)
    create(tmp_path, "top.vmdk", "16M", "zeroed_grain=on", backing="base.vmdk")
    qemu_io("-f", "vmdk", "-c", "write -z 1M 1M", "-c", "write -P 9 3M 64k", "top.vmdk",
            cwd=tmp_path)
    check_reads(oracle, tmp_path, "top.vmdk")


def test_read_crafted_grains(oracle, tmp_path):
    # Grain 0 deflated, grain 2 the same.
    sparse_with_tables(tmp_path / "c.vmdk", [26, 0, 26], deflated(GRAIN),
                       compress=1, flags=0x30003)
    # Deflated grains without markers; plain grains; zeroed grain entries.
    sparse_with_tables(tmp_path / "n.vmdk", [26], zlib.compress(GRAIN), compress=1,
                       flags=0x10003)
    sparse_with_tables(tmp_path / "p.vmdk", [26, 1, 0xFFFFFFFF, 26], GRAIN)
    sparse_with_tables(tmp_path / "z.vmdk", [26, 1, 1], GRAIN, flags=7)
    write_cowd(tmp_path / "cowd.vmdk", granularity=1, l1_offset=9, size=9 * 512)
    with open(tmp_path / "cowd.vmdk", "ab") as f:
        f.write(struct.pack("<I", 10).ljust(512, b"\0") +
                struct.pack("<4096I", *([11] * 4096)) + GRAIN)
    for name in ("c.vmdk", "n.vmdk", "p.vmdk", "z.vmdk", "cowd.vmdk"):
        check_reads(oracle, tmp_path, name)


@pytest.mark.parametrize("grain", [
    deflated(b"garbage" * 20, 100), deflated(GRAIN, 0), deflated(GRAIN, 10**9),
    deflated(GRAIN, 100), deflated(GRAIN[:1000]),
], ids=["garbage", "size0", "size_huge", "truncated", "short_output"])
def test_read_bad_compressed_grains(oracle, tmp_path, grain):
    """qemu fails the read with EINVAL; so does instar (compare exits 4)."""
    sparse_with_tables(tmp_path / "c.vmdk", [26], grain, compress=1, flags=0x30003)
    check_reads(oracle, tmp_path, "c.vmdk", readable=False)


def test_read_cowd_granularity_zero(oracle, tmp_path):
    """Known divergence: qemu-img map divides by the zero grain size and
    dies of SIGFPE; instar reports an I/O error."""
    write_cowd(tmp_path / "c.vmdk", granularity=0)
    r = instar("map", "c.vmdk", cwd=tmp_path, version=oracle.version)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr


def test_read_unaligned_extents(oracle, tmp_path):
    """Extents whose size is not a whole number of grains: qemu's answer
    for the last grain reaches into the next extent, and instar's longer
    runs over empty grains must end exactly where qemu's would."""
    sparse_with_tables(tmp_path / "u2.vmdk", [0, 0, 26], GRAIN)
    for name, cap in (("u1.vmdk", 100), ("u2.vmdk", 300)):
        data = bytearray((tmp_path / name).read_bytes()) if name == "u2.vmdk" else None
        if data is None:
            sparse_with_tables(tmp_path / name, [])
            data = bytearray((tmp_path / name).read_bytes())
        struct.pack_into("<Q", data, 12, cap)
        (tmp_path / name).write_bytes(bytes(data))
    (tmp_path / "flat.img").write_bytes(b"\x07" * (1 << 20))
    (tmp_path / "a.vmdk").write_bytes(desc("twoGbMaxExtentSparse", [
        'RW 100 SPARSE "u1.vmdk"', 'RW 300 SPARSE "u2.vmdk"', 'RW 2048 FLAT "flat.img" 0']))
    (tmp_path / "b.vmdk").write_bytes(desc("twoGbMaxExtentSparse", [
        'RW 300 SPARSE "u2.vmdk"', 'RW 100 SPARSE "u1.vmdk"', 'RW 100 SPARSE "u1.vmdk"']))
    check_reads(oracle, tmp_path, "a.vmdk")
    check_reads(oracle, tmp_path, "b.vmdk")


def test_map_of_huge_empty_image_is_fast(oracle, tmp_path):
    """2 TiB of empty grains: one answer per grain directory entry."""
    create(tmp_path, "e.vmdk", "2T")
    t = time.monotonic()
    assert_same(oracle, ["map", "--output=json", "e.vmdk"], tmp_path)
    r = instar("map", "e.vmdk", cwd=tmp_path)
    assert r.returncode == 0 and time.monotonic() - t < 60
