"""vpc (VHD) info: instar against every qemu-img oracle, human and JSON.

Images come from qemu-img/qemu-io over the option space (subformat,
force_size, sizes), from footer patches made by a small generator (creator
application, geometry, current_size, with the checksum fixed up), and from
hostile patches.  Hostile images must fail in instar exactly where and how
they fail in qemu-img, and never crash or hang.

Known, deliberate divergence (listed in test_fixed_vhd_safe_mode_divergence):
a fixed VHD has its only footer at the end of the file; qemu-img probes
the start only and calls it raw.  instar's safe default recognises the
footer (valid checksum, type fixed) and reports vpc, because calling a
VHD raw shows its footer as guest data and a wrong virtual size.
--unsafe-quirks restores qemu-img's answer.
"""
import struct
from pathlib import Path

import pytest

from conftest import (INSTAR, REPO, assert_info_same, assert_same, qemu_img,
                      qemu_io, run)

FOOTER = 512
GiB = 1 << 30
MiB = 1 << 20


# ---------------------------------------------------------------- helpers

def create(tmp, name, size, *opts):
    args = ["create", "-q", "-f", "vpc"]
    if opts:
        args += ["-o", ",".join(opts)]
    qemu_img(*args, name, str(size), cwd=tmp)
    return name


def same(oracle, tmp, name, extra=(), instar_args=()):
    assert_info_same(oracle, tmp, name, extra=extra, instar_args=instar_args)


def same_error(oracle, tmp, name, extra=()):
    """Both fail alike: exit status, stdout and the one-line message."""
    for mode in ([], ["--output=json"]):
        q, i = assert_same(oracle, ["info", *extra, *mode, name], tmp,
                           check_stderr=True)
        assert q.returncode == 1, q.stdout
    return q.stderr.decode()


def checksum(footer):
    f = bytearray(footer)
    f[64:68] = b"\0\0\0\0"
    return (~sum(f)) & 0xFFFFFFFF


def fix_checksum(footer):
    footer[64:68] = struct.pack(">I", checksum(footer))


def patch_footer(path, fn, where=("start", "end"), fix=True):
    """Applies fn to the footer copies (offset 0 and/or the last sector),
    in place: rewriting a whole fixed image would allocate all of it."""
    with open(path, "r+b") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        offsets = []
        if "start" in where and fh.read(8) == b"conectix":
            offsets.append(0)
        if "end" in where:
            offsets.append(size - FOOTER)
        for off in offsets:
            fh.seek(off)
            f = bytearray(fh.read(FOOTER))
            fn(f)
            if fix:
                fix_checksum(f)
            fh.seek(off)
            fh.write(f)


def patch(path, offset, fmt, *values):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def set_creator(app):
    def fn(f):
        f[28:32] = app
    return fn


def set_geometry(cyls, heads, secs):
    def fn(f):
        f[56:60] = struct.pack(">HBB", cyls, heads, secs)
    return fn


def set_current_size(size):
    def fn(f):
        f[48:56] = struct.pack(">Q", size)
    return fn


def set_type(t):
    def fn(f):
        f[60:64] = struct.pack(">I", t)
    return fn


def footer_fields(path, offset=0):
    with open(path, "rb") as f:
        f.seek(offset)
        b = f.read(FOOTER)
    cyls, heads, secs = struct.unpack(">HBB", b[56:60])
    return {"current_size": struct.unpack(">Q", b[48:56])[0],
            "chs": cyls * heads * secs * 512, "app": b[28:32]}


# ---------------------------------------------------------------- option space

SIZES = [1 * MiB, 127 * MiB, 1 * GiB, 3 * GiB, 100 * GiB, 2040 * GiB, 10000000]


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("force", ["off", "on"])
def test_dynamic(oracle, tmp_path, size, force):
    create(tmp_path, "d.vhd", size, "subformat=dynamic", f"force_size={force}")
    same(oracle, tmp_path, "d.vhd")
    same(oracle, tmp_path, "d.vhd", extra=["-f", "vpc"])


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("force", ["off", "on"])
def test_fixed_with_format(oracle, tmp_path, size, force):
    """A fixed VHD opened as vpc explicitly: identical to qemu-img."""
    create(tmp_path, "f.vhd", size, "subformat=fixed", f"force_size={force}")
    same(oracle, tmp_path, "f.vhd", extra=["-f", "vpc"])
    # --unsafe-quirks: probed exactly as qemu-img does (raw).
    same(oracle, tmp_path, "f.vhd", instar_args=["--unsafe-quirks"])


def test_fixed_vhd_safe_mode_divergence(oracle, tmp_path):
    """DIVERGENCE (deliberate): qemu-img probes a fixed VHD as raw because
    its footer is only at the end; instar's safe default reports vpc,
    exactly what `qemu-img info -f vpc` prints."""
    create(tmp_path, "f.vhd", 64 * MiB, "subformat=fixed")
    env = {"INSTAR_QEMU_VERSION": oracle.version}
    for mode in ([], ["--output=json"]):
        q_raw = run([oracle.path, "info", *mode, "f.vhd"], cwd=tmp_path)
        q_vpc = run([oracle.path, "info", "-f", "vpc", *mode, "f.vhd"], cwd=tmp_path)
        i = run([INSTAR, "info", *mode, "f.vhd"], cwd=tmp_path, env=env)
        assert b"raw" in q_raw.stdout
        assert i.returncode == 0 and i.stdout == q_vpc.stdout
        u = run([INSTAR, "info", "--unsafe-quirks", *mode, "f.vhd"], cwd=tmp_path, env=env)
        assert u.returncode == 0 and u.stdout == q_raw.stdout


def test_fixed_footer_needs_valid_checksum_to_be_probed(oracle, tmp_path):
    """A trailing footer with a bad checksum is not a VHD to the safe
    probe: with no MBR either, instar refuses the file (qemu-img: raw)."""
    create(tmp_path, "f.vhd", 8 * MiB, "subformat=fixed")
    patch_footer(tmp_path / "f.vhd", set_creator(b"xxxx"), fix=False)
    i = run([INSTAR, "info", "f.vhd"], cwd=tmp_path,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert i.returncode == 1 and len(i.stderr.decode().splitlines()) == 1
    same(oracle, tmp_path, "f.vhd", instar_args=["--unsafe-quirks"])
    same_error(oracle, tmp_path, "f.vhd", extra=["-f", "vpc"])


def test_written_data(oracle, tmp_path):
    create(tmp_path, "d.vhd", 64 * MiB)
    qemu_io("-f", "vpc", "-c", "write -P 0xab 0 1M", "-c", "write 5M 64k",
            "-c", "write -P 1 63M 1M", "d.vhd", cwd=tmp_path)
    same(oracle, tmp_path, "d.vhd")
    create(tmp_path, "f.vhd", 16 * MiB, "subformat=fixed")
    qemu_io("-f", "vpc", "-c", "write -P 0xcd 1M 2M", "f.vhd", cwd=tmp_path)
    same(oracle, tmp_path, "f.vhd", extra=["-f", "vpc"])


def test_odd_name_and_directory(oracle, tmp_path):
    (tmp_path / "sub dir").mkdir()
    create(tmp_path, "sub dir/d x.vhd", 3 * MiB)
    same(oracle, tmp_path, "sub dir/d x.vhd")


# ---------------------------------------------------------------- creator app / CHS rule

# Creator applications and whether each qemu uses the CHS geometry (True)
# or the footer's current_size (False) for them.
CREATORS = {
    b"vpc ": (True, True),
    b"qemu": (True, True),
    b"win ": (False, False),
    b"d2v ": (False, False),
    b"qem2": (False, False),
    b"CTXS": (False, False),
    b"tap\0": (False, False),
    b"wa\0\0": (True, False),       # Azure: only 10.0 knows it
    b"abcd": (True, False),         # unknown: 7.2 geometry, 10.0 size
    b"vpc\0": (True, False),
}


@pytest.mark.parametrize("app", list(CREATORS), ids=lambda a: a.decode("latin1").replace("\0", "0"))
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_creator_app_chs_rule(oracle, tmp_path, app, subformat):
    """CHS geometry and current_size disagree; the creator decides."""
    create(tmp_path, "c.vhd", 1 * GiB, f"subformat={subformat}")
    f = footer_fields(tmp_path / "c.vhd", 0 if subformat == "dynamic"
                      else (tmp_path / "c.vhd").stat().st_size - FOOTER)
    # Smaller than the geometry (so the BAT still covers it) and odd.
    patch_footer(tmp_path / "c.vhd", set_current_size(f["chs"] - 3 * MiB - 7 * 512))
    patch_footer(tmp_path / "c.vhd", set_creator(app))
    extra = [] if subformat == "dynamic" else ["-f", "vpc"]
    same(oracle, tmp_path, "c.vhd", extra=extra)


@pytest.mark.parametrize("app", [b"vpc ", b"qemu", b"win ", b"d2v "],
                         ids=lambda a: a.decode().strip())
def test_max_geometry_uses_current_size(oracle, tmp_path, app):
    """At 65535x16x255 every creator's size is current_size."""
    create(tmp_path, "m.vhd", 200 * GiB, "force_size=on")
    patch_footer(tmp_path / "m.vhd", set_creator(app))
    same(oracle, tmp_path, "m.vhd")
    patch_footer(tmp_path / "m.vhd", set_geometry(65535, 16, 254))
    same(oracle, tmp_path, "m.vhd")


@pytest.mark.parametrize("geometry", [(0, 0, 0), (1, 1, 1), (1024, 16, 63),
                                      (65535, 255, 255)])
def test_geometries(oracle, tmp_path, geometry):
    create(tmp_path, "g.vhd", 1 * GiB, "force_size=on")
    patch_footer(tmp_path / "g.vhd", set_creator(b"vpc "))
    patch_footer(tmp_path / "g.vhd", set_geometry(*geometry))
    q = run([oracle.path, "info", "g.vhd"], cwd=tmp_path)
    if q.returncode:
        same_error(oracle, tmp_path, "g.vhd")
    else:
        same(oracle, tmp_path, "g.vhd")


def test_differencing_type_reads_as_dynamic(oracle, tmp_path):
    """qemu's vpc driver has no backing support: type 4 is dynamic to it."""
    create(tmp_path, "d.vhd", 32 * MiB)
    patch_footer(tmp_path / "d.vhd", set_type(4))
    same(oracle, tmp_path, "d.vhd")


def test_fixed_type_in_front_footer(oracle, tmp_path):
    """A footer at offset 0 saying "fixed": opened as dynamic, no cluster
    size reported."""
    create(tmp_path, "d.vhd", 32 * MiB)
    patch_footer(tmp_path / "d.vhd", set_type(2), where=("start",))
    same(oracle, tmp_path, "d.vhd")


# ---------------------------------------------------------------- hostile

def test_bad_checksum(oracle, tmp_path):
    create(tmp_path, "d.vhd", 8 * MiB)
    patch(tmp_path / "d.vhd", 64, ">I", 0x12345678)
    assert "Incorrect header checksum" in same_error(oracle, tmp_path, "d.vhd")
    create(tmp_path, "f.vhd", 8 * MiB, "subformat=fixed")
    patch_footer(tmp_path / "f.vhd", set_creator(b"evil"), fix=False)
    same_error(oracle, tmp_path, "f.vhd", extra=["-f", "vpc"])


def test_footer_at_end_not_fixed(oracle, tmp_path):
    create(tmp_path, "f.vhd", 8 * MiB, "subformat=fixed")
    patch_footer(tmp_path / "f.vhd", set_type(3))
    assert "invalid VPC image" in same_error(oracle, tmp_path, "f.vhd", extra=["-f", "vpc"])


@pytest.mark.parametrize("size", [0, 1, 100, 511])
def test_too_small(oracle, tmp_path, size):
    (tmp_path / "s.vhd").write_bytes(b"x" * size)
    same_error(oracle, tmp_path, "s.vhd", extra=["-f", "vpc"])


@pytest.mark.parametrize("length", [8, 100, 511, 512, 600, 1024, 1535, 1536,
                                    2047, 2048, 4096])
def test_truncated_dynamic(oracle, tmp_path, length):
    create(tmp_path, "d.vhd", 64 * MiB)
    qemu_io("-f", "vpc", "-c", "write 0 4M", "d.vhd", cwd=tmp_path)
    with open(tmp_path / "d.vhd", "r+b") as f:
        f.truncate(length)
    q = run([oracle.path, "info", "d.vhd"], cwd=tmp_path)
    if q.returncode:
        same_error(oracle, tmp_path, "d.vhd")
    else:
        same(oracle, tmp_path, "d.vhd")


def test_truncated_after_data(oracle, tmp_path):
    create(tmp_path, "d.vhd", 64 * MiB)
    qemu_io("-f", "vpc", "-c", "write 0 4M", "d.vhd", cwd=tmp_path)
    size = (tmp_path / "d.vhd").stat().st_size
    with open(tmp_path / "d.vhd", "r+b") as f:
        f.truncate(size - 1024 * 1024)
    assert "truncated" in same_error(oracle, tmp_path, "d.vhd")


def test_too_large(oracle, tmp_path):
    create(tmp_path, "d.vhd", 8 * MiB)
    patch_footer(tmp_path / "d.vhd", set_creator(b"win "))
    patch_footer(tmp_path / "d.vhd", set_current_size((0xff000000 + 1) * 512))
    assert "File too large" in same_error(oracle, tmp_path, "d.vhd")


DYN = 512   # qemu-img puts the dynamic header right after the footer


@pytest.mark.parametrize("field,fmt,value", [
    ("magic", "8s", b"cxsparsX"),
    ("table_offset", ">Q", 1 << 62),
    ("table_offset", ">Q", 1 << 40),
    ("table_offset", ">Q", 0xFFFFFFFFFFFFFFFF),
    ("max_table_entries", ">I", 0),
    ("max_table_entries", ">I", 0x7FFFFFFF),
    ("max_table_entries", ">I", 0x80000000),
    ("max_table_entries", ">I", 0xFFFFFFFF),
    ("max_table_entries", ">I", 0x20000000),
    ("max_table_entries", ">I", 0x1FFFFFFF),
    ("max_table_entries", ">I", 100000),
    ("block_size", ">I", 0),
    ("block_size", ">I", 256),
    ("block_size", ">I", 3 << 20),
    ("block_size", ">I", 512),
    ("block_size", ">I", 1 << 31),
])
def test_hostile_dynamic_header(oracle, tmp_path, field, fmt, value):
    create(tmp_path, "d.vhd", 8 * MiB)
    off = {"magic": 0, "table_offset": 16, "max_table_entries": 28,
           "block_size": 32}[field]
    patch(tmp_path / "d.vhd", DYN + off, fmt, value)
    q = run([oracle.path, "info", "d.vhd"], cwd=tmp_path, timeout=60)
    if q.returncode:
        same_error(oracle, tmp_path, "d.vhd")
    else:
        same(oracle, tmp_path, "d.vhd")


@pytest.mark.parametrize("data_offset", [0, 1 << 20, 1 << 62, 0xFFFFFFFFFFFFFFFF,
                                         0x7FFFFFFFFFFFFE00])
def test_hostile_data_offset(oracle, tmp_path, data_offset):
    create(tmp_path, "d.vhd", 8 * MiB)

    def fn(f):
        f[16:24] = struct.pack(">Q", data_offset)
    patch_footer(tmp_path / "d.vhd", fn)
    same_error(oracle, tmp_path, "d.vhd")


@pytest.mark.parametrize("entry", [0x00000000, 0x7FFFFFFF, 0xFFFFFFFE, 100])
def test_bat_entry_beyond_eof(oracle, tmp_path, entry):
    create(tmp_path, "d.vhd", 8 * MiB)
    patch(tmp_path / "d.vhd", 1536, ">I", entry)
    q = run([oracle.path, "info", "d.vhd"], cwd=tmp_path)
    if q.returncode:
        same_error(oracle, tmp_path, "d.vhd")
    else:
        same(oracle, tmp_path, "d.vhd")


def test_huge_bat_inside_file(oracle, tmp_path):
    """A table of 16M entries that really is in the (sparse) file: read
    in bounded pieces, all unused."""
    create(tmp_path, "d.vhd", 8 * MiB)
    n = 16 * 1024 * 1024
    patch(tmp_path / "d.vhd", DYN + 28, ">I", n)
    with open(tmp_path / "d.vhd", "r+b") as f:
        f.seek(1536)
        chunk = b"\xff" * (1 << 20)
        for _ in range(n * 4 // len(chunk)):
            f.write(chunk)
        f.write(b"\0" * 512)
    same(oracle, tmp_path, "d.vhd")


def test_garbage_never_crashes(tmp_path):
    """Random-ish mutations of a VHD: instar exits 0 or 1 with one line."""
    import random
    rnd = random.Random(1234)
    create(tmp_path, "base.vhd", 16 * MiB)
    qemu_io("-f", "vpc", "-c", "write 0 3M", "base.vhd", cwd=tmp_path)
    base = (tmp_path / "base.vhd").read_bytes()
    for n in range(60):
        d = bytearray(base)
        for _ in range(rnd.randint(1, 8)):
            pos = rnd.choice([rnd.randrange(0, 2048), rnd.randrange(len(d))])
            d[pos] = rnd.randrange(256)
        if n % 3 == 0:
            fix = bytearray(d[:512])
            fix_checksum(fix)
            d[:512] = fix
        (tmp_path / "m.vhd").write_bytes(bytes(d))
        r = run([INSTAR, "info", "m.vhd"], cwd=tmp_path, timeout=30)
        assert r.returncode in (0, 1), r.stderr
        if r.returncode:
            assert len(r.stderr.decode().splitlines()) == 1, r.stderr
