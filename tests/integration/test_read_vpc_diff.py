"""Differencing VHDs (vpc disk type 4) read with their parent.

DELIBERATE DIVERGENCE from qemu-img: qemu's vpc driver ignores a
differencing disk's parent, so qemu-img map/compare/convert read every
sector the child does not hold as zeros.  The VHD specification says those
sectors are the parent's, so instar opens the parent named by the parent
locators (W2ru, then W2ku, then the header's parent unicode name), under
the host's path policy, and uses each allocated block's sector bitmap to
choose between child and parent sector by sector.  test_qemu_ignores_parent
pins qemu's behaviour so that the divergence stays visible.

info is not affected: qemu shows no backing file for a VHD, and instar's
info of a differencing disk stays byte-identical to qemu-img's.

qemu-img cannot create differencing VHDs, so the child is built here from
a `qemu-img create -f vpc` dynamic image used as the layout template.
"""
import random
import struct

import pytest

from conftest import assert_info_same, instar, qemu_img, qemu_io, run, QEMU_IMG

SECTOR = 512
BLOCK = 2 * 1024 * 1024
SECRET = b"SECRET-vpc-parent-do-not-leak\n" * 40


def checksum(buf, at):
    """One's complement of the byte sum, the checksum field counted as 0."""
    total = sum(buf[:at]) + sum(buf[at + 4:])
    return (~total) & 0xffffffff


def make_parent(d, name="parent.vhd"):
    qemu_img("create", "-q", "-f", "vpc", name, "8M", cwd=d)
    qemu_io("-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 4M 1M",
            "-c", "write -P 0x33 6M 512k", "-c", "write -P 0x44 7936k 64k",
            name, cwd=d)
    return name


def loc(code, text, utf16=None):
    """A parent locator: platform code and its UTF-16LE data."""
    return (code, utf16 if utf16 is not None else text.encode("utf-16-le"))


def make_child(d, name, template, locators=(), unicode_name="",
               unicode_raw=None, blocks=None, size_override=None):
    """Builds a differencing VHD with the template's geometry.

    blocks maps block index -> (bitmap bytes, data bytes).  Returns the
    sectors the child holds as {guest sector: 512 bytes}."""
    tpl = (d / template).read_bytes()
    footer = bytearray(tpl[:512])
    header = bytearray(tpl[512:1536])
    entries = struct.unpack(">I", header[28:32])[0]
    struct.pack_into(">I", footer, 60, 4)
    struct.pack_into(">I", footer, 64, checksum(footer, 64))

    bat_off = 1536
    bat_len = (entries * 4 + 511) // 512 * 512
    pos = bat_off + bat_len
    loc_blobs = []
    for i, (code, data) in enumerate(locators):
        space = max(1, (len(data) + 511) // 512) * 512
        off = size_override.get(i, pos) if size_override else pos
        struct.pack_into(">4sIIIQ", header, 576 + 24 * i, code.encode(),
                         space, len(data), 0, off)
        loc_blobs.append((pos, data))
        pos += space
    name_bytes = unicode_raw if unicode_raw is not None else \
        unicode_name.encode("utf-16-be")
    header[64:64 + 512] = name_bytes.ljust(512, b"\0")[:512]

    bat = bytearray(b"\xff" * bat_len)
    body = []
    held = {}
    for idx, (bitmap, data) in sorted((blocks or {}).items()):
        struct.pack_into(">I", bat, idx * 4, pos // 512)
        body.append((pos, bitmap.ljust(512, b"\0") + data))
        for s in range(BLOCK // SECTOR):
            if bitmap[s // 8] >> (7 - s % 8) & 1:
                held[idx * BLOCK // SECTOR + s] = data[s * SECTOR:(s + 1) * SECTOR]
        pos += 512 + BLOCK
    struct.pack_into(">I", header, 36, checksum(header, 36))

    out = bytearray(pos + 512)
    out[0:512] = footer
    out[512:1536] = header
    out[bat_off:bat_off + bat_len] = bat
    for p, data in loc_blobs:
        out[p:p + len(data)] = data
    for p, data in body:
        out[p:p + len(data)] = data
    out[pos:pos + 512] = footer
    (d / name).write_bytes(bytes(out))
    return held


def sample_blocks():
    rng = random.Random(4)
    blocks = {}
    # Block 0: a random mix of child and parent sectors.
    bitmap0 = bytes(rng.randrange(256) for _ in range(512))
    blocks[0] = (bitmap0, bytes(rng.randrange(256) for _ in range(BLOCK)))
    # Block 1 is unallocated: all parent.
    # Block 2: every sector in the child.
    blocks[2] = (b"\xff" * 512, b"\x5a" * BLOCK)
    # Block 3: allocated, but no sector is the child's (garbage must not show).
    blocks[3] = (b"\0" * 512, b"\xee" * BLOCK)
    # Block 4: long runs, split inside bytes of the bitmap.
    bm = bytearray(512)
    for s in list(range(3, 700)) + list(range(2001, 4000)):
        bm[s // 8] |= 0x80 >> (s % 8)
    blocks[4] = (bytes(bm), bytes((i // SECTOR) & 0xff for i in range(BLOCK)))
    return blocks


def merged_raw(d, parent, held, name="merged.raw"):
    qemu_img("convert", "-f", "vpc", "-O", "raw", parent, "p.raw", cwd=d)
    data = bytearray((d / "p.raw").read_bytes())
    for s, sec in held.items():
        if (s + 1) * SECTOR <= len(data):   # the last block passes the end
            data[s * SECTOR:(s + 1) * SECTOR] = sec
    (d / name).write_bytes(bytes(data))
    return name


def assert_one_line_error(r, *words, status=1):
    err = r.stderr.decode()
    assert r.returncode == status, err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    assert b"SECRET" not in r.stdout and b"SECRET" not in r.stderr


LOCATOR_VARIANTS = {
    "w2ru": lambda d: [loc("W2ru", ".\\parent.vhd")],
    "w2ku": lambda d: [loc("W2ku", str(d / "parent.vhd"))],
    "w2ru-first": lambda d: [loc("W2ku", str(d / "missing.vhd")),
                             loc("W2ru", ".\\parent.vhd")],
    "unicode-name": lambda d: [],
}


@pytest.mark.parametrize("variant", sorted(LOCATOR_VARIANTS))
def test_compare_with_merged(tmp_path, variant):
    parent = make_parent(tmp_path)
    held = make_child(tmp_path, "child.vhd", parent,
                      locators=LOCATOR_VARIANTS[variant](tmp_path),
                      unicode_name="parent.vhd", blocks=sample_blocks())
    merged = merged_raw(tmp_path, parent, held)
    r = instar("compare", "-f", "vpc", "-F", "raw", "child.vhd", merged, cwd=tmp_path)
    assert r.stdout == b"Images are identical.\n", r.stderr
    assert r.returncode == 0
    # And a changed parent sector that the child leaves to the parent shows.
    r = instar("compare", "-f", "vpc", "-F", "raw", "child.vhd", "p.raw", cwd=tmp_path)
    assert r.returncode == 1, r.stderr


def test_qemu_ignores_parent(tmp_path):
    """The divergence itself: qemu-img reads the child alone (absent sectors
    as zeros), instar reads the parent as the VHD specification says."""
    parent = make_parent(tmp_path)
    held = make_child(tmp_path, "child.vhd", parent,
                      locators=[loc("W2ru", ".\\parent.vhd")],
                      blocks=sample_blocks())
    merged = merged_raw(tmp_path, parent, held)
    q = run([QEMU_IMG, "compare", "-f", "vpc", "-F", "raw", "child.vhd", merged],
            cwd=tmp_path)
    assert q.returncode == 1 and b"Content mismatch" in q.stdout
    # Data at depth 1 (the parent) appears in instar's map, not in qemu's.
    r = instar("map", "--output=json", "-f", "vpc", "child.vhd", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert b'"depth": 1' in r.stdout


def test_info_unchanged(tmp_path, oracle):
    parent = make_parent(tmp_path)
    make_child(tmp_path, "child.vhd", parent,
               locators=[loc("W2ru", ".\\parent.vhd")],
               unicode_name="parent.vhd", blocks=sample_blocks())
    assert_info_same(oracle, tmp_path, "child.vhd")
    # Even with the parent missing or hostile: info never opens it.
    make_child(tmp_path, "orphan.vhd", parent,
               locators=[loc("W2ru", "..\\outside\\secret.vhd")])
    assert_info_same(oracle, tmp_path, "orphan.vhd")


def test_parent_outside_refused(tmp_path):
    img = tmp_path / "img"
    out = tmp_path / "outside"
    img.mkdir()
    out.mkdir()
    make_parent(out, "secret.vhd")
    qemu_io("-c", "write -P 0x53 0 64k", "secret.vhd", cwd=out)
    make_parent(img)
    make_child(img, "child.vhd", "parent.vhd",
               locators=[loc("W2ru", "..\\outside\\secret.vhd")])
    r = instar("compare", "-f", "vpc", "-F", "vpc", "child.vhd", "parent.vhd", cwd=img)
    # compare's exit status for an image it cannot open is 2, as qemu-img's.
    assert_one_line_error(r, "../outside/secret.vhd", "outside the allowed directories",
                          "parent image", status=2)
    r = instar("map", "-f", "vpc", "child.vhd", cwd=img)
    assert_one_line_error(r, "../outside/secret.vhd", "outside the allowed directories")


def test_parent_missing(tmp_path):
    parent = make_parent(tmp_path)
    make_child(tmp_path, "child.vhd", parent,
               locators=[loc("W2ru", ".\\missing.vhd")], blocks=sample_blocks())
    r = instar("map", "-f", "vpc", "child.vhd", cwd=tmp_path)
    assert_one_line_error(r, "missing.vhd")


def test_parent_loop(tmp_path):
    parent = make_parent(tmp_path)
    make_child(tmp_path, "child.vhd", parent,
               locators=[loc("W2ru", ".\\child.vhd")])
    r = instar("map", "-f", "vpc", "child.vhd", cwd=tmp_path)
    assert_one_line_error(r, "loop")


HOSTILE = {
    "inner-nul": dict(locators=[loc("W2ru", "", "par\0ent.vhd".encode("utf-16-le"))]),
    "lone-surrogate": dict(locators=[loc("W2ru", "", b"a\0\x00\xd8b\0")]),
    "past-eof": dict(locators=[loc("W2ru", ".\\parent.vhd")],
                     size_override={0: 1 << 40}),
    "name-nul": dict(unicode_raw="par".encode("utf-16-be") + b"\0\0" +
                     "x".encode("utf-16-be")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_locators(tmp_path, case):
    parent = make_parent(tmp_path)
    make_child(tmp_path, "child.vhd", parent, **HOSTILE[case])
    r = instar("map", "-f", "vpc", "child.vhd", cwd=tmp_path)
    assert_one_line_error(r)


def test_huge_locator_length(tmp_path):
    parent = make_parent(tmp_path)
    make_child(tmp_path, "child.vhd", parent,
               locators=[loc("W2ru", ".\\parent.vhd")])
    data = bytearray((tmp_path / "child.vhd").read_bytes())
    struct.pack_into(">I", data, 512 + 576 + 8, 0xffffffff)
    (tmp_path / "child.vhd").write_bytes(bytes(data))
    r = instar("map", "-f", "vpc", "child.vhd", cwd=tmp_path)
    assert_one_line_error(r, "parent locator")
