"""Round trips through every pair of writable formats.

For each source format qemu-img can create (made by qemu-img from one
patterned raw image) and each target format instar writes, `instar
convert` must produce an image that qemu-img reads back identical to the
source (`qemu-img compare` exit 0), that `qemu-img check` finds clean
where qemu checks the format, and that converts back to the same raw bytes
with qemu-img.  The per-format option sets are covered in test_convert.py
(raw, qcow2) and test_convert_formats.py (vmdk, vpc, vhdx, vdi).
"""
import pytest

from conftest import INSTAR, QEMU_IMG, qemu_img, qemu_io, run

MiB = 1 << 20

SOURCES = ["raw", "qcow2", "qcow", "qed", "vmdk", "vpc", "vhdx", "vdi", "parallels"]
TARGETS = ["raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi"]
CHECKED = {"qcow2", "vmdk", "vhdx", "vdi"}  # formats qemu-img check handles


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    base = d / "base.raw"
    # vpc rounds sizes to its CHS geometry: pick one it keeps exactly.
    qemu_img("create", "-q", "-f", "raw", str(base), str(16 * MiB))
    qemu_io("-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 3M 64k",
            "-c", "write -P 0x11 7M 512", "-c", "write -z 9M 1M",
            "-c", "write -P 0x77 15M 1M", str(base))
    for fmt in SOURCES[1:]:
        qemu_img("convert", "-f", "raw", "-O", fmt, str(base), str(d / f"src.{fmt}"))
    return d


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("source", SOURCES)
def test_round_trip(sources, tmp_path, source, target):
    src = sources / ("base.raw" if source == "raw" else f"src.{source}")
    out = tmp_path / f"out.{target}"
    r = run([INSTAR, "convert", "-f", source, "-O", target, str(src), str(out)],
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    c = run([QEMU_IMG, "compare", "-f", source, "-F", target, str(src), str(out)])
    assert c.returncode == 0, (c.stdout, c.stderr)
    if target in CHECKED:
        k = run([QEMU_IMG, "check", "-f", target, str(out)])
        assert k.returncode == 0, (k.stdout, k.stderr)
    back = tmp_path / "back.raw"
    qemu_img("convert", "-f", target, "-O", "raw", str(out), str(back))
    want = (sources / "base.raw").read_bytes()
    got = back.read_bytes()
    # vpc may round the virtual size up to its geometry: the tail is zeros.
    assert got[:len(want)] == want and not got[len(want):].strip(b"\0")
