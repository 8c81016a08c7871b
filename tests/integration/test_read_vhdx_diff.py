"""Reading differencing VHDX images (has_parent + parent locator).

DELIBERATE DIVERGENCE from qemu-img: qemu's vhdx driver refuses to open
differencing VHDX files at all ("Operation not supported": the parent
locator metadata item is not one it knows).  instar keeps that refusal for
`info` (identical output, checked below), but when it opens an image to
read guest data (compare, map, ...) it reads a differencing image through
its parent, because refusing to read a valid Hyper-V image helps nobody
and the parent is opened through the same path policy as any backing file.

The images are generated here: a `qemu-img create -f vhdx` dynamic image
is the template; we set has_parent in the file parameters item, add a
parent locator item and its metadata table entry, and write BAT entries,
payload blocks and sector bitmaps by hand.  Only the headers, the region
table and log entries carry CRC-32C checksums in VHDX; the metadata region
and the BAT carry none, and we touch neither headers nor region table, so
no checksum needs recomputing (checked: qemu-img still opens a template
whose metadata we edit without has_parent/locator, see test_template_edit).
"""
import struct
import uuid

import pytest

from conftest import assert_info_same, instar, qemu_img, qemu_io

MiB = 1 << 20
BLOCK = MiB                      # block_size=1M: chunk ratio 4096
CHUNK_RATIO = (1 << 23) * 512 // BLOCK
SECTORS = BLOCK // 512
NBLOCKS = 8
SIZE = NBLOCKS * BLOCK

LOCATOR_ITEM = uuid.UUID("a8d35f2d-b30b-454d-abf7-d3d84834ab0c").bytes_le
LOCATOR_TYPE = uuid.UUID("b04aefb7-d19e-4a81-b789-25b8e9445913").bytes_le
FILE_PARAMS = uuid.UUID("caa16737-fa36-4d43-b3b6-33f0aa44e76b").bytes_le
BAT_GUID = uuid.UUID("2dc27766-f623-4200-9d64-115e9bfd4a08").bytes_le
META_GUID = uuid.UUID("8b7ca206-4790-4b9a-b8fe-575f050f886e").bytes_le

NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULL, PARTIAL = 0, 1, 2, 3, 6, 7


def regions(data):
    """(bat_offset, metadata_offset) from the region table at 192 KiB."""
    rt = 192 * 1024
    assert data[rt:rt + 4] == b"regi"
    count = struct.unpack_from("<I", data, rt + 8)[0]
    bat = meta = None
    for i in range(count):
        e = rt + 16 + 32 * i
        off = struct.unpack_from("<Q", data, e + 16)[0]
        if data[e:e + 16] == BAT_GUID:
            bat = off
        elif data[e:e + 16] == META_GUID:
            meta = off
    return bat, meta


def locator(entries):
    """A VHDX parent locator item: header, entry table, UTF-16LE strings."""
    n = len(entries)
    table = b""
    strings = b""
    base = 20 + 12 * n
    for key, value in entries:
        k = key.encode("utf-16-le")
        v = value.encode("utf-16-le")
        ko = base + len(strings)
        strings += k
        vo = base + len(strings)
        strings += v
        table += struct.pack("<IIHH", ko, vo, len(k), len(v))
    return LOCATOR_TYPE + struct.pack("<HH", 0, n) + table + strings


def sector_pattern(block, sector):
    """Distinct bytes for every child sector."""
    return bytes([(block * 37 + sector * 7 + j) & 0xff for j in range(512)])


def make_diff(path, parent_paths, blocks, bitmap_sectors=None, has_parent=True,
              loc=None):
    """Writes a differencing VHDX at path.

    parent_paths: locator (key, value) pairs.  blocks: BAT state per block.
    bitmap_sectors: {block: set of sectors present in this file} for
    PARTIAL blocks.  Returns the child's own content per block: a list of
    (state, bytes or None, present sector set)."""
    qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M,subformat=dynamic",
             str(path), str(SIZE))
    data = bytearray(path.read_bytes())
    bat_off, meta_off = regions(data)
    # Metadata table: has_parent in the file parameters, then the locator.
    count = struct.unpack_from("<H", data, meta_off + 10)[0]
    end = 0
    for i in range(count):
        e = meta_off + 32 + 32 * i
        off, length = struct.unpack_from("<II", data, e + 16)
        end = max(end, off + length)
        if data[e:e + 16] == FILE_PARAMS and has_parent:
            bs, flags = struct.unpack_from("<II", data, meta_off + off)
            struct.pack_into("<II", data, meta_off + off, bs, flags | 2)
    item = loc if loc is not None else locator(parent_paths)
    item_off = (end + 7) & ~7
    data[meta_off + item_off:meta_off + item_off + len(item)] = item
    e = meta_off + 32 + 32 * count
    data[e:e + 32] = LOCATOR_ITEM + struct.pack("<IIII", item_off, len(item), 4, 0)
    struct.pack_into("<H", data, meta_off + 10, count + 1)

    def alloc(content):
        nonlocal data
        off = (len(data) + MiB - 1) // MiB * MiB
        data += bytes(off - len(data))
        data += content
        return off

    own = []
    bitmap = bytearray(MiB)
    for b, state in enumerate(blocks):
        content = None
        present = set()
        entry = state
        if state in (FULL, PARTIAL):
            content = b"".join(sector_pattern(b, s) for s in range(SECTORS))
            entry |= alloc(content)
            present = set(range(SECTORS)) if state == FULL else \
                set((bitmap_sectors or {}).get(b, ()))
            for s in present if state == PARTIAL else ():
                bit = b % CHUNK_RATIO * SECTORS + s
                bitmap[bit // 8] |= 1 << (bit % 8)
        struct.pack_into("<Q", data, bat_off + 8 * (b + b // CHUNK_RATIO), entry)
        own.append((state, content, present))
    sb = CHUNK_RATIO       # the only chunk's sector bitmap entry
    struct.pack_into("<Q", data, bat_off + 8 * sb, 6 | alloc(bytes(bitmap)))
    path.write_bytes(bytes(data))
    return own


def merge(own, parent):
    out = bytearray(parent)
    for b, (state, content, present) in enumerate(own):
        base = b * BLOCK
        if state in (ZERO, UNDEFINED, UNMAPPED):
            out[base:base + BLOCK] = bytes(BLOCK)
        elif state == FULL:
            out[base:base + BLOCK] = content
        elif state == PARTIAL:
            for s in present:
                out[base + 512 * s:base + 512 * (s + 1)] = content[512 * s:512 * (s + 1)]
    return bytes(out)


def make_parent(path):
    qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", str(path), str(SIZE))
    for b in range(NBLOCKS):
        qemu_io("-f", "vhdx", "-c", f"write -P {0x40 + b} {b * BLOCK} {BLOCK}", str(path))
    qemu_io("-f", "vhdx", "-c", f"write -P 0x99 {3 * BLOCK + 4096} 8192", str(path))
    raw = path.parent / (path.name + ".raw")
    qemu_img("convert", "-f", "vhdx", "-O", "raw", str(path), str(raw))
    return raw.read_bytes()


STATES = [NOT_PRESENT, FULL, ZERO, PARTIAL, UNDEFINED, UNMAPPED, PARTIAL, NOT_PRESENT]
PARTIAL_SECTORS = {3: set(range(8)) | {100} | set(range(500, 1000)) | {SECTORS - 1},
                   6: set()}


def compare_identical(tmp_path, child, expected):
    (tmp_path / "merged.raw").write_bytes(expected)
    r = instar("compare", "-F", "raw", child, "merged.raw", cwd=tmp_path)
    assert r.stdout.decode() == "Images are identical.\n", r.stderr.decode()
    assert r.returncode == 0


@pytest.mark.parametrize("where", [
    [("parent_linkage", "{83d4f2d5-0000-0000-0000-000000000000}"),
     ("relative_path", ".\\parent.vhdx"),
     ("volume_path", "\\\\?\\Volume{00000000-0000-0000-0000-000000000000}\\parent.vhdx"),
     ("absolute_win32_path", "C:\\nowhere\\parent.vhdx")],
    [("absolute_win32_path", "parent.vhdx")],
], ids=["relative", "absolute-only"])
def test_read_through_parent(tmp_path, where):
    parent = make_parent(tmp_path / "parent.vhdx")
    own = make_diff(tmp_path / "child.vhdx", where, STATES, PARTIAL_SECTORS)
    compare_identical(tmp_path, "child.vhdx", merge(own, parent))


def test_subdir_and_chain(tmp_path):
    """A parent in a subdirectory, itself differencing (three layers)."""
    sub = tmp_path / "sub"
    sub.mkdir()
    base = make_parent(sub / "base.vhdx")
    mid = make_diff(sub / "mid.vhdx", [("relative_path", ".\\base.vhdx")],
                    [FULL, NOT_PRESENT, PARTIAL, NOT_PRESENT, ZERO, NOT_PRESENT,
                     NOT_PRESENT, FULL], {2: {0, 1, 2, 2047}})
    own = make_diff(tmp_path / "top.vhdx", [("relative_path", "sub\\mid.vhdx")],
                    STATES, PARTIAL_SECTORS)
    compare_identical(tmp_path, "top.vhdx", merge(own, merge(mid, base)))


def test_info_keeps_qemu_refusal(tmp_path, oracle):
    """info is qemu's: differencing VHDX files cannot be opened."""
    make_parent(tmp_path / "parent.vhdx")
    make_diff(tmp_path / "child.vhdx", [("relative_path", "parent.vhdx")], STATES,
              PARTIAL_SECTORS)
    assert_info_same(oracle, tmp_path, "child.vhdx")


def test_template_edit(tmp_path, oracle):
    """The generator keeps the file valid: without has_parent, qemu reports
    only its usual locator refusal, and with a plain template edit (no
    locator item) it opens."""
    qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", "t.vhdx", str(SIZE),
             cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "t.vhdx")
    make_diff(tmp_path / "nohp.vhdx", [("relative_path", "x")], STATES, PARTIAL_SECTORS,
              has_parent=False)
    assert_info_same(oracle, tmp_path, "nohp.vhdx")


def one_line_error(r, *words):
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert r.stdout == b"" or b"identical" not in r.stdout
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_parent_outside_allowed_dir_refused(tmp_path):
    img = tmp_path / "img"
    out = tmp_path / "outside"
    img.mkdir()
    out.mkdir()
    parent = make_parent(out / "parent.vhdx")
    make_diff(img / "child.vhdx", [("relative_path", "..\\outside\\parent.vhdx")],
              STATES, PARTIAL_SECTORS)
    (img / "merged.raw").write_bytes(parent)
    r = instar("compare", "-F", "raw", "child.vhdx", "merged.raw", cwd=img)
    one_line_error(r, "parent image", "outside the allowed directories")


def test_missing_parent(tmp_path):
    make_diff(tmp_path / "child.vhdx", [("relative_path", "gone.vhdx")], STATES,
              PARTIAL_SECTORS)
    (tmp_path / "merged.raw").write_bytes(bytes(SIZE))
    r = instar("compare", "-F", "raw", "child.vhdx", "merged.raw", cwd=tmp_path)
    one_line_error(r, "gone.vhdx", "No such file or directory")


@pytest.mark.parametrize("n", [1, 2])
def test_loop_refused(tmp_path, n):
    names = [f"l{i}.vhdx" for i in range(n)]
    for i, name in enumerate(names):
        make_diff(tmp_path / name, [("relative_path", ".\\" + names[(i + 1) % n])],
                  STATES, PARTIAL_SECTORS)
    (tmp_path / "merged.raw").write_bytes(bytes(SIZE))
    r = instar("compare", "-F", "raw", names[0], "merged.raw", cwd=tmp_path)
    one_line_error(r, "loop")


@pytest.mark.parametrize("bad", ["no-path", "bad-offset", "many-entries", "bad-type",
                                 "surrogate"])
def test_hostile_locator(tmp_path, bad):
    if bad == "no-path":
        loc = locator([("parent_linkage", "{x}")])
    elif bad == "bad-offset":
        loc = bytearray(locator([("relative_path", "p.vhdx")]))
        struct.pack_into("<I", loc, 24, 0xfffffff0)
        loc = bytes(loc)
    elif bad == "many-entries":
        loc = bytearray(locator([("relative_path", "p.vhdx")]))
        struct.pack_into("<H", loc, 18, 0xffff)
        loc = bytes(loc)
    elif bad == "bad-type":
        loc = bytes(16) + locator([("relative_path", "p.vhdx")])[16:]
    else:
        loc = bytearray(locator([("relative_path", "p.vhdx")]))
        loc[-2:] = b"\x00\xd8"
        loc = bytes(loc)
    make_diff(tmp_path / "child.vhdx", None, STATES, PARTIAL_SECTORS, loc=loc)
    (tmp_path / "merged.raw").write_bytes(bytes(SIZE))
    r = instar("compare", "-F", "raw", "child.vhdx", "merged.raw", cwd=tmp_path)
    one_line_error(r, "parent locator")
