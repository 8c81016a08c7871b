"""The worker sandbox: the seccomp filter bites, limits become clear
errors, and unknown bytes are refused."""
import os
import subprocess

from conftest import INSTAR, instar, run


def mbr_disk(path, size=1 << 20):
    data = bytearray(size)
    data[446 + 4] = 0x83
    data[446 + 8:446 + 12] = (1).to_bytes(4, "little")
    data[446 + 12:446 + 16] = (100).to_bytes(4, "little")
    data[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(data))


def test_filter_kills_open(tmp_path):
    mbr_disk(tmp_path / "d.img")
    r = instar("info", "--x-test-sandbox-escape", "d.img", cwd=tmp_path)
    assert r.returncode == 1
    assert b"seccomp" in r.stderr
    assert r.stdout == b""
    assert b"sandbox escape" not in r.stderr


def test_same_run_without_hook_succeeds(tmp_path):
    mbr_disk(tmp_path / "d.img")
    r = instar("info", "d.img", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert b"file format: raw" in r.stdout


def test_no_sandbox_lets_hook_through(tmp_path):
    """Proves the hook really tries open(): without the filter it succeeds."""
    mbr_disk(tmp_path / "d.img")
    r = instar("info", "--no-sandbox", "--x-test-sandbox-escape", "d.img", cwd=tmp_path)
    assert r.returncode == 1
    assert b"sandbox escape: open() succeeded" in r.stderr


def test_memory_limit_is_a_clear_error(tmp_path):
    mbr_disk(tmp_path / "d.img")
    r = instar("info", "--memory-limit", "64K", "d.img", cwd=tmp_path)
    # With a tiny limit the worker cannot even start its job: a clean error.
    if r.returncode != 0:
        assert r.returncode == 1
        assert len(r.stderr.decode().strip().splitlines()) == 1


def test_unknown_bytes_refused_by_default(tmp_path):
    (tmp_path / "t.txt").write_text("just some text\n")
    r = instar("info", "t.txt", cwd=tmp_path)
    assert r.returncode == 1
    assert b"not a recognised disk image" in r.stderr
    r = instar("info", "--unsafe-quirks", "t.txt", cwd=tmp_path)
    assert r.returncode == 0
    assert b"file format: raw" in r.stdout
    r = instar("info", "-f", "raw", "t.txt", cwd=tmp_path)
    assert r.returncode == 0


def test_mbr_and_gpt_are_raw(tmp_path, oracle):
    from conftest import assert_same
    mbr_disk(tmp_path / "mbr.img")
    gpt = bytearray(1 << 20)
    gpt[446 + 4] = 0xEE
    gpt[446 + 8:446 + 12] = (1).to_bytes(4, "little")
    gpt[446 + 12:446 + 16] = (2047).to_bytes(4, "little")
    gpt[510:512] = b"\x55\xaa"
    gpt[512:520] = b"EFI PART"
    gpt[512 + 8:512 + 12] = (0x00010000).to_bytes(4, "little")
    gpt[512 + 12:512 + 16] = (92).to_bytes(4, "little")
    (tmp_path / "gpt.img").write_bytes(bytes(gpt))
    for name in ("mbr.img", "gpt.img"):
        assert_same(oracle, ["info", name], tmp_path)
        assert_same(oracle, ["info", "--output=json", name], tmp_path)


def test_host_never_reads_image_bytes(tmp_path):
    """strace the host: only the worker reads the image descriptor."""
    import shutil
    import pytest
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    mbr_disk(tmp_path / "d.img")
    log = tmp_path / "trace"
    r = subprocess.run(["strace", "-f", "-qq", "-e",
                        "trace=openat,close,read,pread64,preadv,mmap",
                        "-o", str(log), str(INSTAR), "info", "d.img"], cwd=tmp_path,
                       capture_output=True,
                       # LeakSanitizer cannot run under ptrace (sanitizer builds).
                       env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
    assert r.returncode == 0, r.stderr
    lines = log.read_text().splitlines()
    host_pid = lines[0].split()[0]
    image_fd = None
    opened = False
    for ln in lines:
        pid, rest = ln.split(None, 1)
        if pid != host_pid:
            continue
        if rest.startswith("openat(") and '"d.img"' in rest:
            image_fd = rest.rsplit("=", 1)[1].strip()
            opened = True
            continue
        if image_fd is None:
            continue
        if rest.startswith(f"close({image_fd})"):
            image_fd = None
            continue
        assert not rest.startswith((f"read({image_fd},", f"pread64({image_fd},",
                                    f"preadv({image_fd},")), ln
        assert not (rest.startswith("mmap(") and f", {image_fd}, " in rest), ln
    assert opened
