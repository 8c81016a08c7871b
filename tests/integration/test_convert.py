"""convert: differential tests against both qemu-imgs.

For every target option set the output file must be byte-identical to
qemu-img's own conversion (qemu-img convert is deterministic for raw and
qcow2 targets), `qemu-img check` clean and `qemu-img compare` identical to
the source.  Errors must be qemu-img's, and a failed or killed convert must
leave nothing that looks like a finished image.

Known divergences, on purpose:
- a source without a format header and without MBR/GPT needs -f raw
  (instar's safe mode); the tests pass -f raw for such sources;
- after a failure qemu-img leaves a partial (or empty) OUT behind; instar
  leaves OUT as it was (the temporary file is removed);
- -n into a qcow2 image with snapshots, compressed or shared clusters or
  a backing file is refused (not supported yet).
"""
import os
import struct

import pytest

from conftest import INSTAR, ORACLES, QEMU_IMG, data_map, qemu_img, qemu_io, run

MiB = 1 << 20


def write_pattern(path, size, extents):
    """A sparse raw file with data at extents: (offset, length, kind)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length, kind in extents:
            f.seek(off)
            if kind == "rand":
                f.write(os.urandom(length))
            elif kind == "text":
                line = b"instar convert test %08d " % off
                f.write((line * (length // len(line) + 1))[:length])
            else:
                f.write(bytes([kind]) * length)


@pytest.fixture
def src(tmp_path):
    """An 8 MiB raw image: random and compressible data, holes, a tail."""
    p = tmp_path / "src.raw"
    write_pattern(p, 8 * MiB, [
        (0, 5000, "rand"), (70000, 300000, "text"), (3 * MiB, 4096, "rand"),
        (5 * MiB + 512, 700, "rand"), (8 * MiB - 1000, 1000, "text"),
    ])
    return p


@pytest.fixture
def odd(tmp_path):
    """A raw image whose size is not a multiple of the cluster size."""
    p = tmp_path / "odd.raw"
    write_pattern(p, 3 * MiB + 1536, [(1000, 100000, "text"),
                                      (2 * MiB, 60000, "rand"),
                                      (3 * MiB + 1024, 512, 0x5a)])
    return p


def convert_both(oracle, tmp_path, args, name="out"):
    """qemu-img convert ARGS q.NAME and instar convert ARGS i.NAME."""
    q = run([oracle.path, "convert", *args, f"q.{name}"], cwd=tmp_path)
    i = run([INSTAR, "convert", *args, f"i.{name}"], cwd=tmp_path,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert q.returncode == 0, q.stderr.decode()
    assert i.returncode == 0, i.stderr.decode()
    assert i.stdout == q.stdout
    return tmp_path / f"q.{name}", tmp_path / f"i.{name}"


def assert_identical(q, i):
    a, b = q.read_bytes(), i.read_bytes()
    assert len(a) == len(b), f"{i.name}: {len(b)} bytes, qemu-img wrote {len(a)}"
    assert a == b, f"{i.name} differs from qemu-img's output"


def assert_clean(path, fmt="qcow2"):
    r = run([QEMU_IMG, "check", "-f", fmt, path])
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def assert_compare(a, b, fa=None, fb=None):
    args = [QEMU_IMG, "compare"]
    if fa:
        args += ["-f", fa]
    if fb:
        args += ["-F", fb]
    r = run([*args, a, b])
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def no_leftovers(tmp_path, allowed):
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(allowed), names


QCOW2_OPTIONS = [
    [],
    ["-o", "compat=0.10"],
    ["-o", "compat=1.1"],
    ["-o", "cluster_size=512"],
    ["-o", "cluster_size=4k"],
    ["-o", "cluster_size=2M"],
    ["-o", "refcount_bits=1"],
    ["-o", "refcount_bits=8,cluster_size=1024"],
    ["-o", "refcount_bits=64"],
    ["-o", "refcount_bits=64,cluster_size=512"],
    ["-o", "lazy_refcounts=on"],
    ["-o", "extended_l2=on"],
    ["-o", "extended_l2=on,cluster_size=128k"],
    ["-o", "preallocation=metadata"],
    ["-o", "preallocation=metadata,cluster_size=4k"],
    ["-o", "preallocation=falloc"],
    ["-o", "preallocation=full,cluster_size=512"],
    ["-o", "preallocation=falloc,extended_l2=on"],
    ["-o", "preallocation=full,cluster_size=4k,refcount_bits=64"],
    ["-c"],
    ["-c", "-o", "compression_type=zstd"],
    ["-c", "-o", "cluster_size=4k"],
    ["-c", "-o", "extended_l2=on"],
    ["-c", "-o", "cluster_size=512,compression_type=zstd"],
    ["-S", "0"],
    ["-S", "64k"],
    ["-S", "512"],
]


@pytest.mark.parametrize("opts", QCOW2_OPTIONS, ids=lambda o: " ".join(o) or "default")
def test_qcow2_target_identical(oracle, tmp_path, src, opts):
    q, i = convert_both(oracle, tmp_path, ["-f", "raw", "-O", "qcow2", *opts, src.name])
    assert_identical(q, i)
    assert_clean(i)
    assert_compare(src, i, "raw", "qcow2")


@pytest.mark.parametrize("opts", [[], ["-c"], ["-o", "cluster_size=2M"],
                                  ["-o", "extended_l2=on"], ["-S", "0"]],
                         ids=lambda o: " ".join(o) or "default")
def test_qcow2_target_odd_size(oracle, tmp_path, odd, opts):
    q, i = convert_both(oracle, tmp_path, ["-f", "raw", "-O", "qcow2", *opts, odd.name])
    assert_identical(q, i)
    assert_clean(i)


def test_refcount_table_grows(oracle, tmp_path):
    """512-byte clusters: the first refcount table covers 8 MiB of file;
    writing more makes qemu grow it, and so must we, in the same place."""
    p = tmp_path / "big.raw"
    write_pattern(p, 12 * MiB, [(0, 10 * MiB, "text")])
    q, i = convert_both(oracle, tmp_path, ["-f", "raw", "-O", "qcow2", "-o",
                                           "cluster_size=512", p.name])
    assert_identical(q, i)
    assert_clean(i)


@pytest.mark.parametrize("opts", [[], ["-S", "0"], ["-S", "8k"]],
                         ids=lambda o: " ".join(o) or "default")
def test_raw_target(oracle, tmp_path, src, opts):
    q, i = convert_both(oracle, tmp_path, ["-f", "raw", "-O", "raw", *opts, src.name])
    assert_identical(q, i)
    # Zeros stay holes: no more blocks than qemu-img's.
    assert os.stat(i).st_blocks <= os.stat(q).st_blocks + 8


# Every format qemu-img can create, as a source.
SOURCE_FORMATS = [
    ("qcow2", []), ("qcow2", ["-o", "compat=0.10"]), ("qcow", []), ("qed", []),
    ("vmdk", []), ("vmdk", ["-o", "subformat=streamOptimized"]),
    ("vpc", []), ("vhdx", []), ("vdi", []), ("parallels", []),
    ("qcow2", ["-c"]),
]


@pytest.mark.parametrize("fmt,opts", SOURCE_FORMATS,
                         ids=lambda v: v if isinstance(v, str) else " ".join(v) or "-")
@pytest.mark.parametrize("target", ["raw", "qcow2"])
def test_source_formats(oracle, tmp_path, src, fmt, opts, target):
    qemu_img("convert", "-f", "raw", "-O", fmt, *opts, src.name, f"s.{fmt}", cwd=tmp_path)
    q, i = convert_both(oracle, tmp_path, ["-O", target, f"s.{fmt}"])
    assert_identical(q, i)
    assert_compare(tmp_path / f"s.{fmt}", i, fmt, target)
    if target == "qcow2":
        assert_clean(i)


@pytest.fixture
def chain(tmp_path, src):
    """base.qcow2 <- mid.qcow2 <- top.qcow2 with data and zeros in each."""
    qemu_img("convert", "-f", "raw", "-O", "qcow2", src.name, "base.qcow2", cwd=tmp_path)
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2",
             cwd=tmp_path)
    qemu_io("-c", "write -P 0x55 1M 64k", "-c", "write -z 0 64k", "mid.qcow2", cwd=tmp_path)
    qemu_img("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2",
             cwd=tmp_path)
    qemu_io("-c", "write -P 0x66 2M 100k", "-c", "write -z 3M 64k", "top.qcow2",
            cwd=tmp_path)
    return tmp_path


@pytest.mark.parametrize("args", [
    ["-O", "raw"],
    ["-O", "qcow2"],
    ["-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2"],
    ["-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2"],
    ["-O", "qcow2", "-o", "compat=0.10", "-B", "mid.qcow2", "-F", "qcow2"],
    ["-O", "qcow2", "-o", "backing_file=mid.qcow2,backing_fmt=qcow2"],
    ["-O", "qcow2", "-c", "-B", "mid.qcow2", "-F", "qcow2"],
], ids=lambda a: " ".join(a))
def test_backing_chain(oracle, chain, args):
    q, i = convert_both(oracle, chain, [*args, "top.qcow2"])
    assert_identical(q, i)
    # Over any other backing file than the source's own, only the top
    # layer is copied: the content differs from the source on purpose.
    if "base.qcow2" not in args:
        assert_compare(chain / "top.qcow2", i, "qcow2")


def test_snapshots(oracle, tmp_path, src):
    qemu_img("convert", "-f", "raw", "-O", "qcow2", src.name, "s.qcow2", cwd=tmp_path)
    qemu_img("snapshot", "-c", "snap1", "s.qcow2", cwd=tmp_path)
    qemu_io("-c", "write -P 0x77 0 1M", "s.qcow2", cwd=tmp_path)
    for k, sel in enumerate(["snap1", "snapshot.name=snap1", "snapshot.id=1", "1"]):
        q, i = convert_both(oracle, tmp_path, ["-O", "qcow2", "-l", sel, "s.qcow2"],
                            name=f"{k}")
        assert_identical(q, i)
        assert_compare(src, i, "raw", "qcow2")


def test_multiple_inputs(oracle, tmp_path, src, odd):
    for target, opts in [("raw", []), ("qcow2", []), ("qcow2", ["-c"])]:
        q, i = convert_both(oracle, tmp_path, ["-f", "raw", "-O", target, *opts,
                                               src.name, odd.name, src.name],
                            name=f"{target}{len(opts)}")
        assert_identical(q, i)


@pytest.mark.parametrize("args", [
    ["-O", "raw", "top.qcow2"],
    ["-O", "raw", "--target-is-zero", "top.qcow2"],
    ["-O", "raw", "-f", "raw", "src.raw"],
    ["-O", "raw", "-f", "raw", "-S", "0", "src.raw"],
    ["-O", "raw", "-B", "mid.qcow2", "top.qcow2"],
], ids=lambda a: " ".join(a))
def test_no_create(oracle, chain, args):
    """-n: into an existing file full of 0xaa."""
    for name in ("q.out", "i.out"):
        with open(chain / name, "wb") as f:
            f.write(b"\xaa" * (16 * MiB))
    q = run([oracle.path, "convert", "-n", *args, "q.out"], cwd=chain)
    i = run([INSTAR, "convert", "-n", *args, "i.out"], cwd=chain,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert (i.returncode, i.stdout) == (q.returncode, q.stdout), i.stderr
    assert_identical(chain / "q.out", chain / "i.out")


@pytest.mark.parametrize("create", [[], ["-o", "compat=0.10"], ["-o", "cluster_size=4k"],
                                    ["-o", "extended_l2=on"],
                                    ["-o", "preallocation=metadata"]],
                         ids=lambda o: " ".join(o) or "default")
@pytest.mark.parametrize("args", [["top.qcow2"], ["--target-is-zero", "top.qcow2"],
                                  ["-f", "raw", "src.raw"], ["-c", "-f", "raw", "src.raw"],
                                  ["-B", "mid.qcow2", "top.qcow2"]],
                         ids=lambda a: " ".join(a))
def test_no_create_qcow2(oracle, chain, create, args):
    """-n into a qcow2 image made by qemu-img create."""
    qemu_img("create", "-f", "qcow2", *create, "q.qcow2", "16M", cwd=chain)
    qemu_img("create", "-f", "qcow2", *create, "i.qcow2", "16M", cwd=chain)
    q = run([oracle.path, "convert", "-n", "-O", "qcow2", *args, "q.qcow2"], cwd=chain)
    i = run([INSTAR, "convert", "-n", "-O", "qcow2", *args, "i.qcow2"], cwd=chain,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert (i.returncode, i.stdout) == (q.returncode, q.stdout), i.stderr
    assert_identical(chain / "q.qcow2", chain / "i.qcow2")
    assert_clean(chain / "i.qcow2")


def test_no_create_qcow2_with_data(oracle, tmp_path, src, odd):
    """-n over an image holding other data: clusters are reused, zeroed
    and discarded as qemu does."""
    for create in ([], ["-o", "compat=0.10"], ["-o", "cluster_size=4k"],
                   ["-o", "extended_l2=on"]):
        for name in ("q.qcow2", "i.qcow2"):
            qemu_img("convert", "-f", "raw", "-O", "qcow2", *create, odd.name, name,
                     cwd=tmp_path)
            qemu_img("resize", "-q", name, "16M", cwd=tmp_path)
        q = run([oracle.path, "convert", "-n", "-O", "qcow2", "-f", "raw", src.name,
                 "q.qcow2"], cwd=tmp_path)
        i = run([INSTAR, "convert", "-n", "-O", "qcow2", "-f", "raw", src.name,
                 "i.qcow2"], cwd=tmp_path, env={"INSTAR_QEMU_VERSION": oracle.version})
        assert (i.returncode, q.returncode) == (0, 0), i.stderr
        assert_identical(tmp_path / "q.qcow2", tmp_path / "i.qcow2")
        assert_clean(tmp_path / "i.qcow2")


def test_no_create_qcow2_refused(tmp_path, src):
    """What instar cannot yet do in place it refuses, leaving the image."""
    qemu_img("create", "-f", "qcow2", "t.qcow2", "16M", cwd=tmp_path)
    qemu_img("snapshot", "-c", "s", "t.qcow2", cwd=tmp_path)
    before = (tmp_path / "t.qcow2").read_bytes()
    r = run([INSTAR, "convert", "-n", "-O", "qcow2", "-f", "raw", src.name, "t.qcow2"],
            cwd=tmp_path)
    assert r.returncode == 1 and b"not supported" in r.stderr
    assert (tmp_path / "t.qcow2").read_bytes() == before


@pytest.mark.parametrize("opts", [[], ["-o", "compat=0.10"], ["-o", "extended_l2=on"],
                                  ["-o", "cluster_size=2M"]],
                         ids=lambda o: " ".join(o) or "default")
def test_overlay_partial_clusters(oracle, chain, opts):
    """A source with 4k clusters into 64k-cluster overlays: the rest of a
    partly written cluster comes from the backing file, as qemu copies it."""
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "base.qcow2",
             "-F", "qcow2", "s4.qcow2", cwd=chain)
    qemu_io("-c", "write -P 0x42 1M 4k", "-c", "write -P 0x43 3M 12k",
            "-c", "write -z 5M 4k", "s4.qcow2", cwd=chain)
    q, i = convert_both(oracle, chain, ["-O", "qcow2", *opts, "-B", "base.qcow2",
                                        "-F", "qcow2", "s4.qcow2"])
    assert_identical(q, i)
    assert_compare(chain / "s4.qcow2", i, "qcow2", "qcow2")


def test_sources_share_backing(oracle, chain):
    """Two sources over the same backing file: separate chains, no loop."""
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             "other.qcow2", cwd=chain)
    qemu_io("-c", "write -P 0x71 100k 8k", "other.qcow2", cwd=chain)
    for target in ("raw", "qcow2"):
        q, i = convert_both(oracle, chain, ["-O", target, "top.qcow2",
                                            "other.qcow2", "mid.qcow2"],
                            name=target)
        assert_identical(q, i)


@pytest.mark.parametrize("opts", [[], ["-o", "cluster_size=4k"]],
                         ids=lambda o: " ".join(o) or "default")
def test_overlay_on_own_backing_vmdk_source(oracle, tmp_path, src, opts):
    """A vmdk source over base.vmdk into a qcow2 overlay of base.vmdk (the
    source's own backing file, opened again for the target)."""
    qemu_img("convert", "-f", "raw", "-O", "vmdk", src.name, "base.vmdk",
             cwd=tmp_path)
    qemu_img("create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "s.vmdk",
             cwd=tmp_path)
    qemu_io("-c", "write -P 0x42 1M 4k", "-c", "write -z 5M 64k",
            "-c", "write -P 0x43 3M 100k", "s.vmdk", cwd=tmp_path)
    q, i = convert_both(oracle, tmp_path, ["-O", "qcow2", *opts, "-B", "base.vmdk",
                                           "-F", "vmdk", "s.vmdk"])
    assert_identical(q, i)
    assert_compare(tmp_path / "s.vmdk", i, "vmdk", "qcow2")


@pytest.mark.parametrize("opts", [["-C"], ["-S", "0"], ["-C", "-n"], ["-S", "0", "-n"],
                                  ["-C", "-m", "1"]],
                         ids=lambda o: " ".join(o))
def test_raw_copy_offload(oracle, tmp_path, src, odd, opts):
    """raw to raw with -C or -S 0: data runs are copied file to file in the
    kernel (copy_file_range), zeros inside them kept as data, as qemu-img
    does without looking for zeros; holes stay holes (-C)."""
    with open(src, "r+b") as f:
        f.seek(6 * MiB)
        f.write(bytes(MiB))         # zeros inside data: not a hole with -C
        f.write(os.urandom(4096))
    # A source ending inside a sector: the rest of it reads as zeros.
    (tmp_path / "tail.raw").write_bytes(os.urandom(70001))
    args = ["-f", "raw", "-O", "raw", *opts, src.name, "tail.raw", odd.name]
    if "-n" in opts:
        for name in ("q.out", "i.out"):
            with open(tmp_path / name, "wb") as f:
                f.write(b"\xaa" * (12 * MiB))
    q, i = convert_both(oracle, tmp_path, args)
    assert_identical(q, i)
    # Where the sources' 4 KiB blocks straddle the target's, either side
    # may allocate one block more (qemu's own runs differ): compare the
    # zeros inside data, which stay allocated, and the big holes.
    for path in (q, i):
        end, ext = data_map(path)
        assert any(a <= 6 * MiB and b >= 7 * MiB for a, b in ext), path.name
        if "-n" not in opts and "-S" not in opts:
            assert not any(a < 4 * MiB and b > 4 * MiB for a, b in ext), path.name


def test_progress_output_identical(oracle, chain):
    q = run([oracle.path, "convert", "-p", "-O", "qcow2", "top.qcow2", "q.out"], cwd=chain)
    i = run([INSTAR, "convert", "-p", "-O", "qcow2", "top.qcow2", "i.out"], cwd=chain,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert i.stdout == q.stdout
    assert b"(100.00/100%)" in i.stdout


def test_progress_fd(tmp_path, src):
    r = run(["sh", "-c", f"'{INSTAR}' convert --progress-fd=3 -f raw -O qcow2 src.raw o.qcow2 "
             "3>progress.txt"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "progress.txt").read_text().splitlines()
    assert lines[0] == '{"progress": 0.00}' and lines[-1] == '{"progress": 100.00}'


ERROR_CASES = [
    ["-O", "qcow2", "-o", "cluster_size=3000", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "foo=1", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.9", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "refcount_bits=3", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-B", "src.raw", "src.raw", "x.qcow2"],
    ["-O", "raw", "-B", "src.raw", "-F", "raw", "src.raw", "x.raw"],
    ["-O", "qcow2", "-c", "-o", "preallocation=full", "src.raw", "x.qcow2"],
    ["-O", "raw", "-c", "src.raw", "x.raw"],
    ["-O", "nosuchfmt", "src.raw", "x.img"],
    ["-O", "qcow2", "-B", "src.raw", "-F", "raw", "src.raw", "src.raw", "x.qcow2"],
    ["src.raw"],
    ["-n", "-o", "cluster_size=4k", "src.raw", "x"],
    ["--target-is-zero", "src.raw", "x"],
    ["-c", "-C", "src.raw", "x"],
    ["-S", "1000", "src.raw", "x"],
    ["-S", "foo", "src.raw", "x"],
    ["-m", "0", "src.raw", "x"],
    ["-m", "17", "src.raw", "x"],
    ["-n", "src.raw", "nosuch.img"],
    ["nosuch.img", "x.raw"],
    ["-O", "qcow2", "src.raw", "nodir/x.qcow2"],
    ["-O", "qcow2", "-l", "nosuch", "q.qcow2", "x.qcow2"],
    ["-l", "snap", "q.qcow2", "q.qcow2", "x.raw"],
    ["-x", "src.raw", "x"],
    ["-O", "qcow2", "-o", "preallocation=foo", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "compression_type=foo", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "backing_file=src.raw,backing_fmt=foo", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.10,extended_l2=on", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.10,compression_type=zstd", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=1k,extended_l2=on", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "backing_file=src.raw,backing_fmt=raw,preallocation=metadata",
     "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "backing_fmt=raw", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.9,preallocation=foo", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "data_file_raw=on", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=3000,compat=0.10,lazy_refcounts=on", "src.raw",
     "x.qcow2"],
    ["-O", "qcow2", "-c", "-o", "preallocation=metadata", "src.raw", "x.qcow2"],
]


@pytest.mark.parametrize("args", ERROR_CASES, ids=lambda a: " ".join(a))
def test_errors(oracle, tmp_path, src, args):
    qemu_img("create", "-f", "qcow2", "q.qcow2", "1M", cwd=tmp_path)
    if len(args) < 2 or "nosuch.img" != args[-2]:
        args = ["-f", "raw" if "q.qcow2" not in args else "qcow2", *args]
    q = run([oracle.path, "convert", *args], cwd=tmp_path)
    i = run([INSTAR, "convert", *args], cwd=tmp_path,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    qs = q.stderr.decode().replace(oracle.path, "ARGV0").replace(
        "/opt/qemu-oracle/root/usr/bin/qemu-img", "ARGV0").replace("qemu-img:", "PROG:")
    is_ = i.stderr.decode().replace(str(INSTAR), "ARGV0").replace("instar:", "PROG:")
    is_ = is_.replace("Try 'instar ", "Try 'qemu-img ")
    assert (i.returncode, is_) == (q.returncode, qs)
    # Whatever qemu-img leaves behind, instar leaves no partial image.
    assert not (tmp_path / "x.qcow2").exists() or q.returncode == 0


def qcow2_corrupt_l1(path):
    data = bytearray(path.read_bytes())
    l1 = struct.unpack(">Q", data[40:48])[0]
    data[l1:l1 + 8] = struct.pack(">Q", 0x8000000000000000 | (1 << 50))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "bad_l1", "garbage"])
def test_hostile_source(tmp_path, src, damage):
    qemu_img("convert", "-f", "raw", "-O", "qcow2", src.name, "h.qcow2", cwd=tmp_path)
    p = tmp_path / "h.qcow2"
    if damage == "truncated":
        p.write_bytes(p.read_bytes()[:300000])
    elif damage == "bad_l1":
        qcow2_corrupt_l1(p)
    else:
        data = bytearray(p.read_bytes())
        data[0x40000:0x40100] = os.urandom(256)
        p.write_bytes(bytes(data))
    before = sorted(x.name for x in tmp_path.iterdir())
    for target in ("raw", "qcow2"):
        r = run([INSTAR, "convert", "-O", target, "h.qcow2", "out.img"], cwd=tmp_path)
        if r.returncode == 0:
            assert_compare(p, tmp_path / "out.img", "qcow2", target)
            os.unlink(tmp_path / "out.img")
            continue
        assert r.returncode == 1
        assert len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
        no_leftovers(tmp_path, before)


@pytest.mark.parametrize("kills", [1, 2, 3, 5, 8, 13])
def test_killed_convert_leaves_no_image(tmp_path, src, kills):
    """The worker dies before write N+1: OUT never appears half-written."""
    before = sorted(x.name for x in tmp_path.iterdir())
    for target in ("qcow2", "raw"):
        r = run([INSTAR, "--x-test-kill-after-writes", str(kills), "convert", "-f", "raw",
                 "-O", target, "src.raw", "out.img"], cwd=tmp_path)
        if r.returncode == 0:
            assert_compare(src, tmp_path / "out.img", "raw", target)
            os.unlink(tmp_path / "out.img")
        else:
            no_leftovers(tmp_path, before)


def test_killed_convert_keeps_old_target(tmp_path, src):
    (tmp_path / "out.img").write_bytes(b"old contents")
    r = run([INSTAR, "--x-test-kill-after-writes", "3", "convert", "-f", "raw",
             "-O", "qcow2", "src.raw", "out.img"], cwd=tmp_path)
    assert r.returncode == 1
    assert (tmp_path / "out.img").read_bytes() == b"old contents"
    no_leftovers(tmp_path, ["src.raw", "out.img"])


def test_backing_outside_policy_refused(tmp_path, src):
    """A source's backing file outside the allowed directories is refused
    and nothing is written."""
    other = tmp_path / "other"
    other.mkdir()
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(src), str(other / "base.qcow2"))
    work = tmp_path / "work"
    work.mkdir()
    qemu_img("create", "-f", "qcow2", "-b", "../other/base.qcow2", "-F", "qcow2",
             "top.qcow2", cwd=work)
    r = run([INSTAR, "convert", "-O", "raw", "top.qcow2", "out.raw"], cwd=work)
    assert r.returncode == 1
    assert "refused" in r.stderr.decode()
    no_leftovers(work, ["top.qcow2"])


@pytest.mark.skipif(len(ORACLES) < 1, reason="needs qemu-img")
def test_info_of_result_matches(oracle, tmp_path, src):
    """qemu-img info of instar's output equals that of qemu-img's."""
    q, i = convert_both(oracle, tmp_path, ["-f", "raw", "-O", "qcow2", "-o",
                                           "compat=0.10,cluster_size=4k", src.name])
    qi = run([oracle.path, "info", "--output=json", q.name], cwd=tmp_path).stdout
    ii = run([oracle.path, "info", "--output=json", i.name], cwd=tmp_path).stdout
    norm = lambda s: s.decode().replace(q.name, "X").replace(i.name, "X")
    # disk size depends on how the file system allocated the blocks
    strip = lambda s: "\n".join(l for l in norm(s).splitlines() if "actual-size" not in l)
    assert strip(qi) == strip(ii)


def test_salvage(oracle, tmp_path, odd):
    """A compressed cluster that does not decompress: an error, or with
    --salvage zeros and qemu-img's warnings, sector by sector."""
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", odd.name, "z.qcow2", cwd=tmp_path)
    p = tmp_path / "z.qcow2"
    data = bytearray(p.read_bytes())
    l1 = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1:l1 + 8])[0] & ((1 << 56) - 1)
    entry = struct.unpack(">Q", data[l2:l2 + 8])[0]
    off = entry & ((1 << 54) - 1)
    data[off:off + 64] = b"\xff" * 64
    p.write_bytes(bytes(data))
    for extra in ([], ["--salvage"]):
        q = run([oracle.path, "convert", *extra, "-O", "raw", "z.qcow2", "q.raw"], cwd=tmp_path)
        i = run([INSTAR, "convert", *extra, "-O", "raw", "z.qcow2", "i.raw"], cwd=tmp_path,
                env={"INSTAR_QEMU_VERSION": oracle.version})
        assert i.returncode == q.returncode
        assert i.stderr.replace(b"instar:", b"qemu-img:") == q.stderr
        if q.returncode == 0:
            assert_identical(tmp_path / "q.raw", tmp_path / "i.raw")
        else:
            assert not (tmp_path / "i.raw").exists()
