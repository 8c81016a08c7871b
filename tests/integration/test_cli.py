"""Command-line behaviour that scripts see: usage errors, exit codes,
messages, and presenting as qemu-img through a link."""
import os

import pytest

from conftest import INSTAR, REPO, assert_same, run, qemu_img

QEMU_LINK = INSTAR.parent / "qemu-img"
ORACLE_ROOT_BIN = "/opt/qemu-oracle/root/usr/bin/qemu-img"


def both(oracle, args, cwd):
    q = run([oracle.path, *args], cwd=cwd)
    i = run([QEMU_LINK, *args], cwd=cwd, env={"INSTAR_QEMU_VERSION": oracle.version})
    return q, i


def norm(err, argv0):
    return err.decode().replace(argv0, "ARGV0")


@pytest.mark.parametrize("args", [
    [],
    ["nosuchcommand"],
    ["info"],
    ["info", "a", "b"],
    ["info", "--foo", "x"],
    ["info", "nonexistent.img"],
    ["info", "--output=xml", "x.raw"],
    ["info", "-f", "bogus", "x.raw"],
    ["info", "-f", "qcow2", "x.raw"],
    ["info", "-f"],
])
def test_usage_errors_match(oracle, tmp_path, args):
    (tmp_path / "x.raw").write_bytes(b"\0" * 1024)
    q, i = both(oracle, args, tmp_path)
    assert i.returncode == q.returncode
    assert i.stdout == q.stdout
    qerr = norm(q.stderr, ORACLE_ROOT_BIN if oracle.major >= 8 else oracle.path)
    ierr = norm(i.stderr, str(QEMU_LINK))
    assert ierr == qerr


def test_version_presents_as_qemu_img(oracle):
    i = run([QEMU_LINK, "--version"], env={"INSTAR_QEMU_VERSION": oracle.version})
    assert i.returncode == 0
    first = i.stdout.decode().splitlines()[0]
    assert first.startswith(f"qemu-img version {oracle.version}.")
    assert "instar" in first


def test_version_as_instar():
    i = run([INSTAR, "--version"])
    assert i.returncode == 0
    assert i.stdout.decode().startswith("instar version ")


def test_messages_use_program_name(tmp_path):
    i = run([INSTAR, "info", "missing.img"], cwd=tmp_path)
    assert i.returncode == 1
    assert i.stderr.decode().startswith("instar: Could not open 'missing.img'")
    i = run([QEMU_LINK, "info", "missing.img"], cwd=tmp_path)
    assert i.stderr.decode().startswith("qemu-img: Could not open 'missing.img'")


def test_help_mentions_no_sandbox_is_for_debugging():
    i = run([INSTAR, "info", "--help"])
    assert i.returncode == 0
    text = i.stdout.decode()
    assert "--no-sandbox" in text and "DEBUGGING ONLY" in text


def test_image_opts_and_json_names_refused(tmp_path):
    qemu_img("create", "-q", "-f", "qcow2", "a.qcow2", "1M", cwd=tmp_path)
    i = run([INSTAR, "info", "--image-opts", "driver=qcow2,file.filename=a.qcow2"], cwd=tmp_path)
    assert i.returncode == 1 and b"--image-opts" in i.stderr
    i = run([INSTAR, "info", 'json:{"file":{"filename":"a.qcow2"}}'], cwd=tmp_path)
    assert i.returncode == 1 and b"json:" in i.stderr
    assert i.stdout == b""


def test_profile_selection(tmp_path):
    """--qemu-version beats INSTAR_QEMU_VERSION beats the config file."""
    mbr = bytearray(1 << 20)
    mbr[446 + 4] = 0x83
    mbr[446 + 8:446 + 12] = (1).to_bytes(4, "little")
    mbr[446 + 12:446 + 16] = (100).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    (tmp_path / "d.img").write_bytes(bytes(mbr))
    conf = tmp_path / "instar.conf"
    conf.write_text("# test config\nqemu-version = 7.2\n")
    base = {"INSTAR_CONFIG": str(conf)}
    r = run([INSTAR, "info", "d.img"], cwd=tmp_path, env=base)
    assert r.returncode == 0 and b"Child node" not in r.stdout
    r = run([INSTAR, "info", "d.img"], cwd=tmp_path, env={**base, "INSTAR_QEMU_VERSION": "10.0"})
    assert b"Child node '/file'" in r.stdout
    r = run([INSTAR, "info", "--qemu-version", "7.2", "d.img"], cwd=tmp_path,
            env={**base, "INSTAR_QEMU_VERSION": "10.0"})
    assert b"Child node" not in r.stdout
    # Without any setting, the newest layout.
    r = run([INSTAR, "info", "d.img"], cwd=tmp_path, env={"INSTAR_CONFIG": "/nonexistent"})
    assert b"Child node '/file'" in r.stdout
    conf.write_text("qemu-version = banana\n")
    r = run([INSTAR, "info", "d.img"], cwd=tmp_path, env=base)
    assert r.returncode == 1 and b"instar.conf:1" in r.stderr


def test_startup_does_not_run_qemu_img(tmp_path):
    """The profile comes from settings, never from running qemu-img."""
    fake = tmp_path / "bin"
    fake.mkdir()
    marker = tmp_path / "ran"
    (fake / "qemu-img").write_text(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(fake / "qemu-img", 0o755)
    r = run([INSTAR, "--version"], env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert r.returncode == 0
    assert not marker.exists()


def test_ignore_quirks_reports_exact_sizes(tmp_path):
    """--ignore-quirks: the file's length instead of allocated blocks and
    sector rounding, and one decimal instead of %0.3g."""
    data = bytearray(197120 - 100)
    data[446 + 4] = 0x83
    data[446 + 8:446 + 12] = (1).to_bytes(4, "little")
    data[446 + 12:446 + 16] = (100).to_bytes(4, "little")
    data[510:512] = b"\x55\xaa"
    (tmp_path / "d.img").write_bytes(bytes(data))
    r = run([INSTAR, "info", "--ignore-quirks", "d.img"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "disk size: 192.4 KiB\n" in out
    assert "file length: 192.4 KiB (197020 bytes)\n" in out
    r = run([INSTAR, "info", "d.img"], cwd=tmp_path)
    assert "file length: 192 KiB (197120 bytes)\n" in r.stdout.decode()


def test_extra_detail_adds_vdi_details(tmp_path):
    qemu_img("create", "-q", "-f", "vdi", "d.vdi", "10M", cwd=tmp_path)
    plain = run([INSTAR, "info", "--output=json", "d.vdi"], cwd=tmp_path)
    extra = run([INSTAR, "info", "--extra-detail", "--output=json", "d.vdi"], cwd=tmp_path)
    assert plain.returncode == 0 and extra.returncode == 0
    assert b"\"type\": \"vdi\"" not in plain.stdout
    assert b'"type": "vdi"' in extra.stdout and b"blocks-in-image" in extra.stdout


@pytest.mark.parametrize("args", [["info", ""], ["map", ""], ["compare", "", "x"]])
def test_empty_file_name(oracle, tmp_path, args):
    """qemu's file driver refuses an empty name before trying to open it."""
    assert_same(oracle, args, tmp_path)
