"""Hostile references: files named inside an image are opened only under
the allowed directories, never through json:/protocol names, never in a
loop, never deeper than the limit.  No byte of a refused file may appear
in any output."""
import os

import pytest

from conftest import INSTAR, assert_same, instar, qemu_img

SECRET = b"SECRET-7f3a9c-do-not-leak\n" * 100


@pytest.fixture
def layout(tmp_path):
    """tmp/img (the allowed directory) and tmp/outside/secret."""
    img = tmp_path / "img"
    out = tmp_path / "outside"
    img.mkdir()
    out.mkdir()
    (out / "secret").write_bytes(SECRET)
    return img, out


def overlay(img, name, backing, fmt="raw"):
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", fmt, name, "1M", cwd=img)


def assert_refused_text(r, *words):
    err = r.stderr.decode()
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    assert b"SECRET" not in r.stdout and b"SECRET" not in r.stderr


def assert_refused(r, *words):
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    assert b"SECRET" not in r.stdout and b"SECRET" not in r.stderr


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_backing_outside_is_refused(layout, kind):
    img, out = layout
    if kind == "absolute":
        ref = str(out / "secret")
    elif kind == "dotdot":
        ref = "../outside/secret"
    else:
        os.symlink(out / "secret", img / "link.raw")
        ref = "link.raw"
    overlay(img, "top.qcow2", ref)
    r = instar("info", "--backing-chain", "top.qcow2", cwd=img)
    assert_refused(r, ref, "outside the allowed directories")
    r = instar("info", "--backing-chain", "--output=json", "top.qcow2", cwd=img)
    assert_refused(r, ref)


def test_info_without_chain_names_but_does_not_open(layout, oracle):
    """Plain info only prints the stored name, as qemu-img does."""
    img, out = layout
    overlay(img, "top.qcow2", str(out / "secret"))
    assert_same(oracle, ["info", "top.qcow2"], img)
    assert_same(oracle, ["info", "--output=json", "top.qcow2"], img)


@pytest.mark.parametrize("ref", [
    'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}',
    "nbd://127.0.0.1:10809/x",
    "file:/etc/passwd",
    "http://127.0.0.1/x",
])
def test_protocol_and_json_names_refused(layout, ref):
    img, _ = layout
    overlay(img, "top.qcow2", ref)
    r = instar("info", "--backing-chain", "top.qcow2", cwd=img)
    assert_refused(r, "json: and protocol names are not allowed")


def test_allow_path_admits_dir_but_unknown_bytes_still_not_raw(layout):
    img, out = layout
    overlay(img, "top.qcow2", str(out / "secret"))
    r = instar("info", "--backing-chain", "--allow-path", str(out), "top.qcow2", cwd=img)
    assert_refused(r, "no MBR or GPT")


def test_allow_path_legit_chain_matches_qemu(layout, oracle):
    img, out = layout
    qemu_img("create", "-q", "-f", "qcow2", str(out / "base.qcow2"), "4M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "../outside/base.qcow2", "-F", "qcow2",
             "top.qcow2", "4M", cwd=img)
    r = instar("info", "--backing-chain", "top.qcow2", cwd=img)
    assert r.returncode == 1
    assert_same(oracle, ["info", "--backing-chain", "top.qcow2"], img,
                instar_args=["--allow-path", str(out)])
    assert_same(oracle, ["info", "--backing-chain", "--output=json", "top.qcow2"], img,
                instar_args=["--allow-path", str(out)])


def test_self_loop(layout):
    img, _ = layout
    overlay(img, "a.qcow2", "./a.qcow2", "qcow2")
    r = instar("info", "--backing-chain", "a.qcow2", cwd=img)
    assert_refused(r, "loop")


@pytest.mark.parametrize("n", [2, 3])
def test_loops(layout, n):
    img, _ = layout
    names = [f"l{i}.qcow2" for i in range(n)]
    for i, name in enumerate(names):
        overlay(img, name, names[(i + 1) % n], "qcow2")
    r = instar("info", "--backing-chain", names[0], cwd=img)
    assert_refused(r, "loop")


def make_chain(img, depth):
    qemu_img("create", "-q", "-f", "qcow2", "c0.qcow2", "1M", cwd=img)
    for i in range(1, depth):
        qemu_img("create", "-q", "-f", "qcow2", "-b", f"c{i-1}.qcow2", "-F", "qcow2",
                 f"c{i}.qcow2", "1M", cwd=img)
    return f"c{depth-1}.qcow2"


def test_depth_limit(layout, oracle):
    img, _ = layout
    top = make_chain(img, 17)
    r = instar("info", "--backing-chain", top, cwd=img)
    assert_refused(r, "deeper than the limit")
    assert_same(oracle, ["info", "--backing-chain", top], img, instar_args=["--max-depth", "20"])


def test_chain_at_limit_matches_qemu(layout, oracle):
    img, _ = layout
    top = make_chain(img, 16)
    assert_same(oracle, ["info", "--backing-chain", top], img)
    assert_same(oracle, ["info", "--backing-chain", "--output=json", top], img)


def test_data_file_outside_refused(layout):
    """Reading a qcow2 opens its data file, through the policy; info only
    names it (as qemu-img since the CVE-2024-4467 fix)."""
    img, out = layout
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={out / 'data.raw'}",
             "d.qcow2", "1M", cwd=img)
    (out / "data.raw").write_bytes(SECRET)
    for args in (["map", "--output=json", "d.qcow2"], ["compare", "d.qcow2", "d.qcow2"]):
        r = instar(*args, cwd=img)
        assert r.returncode in (1, 2), r.stderr
        assert_refused_text(r, "data file", "outside the allowed directories")
    r = instar("info", "d.qcow2", cwd=img)
    assert r.returncode == 0 and b"SECRET" not in r.stdout


def test_missing_backing_in_chain(layout, oracle):
    img, _ = layout
    overlay(img, "top.qcow2", "gone.qcow2", "qcow2")
    r = instar("info", "--backing-chain", "top.qcow2", cwd=img)
    assert r.returncode == 1
    assert b"gone.qcow2" in r.stderr
