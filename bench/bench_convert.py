#!/usr/bin/env python3
"""Benchmark `instar convert` against `qemu-img convert`.

The source is a sparse image of --size-gib GiB (default 4), half data and
half holes: 32 MiB of data every 64 MiB, the data alternating between
compressible text and random bytes in 64 KiB pieces.  Cases:

  qcow2->raw            qcow2 source, raw target
  raw->qcow2            raw source, qcow2 target
  qcow2(zlib)->raw      zlib-compressed qcow2 source (-c), raw target
  raw->qcow2 -c zlib    compressed qcow2 target
  raw->qcow2 -c zstd    compressed qcow2 target, compression_type=zstd
  raw->vmdk stream      streamOptimized vmdk (when instar can write vmdk)
  vhdx->qcow2           vhdx source
  chain3->raw           qcow2 with a 3-deep backing chain, flattened

instar and qemu-img run alternately, --runs times each (default 3); the
table shows the median wall time of each, the throughput ratio
(qemu-img time / instar time: the targets are >= 1.5 uncompressed and
>= 2 with compressed output) and peak RSS from GNU time (instar's worker
included).  Images are made with Debian's qemu-img in a temporary
directory (--dir to choose where; they take about size/2 GiB each).
Plain Python 3 standard library; Linux only.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTAR = os.environ.get("INSTAR_BIN", os.path.join(REPO, "instar"))
QEMU_IMG = os.environ.get("QEMU_IMG", "/usr/bin/qemu-img")
QEMU_IO = shutil.which("qemu-io") or "/usr/bin/qemu-io"
GNU_TIME = "/usr/bin/time"
GiB = 1 << 30
MiB = 1 << 20


def make_source(path, size):
    text = (b"instar convert benchmark: the quick brown fox jumps over "
            b"the lazy dog 0123456789\n" * 1000)[:64 * 1024]
    rnd = os.urandom(64 * 1024)
    piece = (text + rnd) * (16 * MiB // (128 * 1024))
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 64 * MiB):
            f.seek(off)
            f.write(piece)
            f.write(piece)


def qimg(*args, cwd):
    subprocess.run([QEMU_IMG, *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)


def make_images(work, size):
    make_source(os.path.join(work, "src.raw"), size)
    qimg("convert", "-f", "raw", "-O", "qcow2", "src.raw", "src.qcow2", cwd=work)
    qimg("convert", "-f", "raw", "-O", "qcow2", "-c", "src.raw", "srcz.qcow2", cwd=work)
    qimg("convert", "-f", "raw", "-O", "vhdx", "src.raw", "src.vhdx", cwd=work)
    # A 3-deep chain: the data spread over three layers.
    qimg("convert", "-f", "raw", "-O", "qcow2", "src.raw", "c0.qcow2", cwd=work)
    for i in (1, 2):
        qimg("create", "-f", "qcow2", "-b", f"c{i-1}.qcow2", "-F", "qcow2",
             f"c{i}.qcow2", cwd=work)
        cmds = []
        for off in range(i * 16 * MiB, size, 256 * MiB):
            cmds += ["-c", f"write -P {0x30 + i} {off} {8 * MiB}"]
        subprocess.run([QEMU_IO, *cmds, f"c{i}.qcow2"], cwd=work, check=True,
                       stdout=subprocess.DEVNULL)


def instar_can(fmt):
    r = subprocess.run([INSTAR, "convert", "-f", "raw", "-O", fmt, "/dev/null",
                        "/tmp/.instar-bench-probe"], capture_output=True)
    for p in ("/tmp/.instar-bench-probe",):
        if os.path.exists(p):
            os.unlink(p)
    return b"cannot write" not in r.stderr


CASES = [
    ("qcow2->raw", ["-O", "raw", "src.qcow2"], None),
    ("raw->qcow2", ["-f", "raw", "-O", "qcow2", "src.raw"], None),
    ("qcow2(zlib)->raw", ["-O", "raw", "srcz.qcow2"], None),
    ("raw->qcow2 -c zlib", ["-f", "raw", "-O", "qcow2", "-c", "src.raw"], None),
    ("raw->qcow2 -c zstd", ["-f", "raw", "-O", "qcow2", "-c", "-o",
                            "compression_type=zstd", "src.raw"], None),
    ("raw->vmdk stream", ["-f", "raw", "-O", "vmdk", "-o",
                          "subformat=streamOptimized", "src.raw"], "vmdk"),
    ("vhdx->qcow2", ["-O", "qcow2", "src.vhdx"], None),
    ("chain3->raw", ["-O", "raw", "c2.qcow2"], None),
]


def run_once(argv, cwd, out):
    if os.path.exists(os.path.join(cwd, out)):
        os.unlink(os.path.join(cwd, out))
    start = time.perf_counter()
    r = subprocess.run([GNU_TIME, "-f", "%M", *argv, out], cwd=cwd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.decode()[-300:]}")
    try:
        rss = int(r.stderr.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        rss = 0
    os.unlink(os.path.join(cwd, out))
    return elapsed, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 3)))
    ap.add_argument("--size-gib", type=float, default=4)
    ap.add_argument("--dir", default=None, help="where to make the images")
    ap.add_argument("--case", action="append", help="run only these cases")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", metavar="DIR",
                    help="use the images a --keep run left in DIR")
    a = ap.parse_args()
    if not os.path.exists(INSTAR):
        sys.exit("bench_convert: build instar first (make)")
    size = int(a.size_gib * GiB) // (64 * MiB) * (64 * MiB)
    if a.reuse:
        work = a.reuse
        a.keep = True
    else:
        work = tempfile.mkdtemp(prefix="instar-bench-convert-", dir=a.dir)
    try:
        t0 = time.perf_counter()
        if not a.reuse:
            make_images(work, size)
        print(f"images: {size / GiB:g} GiB virtual, half data "
              f"(made in {time.perf_counter() - t0:.0f} s); {a.runs} runs, "
              f"{os.cpu_count()} CPUs")
        print(f"{'case':22} {'qemu-img':>9} {'instar':>9} {'ratio':>6} "
              f"{'qemu RSS':>9} {'instar RSS':>10}")
        for name, args, needs in CASES:
            if a.case and name not in a.case:
                continue
            if needs and not instar_can(needs):
                print(f"{name:22} (instar cannot write {needs} yet)")
                continue
            qt, it, qr, ir = [], [], [], []
            for _ in range(a.runs):
                t, r = run_once([QEMU_IMG, "convert", *args], work, "out.q")
                qt.append(t)
                qr.append(r)
                t, r = run_once([INSTAR, "convert", *args], work, "out.i")
                it.append(t)
                ir.append(r)
            q, i = statistics.median(qt), statistics.median(it)
            print(f"{name:22} {q:8.2f}s {i:8.2f}s {q / i:5.2f}x "
                  f"{max(qr) / 1024:7.0f}MiB {max(ir) / 1024:8.0f}MiB", flush=True)
    finally:
        if a.keep:
            print(f"images kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
