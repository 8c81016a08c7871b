"""qemu-img info on bochs, cloop, dmg and ISO 9660 images.

qemu-img cannot create any of these, so small generators below build them
per qemu's block/bochs.c, cloop.c and dmg.c; each valid generator is
checked by having qemu-img convert the image back to the data it holds.
ISO is instar's own format name: qemu-img calls an ISO raw.
"""
import base64
import json
import struct
import zlib

import pytest

from conftest import QEMU_IMG, assert_info_same, assert_same, instar, qemu_img, run

UNSAFE = ("--unsafe-quirks",)


def convert_to_raw(tmp_path, name, fmt):
    qemu_img("convert", "-f", fmt, "-O", "raw", name, "out.raw", cwd=tmp_path)
    return (tmp_path / "out.raw").read_bytes()


def check_all(oracle, tmp_path, name, fmt, messages=True):
    """Probed and -f, human and JSON; one-line errors."""
    for extra in ([], ["-f", fmt]):
        _, i = assert_same(oracle, ["info", *extra, name], tmp_path, instar_args=UNSAFE)
        assert_same(oracle, ["info", "--output=json", *extra, name], tmp_path,
                    instar_args=UNSAFE)
        assert len(i.stderr.splitlines()) <= 1
    if messages:
        # qemu 7.2 also warns about missing dmg modules first: compare the
        # final line, the error.
        q, i = assert_same(oracle, ["info", "-f", fmt, name], tmp_path)
        if q.returncode == 0:
            return
        last = [s.decode().splitlines()[-1:] for s in (q.stderr, i.stderr)]
        assert [x.split(": ", 1)[1:] for x in last[0]] == \
            [x.split(": ", 1)[1:] for x in last[1]]


# ---- bochs ----

def bochs(disk=1 << 20, extent=1 << 16, bitmap=None, catalog=None, v1=False,
          header=512, magic=b"Bochs Virtual HD Image", type_=b"Redolog",
          subtype=b"Growing", version=None, entries=None, data=b""):
    if catalog is None:
        catalog = -(-(disk // 512) // (extent // 512))
    if bitmap is None:
        bitmap = max(1, extent // 512 // 8)
    if version is None:
        version = 0x00010000 if v1 else 0x00020000
    h = magic.ljust(32, b"\0")[:32] + type_.ljust(16, b"\0")[:16] + \
        subtype.ljust(16, b"\0")[:16]
    h += struct.pack("<IIIII", version, header, catalog, bitmap, extent)
    h += struct.pack("<Q", disk) if v1 else struct.pack("<IQ", 0, disk)
    cat = entries if entries is not None else [0xffffffff] * catalog
    # A catalog far beyond the header is simply not there (reads as zeros).
    img = h.ljust(512, b"\0")
    if header < (1 << 20):
        img = img.ljust(header, b"\0") + b"".join(struct.pack("<I", e) for e in cat)
    return img + data


def bochs_with_data():
    """Extent 0 -> file extent 1 with sectors 0 and 2 present."""
    extent, bitmap_bytes = 4096, 1
    entries = [1, 0xffffffff]
    img = bochs(disk=8192, extent=extent, bitmap=bitmap_bytes, entries=entries)
    blocks = 1 + (bitmap_bytes - 1) // 512 + 1 + (extent - 1) // 512    # 9 sectors
    data_offset = len(img)
    img = img.ljust(data_offset + 512 * blocks * 2, b"\0")
    ext = bytearray(512 * blocks)
    ext[0] = 0b101
    ext[512:1024] = b"\xaa" * 512
    ext[1536:2048] = b"\xbb" * 512
    return img[:data_offset + 512 * blocks] + bytes(ext)


BOCHS = {
    "ok": bochs(),
    "v1": bochs(v1=True),
    "odd_disk": bochs(disk=(1 << 20) + 100),
    "zero_disk": bochs(disk=0, catalog=0, entries=[]),
    "magic": bochs(magic=b"Bochs Virtual HD ImagX"),
    "magic_unterminated": bochs(magic=b"Bochs Virtual HD Image!"),
    "type": bochs(type_=b"Redolo"),
    "subtype": bochs(subtype=b"Undoable"),
    "version": bochs(version=3),
    "catalog_too_large": bochs(catalog=0x100001, entries=[]),
    "extent_small": bochs(extent=256, catalog=10, entries=[]),
    "extent_not_pow2": bochs(extent=1536, catalog=1000, entries=[]),
    "extent_too_large": bochs(extent=1 << 24, catalog=1, entries=[]),
    "catalog_too_small": bochs(catalog=1, entries=[0xffffffff]),
    "catalog_past_eof": bochs(header=0xfffffe00, entries=[]),
    "huge_disk": bochs(disk=1 << 62, extent=1 << 23, catalog=0x100000, entries=[]),
    "truncated_300": bochs()[:300],
    "truncated_520": bochs()[:520],
}


@pytest.mark.parametrize("case", sorted(BOCHS))
def test_bochs(oracle, tmp_path, case):
    (tmp_path / "t.bochs").write_bytes(BOCHS[case])
    check_all(oracle, tmp_path, "t.bochs", "bochs")


def test_bochs_generator_is_valid(oracle, tmp_path):
    (tmp_path / "t.bochs").write_bytes(bochs_with_data())
    data = convert_to_raw(tmp_path, "t.bochs", "bochs")
    assert data[:512] == b"\xaa" * 512 and data[1024:1536] == b"\xbb" * 512
    assert data[512:1024] == bytes(512) and len(data) == 8192
    check_all(oracle, tmp_path, "t.bochs", "bochs")


# ---- cloop ----

CLOOP_MAGIC = (b"#!/bin/sh\n#V2.0 Format\n"
               b"modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n")


def cloop(block_size=65536, n_blocks=4, offsets=None, magic=CLOOP_MAGIC):
    hdr = magic.ljust(128, b"\0")[:128] + struct.pack(">II", block_size, n_blocks)
    body = b""
    if offsets is None:
        blocks = [zlib.compress(bytes([i + 1]) * block_size) for i in range(n_blocks)]
        offsets = [128 + 8 + 8 * (n_blocks + 1)]
        for b in blocks:
            offsets.append(offsets[-1] + len(b))
        body = b"".join(blocks)
    return hdr + b"".join(struct.pack(">Q", o) for o in offsets) + body


CLOOP = {
    "ok": cloop(),
    "one_block": cloop(block_size=512, n_blocks=1),
    "zero_blocks": cloop(n_blocks=0, offsets=[0]),
    "block_zero": cloop(block_size=0, offsets=[]),
    "block_unaligned": cloop(block_size=1000, offsets=[]),
    "block_too_big": cloop(block_size=128 << 20, offsets=[]),
    "n_blocks_overflow": cloop(n_blocks=2 ** 29, offsets=[]),
    "too_many_offsets": cloop(n_blocks=2 ** 26, offsets=[]),
    "offsets_decrease": cloop(n_blocks=2, offsets=[1000, 500, 2000]),
    "offsets_jump": cloop(n_blocks=2, offsets=[0, 1, 2 ** 28]),
    "offsets_jump_max": cloop(n_blocks=2, offsets=[0, 1, 2 ** 27 + 1]),
    "offsets_past_eof": cloop(n_blocks=1000, offsets=[0]),
    "short_preamble": CLOOP_MAGIC[:20],
    "other_version": cloop(magic=b"#!/bin/sh\n#V2.1 Format\n"),
}

# qemu 7.2 multiplied the block count by sectors per block in 32 bits;
# 10.0 does not: instar follows 10.0.
CLOOP_72 = {"wrapping_size": cloop(n_blocks=2 ** 26 - 1, offsets=[])}


@pytest.mark.parametrize("case", sorted(CLOOP))
def test_cloop(oracle, tmp_path, case):
    (tmp_path / "t.cloop").write_bytes(CLOOP[case])
    check_all(oracle, tmp_path, "t.cloop", "cloop")


@pytest.mark.parametrize("case", sorted(CLOOP_72))
def test_cloop_version_differences(oracle, tmp_path, case, request):
    if oracle.major < 8:
        request.applymarker(pytest.mark.xfail(reason="7.2 wraps the size in 32 bits"))
    (tmp_path / "t.cloop").write_bytes(CLOOP_72[case])
    assert_info_same(oracle, tmp_path, "t.cloop", extra=["-f", "cloop"])


def test_cloop_generator_is_valid(oracle, tmp_path):
    (tmp_path / "t.cloop").write_bytes(cloop())
    data = convert_to_raw(tmp_path, "t.cloop", "cloop")
    assert data == b"".join(bytes([i + 1]) * 65536 for i in range(4))


# ---- dmg ----

UDZE, UDRW, UDIG, UDZO, UDBZ, UDLE = 0, 1, 2, 0x80000005, 0x80000006, 0xffffffff


def mish(chunks):
    """chunks: (type, sector, sector count, offset, length)"""
    h = b"mish" + struct.pack(">IQQQII", 1, 0, sum(c[2] for c in chunks), 0, 0, 0)
    h = h.ljust(200, b"\0") + struct.pack(">I", len(chunks))
    return h + b"".join(struct.pack(">IIQQQQ", t, 0, s, n, o, ln)
                        for t, s, n, o, ln in chunks)


def koly(data_len=0, rsrc=(0, 0), xml=(0, 0), sectors=0, data_off=0):
    k = bytearray(512)
    k[0:4] = b"koly"
    struct.pack_into(">III", k, 4, 4, 512, 1)
    struct.pack_into(">QQQQ", k, 0x18, data_off, data_len, *rsrc)
    struct.pack_into(">QQ", k, 0xd8, *xml)
    struct.pack_into(">Q", k, 0x1ec, sectors)
    return bytes(k)


def plist(blocks):
    items = "".join("<dict><key>Data</key><data>\n%s\n</data></dict>"
                    % base64.b64encode(m).decode() for m in blocks)
    return ('<?xml version="1.0"?><plist version="1.0"><dict><key>resource-fork</key>'
            '<dict><key>blkx</key><array>%s</array></dict></dict></plist>\n'
            % items).encode()


RAW = bytes(range(256)) * 2 * 1024                    # 512 KiB
ZLIB = zlib.compress(b"\x55" * 512 * 1024)
DATA_CHUNKS = [(UDRW, 0, 1024, 0, len(RAW)), (UDZO, 1024, 1024, len(RAW), len(ZLIB)),
               (UDZE, 2048, 2048, 0, 0), (UDLE, 4096, 0, 0, 0)]


def dmg_xml(chunks=DATA_CHUNKS, text=None, sectors=4096, **kw):
    """A data fork and an XML property list; kw overrides trailer fields."""
    x = plist([mish(chunks)]) if text is None else text
    fork = RAW + ZLIB
    args = dict(data_len=len(fork), xml=(len(fork), len(x)), sectors=sectors)
    args.update(kw)
    return fork + x + koly(**args)


def dmg_rsrc(chunks, sectors, **kw):
    m = mish(chunks)
    res = struct.pack(">I", len(m)) + m
    rsrc = struct.pack(">III", 16, 0, len(res)) + b"\0" * 4 + res
    args = dict(rsrc=(0, len(rsrc)), sectors=sectors)
    args.update(kw)
    return rsrc + koly(**args)


DMG = {
    "xml": dmg_xml(),
    "xml_odd_length": dmg_xml() + b"abc",
    "rsrc": dmg_rsrc([(UDZE, 0, 4096, 0, 0)], 4096),
    "rsrc_huge_zero_chunk": dmg_rsrc([(UDZE, 0, 2 ** 40, 0, 0)], 2 ** 40),
    "rsrc_sectors_too_many": dmg_rsrc([(UDRW, 0, 200000, 0, 512)], 200000),
    "rsrc_length_too_big": dmg_rsrc([(UDRW, 0, 1, 0, 2 ** 27)], 1),
    "rsrc_unknown_then_bad": dmg_rsrc([(0x1234, 0, 2 ** 30, 0, 2 ** 30),
                                       (UDRW, 0, 2 ** 30, 0, 1)], 1),
    "rsrc_data_offset": dmg_rsrc([(UDZE, 0, 1, 0, 0)], 1, rsrc=(0, 16)),
    "xml_sectors_too_many": dmg_xml(chunks=[(UDZO, 0, 200000, 0, 10)]),
    "xml_unterminated": dmg_xml(text=b"<data>AAAA"),
    "no_forks": dmg_xml(xml=(0, 0)),
    "sectors_negative": dmg_xml(sectors=2 ** 63),
    "sectors_refresh": dmg_xml(sectors=2 ** 54),
    "data_fork_past_trailer": dmg_xml(data_off=2 ** 40),
    "rsrc_past_trailer": dmg_xml(rsrc=(2 ** 40, 1)),
    "xml_past_trailer": dmg_xml(xml=(2 ** 40, 10)),
    "xml_too_long": dmg_xml(xml=(0, 2 ** 40)),
    "no_trailer": b"\0" * 4096,
    "tiny": b"koly",
    "empty": b"",
}

# qemu 10.0 refuses a dmg without a single usable chunk; 7.2 accepted it.
DMG_72 = {
    "xml_no_data": dmg_xml(text=b"nothing here"),
    "xml_after_nul": dmg_xml(text=b"\0<data>" + b"A" * 400 + b"</data>"),
    "rsrc_no_chunks": dmg_rsrc([], 1),
}

# qemu-img prints "Can't get image size" without the "Could not open"
# prefix; so does instar.
DMG_NO_PREFIX = {"huge": dmg_xml(sectors=2 ** 62)}


@pytest.mark.parametrize("case", sorted(DMG))
def test_dmg(oracle, tmp_path, case):
    (tmp_path / "t.dmg").write_bytes(DMG[case])
    # Sector count and length errors come with an extra line from qemu
    # (its error_report); instar prints only the final one.
    extra_line = case.endswith(("_too_many", "_too_big", "_then_bad"))
    check_all(oracle, tmp_path, "t.dmg", "dmg", messages=not extra_line)


@pytest.mark.parametrize("case", sorted(DMG_NO_PREFIX))
def test_dmg_size_errors(oracle, tmp_path, case):
    (tmp_path / "t.dmg").write_bytes(DMG_NO_PREFIX[case])
    check_all(oracle, tmp_path, "t.dmg", "dmg", messages=True)


@pytest.mark.parametrize("case", sorted(DMG_72))
def test_dmg_version_differences(oracle, tmp_path, case, request):
    if oracle.major < 8:
        request.applymarker(pytest.mark.xfail(reason="7.2 accepts a dmg without chunks"))
    (tmp_path / "t.dmg").write_bytes(DMG_72[case])
    assert_same(oracle, ["info", "-f", "dmg", "t.dmg"], tmp_path)


def test_dmg_bzip2_chunk_limits(oracle, tmp_path):
    """Known divergence: instar decodes bzip2 chunks as qemu's dmg-bz2
    module does, so it applies qemu's chunk limits to them; the Debian
    builds lack the module and skip such chunks unchecked (7.2 opens this
    image, 10.0 refuses it for having no usable chunk)."""
    (tmp_path / "t.dmg").write_bytes(dmg_rsrc([(UDBZ, 0, 2 ** 30, 0, 2 ** 30)], 1))
    q = run([oracle.path, "info", "-f", "dmg", "t.dmg"], cwd=tmp_path)
    assert q.returncode == (0 if oracle.major < 8 else 1)
    i = instar("info", "-f", "dmg", "t.dmg", cwd=tmp_path, version=oracle.version)
    assert i.returncode == 1 and i.stdout == b""
    assert i.stderr.endswith(b"Could not open 't.dmg': Invalid argument\n"), i.stderr


def test_dmg_probe_is_by_name(oracle, tmp_path):
    """qemu probes dmg by the .dmg suffix only (score 2)."""
    (tmp_path / "t.img").write_bytes(dmg_xml())
    assert_info_same(oracle, tmp_path, "t.img", instar_args=UNSAFE)
    assert_info_same(oracle, tmp_path, "t.img", extra=["-f", "dmg"])
    qemu_img("create", "-f", "qcow2", "q.dmg", "1M", cwd=tmp_path)
    assert_info_same(oracle, tmp_path, "q.dmg")


def test_dmg_generator_is_valid(oracle, tmp_path):
    (tmp_path / "t.dmg").write_bytes(dmg_xml())
    data = convert_to_raw(tmp_path, "t.dmg", "dmg")
    assert data == RAW + b"\x55" * (512 * 1024) + bytes(1 << 20)
    (tmp_path / "r.dmg").write_bytes(dmg_rsrc([(UDZE, 0, 4096, 0, 0)], 4096))
    assert convert_to_raw(tmp_path, "r.dmg", "dmg") == bytes(2 << 20)


# ---- ISO 9660 ----

def iso(extra_sectors=0, mbr=False, volume=b"INSTAR"):
    """A minimal ISO 9660 image: volume descriptors, path tables, root."""
    S = 2048

    def both16(v):
        return struct.pack("<H", v) + struct.pack(">H", v)

    def both32(v):
        return struct.pack("<I", v) + struct.pack(">I", v)

    def dirrec(extent, size, name=b"\0"):
        rec = bytes(2) + both32(extent) + both32(size) + bytes(7) + b"\x02" + \
            bytes(2) + both16(1) + bytes([len(name)]) + name
        rec += b"\0" * (len(rec) % 2)
        return bytes([len(rec)]) + rec[1:]

    nsec = 22 + extra_sectors
    pvd = bytearray(S)
    pvd[0], pvd[1:6], pvd[6] = 1, b"CD001", 1
    pvd[40:72] = volume.ljust(32)
    pvd[80:88] = both32(nsec)
    pvd[120:132] = both16(1) + both16(1) + both16(S)
    pvd[132:140] = both32(10)
    pvd[140:144], pvd[148:152] = struct.pack("<I", 18), struct.pack(">I", 19)
    root = dirrec(20, S)
    pvd[156:156 + len(root)] = root
    pvd[881] = 1
    term = bytearray(S)
    term[0], term[1:6], term[6] = 255, b"CD001", 1
    img = bytearray(S * 16)
    if mbr:
        img[446:462] = bytes([0x80, 0, 2, 0, 0x17, 0, 0, 0]) + struct.pack("<II", 0, nsec * 4)
        img[510:512] = b"\x55\xaa"
    img += pvd + term
    img += (struct.pack("<BBIH", 1, 0, 20, 1) + b"\0\0").ljust(S, b"\0")
    img += (struct.pack(">BBIH", 1, 0, 20, 1) + b"\0\0").ljust(S, b"\0")
    img += (dirrec(20, S) + dirrec(20, S, b"\1")).ljust(S, b"\0") + bytes(S)
    return bytes(img + bytes(S * extra_sectors))


ISO = {
    "plain": iso(),
    "hybrid_mbr": iso(mbr=True),
    "larger": iso(extra_sectors=1000),
    "odd_length": iso() + b"x" * 100,
    "truncated_after_magic": iso()[:32769 + 5],
}


@pytest.mark.parametrize("case", sorted(ISO))
def test_iso_unsafe_quirks_matches_qemu(oracle, tmp_path, case):
    """With --unsafe-quirks instar reads an ISO as raw, as qemu-img does."""
    (tmp_path / "t.iso").write_bytes(ISO[case])
    assert_info_same(oracle, tmp_path, "t.iso", instar_args=UNSAFE)
    assert_info_same(oracle, tmp_path, "t.iso", extra=["-f", "raw"])


@pytest.mark.parametrize("case", sorted(ISO))
def test_iso_detected_by_default(oracle, tmp_path, case):
    """Known divergence, on purpose: instar names ISO 9660 images "iso"
    where qemu-img says "raw" (reading an unrecognised file as raw is an
    unsafe quirk).  Apart from the format name the output is qemu's."""
    (tmp_path / "t.iso").write_bytes(ISO[case])
    for args in (["info"], ["info", "--output=json"]):
        q = run([oracle.path, *args, "t.iso"], cwd=tmp_path)
        i = instar(*args, "t.iso", cwd=tmp_path, version=oracle.version)
        assert q.returncode == 0 and i.returncode == 0, i.stderr
        if "--output=json" in args:
            qj, ij = json.loads(q.stdout), json.loads(i.stdout)
            assert qj.pop("format") == "raw" and ij.pop("format") == "iso"
            assert ij == qj
        else:
            expect = q.stdout.decode().replace("file format: raw", "file format: iso")
            assert i.stdout.decode() == expect
        # -f iso is instar's own.
        f = instar(*args, "-f", "iso", "t.iso", cwd=tmp_path, version=oracle.version)
        assert f.stdout == i.stdout


def test_iso_loses_to_real_formats(oracle, tmp_path):
    """Score 1: a qcow2 image that also carries CD001 is qcow2."""
    qemu_img("create", "-f", "qcow2", "t.img", "1M", cwd=tmp_path)
    data = bytearray((tmp_path / "t.img").read_bytes().ljust(40000, b"\0"))
    data[32769:32774] = b"CD001"
    (tmp_path / "t.img").write_bytes(bytes(data))
    assert_info_same(oracle, tmp_path, "t.img")


def test_not_iso_without_magic(tmp_path):
    (tmp_path / "t.iso").write_bytes(bytes(40000))
    r = instar("info", "t.iso", cwd=tmp_path)
    assert r.returncode == 1 and b"not a recognised disk image" in r.stderr
    r = run([QEMU_IMG, "info", "t.iso"], cwd=tmp_path)
    assert b"file format: raw" in r.stdout
