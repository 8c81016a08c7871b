"""The read layer, through map and compare: for every readable format and
variant, generated with qemu-img and filled with patterns by qemu-io,
instar's map is identical to qemu-img's (human and JSON) and instar's view
equals `qemu-img convert -O raw` of the same image."""
import pytest

from conftest import assert_same, instar, qemu_img, qemu_io, run, QEMU_IMG

MB = 1 << 20

# (id, create format, create options, size)
VARIANTS = [
    ("qcow2", "qcow2", [], "16M"),
    ("qcow2-v2", "qcow2", ["-o", "compat=0.10"], "16M"),
    ("qcow2-4k", "qcow2", ["-o", "cluster_size=4096"], "16M"),
    ("qcow2-512", "qcow2", ["-o", "cluster_size=512"], "16M"),
    ("qcow2-2m", "qcow2", ["-o", "cluster_size=2M"], "16M"),
    ("qcow2-extl2", "qcow2", ["-o", "extended_l2=on"], "16M"),
    ("qcow2-extl2-16k", "qcow2", ["-o", "extended_l2=on,cluster_size=16384"], "16M"),
    ("qcow2-refcount1", "qcow2", ["-o", "refcount_bits=1"], "16M"),
    ("qcow2-datafile", "qcow2", ["-o", "data_file=data.bin"], "16M"),
    ("qcow2-datafile-raw", "qcow2", ["-o", "data_file=data.bin,data_file_raw=on"], "16M"),
    ("vmdk", "vmdk", [], "16M"),
    ("vmdk-flat", "vmdk", ["-o", "subformat=monolithicFlat"], "16M"),
    ("vmdk-2gsparse", "vmdk", ["-o", "subformat=twoGbMaxExtentSparse"], "16M"),
    ("vmdk-2gflat", "vmdk", ["-o", "subformat=twoGbMaxExtentFlat"], "16M"),
    ("vmdk-zeroed", "vmdk", ["-o", "zeroed_grain=on"], "16M"),
    ("vpc", "vpc", [], "16M"),
    ("vpc-fixed", "vpc", ["-o", "subformat=fixed"], "16M"),
    ("vhdx", "vhdx", [], "16M"),
    ("vhdx-fixed", "vhdx", ["-o", "subformat=fixed"], "16M"),
    ("vhdx-1m", "vhdx", ["-o", "block_size=1M"], "16M"),
    ("vdi", "vdi", [], "16M"),
    ("vdi-static", "vdi", ["-o", "static=on"], "16M"),
    ("qed", "qed", [], "16M"),
    ("qcow", "qcow", [], "16M"),
    ("parallels", "parallels", [], "16M"),
]

PATTERN = [
    "write -P 0xaa 0 64k",
    "write -P 0x55 1M 192k",
    "write -P 0x11 3145728 4k",
    "write -z 5M 64k",
    "write -P 0x77 8M 1M",
    "write -z 8650752 64k",
    "write -P 0x33 15M 1M",
]


def make(tmp_path, fmt, opts, size, name="img"):
    path = f"{name}.{fmt}"
    qemu_img("create", "-q", "-f", fmt, *opts, path, size, cwd=tmp_path)
    args = ["-f", fmt]
    for cmd in PATTERN:
        args += ["-c", cmd]
    qemu_io(*args, path, cwd=tmp_path)
    return path


def to_raw(tmp_path, path, fmt):
    qemu_img("convert", "-f", fmt, "-O", "raw", path, "flat.raw", cwd=tmp_path)
    return "flat.raw"


@pytest.mark.parametrize("vid,fmt,opts,size", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_map_matches(tmp_path, oracle, vid, fmt, opts, size):
    path = make(tmp_path, fmt, opts, size)
    # -f on both sides: qemu-img calls a fixed VHD raw, instar (safely) vpc.
    for extra in ([], ["--output=json"], ["--output=json", "--start-offset=1M",
                                          "--max-length=7M"]):
        assert_same(oracle, ["map", "-f", fmt, *extra, path], tmp_path)


@pytest.mark.parametrize("vid,fmt,opts,size", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_content_equals_qemu_convert(tmp_path, vid, fmt, opts, size):
    path = make(tmp_path, fmt, opts, size)
    flat = to_raw(tmp_path, path, fmt)
    r = instar("compare", "-F", "raw", path, flat, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == b"Images are identical.\n"
    # Change one byte of the flat copy: both tools find the same offset.
    with open(tmp_path / flat, "r+b") as f:
        f.seek(8 * MB + 4242)
        f.write(b"\x01")
    q = run([QEMU_IMG, "compare", "-F", "raw", path, flat], cwd=tmp_path)
    r = instar("compare", "-F", "raw", path, flat, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (q.returncode, q.stdout)
    assert q.returncode == 1


def test_backing_chain_mixed_formats(tmp_path, oracle):
    """A 3-deep chain over a vmdk base; reads fall through to the right layer."""
    qemu_img("create", "-q", "-f", "vmdk", "base.vmdk", "16M", cwd=tmp_path)
    qemu_io("-f", "vmdk", "-c", "write -P 1 0 4M", "base.vmdk", cwd=tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.vmdk", "-F", "vmdk", "mid.qcow2",
             cwd=tmp_path)
    qemu_io("-c", "write -P 2 1M 1M", "-c", "write -z 3M 64k", "mid.qcow2", cwd=tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2",
             "20M", cwd=tmp_path)
    qemu_io("-c", "write -P 3 1536k 64k", "-c", "write -P 4 17M 64k", "top.qcow2",
            cwd=tmp_path)
    assert_same(oracle, ["map", "top.qcow2"], tmp_path)
    assert_same(oracle, ["map", "--output=json", "top.qcow2"], tmp_path)
    flat = to_raw(tmp_path, "top.qcow2", "qcow2")
    assert_same(oracle, ["compare", "-F", "raw", "top.qcow2", flat], tmp_path)


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_compressed_qcow2(tmp_path, oracle, ctype):
    make(tmp_path, "qcow2", [], "16M", name="src")
    qemu_img("convert", "-c", "-O", "qcow2", "-o", f"compression_type={ctype}",
             "src.qcow2", "c.qcow2", cwd=tmp_path)
    assert_same(oracle, ["map", "--output=json", "c.qcow2"], tmp_path)
    # The human map refuses compressed clusters, with qemu's message.
    assert_same(oracle, ["map", "c.qcow2"], tmp_path, check_stderr=True)
    flat = to_raw(tmp_path, "c.qcow2", "qcow2")
    assert_same(oracle, ["compare", "-F", "raw", "c.qcow2", flat], tmp_path)


def test_compare_outcomes(tmp_path, oracle):
    """Size mismatch warnings, strict mode, quiet mode, exit codes."""
    qemu_img("create", "-q", "-f", "qcow2", "a.qcow2", "8M", cwd=tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "b.qcow2", "12M", cwd=tmp_path)
    qemu_io("-c", "write -P 7 0 1M", "a.qcow2", cwd=tmp_path)
    qemu_io("-c", "write -P 7 0 1M", "b.qcow2", cwd=tmp_path)
    for extra in ([], ["-s"], ["-q"], ["-q", "-s"], ["-p"], ["-p", "-q"]):
        assert_same(oracle, ["compare", *extra, "a.qcow2", "b.qcow2"], tmp_path)
    qemu_io("-c", "write -P 9 10M 4k", "b.qcow2", cwd=tmp_path)
    assert_same(oracle, ["compare", "a.qcow2", "b.qcow2"], tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "c.qcow2", "8M", cwd=tmp_path)
    qemu_io("-c", "write -P 7 0 1M", "-c", "write -z 2M 1M", "c.qcow2", cwd=tmp_path)
    assert_same(oracle, ["compare", "-s", "a.qcow2", "c.qcow2"], tmp_path)
    assert_same(oracle, ["compare", "a.qcow2", "c.qcow2"], tmp_path)
    assert_same(oracle, ["compare", "a.qcow2", "missing.qcow2"], tmp_path)
    assert_same(oracle, ["compare", "-p", "a.qcow2", "missing.qcow2"], tmp_path)
    assert_same(oracle, ["compare", "-p", "-s", "a.qcow2", "c.qcow2"], tmp_path)


def test_raw_sparse_map(tmp_path, oracle):
    data = bytearray(4 * MB)
    data[446 + 4] = 0x83
    data[446 + 8:446 + 12] = (1).to_bytes(4, "little")
    data[446 + 12:446 + 16] = (100).to_bytes(4, "little")
    data[510:512] = b"\x55\xaa"
    (tmp_path / "d.img").write_bytes(bytes(data[:512]))
    with open(tmp_path / "d.img", "r+b") as f:
        f.truncate(10 * MB + 100)
        f.seek(3 * MB)
        f.write(b"\x42" * 8192)
    for extra in ([], ["--output=json"]):
        assert_same(oracle, ["map", *extra, "d.img"], tmp_path)


def test_map_option_errors(tmp_path, oracle):
    qemu_img("create", "-q", "-f", "qcow2", "a.qcow2", "8M", cwd=tmp_path)
    for args in (["map", "--start-offset=abc", "a.qcow2"],
                 ["map", "--max-length=-5", "a.qcow2"],
                 ["map", "--output=xml", "a.qcow2"],
                 ["map"],
                 ["map", "--start-offset=1G", "--output=json", "a.qcow2"]):
        assert_same(oracle, args, tmp_path, check_stderr=True)


@pytest.mark.parametrize("sub", ["streamOptimized", "monolithicSparse"])
def test_vmdk_converted_with_data(tmp_path, oracle, sub):
    """streamOptimized (compressed grains, markers) can only be written by
    convert: make one from a patterned image and read it back."""
    make(tmp_path, "qcow2", [], "16M", name="src")
    qemu_img("convert", "-O", "vmdk", "-o", f"subformat={sub}", "src.qcow2", "v.vmdk",
             cwd=tmp_path)
    assert_same(oracle, ["map", "--output=json", "v.vmdk"], tmp_path)
    assert_same(oracle, ["map", "v.vmdk"], tmp_path, check_stderr=True)
    flat = to_raw(tmp_path, "v.vmdk", "vmdk")
    assert_same(oracle, ["compare", "-F", "raw", "v.vmdk", flat], tmp_path)
    assert_same(oracle, ["compare", "src.qcow2", "v.vmdk"], tmp_path)
