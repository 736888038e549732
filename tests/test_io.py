"""Atomic writes leave files with the modes open() would: umask for new files, old mode kept."""

import os
import stat

import pytest

from clusterprobe.io import atomic_write, atomic_write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_follow_the_umask(tmp_path, umask_022):
    atomic_write(tmp_path / "a.txt", lambda f: f.write("x"), mode="w")
    atomic_write_json(tmp_path / "meta.json", {"a": 1})
    assert mode(tmp_path / "a.txt") == 0o644 and mode(tmp_path / "meta.json") == 0o644
    os.umask(0o077)
    atomic_write(tmp_path / "private.txt", lambda f: f.write("x"), mode="w")
    assert mode(tmp_path / "private.txt") == 0o600


def test_the_umask_is_read_without_being_changed(tmp_path, umask_022, monkeypatch):
    """Reading the umask with os.umask sets it for a moment; at 0, a file another thread created
    then would be world-writable. On Linux it is read from /proc instead; elsewhere the moment's
    value is 077 (private), never 0."""
    import clusterprobe.io as cio

    calls = []
    real_umask = os.umask
    monkeypatch.setattr(cio.os, "umask", lambda value: calls.append(value) or real_umask(value))
    atomic_write(tmp_path / "a.txt", lambda f: f.write("x"), mode="w")
    assert mode(tmp_path / "a.txt") == 0o644
    assert calls == [] if os.path.exists("/proc/self/status") else 0 not in calls
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (_ for _ in ()).throw(OSError("no /proc"))
                        if str(p) == "/proc/self/status" else real_open(p, *a, **k))
    atomic_write(tmp_path / "b.txt", lambda f: f.write("x"), mode="w")
    assert mode(tmp_path / "b.txt") == 0o644 and calls[0] == 0o077 and real_umask(0o022) == 0o022


def test_overwriting_keeps_the_old_mode(tmp_path, umask_022):
    target = tmp_path / "report.html"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write(target, lambda f: f.write("new"), mode="w")
    assert target.read_text() == "new" and mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


def test_preallocate_where_the_file_system_cannot_reserve(tmp_path, monkeypatch):
    """Without posix_fallocate (macOS) or where it is unsupported the file stays as it is (the
    caller's free-space check is the guard); a full disk is still an error."""
    import errno

    import numpy as np

    from clusterprobe.bank import BankWriter
    from clusterprobe.io import preallocate

    path = tmp_path / "sparse.bin"
    with open(path, "wb") as handle:
        handle.truncate(1 << 20)
    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    preallocate(path)
    assert path.stat().st_size == 1 << 20
    writer = BankWriter(tmp_path / "bank", n=8, dims={"H": 4}, has_labels=True, has_coarse_labels=False,
                        fingerprint="f")
    writer.write_rows(0, {"H": np.ones((8, 4), np.float32)}, labels=np.arange(8))
    assert (writer.finalize({})["H"] == 1).all()
    for code, raises in ((errno.EOPNOTSUPP, False), (errno.EINVAL, False), (errno.ENOSPC, True)):
        def refuse(fd, offset, length, code=code):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "posix_fallocate", refuse, raising=False)
        if raises:
            with pytest.raises(OSError) as caught:
                preallocate(path)
            assert caught.value.errno == errno.ENOSPC
        else:
            preallocate(path)
