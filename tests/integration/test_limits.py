"""Worker resource limits: address space, CPU time, output size.

Each limit is made tiny so that an ordinary hostile image trips it fast;
the error is one line that names the limit and the option that sets it.
The limits come from the command line or the config file; the defaults
(1 GiB, 60 s, 64 MiB) let the same images through.
"""
import zlib

import pytest

import hostile
from conftest import INSTAR, instar, qemu_img

# The sanitizer runtime needs far more address space than any limit: such
# builds do not apply the memory limit (docs/configuration.md).
SANITIZED = b"__asan_init" in INSTAR.read_bytes()


def one_line(r):
    err = r.stderr.decode()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def descriptor(tmp_path):
    """A vmdk descriptor of about 1 MiB (40000 extents): parsing it needs
    memory in proportion, and its first extent does not exist."""
    (tmp_path / "big.vmdk").write_bytes(hostile.vmdk_descriptor(
        [("RW", 1, "FLAT", "f%d.raw" % i, 0) for i in range(40000)]))
    return "big.vmdk"


@pytest.fixture
def cpu_burner(tmp_path):
    """A qcow2 of 8192 compressed clusters (64 KiB each, each its own
    stream), and a copy: comparing them inflates 1 GiB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -12)
    s = c.compress(b"\x01" * 65536) + c.flush()
    base = 5 * 65536
    l2 = {i: hostile._compressed_entry(16, base + i * len(s), len(s)) for i in range(8192)}
    img = hostile.qcow2(size=8192 * 65536, cluster_bits=16, l2=l2,
                        data=s * 8192 + bytes(512))
    (tmp_path / "a.qcow2").write_bytes(img)
    (tmp_path / "b.qcow2").write_bytes(img)
    return "a.qcow2", "b.qcow2"


@pytest.mark.skipif(SANITIZED, reason="sanitizer builds apply no memory limit")
@pytest.mark.parametrize("limit,shown", [("1M", "1 MiB"), ("1K", "1024 bytes")])
def test_memory_limit_named(tmp_path, descriptor, limit, shown):
    r = instar("info", "--memory-limit", limit, descriptor, cwd=tmp_path)
    assert r.returncode == 1
    line = one_line(r)
    assert f"memory limit is {shown}" in line and "--memory-limit" in line, line


def test_memory_default_lets_it_through(tmp_path, descriptor):
    """The same file under the default limit gets as far as its extents."""
    r = instar("info", descriptor, cwd=tmp_path)
    assert r.returncode == 1
    assert "f0.raw" in one_line(r) and "memory" not in r.stderr.decode()


@pytest.mark.skipif(SANITIZED, reason="sanitizer builds apply no memory limit")
def test_memory_limit_from_config(tmp_path, descriptor):
    (tmp_path / "instar.conf").write_text("memory-limit = 1M\n")
    r = instar("info", descriptor, cwd=tmp_path,
               env={"INSTAR_CONFIG": str(tmp_path / "instar.conf")})
    assert r.returncode == 1 and "--memory-limit" in one_line(r)
    # The command line wins over the config file.
    r = instar("info", "--memory-limit", "0", descriptor, cwd=tmp_path,
               env={"INSTAR_CONFIG": str(tmp_path / "instar.conf")})
    assert "memory" not in r.stderr.decode()


def test_cpu_limit_named(tmp_path, cpu_burner):
    a, b = cpu_burner
    r = instar("compare", "--cpu-limit", "1", a, b, cwd=tmp_path)
    assert r.returncode != 0 and r.returncode < 128
    line = one_line(r)
    assert "CPU time limit of 1 s" in line and "--cpu-limit" in line, line


def test_cpu_limit_from_config(tmp_path, cpu_burner):
    a, b = cpu_burner
    (tmp_path / "instar.conf").write_text("cpu-limit = 1\n")
    r = instar("compare", a, b, cwd=tmp_path,
               env={"INSTAR_CONFIG": str(tmp_path / "instar.conf")})
    assert "CPU time limit of 1 s" in one_line(r)


def test_cpu_default_lets_it_through(tmp_path, cpu_burner):
    a, b = cpu_burner
    r = instar("compare", a, b, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Images are identical.\n"


def test_output_limit_named(tmp_path):
    qemu_img("create", "-q", "-f", "qcow2", "a.qcow2", "1M", cwd=tmp_path)
    r = instar("info", "--output-limit", "100", "a.qcow2", cwd=tmp_path)
    assert r.returncode == 1
    line = one_line(r)
    assert "output limit (100 bytes; --output-limit)" in line, line
    r = instar("info", "--output-limit", "64K", "a.qcow2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_output_limit_from_config(tmp_path):
    qemu_img("create", "-q", "-f", "qcow2", "a.qcow2", "1M", cwd=tmp_path)
    (tmp_path / "instar.conf").write_text("output-limit = 100\n")
    r = instar("info", "--output=json", "a.qcow2",
               cwd=tmp_path, env={"INSTAR_CONFIG": str(tmp_path / "instar.conf")})
    assert r.returncode == 1 and "--output-limit" in one_line(r)


@pytest.mark.parametrize("opt,bad", [
    ("--memory-limit", "lots"), ("--memory-limit", "-1"), ("--memory-limit", " 1G"),
    ("--cpu-limit", "-1"), ("--cpu-limit", "1000001"), ("--cpu-limit", "99999999999999999999"),
    ("--output-limit", "1Q"), ("--output-limit", "-5M")])
def test_bad_limit_values(tmp_path, opt, bad):
    r = instar("info", opt, bad, "x.img", cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == f"instar: bad value '{bad}' for {opt}"
