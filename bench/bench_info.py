#!/usr/bin/env python3
"""Benchmark `instar info` against `qemu-img info`.

Creates a set of images with qemu-img in a temporary directory, then runs
instar and each qemu-img found alternately, N times each, on every image,
in human and JSON output.  For each image and output it prints the median
wall time of each tool, the ratio instar / qemu-img (the target is 0.5 or
less), the peak resident set size of each, and whether the two outputs
were identical (instar told which qemu-img version to imitate).

Wall time is measured around posix_spawn() and wait4() of each run, with
output to /dev/null.  Peak RSS is measured in separate runs through
GNU time (/usr/bin/time -f %M), whose figure comes from wait4(): Linux
reports the largest RSS of the process and of every descendant it reaped,
so for instar it covers the host and its sandboxed worker (the larger of
the two, not their sum).  Without /usr/bin/time the RSS falls back to
wait4() from this script, which cannot go below Python's own RSS (a
process keeps its parent's high-water mark across exec()); such figures
are shown as "<=X" when they sit at that floor.

An image that instar (or a qemu-img) cannot read yet is reported as n/a
and the run goes on: format drivers land one at a time.

Plain Python 3 standard library; Linux only.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_QEMU_IMGS = ["/usr/bin/qemu-img", "/opt/qemu-oracle/bin/qemu-img"]
TARGET_RATIO = 0.5
TIMEOUT = 120           # seconds, for the untimed check runs
RSS_RUNS = 3            # runs per tool and case for peak RSS
GNU_TIME = "/usr/bin/time"


# ---- tools ----

class Tool:
    """A program to time: instar, or one qemu-img."""

    def __init__(self, label, argv, env=None):
        self.label = label
        self.argv = argv            # prefix; "info ..." is appended
        self.env = env

    def __repr__(self):
        return self.label


def qemu_version(path):
    try:
        out = subprocess.run([path, "--version"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"version (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


# ---- images ----

def write_mbr(path, size):
    """A minimal valid MBR: one Linux partition from sector 2048 to the
    end, and the 0x55AA signature."""
    sectors = size // 512
    entry = struct.pack("<B3sB3sII", 0x00, b"\x00\x02\x00", 0x83,
                        b"\xfe\xff\xff", 2048, sectors - 2048)
    with open(path, "r+b") as f:
        f.seek(446)
        f.write(entry)
        f.seek(510)
        f.write(b"\x55\xaa")


def run_quiet(argv, cwd):
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=TIMEOUT)


def make_images(qemu_img, workdir, wanted):
    """Creates the benchmark images; returns [(name, filename, note)]."""
    qemu_io = shutil.which("qemu-io")
    images = []

    def create(fmt, name, size, opts=None):
        argv = [qemu_img, "create", "-q", "-f", fmt]
        if opts:
            argv += ["-o", opts]
        run_quiet(argv + [name, size], workdir)

    def write(name, fmt, cmds):
        if qemu_io:
            for c in cmds:
                run_quiet([qemu_io, "-f", fmt, "-c", c, name], workdir)

    def add(name, filename, note, build):
        if wanted and name not in wanted:
            return
        try:
            build()
        except (OSError, subprocess.SubprocessError) as e:
            err = getattr(e, "stderr", b"") or b""
            print(f"warning: could not create {name}: {e} "
                  f"{err.decode(errors='replace').strip()}", file=sys.stderr)
            return
        images.append((name, filename, note))

    def qcow2_small():
        create("qcow2", "small.qcow2", "64M")
        write("small.qcow2", "qcow2", ["write -P 0x5a 0 4M",
                                       "write -P 0xa5 32M 1M"])

    def qcow2_big():
        create("qcow2", "big.qcow2", "1T")
        for i in range(1, 4):
            write("big.qcow2", "qcow2", [f"write -P {i} {i}G 1M"])
            run_quiet([qemu_img, "snapshot", "-c", f"snap{i}", "big.qcow2"],
                      workdir)

    def qcow2_overlay():
        if not os.path.exists(os.path.join(workdir, "small.qcow2")):
            qcow2_small()
        create("qcow2", "overlay.qcow2", "64M",
               "backing_file=small.qcow2,backing_fmt=qcow2")
        write("overlay.qcow2", "qcow2", ["write -P 0x11 1M 1M"])

    def simple(fmt, filename):
        def build():
            create(fmt, filename, "1G")
            write(filename, fmt, ["write -P 0x5a 0 2M"])
        return build

    def raw_mbr():
        path = os.path.join(workdir, "disk.img")
        size = 64 << 20
        with open(path, "wb") as f:
            f.truncate(size)
        write_mbr(path, size)
        with open(path, "r+b") as f:
            f.seek(1 << 20)
            f.write(b"\x5a" * (1 << 20))

    add("qcow2-small", "small.qcow2", "64 MiB, 5 MiB written", qcow2_small)
    add("qcow2-1T-snap", "big.qcow2", "1 TiB virtual, 3 snapshots", qcow2_big)
    add("qcow2-overlay", "overlay.qcow2", "backing file small.qcow2",
        qcow2_overlay)
    add("vmdk", "disk.vmdk", "1 GiB monolithicSparse", simple("vmdk", "disk.vmdk"))
    add("vhdx", "disk.vhdx", "1 GiB dynamic", simple("vhdx", "disk.vhdx"))
    add("vpc", "disk.vhd", "1 GiB dynamic", simple("vpc", "disk.vhd"))
    add("vdi", "disk.vdi", "1 GiB dynamic", simple("vdi", "disk.vdi"))
    add("raw-mbr", "disk.img", "64 MiB with an MBR", raw_mbr)
    return images


# ---- measuring ----

def timed_run(tool, args, cwd, devnull):
    """One run: (wall seconds, peak RSS in KiB, exit status)."""
    argv = tool.argv + args
    env = tool.env if tool.env is not None else os.environ
    old = os.getcwd()
    os.chdir(cwd)
    try:
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1),
                                           (os.POSIX_SPAWN_DUP2, devnull, 2)])
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - start
    finally:
        os.chdir(old)
    return wall, ru.ru_maxrss, os.waitstatus_to_exitcode(status)


def check_run(tool, args, cwd):
    """An untimed run that also warms the page cache: (ok, stdout, err)."""
    try:
        r = subprocess.run(tool.argv + args, cwd=cwd, capture_output=True,
                           env=tool.env, timeout=TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        return False, b"", str(e)
    err = r.stderr.decode(errors="replace").strip().splitlines()
    return r.returncode == 0, r.stdout, err[-1] if err else f"exit {r.returncode}"


def rss_run(tool, args, cwd):
    """Peak RSS in KiB of one run through GNU time, or None."""
    with tempfile.NamedTemporaryFile("r") as out:
        try:
            r = subprocess.run([GNU_TIME, "-f", "%M", "-o", out.name]
                               + tool.argv + args, cwd=cwd, env=tool.env,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=TIMEOUT)
        except (OSError, subprocess.SubprocessError):
            return None
        text = out.read().strip().splitlines()
    if r.returncode != 0 or not text or not text[-1].isdigit():
        return None
    return int(text[-1])


def measure(instar, qemus, filename, mode, runs, workdir, devnull, use_time):
    """Times every tool that can read the image.  Returns a dict with, per
    tool label, None (n/a) or {wall: [...], rss: [...], ...}, and for a
    tool that failed, "LABEL:error" with its last line of stderr."""
    args = ["info"] + (["--output=json"] if mode == "json" else []) + [filename]
    tools = [instar] + qemus
    result = {}
    live = []
    for t in tools:
        ok, out, err = check_run(t, args, workdir)
        if ok:
            result[t.label] = {"wall": [], "rss": [], "spawn_rss": [],
                               "stdout": out}
            live.append(t)
        else:
            result[t.label] = None
            result[t.label + ":error"] = err
    # Output comparison: instar imitating each qemu-img's version.
    if instar in live:
        for q in qemus:
            if q in live:
                env = dict(os.environ, INSTAR_QEMU_VERSION=q.version)
                ok, out, _ = check_run(Tool("instar", instar.argv, env), args,
                                       workdir)
                result[q.label]["same"] = ok and out == result[q.label]["stdout"]
    for i in range(runs):
        # Rotate the order each round so no tool always runs first.
        k = i % len(live) if live else 0
        for t in live[k:] + live[:k]:
            r = result[t.label]
            if r is None:
                continue
            wall, rss, code = timed_run(t, args, workdir, devnull)
            if code != 0:
                result[t.label] = None
                result[t.label + ":error"] = f"exit {code} during timing"
                continue
            r["wall"].append(wall)
            r["spawn_rss"].append(rss)
    for t in live:
        r = result[t.label]
        if r is None:
            continue
        if use_time:
            for _ in range(RSS_RUNS):
                kib = rss_run(t, args, workdir)
                if kib is not None:
                    r["rss"].append(kib)
        else:
            r["rss"] = list(r["spawn_rss"])
    return result


# ---- reporting ----

def fmt_ms(seconds):
    return f"{seconds * 1000:.2f}"


def fmt_kib(kib, floor=0):
    if floor and kib <= floor * 1.05:
        return f"<={kib / 1024:.1f} MiB"
    return f"{kib / 1024:.1f} MiB"


def spawn_floor(devnull):
    """The lowest peak RSS wait4() from this script can report: /bin/true's."""
    true = shutil.which("true") or "/bin/true"
    return max(timed_run(Tool("true", [true]), [], "/", devnull)[1]
               for _ in range(3))


def report(rows, instar, qemus, runs, floor):
    head = (f"{'image':<15} {'output':<6} {'vs':<14} {'instar ms':>10} "
            f"{'qemu ms':>9} {'ratio':>6} {'':>4} {'instar RSS':>11} "
            f"{'qemu RSS':>10}  output")
    print(f"\nmedian of {runs} runs each; ratio = instar / qemu-img "
          f"(target <= {TARGET_RATIO}); RSS = peak resident set size "
          + ("(GNU time)" if not floor else
             f"(wait4 from Python: floor {floor / 1024:.1f} MiB; "
             "install 'time' for exact figures)"))
    print(head)
    print("-" * len(head))
    ratios = {q.label: [] for q in qemus}
    misses = []
    for name, mode, res in rows:
        ir = res.get(instar.label)
        for q in qemus:
            qr = res.get(q.label)
            i_ms = fmt_ms(statistics.median(ir["wall"])) if ir and ir["wall"] else "n/a"
            q_ms = fmt_ms(statistics.median(qr["wall"])) if qr and qr["wall"] else "n/a"
            i_rss = fmt_kib(max(ir["rss"]), floor) if ir and ir["rss"] else "n/a"
            q_rss = fmt_kib(max(qr["rss"]), floor) if qr and qr["rss"] else "n/a"
            ratio, verdict, same = "n/a", "", ""
            if ir and ir["wall"] and qr and qr["wall"]:
                x = statistics.median(ir["wall"]) / statistics.median(qr["wall"])
                ratios[q.label].append(x)
                ratio = f"{x:.2f}"
                verdict = "ok" if x <= TARGET_RATIO else "SLOW"
                if x > TARGET_RATIO:
                    misses.append(f"{name}/{mode} vs {q.label}")
                same = "same" if qr.get("same") else "differs"
            print(f"{name:<15} {mode:<6} {q.label:<14} {i_ms:>10} {q_ms:>9} "
                  f"{ratio:>6} {verdict:>4} {i_rss:>11} {q_rss:>10}  {same}")
    print()
    for q in qemus:
        xs = ratios[q.label]
        if xs:
            gm = statistics.geometric_mean(xs)
            print(f"vs {q.label}: geometric mean ratio {gm:.2f} over "
                  f"{len(xs)} cases")
    if misses:
        print(f"over the {TARGET_RATIO} target: " + ", ".join(misses))
    na = {}
    for name, mode, res in rows:
        if not res.get(instar.label):
            err = res.get(instar.label + ":error") or "failed"
            na.setdefault((name, err), []).append(mode)
    if na:
        print("\ninstar n/a (cannot read these yet):")
        for (name, err), modes in na.items():
            print(f"  {name:<15} {'/'.join(modes):<10} {err}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int,
                    default=int(os.environ.get("BENCH_RUNS", "30")),
                    help="timed runs per tool, image and output (default 30, "
                         "or $BENCH_RUNS)")
    ap.add_argument("--instar", default=os.path.join(REPO, "instar"),
                    help="the instar binary (default: the one in the repo)")
    ap.add_argument("--qemu-img", action="append", dest="qemu_imgs",
                    help="a qemu-img to compare with (repeatable; default "
                         + " and ".join(DEFAULT_QEMU_IMGS) + " when present)")
    ap.add_argument("--image", action="append", dest="images",
                    help="benchmark only this image (repeatable): qcow2-small, "
                         "qcow2-1T-snap, qcow2-overlay, vmdk, vhdx, vpc, vdi, "
                         "raw-mbr")
    ap.add_argument("--output", choices=["human", "json", "both"],
                    default="both", help="which output to time (default both)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the image directory and print its name")
    ap.add_argument("--json", metavar="FILE",
                    help="also write the raw timings to FILE as JSON")
    opts = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    if opts.runs < 1:
        ap.error("--runs must be at least 1")
    instar_path = os.path.abspath(opts.instar)
    if not os.access(instar_path, os.X_OK):
        sys.exit(f"bench: {instar_path} not found (run make first)")
    paths = opts.qemu_imgs or [p for p in DEFAULT_QEMU_IMGS if os.path.exists(p)]
    qemus = []
    for p in paths:
        v = qemu_version(p)
        if not v:
            print(f"warning: {p} does not run; skipped", file=sys.stderr)
            continue
        q = Tool(f"qemu-img {v}", [p])
        q.version = v
        qemus.append(q)
    if not qemus:
        sys.exit("bench: no qemu-img found (apt-get install qemu-utils)")
    instar = Tool("instar", [instar_path])

    workdir = tempfile.mkdtemp(prefix="instar-bench-")
    try:
        print(f"creating images with {qemus[0].argv[0]} in {workdir}")
        images = make_images(qemus[0].argv[0], workdir, opts.images)
        for name, filename, note in images:
            size = os.path.getsize(os.path.join(workdir, filename))
            print(f"  {name:<15} {filename:<14} {note} ({size} bytes on disk)")
        modes = ["human", "json"] if opts.output == "both" else [opts.output]
        rows = []
        devnull = os.open(os.devnull, os.O_WRONLY)
        use_time = os.access(GNU_TIME, os.X_OK)
        floor = 0 if use_time else spawn_floor(devnull)
        try:
            for name, filename, _ in images:
                for mode in modes:
                    print(f"timing {name} ({mode}) ...", file=sys.stderr)
                    res = measure(instar, qemus, filename, mode, opts.runs,
                                  workdir, devnull, use_time)
                    rows.append((name, mode, res))
        finally:
            os.close(devnull)
        report(rows, instar, qemus, opts.runs, floor)
        if opts.json:
            dump = []
            for name, mode, res in rows:
                entry = {"image": name, "output": mode}
                for t in [instar] + qemus:
                    r = res.get(t.label)
                    entry[t.label] = None if not r else {
                        "wall_s": r["wall"], "maxrss_kib": r["rss"],
                        "rss_method": "wait4" if floor else "gnu-time",
                        "same_output": r.get("same")}
                dump.append(entry)
            with open(opts.json, "w") as f:
                json.dump(dump, f, indent=1)
    finally:
        if opts.keep:
            print(f"images kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
