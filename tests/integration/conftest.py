"""Shared fixtures for the differential suite.

Every comparison runs the real qemu-img (Debian 12's 7.2, and the 10.0
oracle from ../shared/tools/install-qemu-oracle when it is installed) and
instar on the same file in the same directory, and compares stdout and the
exit status byte for byte.  instar is told which qemu-img it stands in for
through INSTAR_QEMU_VERSION, the same knob users have.
"""
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTAR = Path(os.environ.get("INSTAR_BIN", REPO / "instar")).absolute()
ORACLE_PATHS = [
    os.environ.get("QEMU_IMG_72", "/usr/bin/qemu-img"),
    os.environ.get("QEMU_IMG_ORACLE", "/opt/qemu-oracle/bin/qemu-img"),
]


class Oracle:
    def __init__(self, path):
        self.path = path
        out = subprocess.run([path, "--version"], capture_output=True,
                             text=True, check=True).stdout
        m = re.search(r"version (\d+)\.(\d+)", out)
        self.version = f"{m.group(1)}.{m.group(2)}"
        self.major = int(m.group(1))
        bindir = Path(path).parent
        self.qemu_io = str(bindir / "qemu-io") if (bindir / "qemu-io").exists() \
            else shutil.which("qemu-io")

    def __repr__(self):
        return f"qemu-img-{self.version}"


def _oracles():
    found = []
    for p in ORACLE_PATHS:
        if p and os.path.exists(p):
            try:
                found.append(Oracle(p))
            except (OSError, subprocess.CalledProcessError):
                pass
    return found


ORACLES = _oracles()
if not ORACLES:
    raise RuntimeError("no qemu-img found: the differential suite needs one "
                       "(make check installs qemu-utils)")

# Debian 12's qemu-img is the one that creates test images.
QEMU_IMG = ORACLES[0].path
QEMU_IO = shutil.which("qemu-io") or "qemu-io"


@pytest.fixture(params=ORACLES, ids=repr)
def oracle(request):
    return request.param


def run(argv, cwd=None, env=None, input=None, timeout=60):
    full_env = dict(os.environ)
    full_env.setdefault("TZ", "UTC")
    full_env["LC_ALL"] = "C"
    if env:
        full_env.update(env)
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=full_env,
                          capture_output=True, input=input, timeout=timeout)


def data_map(path):
    """The file's length and its data extents [(start, end)], as
    SEEK_DATA/SEEK_HOLE find them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end, off, out = os.fstat(fd).st_size, 0, []
        while off < end:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, h))
            off = h
        return end, out
    finally:
        os.close(fd)


def run_calibrated(argv, cwd=None, timeout=60):
    """Runs a qemu-img that derives a LUKS key.  qemu times PBKDF2 by the
    thread's user CPU time, which on a busy machine can read 0 for a whole
    run ("Unable to get accurate CPU usage", a qemu bug): retry, spaced a
    little, until a run gets past the calibration; None if none did."""
    for attempt in range(40):
        r = run(argv, cwd=cwd, timeout=timeout)
        if b"accurate CPU usage" not in r.stderr:
            return r
        time.sleep(0.02 * (attempt % 5))
    return None


def qemu_img(*args, cwd=None):
    """Runs Debian's qemu-img to make test images; fails the test on error."""
    r = run([QEMU_IMG, *args], cwd=cwd)
    assert r.returncode == 0, r.stderr.decode()
    return r


def qemu_io(*args, cwd=None):
    r = run([QEMU_IO, *args], cwd=cwd)
    assert r.returncode == 0, r.stderr.decode()
    return r


def instar(*args, cwd=None, version=None, env=None, input=None):
    e = dict(env or {})
    if version:
        e["INSTAR_QEMU_VERSION"] = version
    return run([INSTAR, *args], cwd=cwd, env=e, input=input)


def assert_same(oracle, args, cwd, instar_args=(), check_stderr=False):
    """Runs `qemu-img ARGS` and `instar INSTAR_ARGS ARGS` in cwd and asserts
    identical stdout and exit status (and stderr, with the program name
    normalised, when check_stderr)."""
    q = run([oracle.path, *args], cwd=cwd)
    args = list(args)
    # instar's own options go right after the command word.
    i = run([INSTAR, args[0], *instar_args, *args[1:]], cwd=cwd,
            env={"INSTAR_QEMU_VERSION": oracle.version})
    assert i.stdout.decode(errors="replace") == q.stdout.decode(errors="replace"), \
        f"stdout differs for {args} ({oracle}); instar stderr: {i.stderr!r}"
    assert i.returncode == q.returncode, \
        f"exit status {i.returncode} != {q.returncode} for {args} ({oracle}); " \
        f"instar stderr: {i.stderr!r} qemu stderr: {q.stderr!r}"
    if check_stderr:
        qs = q.stderr.decode(errors="replace")
        for argv0 in ("/opt/qemu-oracle/root/usr/bin/qemu-img", oracle.path):
            qs = qs.replace(argv0, "ARGV0")
        qs = qs.replace("qemu-img:", "PROG:")
        is_ = i.stderr.decode(errors="replace").replace(str(INSTAR), "ARGV0")
        is_ = is_.replace("instar:", "PROG:").replace("Try 'instar ", "Try 'qemu-img ")
        assert is_ == qs, f"stderr differs for {args} ({oracle})"
    return q, i


def assert_info_same(oracle, cwd, name, extra=(), instar_args=(), chain=False):
    """info in both output modes."""
    base = ["info", *extra]
    if chain:
        base.append("--backing-chain")
    assert_same(oracle, [*base, name], cwd, instar_args)
    assert_same(oracle, [*base, "--output=json", name], cwd, instar_args)
