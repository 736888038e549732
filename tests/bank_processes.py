"""Shared by the bank fault tests: child processes that extract or hold a lock, and fixtures."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clusterprobe import FeatureBank, save_checkpoint
from clusterprobe.data import load_dataset
from clusterprobe.extract import extract_features

from conftest import REPO, tiny_model

# A child process: extract CKPT into OUT on the digits, slowly (2 ms an image, chunks of 50
# images) so that two of them overlap, after waiting for the file GO; prints a JSON outcome.
EXTRACT_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[4])
    from clusterprobe.data import load_dataset
    from clusterprobe.errors import ClusterprobeError
    from clusterprobe.extract import extract_features
    ckpt, out, go = sys.argv[1:4]
    data = load_dataset("digits", split="test")
    base = type(data)
    class Slow(base):
        def __getitem__(self, index):
            time.sleep(0.002)
            return base.__getitem__(self, index)
    data.__class__ = Slow
    while not os.path.exists(go):
        time.sleep(0.01)
    try:
        bank = extract_features(ckpt, data, out, layers=["H", "Z"], batch_size=50, chunk_batches=1,
                                overwrite=True, progress=False)
        print(json.dumps({"ok": True, "reused": bank.reused, "pid": os.getpid()}))
    except ClusterprobeError as error:
        print(json.dumps({"ok": False, "error": type(error).__name__, "message": str(error),
                          "pid": os.getpid()}))
""")

# A child process that holds a lock with the given info and sleeps until killed.
HOLD_SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[3])
    from clusterprobe.io import exclusive_lock
    with exclusive_lock(sys.argv[1], info=json.loads(sys.argv[2])):
        print("locked", flush=True)
        time.sleep(600)
""")


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def start_extraction(ckpt: Path, out: Path, go: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", EXTRACT_SCRIPT, str(ckpt), str(out), str(go), str(REPO)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def outcome(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def hold_lock(target: Path, info: dict) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(target), json.dumps(info), str(REPO)],
                               stdout=subprocess.PIPE, text=True, env=child_env())
    assert process.stdout.readline().strip() == "locked"
    return process


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture
def two_checkpoints(tmp_path):
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"ckpt{seed}" / "model.pt"
        save_checkpoint(path, tiny_model(seed=seed), epoch=seed, method="resa", dataset="digits")
        paths.append(path)
    return paths


def plain_bank(ckpt: Path, out: Path, **kwargs) -> FeatureBank:
    return extract_features(ckpt, load_dataset("digits", split="test"), out, layers=["H", "Z"],
                            batch_size=50, progress=False, **kwargs)


def read_only_folder(target: Path, monkeypatch) -> Path:
    """Make ``target`` and make every write under it fail as on a read-only file system (root
    ignores chmod, so ``os.open`` is patched instead)."""
    target.mkdir()
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(target)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    return target
