#!/usr/bin/env python3
"""Benchmark `instar map` and `instar compare` against qemu-img.

Images (made with Debian's qemu-img in a temporary directory):
  scattered  16 GiB qcow2, 64 KiB of data every 16 MiB (1024 extents)
  extents    qcow2 with 100,000 allocated 64 KiB clusters, each followed
             by a hole (200,000 map entries)
For each image: map --output=json, map (human), and compare against its
raw twin (-F raw).  instar and qemu-img run alternately, N times each
(default 5); the table shows median wall time, the ratio instar/qemu-img
(target <= 0.5, i.e. at least 2x faster) and peak RSS from GNU time
(for instar the largest of the host and its worker).
Plain Python 3 standard library; Linux only.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTAR = os.path.join(REPO, "instar")
QEMU_IMG = "/usr/bin/qemu-img"
GNU_TIME = "/usr/bin/time"
GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10


def sparse_raw(path, size, step, chunk):
    """A sparse raw file with `chunk` bytes of data every `step` bytes."""
    block = bytes([0x5A]) * chunk
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, step):
            f.seek(off)
            f.write(block)


def make_images(work):
    images = []
    raw = os.path.join(work, "scattered.raw")
    sparse_raw(raw, 16 * GiB, 16 * MiB, 64 * KiB)
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", raw,
                    os.path.join(work, "scattered.qcow2")], check=True)
    images.append(("scattered", "scattered.qcow2", "scattered.raw"))
    raw = os.path.join(work, "extents.raw")
    sparse_raw(raw, 100000 * 128 * KiB, 128 * KiB, 64 * KiB)
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", raw,
                    os.path.join(work, "extents.qcow2")], check=True)
    images.append(("extents", "extents.qcow2", "extents.raw"))
    return images


def timed(argv, cwd, env):
    start = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if r.returncode not in (0, 1):
        raise RuntimeError(f"{argv[0]} failed: {r.stderr.decode()[:200]}")
    return elapsed


def peak_rss_kib(argv, cwd, env):
    if not os.path.exists(GNU_TIME):
        return None
    r = subprocess.run([GNU_TIME, "-f", "%M", *argv], cwd=cwd, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        return int(r.stderr.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 5)))
    args = ap.parse_args()
    env = dict(os.environ, INSTAR_QEMU_VERSION="7.2")
    with tempfile.TemporaryDirectory(prefix="instar-bench-") as work:
        print("making images ...", file=sys.stderr)
        images = make_images(work)
        print(f"{'case':34} {'instar':>10} {'qemu-img':>10} {'ratio':>7} "
              f"{'RSS instar':>11} {'RSS qemu':>9}")
        for name, img, raw in images:
            cases = [
                (f"{name}: map --output=json", ["map", "--output=json", img]),
                (f"{name}: map", ["map", img]),
                (f"{name}: compare with raw", ["compare", "-F", "raw", img, raw]),
            ]
            for label, cmd in cases:
                t_i, t_q = [], []
                for _ in range(args.runs):
                    t_i.append(timed([INSTAR, *cmd], work, env))
                    t_q.append(timed([QEMU_IMG, *cmd], work, env))
                mi, mq = statistics.median(t_i), statistics.median(t_q)
                ri = peak_rss_kib([INSTAR, *cmd], work, env)
                rq = peak_rss_kib([QEMU_IMG, *cmd], work, env)
                print(f"{label:34} {mi*1000:8.1f}ms {mq*1000:8.1f}ms {mi/mq:7.2f} "
                      f"{(ri or 0)/1024:9.1f}MiB {(rq or 0)/1024:7.1f}MiB")


if __name__ == "__main__":
    main()
