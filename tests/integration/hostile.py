"""The adversarial corpus: hostile image files, generated, never committed.

Each case is a function that writes one or more files into a directory
(the directory instar is allowed to read) and returns the name of the
image to run commands on.  `secret` is the path of a file *outside* that
directory whose bytes must never come out of instar; cases that name it
(or name something else that must be refused) are marked `refused`, and
every data command on them must fail.

The classes (docs/security.md says how each is stopped):
- CVE-2015-5163, CVE-2024-32498, CVE-2024-4467: backing and data-file
  references to host files: absolute, `..`, symlinks, `json:` and
  protocol names.
- CVE-2022-47951, CVE-2024-40767: vmdk extents naming host files,
  descriptors as "raw" images, format confusion, polyglots.
- CVE-2015-5162: resource exhaustion: huge L1/L2/refcount/snapshot
  tables, petabyte and 2^63 sizes, compression bombs, giant descriptors.
- loops of 1, 2 and 3 images, chains deeper than the limit.
- header fields out of range, tables beyond the end of the file, and
  every format truncated inside its header.

Used by test_corpus.py (every command on every case) and, as a script,
by fuzz/seeds.sh: `hostile.py --seeds DIR` writes every case into
DIR/<format>/ as fuzz seeds.
"""
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

QEMU_IMG = os.environ.get("QEMU_IMG_72", "/usr/bin/qemu-img")
MB = 1 << 20
KB = 1 << 10

# ---- the registry ----

CASES = {}      # name -> (format, refused, fn)


def case(name, fmt, refused=False):
    def register(fn):
        assert name not in CASES, name
        CASES[name] = (fmt, refused, fn)
        return fn
    return register


def build(name, d, secret):
    """Writes case `name` into directory d; returns the image's name."""
    _, _, fn = CASES[name]
    return fn(Path(d), str(secret))


def _qemu_img(*args, cwd=None):
    r = subprocess.run([QEMU_IMG, *map(str, args)], cwd=cwd, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.decode())


def _relative(d, secret):
    return os.path.relpath(secret, d)


# ---- qcow2 ----

def qcow2(size=1 * MB, cluster_bits=12, version=3, backing=None, backing_fmt=None,
          data_file=None, data_file_raw=True, l1_size=None, l1_off=None,
          rt_off=None, rt_clusters=1, nb_snapshots=0, snapshots_off=0,
          refcount_order=4, incompat=0, header_length=None, compression=None,
          l2=None, data=b"", backing_size=None, crypt=0):
    """A small, consistent qcow2 unless told otherwise.  Clusters: 0 header,
    1 refcount table, 2 refcount block, 3 L1, 4 L2 (entries from `l2`, a
    {index: value} dict), then `data`."""
    # The layout uses a sane cluster size whatever the header claims.
    cs = 1 << cluster_bits if 9 <= cluster_bits <= 21 else 4096
    if l1_size is None:
        per_l1 = cs * (cs // 8)
        l1_size = max(1, -(-size // per_l1))
    l1_off = 3 * cs if l1_off is None else l1_off
    rt_off = cs if rt_off is None else rt_off
    exts = b""
    if version >= 3:
        if backing_fmt is not None:
            exts += _ext(0xe2792aca, backing_fmt.encode())
        if data_file is not None:
            exts += _ext(0x44415441, data_file.encode())
            incompat |= 4
        exts += _ext(0, b"")
    if compression == "zstd":
        incompat |= 8
    hlen = header_length or (112 if version >= 3 else 72)
    if version < 3:
        hlen = 72
    hdr = bytearray(cs if cs >= 512 else 512)
    bname = backing.encode() if backing is not None else b""
    boff = hlen + len(exts) if backing is not None else 0
    autoclear = 2 if (data_file is not None and data_file_raw) else 0
    struct.pack_into(">4sIQIIQIIQQIIQ", hdr, 0, b"QFI\xfb", version, boff,
                     len(bname) if backing_size is None else backing_size,
                     cluster_bits, size, crypt, l1_size, l1_off, rt_off, rt_clusters,
                     nb_snapshots, snapshots_off)
    if version >= 3:
        struct.pack_into(">QQQII", hdr, 72, incompat, 0, autoclear, refcount_order,
                         hlen)
        if compression == "zstd":
            hdr[104] = 1
        body = exts + bname
        hdr[min(hlen, 112):min(hlen, 112) + len(body)] = body
    elif bname:
        hdr[72:72 + len(bname)] = bname
    n_clusters = 5 + -(-len(data) // cs)
    rt = bytearray(cs)
    struct.pack_into(">Q", rt, 0, 2 * cs)
    rb = bytearray(cs)
    for i in range(min(n_clusters, cs // 2)):
        struct.pack_into(">H", rb, 2 * i, 1)
    l1 = bytearray(cs)
    l2t = bytearray(cs)
    if l2:
        struct.pack_into(">Q", l1, 0, (1 << 63) | 4 * cs)
        for i, v in l2.items():
            struct.pack_into(">Q", l2t, 8 * i, v)
    img = bytes(hdr[:cs]) + bytes(rt) + bytes(rb) + bytes(l1) + bytes(l2t) + data
    return img + bytes(-len(img) % cs)


def _ext(magic, data):
    return struct.pack(">II", magic, len(data)) + data + bytes(-len(data) % 8)


def _write(d, name, data):
    (Path(d) / name).write_bytes(data)
    return name


def _overlay(d, name, backing, fmt="raw"):
    """A qcow2 with nothing allocated: every read goes to its backing."""
    return _write(d, name, qcow2(size=64 * KB, backing=backing, backing_fmt=fmt))


# Reference kinds: what a hostile image names instead of its own files.
def _refs(d, secret):
    return {
        "absolute": secret,
        "dotdot": _relative(d, secret),
        "json": 'json:{"driver":"raw","file":{"driver":"file","filename":"%s"}}' % secret,
        "json_qcow2": 'json:{"driver":"qcow2","file":{"filename":"%s"}}' % secret,
        "nbd": "nbd://127.0.0.1:10809/export",
        "file_protocol": "file:" + secret,
        "host_device": "host_device:/dev/sda",
        "proc": "/proc/self/environ",
    }


REF_KINDS = ["absolute", "dotdot", "symlink", "symlink_dir", "json", "json_qcow2",
             "nbd", "file_protocol", "host_device", "proc"]


def _ref(d, secret, kind):
    """The name a hostile image stores for `kind`, creating links as needed."""
    if kind == "symlink":
        os.symlink(secret, d / "link.raw")
        return "link.raw"
    if kind == "symlink_dir":
        os.symlink(os.path.dirname(secret), d / "linkdir")
        return "linkdir/" + os.path.basename(secret)
    return _refs(d, secret)[kind]


def _register_refs():
    for kind in REF_KINDS:
        # CVE-2015-5163: a backing file that is a host file.
        case(f"qcow2_backing_{kind}", "qcow2", True)(
            lambda d, s, k=kind: _overlay(d, "top.qcow2", _ref(d, s, k)))
        # CVE-2024-32498 / CVE-2024-4467: an external data file.
        case(f"qcow2_data_file_{kind}", "qcow2", True)(
            lambda d, s, k=kind: _write(d, "top.qcow2", qcow2(
                size=64 * KB, data_file=_ref(d, s, k), l2={0: 1 << 63, 1: (1 << 63) | 4096})))
        # CVE-2022-47951: a vmdk descriptor whose extent is a host file.
        case(f"vmdk_extent_{kind}", "vmdk", True)(
            lambda d, s, k=kind: _write(d, "desc.vmdk", vmdk_descriptor(
                [("RW", 128, "FLAT", _ref(d, s, k), 0)])))
        case(f"vmdk_parent_{kind}", "vmdk", True)(
            lambda d, s, k=kind: _vmdk_with_parent(d, _ref(d, s, k)))
        case(f"vpc_parent_{kind}", "vpc", True)(
            lambda d, s, k=kind: _write(d, "child.vhd", vpc(diff_parent=_ref(d, s, k))))
    # The backing file is legitimate, but its own data file is not.
    case("qcow2_backing_with_outside_data_file", "qcow2", True)(
        lambda d, s: (_write(d, "base.qcow2", qcow2(size=64 * KB, data_file=s,
                                                   l2={0: 1 << 63})),
                      _overlay(d, "top.qcow2", "base.qcow2", "qcow2"))[1])
    # CVE-2024-40767: a file declared raw by its parent that is a qcow2
    # with an outside data file (format confusion).
    case("qcow2_declared_raw_is_qcow2", "qcow2", True)(
        lambda d, s: (_write(d, "mid.img", qcow2(size=64 * KB, data_file=s,
                                                 l2={0: 1 << 63})),
                      _overlay(d, "top.qcow2", "mid.img", "raw"))[1])
    # The same chain with the parent declaring nothing.
    case("qcow2_undeclared_mid_is_qcow2", "qcow2", True)(
        lambda d, s: (_write(d, "mid.img", qcow2(size=64 * KB, data_file=s,
                                                 l2={0: 1 << 63})),
                      _write(d, "top.qcow2", qcow2(size=64 * KB, backing="mid.img")))[1])
    # Multi-extent vmdk to several host files at once.
    case("vmdk_multi_extent_host_files", "vmdk", True)(
        lambda d, s: _write(d, "desc.vmdk", vmdk_descriptor([
            ("RW", 8, "FLAT", "/etc/passwd", 0), ("RW", 8, "FLAT", "/etc/shadow", 0),
            ("RW", 128, "FLAT", s, 0), ("RW", 8, "FLAT", _relative(d, s), 0)])))
    # An extent that is the descriptor itself (inside: allowed, not secret).
    case("vmdk_extent_self", "vmdk", False)(
        lambda d, s: _write(d, "desc.vmdk", vmdk_descriptor([("RW", 1, "FLAT", "desc.vmdk", 0)])))
    # A sparse extent whose file is the descriptor: a loop through itself.
    case("vmdk_sparse_extent_self", "vmdk", True)(
        lambda d, s: _write(d, "desc.vmdk", vmdk_descriptor([("RW", 128, "SPARSE", "desc.vmdk", None)])))


# ---- loops and depth ----

def _loop(d, n):
    names = [f"l{i}.qcow2" for i in range(n)]
    for i, name in enumerate(names):
        target = names[(i + 1) % n] if n > 1 else "./l0.qcow2"
        _write(d, name, qcow2(size=64 * KB, backing=target, backing_fmt="qcow2"))
    return names[0]


def _chain(d, depth):
    _write(d, "c0.qcow2", qcow2(size=64 * KB, l2={0: (1 << 63) | 5 * 4096},
                               data=b"\x5a" * 4096))
    for i in range(1, depth):
        _write(d, f"c{i}.qcow2", qcow2(size=64 * KB, backing=f"c{i-1}.qcow2",
                                       backing_fmt="qcow2"))
    return f"c{depth - 1}.qcow2"


def _register_loops():
    for n in (1, 2, 3):
        case(f"qcow2_backing_loop_{n}", "qcow2", True)(lambda d, s, n=n: _loop(d, n))
    case("qcow2_chain_deeper_than_limit", "qcow2", True)(lambda d, s: _chain(d, 20))
    case("qcow2_chain_at_limit", "qcow2", False)(lambda d, s: _chain(d, 16))
    case("qcow2_data_file_self", "qcow2", False)(
        lambda d, s: _write(d, "top.qcow2", qcow2(size=64 * KB, data_file="top.qcow2",
                                                 l2={0: 1 << 63})))
    case("vmdk_parent_self", "vmdk", True)(lambda d, s: _vmdk_with_parent(d, "top.vmdk"))
    case("vpc_parent_self", "vpc", True)(
        lambda d, s: _write(d, "child.vhd", vpc(diff_parent="child.vhd")))


# ---- qcow2 numbers out of range (CVE-2015-5162 and friends) ----

QCOW2_FIELDS = {
    "l1_size_max": dict(l1_size=0xffffffff),
    "l1_size_above_qemu_limit": dict(l1_size=(32 * MB // 8) + 1, size=1 << 50),
    "l1_size_too_small": dict(l1_size=1, size=1 << 40),
    "l1_offset_unaligned": dict(l1_off=3 * 4096 + 8),
    "l1_offset_huge": dict(l1_off=1 << 62),
    "l1_offset_past_eof": dict(l1_off=1 << 40),
    "refcount_table_clusters_max": dict(rt_clusters=0xffffffff),
    "refcount_table_clusters_big": dict(rt_clusters=1 << 24),
    "refcount_table_offset_past_eof": dict(rt_off=1 << 40),
    "refcount_table_offset_unaligned": dict(rt_off=4096 + 100),
    "refcount_table_offset_zero": dict(rt_off=0),
    "snapshots_too_many": dict(nb_snapshots=0xffffffff, snapshots_off=5 * 4096),
    "snapshots_at_qemu_limit_past_eof": dict(nb_snapshots=65536, snapshots_off=5 * 4096),
    "snapshots_offset_huge": dict(nb_snapshots=1, snapshots_off=1 << 62),
    "cluster_bits_0": dict(cluster_bits=0),
    "cluster_bits_8": dict(cluster_bits=8),
    "cluster_bits_22": dict(cluster_bits=22, size=4 * MB),
    "cluster_bits_31": dict(cluster_bits=31),
    "cluster_bits_63": dict(cluster_bits=63),
    "cluster_bits_255": dict(cluster_bits=255),
    "refcount_order_7": dict(refcount_order=7),
    "refcount_order_255": dict(refcount_order=255),
    "refcount_order_max": dict(refcount_order=0xffffffff),
    "size_petabyte": dict(size=1 << 50, l1_size=None),
    "size_2_63": dict(size=1 << 63, l1_size=1),
    "size_2_64_minus_1": dict(size=(1 << 64) - 1, l1_size=1),
    "size_2_63_l1_2_31": dict(size=1 << 63, l1_size=1 << 31),
    "version_1": dict(version=1),
    "version_4": dict(version=4),
    "version_max": dict(version=0xffffffff),
    "header_length_max": dict(header_length=0xffffffff),
    "header_length_short": dict(header_length=50),
    "header_length_unaligned": dict(header_length=105),
    "backing_name_too_long": dict(backing="x" * 5000),
    "backing_size_max": dict(backing="b.img", backing_size=0xffffffff),
    "unknown_incompatible_bit": dict(incompat=1 << 40),
    "corrupt_bit": dict(incompat=2),
    "crypt_method_9": dict(crypt=9),
    "crypt_aes": dict(crypt=1),
    "l2_entry_past_eof": dict(l2={0: (1 << 63) | (1 << 50), 1: (1 << 63) | (1 << 55)}),
    "l2_entry_unaligned": dict(l2={0: (1 << 63) | (5 * 4096 + 17)}, data=bytes(4096)),
    "l2_entry_is_header": dict(l2={i: (1 << 63) | (i % 5) * 4096 for i in range(16)}),
    "l2_all_reserved_bits": dict(l2={i: (1 << 64) - 1 for i in range(16)}),
}


def _register_qcow2_fields():
    for name, kw in QCOW2_FIELDS.items():
        case(f"qcow2_{name}", "qcow2")(
            lambda d, s, kw=kw: _write(d, "h.qcow2", qcow2(**kw)))


def _compressed_entry(cluster_bits, offset, nbytes):
    x = 62 - (cluster_bits - 8)
    nsect = min(-(-(nbytes + (offset % 512)) // 512), 1 << (cluster_bits - 8))
    return (1 << 62) | ((nsect - 1) << x) | offset


def _zlib_bomb(n):
    c = zlib.compressobj(9, zlib.DEFLATED, -12)
    return c.compress(bytes(n)) + c.flush()


def _zstd_bomb(n):
    """A zstd frame of n zero bytes (the zstd tool, if installed)."""
    zstd = shutil.which("zstd")
    if not zstd:
        return b"\x28\xb5\x2f\xfd" + bytes(60)
    r = subprocess.run([zstd, "-19", "-c", "-q"], input=bytes(n), capture_output=True)
    return r.stdout


def _qcow2_compressed(stream, compression=None, cluster_bits=16):
    """Cluster 0 of the guest is one compressed cluster holding `stream`."""
    cs = 1 << cluster_bits
    off = 5 * cs
    entries = {0: _compressed_entry(cluster_bits, off, len(stream)),
               1: _compressed_entry(cluster_bits, off, len(stream))}
    return qcow2(size=4 * cs, cluster_bits=cluster_bits, l2=entries,
                 data=stream + bytes(512), compression=compression)


def _qcow2_amplified(size=1 << 38, cluster_bits=16):
    """384 KiB that read as 256 GiB of compressed data: every L1 entry points
    at the same L2 table, whose every entry is the same compressed cluster.
    Nothing is out of range; only the CPU limit bounds reading it all."""
    cs = 1 << cluster_bits
    c = zlib.compressobj(9, zlib.DEFLATED, -12)
    stream = c.compress(b"\x01" * cs) + c.flush()
    e = _compressed_entry(cluster_bits, 5 * cs, len(stream))
    img = bytearray(qcow2(size=size, cluster_bits=cluster_bits,
                          l2={i: e for i in range(cs // 8)}, data=stream + bytes(512)))
    for i in range(min(size // (cs * (cs // 8)), cs // 8)):
        struct.pack_into(">Q", img, 3 * cs + 8 * i, (1 << 63) | 4 * cs)
    return bytes(img)


def _register_bombs():
    case("qcow2_zlib_bomb", "qcow2")(
        lambda d, s: _write(d, "b.qcow2", _qcow2_compressed(_zlib_bomb(64 * MB)[:32 * KB])))
    case("qcow2_zlib_bomb_small_cluster", "qcow2")(
        lambda d, s: _write(d, "b.qcow2", _qcow2_compressed(_zlib_bomb(64 * MB)[:2048],
                                                           cluster_bits=9)))
    case("qcow2_zlib_garbage", "qcow2")(
        lambda d, s: _write(d, "b.qcow2", _qcow2_compressed(os.urandom(4096))))
    case("qcow2_zstd_bomb", "qcow2")(
        lambda d, s: _write(d, "b.qcow2", _qcow2_compressed(_zstd_bomb(64 * MB)[:32 * KB],
                                                           compression="zstd")))
    case("qcow2_zstd_garbage", "qcow2")(
        lambda d, s: _write(d, "b.qcow2", _qcow2_compressed(
            b"\x28\xb5\x2f\xfd" + os.urandom(4000), compression="zstd")))
    case("qcow2_zstd_huge_frame_size", "qcow2")(
        lambda d, s: _write(d, "b.qcow2", _qcow2_compressed(
            # Frame header: single segment, 8-byte content size of 2^62.
            b"\x28\xb5\x2f\xfd" + bytes([0xe0]) + struct.pack("<Q", 1 << 62) + bytes(64),
            compression="zstd")))

    def from_misc(d, module, attr, key, name):
        import importlib
        m = importlib.import_module(module)
        return _write(d, name, getattr(m, attr)[key])
    case("qcow2_shared_l2_amplification", "qcow2")(
        lambda d, s: _write(d, "amp.qcow2", _qcow2_amplified()))
    case("cloop_bomb", "cloop")(
        lambda d, s: from_misc(d, "test_read_misc", "CLOOP_HOSTILE", "bomb", "b.cloop"))
    case("cloop_offsets_past_max", "cloop")(
        lambda d, s: from_misc(d, "test_read_misc", "CLOOP_HOSTILE", "offsets_past_max", "b.cloop"))
    case("dmg_zlib_bomb", "dmg")(
        lambda d, s: from_misc(d, "test_read_misc", "DMG_HOSTILE", "zlib_bomb", "b.dmg"))
    case("dmg_sector_wraps", "dmg")(
        lambda d, s: from_misc(d, "test_read_misc", "DMG_HOSTILE", "sector_wraps", "b.dmg"))


# ---- vmdk ----

def vmdk_descriptor(extents, create_type="monolithicFlat", parent=None, cid="fffffffe",
                    parent_cid="ffffffff", extra=""):
    lines = ["# Disk DescriptorFile", "version=1", f"CID={cid}",
             f"parentCID={parent_cid}", f'createType="{create_type}"']
    if parent is not None:
        lines.append(f'parentFileNameHint="{parent}"')
    lines.append("")
    lines.append("# Extent description")
    for access, sectors, kind, name, offset in extents:
        line = f'{access} {sectors} {kind} "{name}"'
        if offset is not None:
            line += f" {offset}"
        lines.append(line)
    lines += ["", "# The Disk Data Base", "#DDB", 'ddb.virtualHWVersion = "4"',
              'ddb.geometry.cylinders = "1"', 'ddb.geometry.heads = "16"',
              'ddb.geometry.sectors = "63"', 'ddb.adapterType = "ide"', extra]
    return ("\n".join(lines) + "\n").encode()


def vmdk_sparse(capacity=2048, grain=128, gtes=512, gd_off=None, desc=b"",
                desc_off=1, rgd_off=None, version=1, flags=3, overhead=None,
                compress=0, tail=b""):
    """A VMDK4 ("KDMV") sparse extent: header, descriptor, GD, GT."""
    # The layout is sane (descriptor at sector 1, at most 16 grain tables)
    # whatever the header fields claim.
    desc_sectors = max(1, -(-len(desc) // 512)) if desc else 0
    n_gts = max(1, -(-capacity // (grain * gtes))) if grain and gtes else 1
    n_gts = min(n_gts, 16)
    gd_sectors = 1
    gt_start = 1 + desc_sectors + gd_sectors
    gt_sectors = max(1, -(-(min(max(gtes, 1), 4096) * 4) // 512))
    gd = (1 + desc_sectors) if gd_off is None else gd_off
    if overhead is None:
        overhead = gt_start + gt_sectors * n_gts
    h = struct.pack("<4sIIQQQQIQQQB4sH", b"KDMV", version, flags, capacity, grain,
                    desc_off if desc else 0, desc_sectors, gtes,
                    rgd_off if rgd_off is not None else 0, gd, overhead, 0,
                    b"\n \r\n", compress)
    img = bytearray(h.ljust(512, b"\0"))
    if desc:
        img += desc.ljust(desc_sectors * 512, b"\0")
    gdt = bytearray(gd_sectors * 512)
    for i in range(n_gts):
        struct.pack_into("<I", gdt, 4 * i, gt_start + i * gt_sectors)
    img += gdt
    img += bytes(gt_sectors * 512 * n_gts)
    return bytes(img) + tail


def _vmdk_with_parent(d, parent):
    desc = vmdk_descriptor([("RW", 2048, "SPARSE", "top-s001.vmdk", None)],
                           create_type="monolithicSparse", parent=parent,
                           parent_cid="12345678")
    _write(d, "top-s001.vmdk", vmdk_sparse())
    return _write(d, "top.vmdk", desc)


VMDK_SPARSE = {
    "grain_0": dict(grain=0),
    "grain_1": dict(grain=1),
    "grain_huge": dict(grain=1 << 40),
    "grain_not_power_of_2": dict(grain=96),
    "gtes_0": dict(gtes=0),
    "gtes_huge": dict(gtes=0xffffffff),
    "gtes_above_qemu_limit": dict(gtes=1 << 20),
    "capacity_2_63": dict(capacity=1 << 63),
    "capacity_max": dict(capacity=(1 << 64) - 1),
    "capacity_petabyte": dict(capacity=1 << 41),
    "gd_past_eof": dict(gd_off=1 << 40),
    "gd_huge": dict(gd_off=(1 << 64) - 1),
    "rgd_past_eof": dict(rgd_off=1 << 40, flags=3),
    "version_99": dict(version=99),
    "version_3_sesparse_like": dict(version=3),
    "compressed_no_marker": dict(compress=1, flags=0x10003),
    "desc_offset_past_eof": dict(desc_off=1 << 40, desc=b"x"),
}


def _register_vmdk():
    for name, kw in VMDK_SPARSE.items():
        case(f"vmdk_sparse_{name}", "vmdk")(
            lambda d, s, kw=kw: _write(d, "s.vmdk", vmdk_sparse(**kw)))
    case("vmdk_descriptor_nul_bytes", "vmdk")(
        lambda d, s: _write(d, "desc.vmdk", vmdk_descriptor(
            [("RW", 128, "FLAT", "f.raw", 0)]).replace(b"createType", b"create\0Type")
            + b"\0" * 100 + b'RW 128 FLAT "' + s.encode() + b'" 0\n'))
    case("vmdk_descriptor_nul_in_name", "vmdk", False)(
        lambda d, s: (_write(d, "f.raw", bytes(64 * KB)),
                      _write(d, "desc.vmdk", vmdk_descriptor(
                          [("RW", 128, "FLAT", "f.raw\0" + s, 0)])))[1])
    case("vmdk_descriptor_giant", "vmdk")(
        lambda d, s: _write(d, "desc.vmdk", vmdk_descriptor(
            [("RW", 1, "FLAT", "f%d.raw" % i, 0) for i in range(40000)])))
    case("vmdk_descriptor_giant_comment", "vmdk")(
        lambda d, s: _write(d, "desc.vmdk", vmdk_descriptor(
            [("RW", 128, "FLAT", "f.raw", 0)], extra="#" + "A" * (3 * MB))))
    case("vmdk_descriptor_long_line", "vmdk")(
        lambda d, s: _write(d, "desc.vmdk", vmdk_descriptor(
            [("RW", 128, "FLAT", "f" * 100000, 0)])))
    case("vmdk_descriptor_sectors_overflow", "vmdk")(
        lambda d, s: (_write(d, "f.raw", bytes(4096)), _write(d, "desc.vmdk", vmdk_descriptor(
            [("RW", (1 << 63) - 1, "FLAT", "f.raw", 0), ("RW", (1 << 63) - 1, "FLAT", "f.raw", 0)])))[1])
    case("vmdk_descriptor_offset_huge", "vmdk")(
        lambda d, s: (_write(d, "f.raw", bytes(4096)), _write(d, "desc.vmdk", vmdk_descriptor(
            [("RW", 128, "FLAT", "f.raw", (1 << 63) - 1)])))[1])
    case("vmdk_descriptor_many_extents", "vmdk")(
        lambda d, s: (_write(d, "f.raw", bytes(512)), _write(d, "desc.vmdk", vmdk_descriptor(
            [("RW", 1, "FLAT", "f.raw", 0)] * 5000)))[1])
    # An embedded descriptor (in a sparse file) that names host files.
    case("vmdk_embedded_descriptor_host_extent", "vmdk")(
        lambda d, s: _write(d, "e.vmdk", vmdk_sparse(desc=vmdk_descriptor(
            [("RW", 2048, "SPARSE", "e.vmdk", None), ("RW", 128, "FLAT", s, 0)],
            create_type="monolithicSparse"))))
    case("vmdk_stream_optimized_bomb", "vmdk")(
        lambda d, s: _write(d, "s.vmdk", _vmdk_stream_bomb()))


def _vmdk_stream_bomb():
    """A streamOptimized grain whose deflate stream inflates to 64 MiB."""
    bomb = zlib.compress(bytes(64 * MB), 9)
    img = bytearray(vmdk_sparse(capacity=2048, grain=128, gtes=512, compress=1,
                                flags=0x30003))
    grain_off = len(img) // 512
    img += struct.pack("<QI", 0, len(bomb)) + bomb
    img += bytes(-len(img) % 512)
    # Point GT 0, entry 0 at the grain.
    gd = struct.unpack_from("<Q", img, 56)[0]
    gt = struct.unpack_from("<I", img, gd * 512)[0]
    struct.pack_into("<I", img, gt * 512, grain_off)
    return bytes(img)


# ---- vpc (vhd) ----

def _vpc_checksum(b):
    return (~sum(b)) & 0xffffffff


def vpc_footer(size, disk_type=3, data_offset=512, creator=b"qemu", cyls=None):
    f = bytearray(512)
    sectors = size // 512
    if cyls is None:
        cyls = min(65535, max(1, sectors // (16 * 63)))
    struct.pack_into(">8sIIQI4sI4sQQHBBI", f, 0, b"conectix", 2, 0x00010000,
                     data_offset, 0, creator, 0x00050003, b"Wi2k", size, size,
                     cyls, 16, 63, disk_type)
    f[68:84] = b"instar-hostile!!"
    struct.pack_into(">I", f, 64, _vpc_checksum(f))
    return bytes(f)


def vpc(size=1 * MB, block=2 * MB, entries=None, bat_off=None, diff_parent=None,
        footer_size=None, bat_entry=0xffffffff):
    """A dynamic (or, with diff_parent, differencing) VHD."""
    if entries is None:
        entries = max(1, -(-size // block)) if block else 1
    bat_off = 512 + 1024 if bat_off is None else bat_off
    dyn = bytearray(1024)
    struct.pack_into(">8sQQIII", dyn, 0, b"cxsparse", (1 << 64) - 1, bat_off,
                     0x00010000, entries, block)
    bat_len = -(-max(entries, 1) * 4 // 512) * 512
    locator = b""
    if diff_parent is not None:
        pu = diff_parent.encode("utf-16-be")[:512]
        dyn[64:64 + len(pu)] = pu
        locator = diff_parent.encode("utf-16-le")
        loc_off = 512 + 1024 + min(bat_len, 4096)
        # Two locators: Windows absolute and relative.
        struct.pack_into(">4sIIIQ", dyn, 576, b"W2ku", 512, len(locator), 0, loc_off)
        struct.pack_into(">4sIIIQ", dyn, 600, b"W2ru", 512, len(locator), 0, loc_off)
    struct.pack_into(">I", dyn, 36, _vpc_checksum(dyn))
    footer = vpc_footer(footer_size if footer_size is not None else size,
                        4 if diff_parent is not None else 3)
    bat = struct.pack(">I", bat_entry) * (min(bat_len, 4096) // 4)
    img = footer + bytes(dyn) + bat + (locator.ljust(512, b"\0") if locator else b"") + footer
    return img


def _register_vpc():
    table = {
        "bat_past_eof": dict(bat_off=1 << 40),
        "bat_huge_offset": dict(bat_off=(1 << 64) - 512),
        "entries_max": dict(entries=0xffffffff),
        "entries_above_qemu_limit": dict(entries=(1 << 24) + 1),
        "block_0": dict(block=0),
        "block_huge": dict(block=1 << 31),
        "block_not_power_of_2": dict(block=3 * 512),
        "size_2_63": dict(footer_size=1 << 63),
        "size_petabyte": dict(footer_size=1 << 50),
        "bat_entry_past_eof": dict(bat_entry=0x7ffffff0),
        "bat_entry_max_minus_1": dict(bat_entry=0xfffffffe),
        "bat_entry_is_header": dict(bat_entry=0),
    }
    for name, kw in table.items():
        case(f"vpc_{name}", "vpc")(lambda d, s, kw=kw: _write(d, "h.vhd", vpc(**kw)))
    case("vpc_fixed_size_2_63", "vpc")(
        lambda d, s: _write(d, "f.vhd", bytes(4096) + vpc_footer(1 << 63, 2, (1 << 64) - 1)))


# ---- vhdx (patched from qemu-img's own) ----

def _crc32c(data):
    table = _crc32c.table
    crc = 0xffffffff
    for b in data:
        crc = table[(crc ^ b) & 0xff] ^ (crc >> 8)
    return crc ^ 0xffffffff


def _crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_crc32c.table = _crc32c_table()
BAT_GUID = bytes.fromhex("6677c22d23f600429d64115e9bfd4a08")


def _vhdx_base(d):
    _qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M,log_size=1M",
              d / "base.vhdx", "4M")
    return bytearray((d / "base.vhdx").read_bytes())


def _vhdx_fix_header(img, off):
    struct.pack_into("<I", img, off + 4, 0)
    struct.pack_into("<I", img, off + 4, _crc32c(bytes(img[off:off + 4096])))


def _vhdx_fix_region(img, off):
    struct.pack_into("<I", img, off + 4, 0)
    struct.pack_into("<I", img, off + 4, _crc32c(bytes(img[off:off + 65536])))


def _vhdx_patch_bat(img, offset=None, length=None):
    for rt in (192 * KB, 256 * KB):
        n = struct.unpack_from("<I", img, rt + 8)[0]
        for i in range(min(n, 100)):
            e = rt + 16 + 32 * i
            if bytes(img[e:e + 16]) == BAT_GUID:
                if offset is not None:
                    struct.pack_into("<Q", img, e + 16, offset)
                if length is not None:
                    struct.pack_into("<I", img, e + 24, length)
        _vhdx_fix_region(img, rt)


def _vhdx_case(fn):
    def make(d, s):
        img = _vhdx_base(d)
        fn(img)
        (d / "base.vhdx").unlink()
        return _write(d, "h.vhdx", bytes(img))
    return make


def _vhdx_conflict(img, log_guid=False):
    # Header 2 becomes a valid header with the same sequence number as
    # header 1 but other GUIDs (and optionally a log to replay).
    h1, h2 = 64 * KB, 128 * KB
    img[h2:h2 + 4096] = img[h1:h1 + 4096]
    img[h2 + 16:h2 + 32] = b"conflicting-guid"
    if log_guid:
        img[h2 + 48:h2 + 64] = b"log-needs-replay"
        struct.pack_into("<Q", img, h2 + 8, struct.unpack_from("<Q", img, h1 + 8)[0] + 1)
    _vhdx_fix_header(img, h2)


def _register_vhdx():
    case("vhdx_bat_past_eof", "vhdx")(_vhdx_case(lambda i: _vhdx_patch_bat(i, offset=1 << 40)))
    case("vhdx_bat_huge_offset", "vhdx")(
        _vhdx_case(lambda i: _vhdx_patch_bat(i, offset=(1 << 64) - (1 << 20))))
    case("vhdx_bat_length_max", "vhdx")(_vhdx_case(lambda i: _vhdx_patch_bat(i, length=0xfff00000)))
    case("vhdx_headers_conflict", "vhdx")(_vhdx_case(lambda i: _vhdx_conflict(i)))
    case("vhdx_newer_header_with_log", "vhdx")(_vhdx_case(lambda i: _vhdx_conflict(i, True)))

    def bat_entries_past_eof(img):
        # Every BAT entry: fully present, at 2^40 MiB (bits 20-63 hold MiB).
        for rt in (192 * KB,):
            n = struct.unpack_from("<I", img, rt + 8)[0]
            for i in range(min(n, 100)):
                e = rt + 16 + 32 * i
                if bytes(img[e:e + 16]) == BAT_GUID:
                    off, length = struct.unpack_from("<QI", img, e + 16)
                    for k in range(0, min(length, 4096), 8):
                        struct.pack_into("<Q", img, off + k, 6 | ((1 << 40) << 20))
    case("vhdx_bat_entries_past_eof", "vhdx")(_vhdx_case(bat_entries_past_eof))

    def both_bad(img):
        img[64 * KB + 100] ^= 0xff
        img[128 * KB + 100] ^= 0xff
    case("vhdx_both_headers_bad", "vhdx")(_vhdx_case(both_bad))

    def regions_many(img):
        for rt in (192 * KB, 256 * KB):
            struct.pack_into("<I", img, rt + 8, 0xffffffff)
            _vhdx_fix_region(img, rt)
    case("vhdx_region_entries_max", "vhdx")(_vhdx_case(regions_many))


# ---- vdi, qed, parallels, qcow (patched from qemu-img's own) ----

def _patched(fmt, size, patches, opts=(), name=None):
    def make(d, s):
        n = name or f"h.{fmt}"
        _qemu_img("create", "-q", "-f", fmt, *opts, d / n, size)
        img = bytearray((d / n).read_bytes())
        for off, f, v in patches:
            struct.pack_into(f, img, off, v)
        (d / n).write_bytes(bytes(img))
        return n
    return make


def _register_patched():
    vdi = {
        "blocks_max": [(384, "<I", 0xffffffff)],
        "block_size_0": [(376, "<I", 0)],
        "block_size_huge": [(376, "<I", 0x80000000)],
        "disk_size_2_63": [(368, "<Q", 1 << 63)],
        "bmap_past_eof": [(340, "<I", 0xfffffe00)],
        "data_offset_unaligned": [(344, "<I", 1001)],
        "header_size_huge": [(72, "<I", 0xffffffff)],
    }
    for n, p in vdi.items():
        case(f"vdi_{n}", "vdi")(_patched("vdi", "1M", p))
    qed = {
        "cluster_size_0": [(4, "<I", 0)],
        "cluster_size_huge": [(4, "<I", 1 << 31)],
        "table_size_huge": [(8, "<I", 0xffffffff)],
        "header_size_huge": [(12, "<I", 0xffffffff)],
        "image_size_2_63": [(48, "<Q", 1 << 63)],
        "l1_past_eof": [(40, "<Q", 1 << 40)],
        "backing_name_past_eof": [(16, "<Q", 1), (56, "<I", 0xfffff000), (60, "<I", 0xffff)],
    }
    for n, p in qed.items():
        case(f"qed_{n}", "qed")(_patched("qed", "1M", p))
    par = {
        "bat_entries_max": [(32, "<I", 0xffffffff)],
        "cluster_sectors_0": [(28, "<I", 0)],
        "cluster_sectors_huge": [(28, "<I", 0x80000000)],
        "nb_sectors_2_63": [(36, "<Q", 1 << 63)],
        "data_offset_past_eof": [(48, "<I", 0xffffffff)],
        "ext_offset_past_eof": [(56, "<Q", 1 << 40)],
    }
    for n, p in par.items():
        case(f"parallels_{n}", "parallels")(_patched("parallels", "1M", p))
    qcow = {
        "cluster_bits_huge": [(32, "B", 200)],
        "l2_bits_huge": [(33, "B", 200)],
        "size_2_63": [(24, ">Q", 1 << 63)],
        "l1_past_eof": [(40, ">Q", 1 << 40)],
        "backing_size_max": [(8, ">Q", 48), (16, ">I", 0xffffffff)],
    }
    for n, p in qcow.items():
        case(f"qcow_{n}", "qcow")(_patched("qcow", "1M", p))
    # Found by fuzz_parallels: 140 bytes whose BAT claims 2^27 + 1 entries,
    # all past the end of the file; check walks them all (only the CPU
    # limit bounds it; qemu's check takes 0.5 s, instar's 16 s today).
    case("parallels_check_huge_bat_past_eof", "parallels")(
        lambda d, s: _write(d, "t.parallels", bytes.fromhex(
            "576974686f754672655370616345787402000000100000000400000000080000"
            "0100000800000000000000000000000800000000000000000000000000000000"
            "0000000000001000000000000000000000000000000000000008") + bytes(50)))
    for fmt, name in (("qcow", "b.qcow"), ("qed", "b.qed")):
        case(f"{fmt}_backing_absolute", fmt, True)(
            lambda d, s, fmt=fmt, name=name: (
                _qemu_img("create", "-q", "-f", fmt, "-u", "-b", s, "-F", "raw",
                          d / name, "1M"), name)[1])
        case(f"{fmt}_backing_dotdot", fmt, True)(
            lambda d, s, fmt=fmt, name=name: (
                _qemu_img("create", "-q", "-f", fmt, "-u", "-b", _relative(d, s), "-F",
                          "raw", d / name, "1M"), name)[1])


# ---- truncated headers of every format ----

def luks1(payload=4096, key_bytes=32, iterations=1000):
    """A LUKS1 header (no usable key material: enough for info)."""
    h = struct.pack(">6sH32s32s32sII20s32sI40s", b"LUKS\xba\xbe", 1, b"aes",
                    b"xts-plain64", b"sha256", payload // 512, key_bytes,
                    bytes(20), bytes(32), iterations,
                    b"12345678-1234-1234-1234-123456789abc")
    slots = b""
    for i in range(8):
        active = 0x00AC71F3 if i == 0 else 0x0000DEAD
        slots += struct.pack(">III32sII", active, iterations, 0, bytes(32),
                             8 + 512 * i, 4000)
    return (h + slots).ljust(payload, b"\0") + bytes(64 * KB)


def _valid(fmt):
    """A small valid image of fmt (qemu-img, or a generator)."""
    def make(d):
        if fmt in ("bochs", "cloop", "dmg", "iso"):
            import test_info_misc as tim
            import test_read_misc as trm
            if fmt == "bochs":
                return tim.bochs_with_data()
            if fmt == "cloop":
                return trm.cloop([zlib.compress(b) for b in trm.cloop_data(4, 4096)], 4096)
            if fmt == "dmg":
                return trm.dmg_standard()[0]
            return tim.iso()
        if fmt == "luks":
            return luks1()
        if fmt == "vmdk_desc":
            return vmdk_descriptor([("RW", 128, "FLAT", "f.raw", 0)])
        opts = {"vhdx": ["-o", "block_size=1M,log_size=1M"],
                "luks": ["--object", "secret,id=s0,data=pw", "-o",
                         "key-secret=s0,iter-time=10"]}.get(fmt, [])
        if fmt == "qcow2":
            opts = ["-o", "cluster_size=4k"]
        _qemu_img("create", "-q", "-f", fmt, *opts, d / f"v.{fmt}", "1M")
        data = (d / f"v.{fmt}").read_bytes()
        (d / f"v.{fmt}").unlink()
        return data
    return make


TRUNC_FORMATS = ["qcow2", "qcow", "qed", "vmdk", "vmdk_desc", "vpc", "vhdx", "vdi",
                 "luks", "parallels", "bochs", "cloop", "dmg", "iso"]
TRUNC_POINTS = [1, 4, 20, 100, 511, 1500]


def _cut(fmt, data, at):
    """Where to cut a valid image so that `at` bytes of its header remain
    (formats whose header is not at the start are cut inside it)."""
    if fmt == "iso":
        return data[:0x8000 + at]           # the primary volume descriptor
    if fmt == "vhdx":
        return data[:64 * KB + at]          # the first header
    if fmt == "dmg":                        # the koly trailer, at the end
        return data[:len(data) - 512 + at] if at < 512 else data[:-1]
    return data[:at]


def _register_truncated():
    for fmt in TRUNC_FORMATS:
        ext = {"vmdk_desc": "vmdk"}.get(fmt, fmt)
        for at in TRUNC_POINTS:
            case(f"truncated_{fmt}_{at}", ext)(
                lambda d, s, fmt=fmt, at=at, ext=ext:
                    _write(d, f"t.{ext}", _cut(fmt, _valid(fmt)(d), at)))


# ---- polyglots ----

def _mbr(data):
    b = bytearray(data.ljust(max(len(data), 512), b"\0"))
    b[446:462] = bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 1, 127)
    b[510:512] = b"\x55\xaa"
    return bytes(b)


def _register_polyglots():
    # A qcow2 whose first sector is also a valid MBR, backed by a host file.
    case("polyglot_qcow2_mbr_backing", "qcow2", True)(
        lambda d, s: _write(d, "p.img", _mbr(qcow2(size=64 * KB, backing=s)[:512])
                            + qcow2(size=64 * KB, backing=s)[512:]))
    # A raw disk with an MBR whose first partition holds a qcow2 naming a
    # host file: as raw, the inner image is plain data.
    case("polyglot_mbr_disk_with_inner_qcow2", "raw", False)(
        lambda d, s: _write(d, "disk.img", _mbr(b"") + qcow2(size=64 * KB, backing=s)
                            + bytes(64 * KB)))
    # ISO 9660 with a qcow2 header at 0 (both probe).
    def iso_qcow2(d, s):
        import test_info_misc as tim
        iso = bytearray(tim.iso())
        q = qcow2(size=64 * KB, backing=s)
        iso[:512] = q[:512]
        return _write(d, "p.iso", bytes(iso))
    case("polyglot_iso_qcow2", "iso", True)(iso_qcow2)
    # A qcow2 with a VHD footer at its end (vpc probes the footer too).
    case("polyglot_qcow2_vhd_footer", "qcow2", True)(
        lambda d, s: _write(d, "p.img", qcow2(size=64 * KB, backing=s)
                            + vpc_footer(64 * KB, 2, (1 << 64) - 1)))
    # A vmdk descriptor that is also an MBR disk.
    case("polyglot_vmdk_descriptor_mbr", "vmdk", True)(
        lambda d, s: _write(d, "p.vmdk", _mbr(vmdk_descriptor(
            [("RW", 128, "FLAT", s, 0)])[:440])))
    # A sparse vmdk whose embedded descriptor is also a qcow2 header.
    case("polyglot_vmdk_qcow2_magic", "vmdk")(
        lambda d, s: _write(d, "p.vmdk", b"QFI\xfb" + vmdk_sparse()[4:]))
    # Every magic at once: the first sector says qcow2, vdi, vmdk, qed...
    def everything(d, s):
        b = bytearray(qcow2(size=64 * KB, backing=s))
        b[64:68] = struct.pack("<I", 0xbeda107f)
        b[512:516] = b"KDMV"
        b[0x8001:0x8006] = b"CD001" if len(b) > 0x8006 else b""
        return _write(d, "p.img", bytes(b) + vpc_footer(64 * KB))
    case("polyglot_many_magics", "qcow2", True)(everything)
    # Garbage: random bytes, all zeros, all ones.
    case("garbage_random", "raw")(lambda d, s: _write(d, "g.img", os.urandom(64 * KB)))
    case("garbage_zeros", "raw")(lambda d, s: _write(d, "g.img", bytes(64 * KB)))
    case("garbage_ones", "raw")(lambda d, s: _write(d, "g.img", b"\xff" * 64 * KB))
    case("empty_file", "raw")(lambda d, s: _write(d, "g.img", b""))


_register_refs()
_register_loops()
_register_qcow2_fields()
_register_bombs()
_register_vmdk()
_register_vpc()
_register_vhdx()
_register_patched()
_register_truncated()
_register_polyglots()


# ---- fuzz seeds ----

def write_seeds(out):
    """Every case's files into out/<format>/ (references to a path that
    does not exist); fuzz_tree gets a few encoded info trees."""
    import tempfile
    out = Path(out)
    for name, (fmt, _, _) in sorted(CASES.items()):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            try:
                top = build(name, d, "/nonexistent/instar-seed-secret")
            except Exception as e:      # a generator that needs a missing tool
                print(f"seed {name}: skipped ({e})", file=sys.stderr)
                continue
            p = d / top
            # Seeds stay small; a vhdx needs its first 4 MiB (regions sit
            # at 1 MiB boundaries).
            limit = 4 * MB if fmt == "vhdx" else 1 * MB
            if p.is_file() and not p.is_symlink():
                (out / fmt).mkdir(parents=True, exist_ok=True)
                with open(p, "rb") as f:
                    data = f.read(limit + 1)
                if len(data) <= limit or fmt == "vhdx":
                    (out / fmt / name).write_bytes(data[:limit])
    (out / "tree").mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(_sample_trees()):
        (out / "tree" / f"info{i}").write_bytes(encode_tree(t))


def encode_tree(v, key=None):
    """The worker's wire form (src/common/tree.c), for fuzz_tree seeds."""
    def k():
        if key is None:
            return b""
        kb = key.encode()
        return struct.pack("<I", len(kb)) + kb
    if isinstance(v, bool):
        return bytes([1]) + k() + bytes([int(v)])
    if isinstance(v, int):
        return bytes([2]) + k() + struct.pack("<q", v)
    if isinstance(v, str):
        b = v.encode()
        return bytes([4]) + k() + struct.pack("<I", len(b)) + b
    if isinstance(v, bytes):
        return bytes([7]) + k() + struct.pack("<I", len(v)) + v
    if isinstance(v, dict):
        return bytes([5]) + k() + struct.pack("<I", len(v)) + \
            b"".join(encode_tree(x, kk) for kk, x in v.items())
    return bytes([6]) + k() + struct.pack("<I", len(v)) + b"".join(encode_tree(x) for x in v)


def _sample_trees():
    child = {"name": "file", "info": {"filename": "a.qcow2", "format": "file",
                                      "virtual-size": 197120, "actual-size": 200704,
                                      "dirty-flag": False}}
    base = {"filename": "a.qcow2", "format": "qcow2", "virtual-size": 1 << 30,
            "actual-size": 200704, "cluster-size": 65536, "dirty-flag": False,
            "backing-filename": "b.raw", "backing-filename-format": "raw",
            "format-specific": {"type": "qcow2", "data": {
                "compat": "1.1", "compression-type": "zlib", "lazy-refcounts": False,
                "refcount-bits": 16, "corrupt": False, "extended-l2": False,
                "bitmaps": [{"name": "b0", "granularity": 65536, "flags": ["auto"]}]}},
            "snapshots": [{"id": "1", "name": "s", "vm-state-size": 0, "date-sec": 1,
                           "date-nsec": 2, "vm-clock-sec": 3, "vm-clock-nsec": 4}],
            "children": [child]}
    return [base, {"filename": "x", "format": "raw", "virtual-size": 512,
                   "children": []}, {"records": b"\0" * 41, "files": ["x"]}]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "--list":
        for n, (fmt, refused, _) in sorted(CASES.items()):
            print(n, fmt, "refused" if refused else "")
    else:
        print("usage: hostile.py --seeds DIR | --list", file=sys.stderr)
        sys.exit(2)
