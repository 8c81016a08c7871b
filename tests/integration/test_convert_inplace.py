"""convert: data looked at in place, and zero runs known without reading.

Where a source stores a chunk as plain bytes in one file (raw, qcow2
clusters, vhdx/vpc/vdi/qed/parallels blocks, vmdk grains and flat
extents), instar's convert maps those bytes instead of copying them
(ins_image_locate, the worker's fd_view); vhdx blocks in a zero state are
known to be zeros without reading them.  The layouts here make chunks
that are only partly plain (host clusters out of order, runs split
between layers of a chain, zeros stored as data, clusters past the end of
the file), and every conversion must equal qemu-img's: the same bytes,
and for raw targets the same allocation (`qemu-img map`), since zeros
found inside data are left as holes by both.
"""
import json
import subprocess

import pytest

from conftest import INSTAR, data_map, qemu_img, qemu_io, run
from qcow2_corrupt import OFFSET_MASK, Qcow2

MiB = 1 << 20
KiB = 1 << 10


def io(path, fmt, *cmds):
    args = []
    for c in cmds:
        args += ["-c", c]
    qemu_io("-f", fmt, *args, str(path))


def make_qcow2_reverse(d):
    """Clusters allocated from the top of the image down: every chunk is
    host-discontiguous; some clusters hold zeros written as data."""
    p = d / "rev.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(p), str(12 * MiB))
    cmds = []
    for i in reversed(range(0, 12 * MiB, 192 * KiB)):
        cmds.append(f"write -P {0x10 + i // (192 * KiB)} {i} {64 * KiB}")
    cmds += ["write -P 0 {} {}".format(5 * MiB, 256 * KiB),
             "write -P 0x33 {} 512".format(7 * MiB + 4096)]
    io(p, "qcow2", *cmds)
    return p, "qcow2"


def make_qcow2_runs(d):
    """Long contiguous runs that start and end inside 2 MiB chunks."""
    p = d / "runs.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(p), str(16 * MiB))
    io(p, "qcow2", f"write -P 0x41 {1536 * KiB} {3 * MiB}",
       f"write -P 0 {6 * MiB} {2 * MiB}",
       f"write -P 0x42 {9 * MiB + 512} {5 * MiB}")
    return p, "qcow2"


def make_chain(d):
    """A 3-layer chain whose layers split chunks, down to single sectors."""
    base = d / "c0.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), str(8 * MiB))
    io(base, "qcow2", f"write -P 0x50 0 {8 * MiB}")
    mid = d / "c1.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2",
             str(mid))
    io(mid, "qcow2", f"write -P 0x51 {1 * MiB} {2 * MiB}",
       f"write -z {4 * MiB} {1 * MiB}")
    top = d / "c2.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", mid.name, "-F", "qcow2",
             str(top))
    io(top, "qcow2", "write -P 0x52 {} 512".format(2 * MiB + 4096),
       f"write -P 0 {6 * MiB} {64 * KiB}",
       f"write -P 0x53 {7 * MiB} {1 * MiB}")
    return top, "qcow2"


def make_beyond_eof(d):
    """A data cluster pointing past the end of the file (reads as zeros)."""
    p = d / "eof.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(p), str(4 * MiB))
    io(p, "qcow2", f"write -P 0x61 0 {2 * MiB}", f"write -P 0x62 {3 * MiB} {64 * KiB}")
    q = Qcow2(str(p))
    w, v = q.data_entries()[3]
    q.put64(w, (v & ~OFFSET_MASK) | ((q.file_size() + 100 * q.cs) & OFFSET_MASK))
    return p, "qcow2"


def _from_raw(d, name, fmt, opts, extents):
    raw = d / f"{name}.raw"
    qemu_img("create", "-q", "-f", "raw", str(raw), str(16 * MiB))
    io(raw, "raw", *[f"write -P {pat} {off} {n}" for off, n, pat in extents])
    if fmt == "raw":
        return raw, fmt
    p = d / f"{name}.{fmt}"
    qemu_img("convert", "-f", "raw", "-O", fmt, *opts, str(raw), str(p))
    return p, fmt


MIXED = [(0, 3 * MiB, 0x71), (4 * MiB, 1 * MiB, 0), (5 * MiB, 512, 0x72),
         (9 * MiB + 4096, 2 * MiB, 0x73), (15 * MiB, 1 * MiB, 0x74)]


def make_vhdx(d):
    """1 MiB blocks: present, absent, and present but holding zeros."""
    p, fmt = _from_raw(d, "v", "vhdx", ["-o", "block_size=1M"], MIXED)
    # Zeros stored as data in a present block.
    io(p, fmt, f"write -P 0 {9 * MiB} {1 * MiB}")
    return p, fmt


def make_vhdx_zero_state(d):
    """Blocks in the ZERO state (block_state_zero=on, qemu's default)."""
    p, fmt = _from_raw(d, "vz", "vhdx", ["-o", "subformat=fixed"], MIXED)
    io(p, fmt, f"write -z {2 * MiB} {8 * MiB}")
    return p, fmt


SOURCES = {
    "qcow2-reverse": make_qcow2_reverse,
    "qcow2-runs": make_qcow2_runs,
    "qcow2-chain": make_chain,
    "qcow2-beyond-eof": make_beyond_eof,
    "vhdx": make_vhdx,
    "vhdx-zero-state": make_vhdx_zero_state,
    "vpc": lambda d: _from_raw(d, "p", "vpc", [], MIXED),
    "vdi": lambda d: _from_raw(d, "i", "vdi", [], MIXED),
    "qed": lambda d: _from_raw(d, "e", "qed", [], MIXED),
    "parallels": lambda d: _from_raw(d, "l", "parallels", [], MIXED),
    "vmdk-sparse": lambda d: _from_raw(d, "k", "vmdk", [], MIXED),
    "vmdk-2gb-flat": lambda d: _from_raw(
        d, "f", "vmdk", ["-o", "subformat=twoGbMaxExtentFlat"], MIXED),
    "raw": lambda d: _from_raw(d, "r", "raw", [], MIXED),
}


def map_json(path):
    r = run(["qemu-img", "map", "--output=json", "-f", "raw", str(path)])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("args", [[], ["-S", "0"], ["-S", "64k"]],
                         ids=["default", "S0", "S64k"])
@pytest.mark.parametrize("target", ["raw", "qcow2"])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_same_as_qemu(oracle, tmp_path, name, target, args):
    src, fmt = SOURCES[name](tmp_path)
    outs = {}
    for who, prog in (("qemu", oracle.path), ("instar", INSTAR)):
        out = tmp_path / f"out-{who}.{target}"
        r = run([prog, "convert", "-f", fmt, "-O", target, *args, src.name,
                 out.name], cwd=tmp_path)
        assert r.returncode == 0, (who, r.stderr)
        outs[who] = out
    # qemu-img convert writes raw and qcow2 targets deterministically.
    assert outs["instar"].read_bytes() == outs["qemu"].read_bytes()
    if target == "raw":
        assert map_json(outs["instar"]) == map_json(outs["qemu"])


@pytest.mark.parametrize("target,opts", [
    ("raw", []),
    ("vpc", ["-o", "subformat=fixed"]),
    ("vmdk", ["-o", "subformat=monolithicFlat"]),
    ("vdi", ["-o", "static=on"]),
], ids=["raw", "vpc-fixed", "vmdk-flat", "vdi-static"])
def test_file_layout_same_as_qemu(oracle, tmp_path, target, opts):
    """Which parts of the target files are allocated: qemu's file driver
    allocates a new file's first block, and zeros found in data stay
    holes (the data here starts past the first block)."""
    src, fmt = _from_raw(tmp_path, "s", "raw", [],
                         [(2 * MiB, 1 * MiB, 0x71), (4 * MiB, 1 * MiB, 0),
                          (6 * MiB + 4096, 4096, 0x72)])
    layouts = {}
    for who, prog in (("qemu", oracle.path), ("instar", INSTAR)):
        d = tmp_path / who
        d.mkdir()
        r = run([prog, "convert", "-f", fmt, "-O", target, *opts, str(src),
                 "out.img"], cwd=d)
        assert r.returncode == 0, (who, r.stderr)
        layouts[who] = {p.name: data_map(p) for p in sorted(d.iterdir())}
    assert layouts["instar"] == layouts["qemu"]


def test_source_shrinks_during_convert(tmp_path):
    """Someone truncates the source while convert has it mapped: the worker
    must end with a one-line I/O error (its SIGBUS handler), never die of
    the signal.  Timing decides where the truncation lands, so several
    delays are tried; every outcome must be clean."""
    import subprocess
    import time
    chunk = (b"instar shrink test " * 3449)[:65536]
    outcomes = []
    for delay in (0.0, 0.005, 0.01, 0.02, 0.04, 0.08):
        src = tmp_path / "big.raw"
        with open(src, "wb") as f:
            for _ in range(256 * MiB // len(chunk)):
                f.write(chunk)
        out = tmp_path / "out.raw"
        if out.exists():
            out.unlink()
        p = subprocess.Popen([str(INSTAR), "convert", "-f", "raw", "-O", "raw",
                              str(src), str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        time.sleep(delay)
        with open(src, "r+b") as f:
            f.truncate(1 * MiB)
        stdout, stderr = p.communicate(timeout=60)
        err = stderr.decode()
        assert p.returncode in (0, 1), err
        assert "signal" not in err, err
        if p.returncode:
            assert err.count("\n") == 1, err
            assert "Input/output error" in err, err
        outcomes.append(p.returncode)
    print(outcomes)


@pytest.mark.parametrize("target", ["qcow2", "raw", "vmdk", "vpc"])
def test_write_failure_same_as_qemu(oracle, tmp_path, target):
    """Writes past RLIMIT_FSIZE fail with EFBIG (the signal is ignored, as
    qemu-img does): the same message and exit status, whichever thread
    wrote (qcow2 data goes through shared writes, vmdk and vpc through the
    one writer thread; a raw target fails sizing the file first)."""
    import resource
    src = tmp_path / "m.raw"
    piece = (b"instar fsize test " * 3641)[:65536]
    with open(src, "wb") as f:
        for _ in range(64 * MiB // len(piece)):
            f.write(piece)
    limit = 20_000_000

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = {}
    for who, prog in (("qemu", oracle.path), ("instar", INSTAR)):
        r = subprocess.run([str(prog), "convert", "-f", "raw", "-O", target,
                            "m.raw", f"out-{who}"], cwd=tmp_path,
                           capture_output=True, preexec_fn=cap, timeout=60)
        err = r.stderr.decode().replace(f"out-{who}", "OUT")
        err = err.replace(str(prog), "PROG")
        err = err.replace("qemu-img:", "PROG:").replace("instar:", "PROG:")
        res[who] = (r.returncode, err)
    assert res["instar"] == res["qemu"]
    assert res["instar"][0] == 1
    assert not (tmp_path / "out-instar").exists()
