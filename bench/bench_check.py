#!/usr/bin/env python3
"""Benchmark `instar check` against `qemu-img check` on a large qcow2.

The image is written directly (no guest data): a 64 GiB-virtual qcow2
with 64 KiB clusters, 500,000 allocated data clusters and 10 internal
snapshots that share every L2 table and data cluster (refcount 11), as
`qemu-img snapshot -c` would leave them.  Data clusters are holes in a
sparse file, so the image takes a few MiB of disk; qemu-img check finds
it clean, which the benchmark verifies first.

For each tool (instar, and every qemu-img found) it runs `check` N times
(default 5, at least 3), alternating tools, and prints the median wall
time, the ratio instar / qemu-img (target 0.5 or less), and the peak RSS
(from wait4's rusage: for instar the larger of host and worker).

Plain Python 3 standard library; Linux only.
"""
import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QEMU_IMGS = ["/usr/bin/qemu-img", "/opt/qemu-oracle/bin/qemu-img"]
CLUSTER_BITS = 16
CS = 1 << CLUSTER_BITS
VIRTUAL = 64 << 30
DATA_CLUSTERS = 500_000
SNAPSHOTS = 10
TARGET_RATIO = 0.5
GNU_TIME = "/usr/bin/time"


def make_image(path, data_clusters=DATA_CLUSTERS, snapshots=SNAPSHOTS,
               virtual=VIRTUAL):
    """Writes the benchmark image's metadata; data clusters stay holes.
    (The tests use it too, for a 1 TiB image with thousands of snapshots.)"""
    l2_entries = CS // 8
    l1_size = (virtual + CS * l2_entries - 1) // (CS * l2_entries)
    assert l1_size <= l2_entries
    snap_clusters = (snapshots * 80 + CS - 1) // CS
    n_l2 = (data_clusters + l2_entries - 1) // l2_entries
    refs = 1 + snapshots
    copied = 1 << 63 if refs == 1 else 0

    # Layout, in clusters: header, reftable, refblocks, active L1,
    # snapshot L1s, snapshot table, L2 tables, data.
    rb_entries = CS * 8 // 16
    meta = 1 + 1 + 1 + snapshots + snap_clusters + n_l2
    n_rb = (meta + 64 + data_clusters + rb_entries - 1) // rb_entries + 1
    reftable = 1
    rb0 = 2
    l1 = rb0 + n_rb
    snap_l1 = l1 + 1
    snap_table = snap_l1 + snapshots
    l2_0 = snap_table + snap_clusters
    data0 = l2_0 + n_l2
    end = data0 + data_clusters
    assert end <= n_rb * rb_entries and n_rb <= CS // 8

    with open(path, "wb") as f:
        f.truncate(end * CS)
        hdr = struct.pack(">IIQIIQIIQQIIQQQQII", 0x514649fb, 3, 0, 0,
                          CLUSTER_BITS, virtual, 0, l1_size, l1 * CS,
                          reftable * CS, 1, snapshots,
                          snap_table * CS if snapshots else 0,
                          0, 0, 0, 4, 104)
        f.seek(0)
        f.write(hdr)
        # Refcount table and blocks.
        f.seek(reftable * CS)
        f.write(b"".join(struct.pack(">Q", (rb0 + i) * CS) for i in range(n_rb)))
        counts = bytearray(n_rb * rb_entries * 2)

        def setref(c, v):
            counts[2 * c:2 * c + 2] = struct.pack(">H", v)

        for c in range(l1):
            setref(c, 1)
        setref(l1, 1)
        for c in range(snap_l1, snap_table + snap_clusters):
            setref(c, 1)
        one = struct.pack(">H", refs)
        counts[2 * l2_0:2 * end] = one * (end - l2_0)
        f.seek(rb0 * CS)
        f.write(counts)
        # L1 tables: the active one and the snapshots' copies.
        l1_bytes = b"".join(struct.pack(">Q", ((l2_0 + i) * CS) | copied)
                            for i in range(n_l2))
        for t in [l1] + list(range(snap_l1, snap_l1 + snapshots)):
            f.seek(t * CS)
            f.write(l1_bytes)
        # L2 tables: data clusters in order.
        for i in range(n_l2):
            first = i * l2_entries
            n = min(l2_entries, data_clusters - first)
            f.seek((l2_0 + i) * CS)
            f.write(b"".join(struct.pack(">Q", ((data0 + first + j) * CS) | copied)
                             for j in range(n)))
        # Snapshot table.
        if snapshots:
            f.seek(snap_table * CS)
            off = 0
            for s in range(snapshots):
                sid = str(s + 1).encode()
                name = b"snap%d" % s
                extra = struct.pack(">QQ", 0, virtual)
                ent = struct.pack(">QIHHIIQII", snap_l1 * CS + s * CS,
                                  l1_size, len(sid), len(name),
                                  1700000000 + s, 0, 0, 0, len(extra))
                ent += extra + sid + name
                ent += b"\0" * (-len(ent) % 8)
                f.write(ent)
                off += len(ent)
            assert off <= snap_clusters * CS


def run_once(argv, env=None):
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env or os.environ,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull,
                                        os.O_WRONLY, 0),
                                       (os.POSIX_SPAWN_OPEN, 2, os.devnull,
                                        os.O_WRONLY, 0)])
    _, status, ru = os.wait4(pid, 0)
    return (time.perf_counter() - t0, ru.ru_utime + ru.ru_stime,
            os.waitstatus_to_exitcode(status))


def peak_rss(argv):
    """Peak RSS in KiB through GNU time (wait4 from this script cannot go
    below Python's own RSS); 0 without /usr/bin/time."""
    if not os.path.exists(GNU_TIME):
        return 0
    with tempfile.NamedTemporaryFile("r") as out:
        subprocess.run([GNU_TIME, "-f", "%M", "-o", out.name, *argv],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return int(out.read().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--instar", default=os.environ.get("INSTAR_BIN",
                                                       os.path.join(REPO, "instar")))
    ap.add_argument("--keep", action="store_true", help="keep the image")
    args = ap.parse_args()
    runs = max(3, args.runs)
    tmp = tempfile.mkdtemp(prefix="instar-bench-check-")
    img = os.path.join(tmp, "big.qcow2")
    try:
        t0 = time.perf_counter()
        make_image(img)
        print(f"image: {img}: 64 GiB virtual, {DATA_CLUSTERS} clusters, "
              f"{SNAPSHOTS} snapshots (made in {time.perf_counter() - t0:.1f} s)")
        tools = [("instar", [os.path.abspath(args.instar), "check", img], None)]
        for q in QEMU_IMGS:
            if os.path.exists(q):
                tools.append((q, [q, "check", img], None))
        ref = subprocess.run([tools[-1][1][0], "check", img], capture_output=True)
        if ref.returncode != 0:
            print("qemu-img check does not find the image clean:",
                  ref.stdout.decode(), ref.stderr.decode()[:500], file=sys.stderr)
            return 1
        times = {t[0]: [] for t in tools}
        cpu = {t[0]: [] for t in tools}
        for _ in range(runs):
            for label, argv, env in tools:
                dt, cpu_s, code = run_once(argv, env)
                if code != 0:
                    print(f"{label}: exit status {code}", file=sys.stderr)
                    return 1
                times[label].append(dt)
                cpu[label].append(cpu_s)
        rss = {label: max(peak_rss(argv) for _ in range(2))
               for label, argv, _ in tools}
        base = statistics.median(times["instar"])
        base_cpu = statistics.median(cpu["instar"])
        print(f"{'tool':32s} {'median s':>9s} {'ratio':>6s} {'cpu s':>7s} "
              f"{'ratio':>6s} {'peak RSS KiB':>13s}")
        ok = True
        for label, _, _ in tools:
            med = statistics.median(times[label])
            mc = statistics.median(cpu[label])
            ratio = base / med if med else 0
            cratio = base_cpu / mc if mc else 0
            print(f"{label:32s} {med:9.3f} {ratio:6.2f} {mc:7.3f} {cratio:6.2f} "
                  f"{rss[label]:13d}")
            if label != "instar" and (ratio > TARGET_RATIO or rss["instar"] >= rss[label]):
                ok = False
        print("target (wall-time ratio <= %.1f, lower peak RSS): %s" % (
            TARGET_RATIO, "met" if ok else "NOT met"))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
