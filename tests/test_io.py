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


def test_overwriting_keeps_the_old_mode(tmp_path, umask_022):
    target = tmp_path / "report.html"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write(target, lambda f: f.write("new"), mode="w")
    assert target.read_text() == "new" and mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left
