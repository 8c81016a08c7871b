"""instar dd against qemu-img dd (7.2 and 10.0): operands, messages, exit
status, and what lands in the output (bytes for raw; info, content and
check for image formats)."""
import json
import os
import shutil

import pytest

from conftest import INSTAR, QEMU_IMG, data_map, qemu_img, qemu_io, run

MiB = 1 << 20


def _norm_err(text, oracle):
    text = text.decode(errors="replace")
    for argv0 in ("/opt/qemu-oracle/root/usr/bin/qemu-img", oracle.path):
        text = text.replace(argv0, "ARGV0")
    text = text.replace(str(INSTAR), "ARGV0")
    text = text.replace("qemu-img:", "PROG:").replace("instar:", "PROG:")
    return text.replace("Try 'instar ", "Try 'qemu-img ")


def _dd(oracle, tmp_path, args, out="out"):
    """Runs both dd's with of= named q.OUT and i.OUT; returns the paths."""
    q_out, i_out = tmp_path / f"q.{out}", tmp_path / f"i.{out}"
    for p in (q_out, i_out):
        if p.exists():
            p.unlink()
    qa = [a.replace("of=OUT", f"of={q_out.name}") for a in args]
    ia = [a.replace("of=OUT", f"of={i_out.name}") for a in args]
    q = run([oracle.path, "dd", *qa], cwd=tmp_path)
    i = run([INSTAR, "dd", *ia], cwd=tmp_path,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    qe = _norm_err(q.stderr, oracle).replace(q_out.name, "OUT")
    ie = _norm_err(i.stderr, oracle).replace(i_out.name, "OUT")
    assert (i.returncode, ie) == (q.returncode, qe), (args, i.stderr, q.stderr)
    assert i.stdout == q.stdout
    return q_out, i_out


def _info(path, fmt):
    r = run([QEMU_IMG, "info", "-f", fmt, "--output=json", path])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _same_image(q_out, i_out, fmt):
    assert q_out.exists() == i_out.exists()
    if not q_out.exists():
        return
    if fmt == "raw":
        assert q_out.read_bytes() == i_out.read_bytes()
        return
    qi, ii = _info(q_out, fmt), _info(i_out, fmt)
    for k in ("virtual-size", "format", "cluster-size"):
        assert qi.get(k) == ii.get(k), k
    # actual-size (st_blocks) also counts the file system's own metadata
    # and varies with timing: compare where the data lies instead.
    # qcow2's layout is the qcow2 writer's business (test_convert_*).
    if fmt == "vhdx":
        # instar leaves the log empty (see test_convert_formats.py)
        (ql, qm), (il, im) = data_map(q_out), data_map(i_out)
        assert ql == il
        assert [e for e in qm if e[1] <= MiB or e[0] >= 2 * MiB] == \
            [e for e in im if e[1] <= MiB or e[0] >= 2 * MiB]
    elif fmt != "qcow2":
        assert data_map(q_out) == data_map(i_out)
    r = run([QEMU_IMG, "compare", "-q", "-f", fmt, "-F", fmt, q_out, i_out])
    assert r.returncode == 0, r.stdout + r.stderr
    if fmt in ("qcow2", "vmdk", "vdi", "vhdx"):
        r = run([QEMU_IMG, "check", "-q", "-f", fmt, i_out])
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A 5 MiB + 12345 byte raw image with data and holes, and a qcow2 copy."""
    d = tmp_path_factory.mktemp("dd")
    size = 5 * MiB + 12345
    data = bytearray(size)
    for i in range(70000):
        data[i] = (i * 7 + 1) & 255
    data[size // 2:size // 2 + 4096] = b"\x5a" * 4096
    data[-700:] = b"\xa5" * 700
    (d / "src.raw").write_bytes(bytes(data))
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "src.raw", "src.qcow2",
             cwd=d)
    return d


def _link(src, tmp_path):
    for n in ("src.raw", "src.qcow2"):
        (tmp_path / n).symlink_to(src / n)


RAW_CASES = [
    [],
    ["bs=4k", "count=100"],
    ["bs=1000", "skip=3", "count=7"],
    ["bs=64k", "skip=2"],
    ["bs=1.5k", "count=3"],
    ["count=0"],
    ["bs=1M", "skip=5"],            # exactly at the end: empty, no warning
    ["bs=1M", "skip=6"],            # beyond: warning, empty image
    ["skip=99999999999"],
    ["bs=100", "count=1"],          # the tail sector is written whole
    ["count=0x10"],
    ["count=010"],                  # octal in 10.0, decimal in 7.2
    ["count=-0"],
    ["count=2k"],                   # a size in 7.2, an error in 10.0
    ["bs=2147483647", "count=1"],
]


@pytest.mark.parametrize("ops", RAW_CASES, ids=lambda o: " ".join(o) or "default")
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_dd_raw_output(oracle, tmp_path, src, fmt, ops):
    _link(src, tmp_path)
    extra = ["-f", "raw"] if fmt == "raw" else []
    q_out, i_out = _dd(oracle, tmp_path,
                       [*extra, *ops, f"if=src.{fmt}", "of=OUT"])
    _same_image(q_out, i_out, "raw")


@pytest.mark.parametrize("out_fmt", ["qcow2", "vmdk", "vpc", "vdi", "vhdx"])
@pytest.mark.parametrize("ops", [[], ["bs=64k", "skip=3", "count=70"],
                                 ["bs=3000", "skip=5"]],
                         ids=lambda o: " ".join(o) or "default")
def test_dd_formats(oracle, tmp_path, src, out_fmt, ops):
    _link(src, tmp_path)
    q_out, i_out = _dd(oracle, tmp_path,
                       ["-O", out_fmt, *ops, "if=src.qcow2", "of=OUT"])
    _same_image(q_out, i_out, out_fmt)


@pytest.mark.parametrize("out_fmt", ["raw", "qcow2"])
def test_dd_backing_chain(oracle, tmp_path, src, out_fmt):
    """An overlay as input: its chain opens once per worker job (the size,
    then the copy) and is no loop the second time."""
    # a copy: a symlink out of the directory is outside the path policy
    shutil.copy(src / "src.qcow2", tmp_path / "base.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             "top.qcow2", cwd=tmp_path)
    qemu_io("-c", "write -P 7 1M 64k", "top.qcow2", cwd=tmp_path)
    q_out, i_out = _dd(oracle, tmp_path, ["-O", out_fmt, "bs=4k", "skip=1",
                                          "if=top.qcow2", "of=OUT"])
    _same_image(q_out, i_out, out_fmt)


ERROR_CASES = [
    ["bs=0", "if=src.qcow2", "of=OUT"],
    ["bs=1x", "if=src.qcow2", "of=OUT"],
    ["bs=3G", "if=src.qcow2", "of=OUT"],
    ["count=-1", "if=src.qcow2", "of=OUT"],
    ["count=1.5", "if=src.qcow2", "of=OUT"],
    ["skip=", "if=src.qcow2", "of=OUT"],
    ["count=99999999999999999999", "if=src.qcow2", "of=OUT"],
    ["foo", "if=src.qcow2", "of=OUT"],
    ["foo=bar", "if=src.qcow2", "of=OUT"],
    ["if=src.qcow2"],
    ["of=OUT"],
    [],
    ["-O", "foo", "if=src.qcow2", "of=OUT"],
    ["-O", "dmg", "if=src.qcow2", "of=OUT"],
    ["-O", "foo", "if=nope", "of=OUT"],
    ["if=nope", "of=OUT"],
    ["if=src.qcow2", "of=nodir/x"],
    ["-x", "if=src.qcow2", "of=OUT"],
    ["-f"],
    ["--format", "qcow2", "if=src.qcow2", "of=OUT"],
    ["-f", "vmdk", "if=src.qcow2", "of=OUT"],
    ["if=src.qcow2", "of=OUT", "extra"],
]


@pytest.mark.parametrize("args", ERROR_CASES, ids=lambda a: " ".join(a) or "none")
def test_dd_errors(oracle, tmp_path, src, args):
    _link(src, tmp_path)
    q_out, i_out = _dd(oracle, tmp_path, args)
    assert q_out.exists() == i_out.exists()


def test_dd_hostile_input(tmp_path):
    """A corrupt input fails with one line before any output exists."""
    (tmp_path / "bad.qcow2").write_bytes(b"QFI\xfb" + b"\xff" * 508)
    r = run([INSTAR, "dd", "if=bad.qcow2", "of=o"], cwd=tmp_path)
    assert r.returncode == 1
    assert len(r.stderr.decode().strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_dd_read_error(oracle, tmp_path):
    """An input that opens but fails to read (an unaligned L2 offset):
    qemu's error line, exit 1, the output created up to the failure."""
    qemu_img("create", "-f", "qcow2", "c.qcow2", "1M", cwd=tmp_path)
    run([QEMU_IMG.replace("qemu-img", "qemu-io"), "-c", "write -P 1 0 64k",
         "c.qcow2"], cwd=tmp_path)
    data = bytearray((tmp_path / "c.qcow2").read_bytes())
    l1 = int.from_bytes(data[40:48], "big")
    entry = int.from_bytes(data[l1:l1 + 8], "big")
    data[l1:l1 + 8] = ((entry & (1 << 63)) | 0x10200).to_bytes(8, "big")
    (tmp_path / "c.qcow2").write_bytes(bytes(data))
    q = run([oracle.path, "dd", "if=c.qcow2", "of=q.raw"], cwd=tmp_path)
    i = run([INSTAR, "dd", "if=c.qcow2", "of=i.raw"], cwd=tmp_path,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert q.returncode == i.returncode == 1
    # qemu's qcow2 driver also reports the corruption on a line of its own.
    last = lambda r: _norm_err(r.stderr, oracle).strip().splitlines()[-1]
    assert last(q) == last(i)
    assert (tmp_path / "q.raw").stat().st_size == (tmp_path / "i.raw").stat().st_size


@pytest.mark.parametrize("in_fmt", ["vmdk", "vpc", "vdi", "vhdx", "qed"])
def test_dd_from_formats(oracle, tmp_path, src, in_fmt):
    """Other input formats, detected (vpc: rounded up to its geometry)."""
    qemu_img("convert", "-f", "raw", "-O", in_fmt, str(src / "src.raw"),
             f"in.{in_fmt}", cwd=tmp_path)
    q_out, i_out = _dd(oracle, tmp_path, ["bs=64k", "skip=1", "count=60",
                                          f"if=in.{in_fmt}", "of=OUT"])
    _same_image(q_out, i_out, "raw")
