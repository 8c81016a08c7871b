"""Small qcow2 editor for making corrupt images in tests.

Images start as qemu-img-made files; this module changes one structure
at a time (refcounts, L1/L2 entries, header fields, the snapshot table)
so that qemu-img check and instar check can be compared on every kind of
corruption.  Only what the tests need: no allocation beyond appending
clusters at the end of the file.
"""
import struct

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
OFFSET_MASK = 0x00fffffffffffe00


class Qcow2:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            h = f.read(112)
        (magic, self.version, self.backing_off, self.backing_size,
         self.cluster_bits, self.size, self.crypt, self.l1_size,
         self.l1_off, self.rt_off, self.rt_clusters, self.nb_snap,
         self.snap_off) = struct.unpack(">IIQIIQIIQQIIQ", h[:72])
        assert magic == 0x514649fb
        self.cs = 1 << self.cluster_bits
        if self.version >= 3:
            self.incompat, self.compat, self.autoclear, self.rc_order, \
                self.hdr_len = struct.unpack(">QQQII", h[72:104])
        else:
            self.incompat = self.compat = self.autoclear = 0
            self.rc_order = 4
        self.ext_l2 = bool(self.incompat & (1 << 4))
        self.l2_esize = 16 if self.ext_l2 else 8
        self.rc_bits = 1 << self.rc_order
        self.rb_entries = self.cs * 8 // self.rc_bits

    # -- raw access --
    def read(self, off, n):
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(n).ljust(n, b"\0")

    def write(self, off, data):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def u64(self, off):
        return struct.unpack(">Q", self.read(off, 8))[0]

    def put64(self, off, v):
        self.write(off, struct.pack(">Q", v))

    def put32(self, off, v):
        self.write(off, struct.pack(">I", v))

    def file_size(self):
        import os
        return os.path.getsize(self.path)

    # -- header --
    def set_incompat(self, bits):
        self.incompat |= bits
        self.put64(72, self.incompat)

    def set_compat(self, bits):
        self.compat |= bits
        self.put64(80, self.compat)

    # -- refcounts --
    def reftable(self):
        n = self.rt_clusters * self.cs // 8
        raw = self.read(self.rt_off, n * 8)
        return list(struct.unpack(">%dQ" % n, raw))

    def _rc_loc(self, cluster):
        idx = cluster // self.rb_entries
        rb = self.reftable()[idx] & ~0x1ff
        assert rb, "no refcount block for cluster %d" % cluster
        return rb, cluster % self.rb_entries

    def refcount(self, cluster):
        rb, i = self._rc_loc(cluster)
        bits = self.rc_bits
        if bits >= 8:
            n = bits // 8
            return int.from_bytes(self.read(rb + i * n, n), "big")
        byte = self.read(rb + i * bits // 8, 1)[0]
        shift = (i * bits) % 8
        return (byte >> shift) & ((1 << bits) - 1)

    def set_refcount(self, cluster, v):
        rb, i = self._rc_loc(cluster)
        bits = self.rc_bits
        if bits >= 8:
            n = bits // 8
            self.write(rb + i * n, v.to_bytes(n, "big"))
            return
        off = rb + i * bits // 8
        byte = self.read(off, 1)[0]
        shift = (i * bits) % 8
        mask = ((1 << bits) - 1) << shift
        self.write(off, bytes([(byte & ~mask) | ((v << shift) & mask)]))

    def set_reftable_entry(self, idx, v):
        self.put64(self.rt_off + 8 * idx, v)

    # -- L1 / L2 --
    def l1(self, off=None, size=None):
        off = self.l1_off if off is None else off
        size = self.l1_size if size is None else size
        return list(struct.unpack(">%dQ" % size, self.read(off, 8 * size)))

    def set_l1(self, idx, v):
        self.put64(self.l1_off + 8 * idx, v)

    def l2_entries(self):
        """(file offset of the entry, entry) for every non-zero active L2
        entry."""
        out = []
        for e in self.l1():
            l2 = e & OFFSET_MASK
            if not l2:
                continue
            for i in range(self.cs // self.l2_esize):
                where = l2 + i * self.l2_esize
                v = self.u64(where)
                if v:
                    out.append((where, v))
        return out

    def data_entries(self):
        return [(w, v) for w, v in self.l2_entries()
                if not v & OFLAG_COMPRESSED and v & OFFSET_MASK]

    def append_cluster(self, fill=b"\0"):
        size = self.file_size()
        off = (size + self.cs - 1) // self.cs * self.cs
        self.write(off, fill * self.cs)
        return off

    # -- snapshots --
    def snapshot_entries(self):
        """File offsets of each snapshot table entry and its fields."""
        off = self.snap_off
        out = []
        for _ in range(self.nb_snap):
            off = (off + 7) & ~7
            h = self.read(off, 40)
            l1_off, l1_size, id_size, name_size = struct.unpack(">QIHH", h[:16])
            extra = struct.unpack(">I", h[36:40])[0]
            out.append({"at": off, "l1_off": l1_off, "l1_size": l1_size,
                        "extra": extra})
            off += 40 + extra + id_size + name_size
        return out
