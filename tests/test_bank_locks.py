"""Locks (issue 9, item 1): two writers of one bank, run or report folder never mix; a killed
holder never blocks the next process. Real child processes, real file locks."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from clusterprobe import FeatureBank, save_checkpoint
from clusterprobe.data import load_dataset
from clusterprobe.errors import FeatureBankError, LockedError, OutputPathError, RunDirectoryError
from clusterprobe.extract import extract_features
from clusterprobe.io import exclusive_lock, lock_file_of, read_lock_holder

from bank_processes import (EXTRACT_SCRIPT, HOLD_SCRIPT, child_env, hold_lock, kill, outcome, plain_bank,  # noqa: F401
                             read_only_folder, start_extraction, two_checkpoints)
from conftest import REPO, tiny_model

runner = CliRunner()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- concurrency --------------------------------------------------------------------------------
def test_two_processes_with_different_checkpoints_never_mix_one_bank(two_checkpoints, tmp_path):
    """Issue 9, item 1: the bank's meta.json named checkpoint A while its rows were B's."""
    out, go = tmp_path / "shared" / "bank", tmp_path / "go"
    children = [start_extraction(ckpt, out, go) for ckpt in two_checkpoints]
    go.touch()
    results = [outcome(child) for child in children]
    assert any(result["ok"] for result in results), results
    for result in results:  # the loser is refused by name, not left to corrupt the winner
        if not result["ok"]:
            assert result["error"] == "LockedError" and str(out) in result["message"]
            assert "for a different request" in result["message"]
            assert any(f"process {other['pid']}" in result["message"] for other in results if other["ok"])
    bank = FeatureBank.open(out)
    made_from = [p for p in two_checkpoints if bank.meta["checkpoint"]["path"] == str(p.resolve())]
    assert len(made_from) == 1, bank.meta["checkpoint"]
    reference = plain_bank(made_from[0], tmp_path / "reference")
    assert bank.meta["checkpoint"]["sha256"] == reference.meta["checkpoint"]["sha256"]
    for layer in ("H", "Z"):
        np.testing.assert_array_equal(bank[layer], reference[layer])
    assert not out.with_name("bank.partial").exists() and not lock_file_of(out).exists()


def test_two_identical_extractions_write_once_and_the_other_reuses(two_checkpoints, tmp_path):
    """Issue 9, item 1: the same race with identical requests ended in FileNotFoundError."""
    out, go = tmp_path / "bank", tmp_path / "go"
    children = [start_extraction(two_checkpoints[0], out, go) for _ in range(2)]
    go.touch()
    results = [outcome(child) for child in children]
    assert all(result["ok"] for result in results), results
    assert sorted(result["reused"] for result in results) == [False, True]
    reference = plain_bank(two_checkpoints[0], tmp_path / "reference")
    np.testing.assert_array_equal(FeatureBank.open(out)["H"], reference["H"])


def test_a_writer_of_another_request_is_refused_naming_the_process(two_checkpoints, tmp_path):
    out = tmp_path / "bank"
    holder = hold_lock(out, {"request": "some other bank"})
    try:
        assert read_lock_holder(out)["pid"] == holder.pid
        with pytest.raises(LockedError, match=rf"bank {out} is being written by process {holder.pid}.*"
                                              r"different request.*--out"):
            plain_bank(two_checkpoints[0], out)
        with pytest.raises(LockedError, match=f"process {holder.pid}"):  # FeatureBank.write too
            FeatureBank.write(out, {"H": np.zeros((3, 2), np.float32)})
        assert not out.exists() and not out.with_name("bank.partial").exists()
    finally:
        kill(holder)


def test_a_killed_writer_does_not_block_and_its_work_is_resumed(two_checkpoints, tmp_path):
    out, go = tmp_path / "bank", tmp_path / "go"
    go.touch()
    child = start_extraction(two_checkpoints[0], out, go)
    done = out.with_name("bank.partial") / "done"
    deadline = time.monotonic() + 120
    while not (done.exists() and len(list(done.iterdir())) >= 2):
        assert time.monotonic() < deadline and child.poll() is None, "the child finished too soon"
        time.sleep(0.02)
    kill(child)
    assert lock_file_of(out).exists()  # left behind by SIGKILL, but no longer locked
    start = time.monotonic()
    bank = plain_bank(two_checkpoints[0], out, overwrite=True, chunk_batches=1)  # as the child did
    assert time.monotonic() - start < 60 and not bank.reused
    reference = plain_bank(two_checkpoints[0], tmp_path / "reference")
    np.testing.assert_array_equal(bank["H"], reference["H"])
    np.testing.assert_array_equal(bank["Z"], reference["Z"])


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.distributed
def test_a_lock_refused_to_rank_0_stops_every_rank_with_a_clear_error(two_checkpoints, tmp_path):
    """Several ranks write one bank and only rank 0 locks it. When the lock was refused, rank 0
    said why but rank 1 died in its next all_reduce with gloo's "Connection closed by peer"
    traceback (with NCCL it waited for the process group's 30-minute timeout)."""
    out = tmp_path / "bank"
    holder = hold_lock(out, {"request": "some other bank"})
    port = _free_port()
    try:
        ranks = [subprocess.Popen(
            [sys.executable, "-m", "cli.main", "extract", str(two_checkpoints[0]), "--out", str(out),
             "--layers", "H", "--device", "cpu"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**child_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                            "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                            "COLUMNS": "400"}) for rank in (0, 1)]
        start = time.monotonic()
        texts = []
        for process in ranks:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 1, stderr
            assert "Traceback" not in stderr and "Connection closed" not in stderr, stderr
            texts.append(" ".join(stderr.split()))
        assert time.monotonic() - start < 90
    finally:
        kill(holder)
    assert f"error: The feature bank {out} is being written by process {holder.pid}" in texts[0]
    assert "for a different request" in texts[0]
    assert (f"error: Rank 0 could not take the lock of the feature bank {out}; rank 1 stops with it "
            "(rank 0's error says why and what to do).") in texts[1]
    assert not out.exists() and not out.with_name("bank.partial").exists()


def test_exclusive_lock_waits_refuses_and_survives_sigkill(tmp_path):
    target = tmp_path / "folder"
    holder = hold_lock(target, {"request": "x"})
    with pytest.raises(LockedError, match=rf"report {target} is in use by process {holder.pid}") as caught:
        with exclusive_lock(target, what=f"the report {target}"):
            pass
    assert caught.value.holder["request"] == "x"
    start = time.monotonic()
    with pytest.raises(LockedError):
        with exclusive_lock(target, wait=0.5):
            pass
    assert time.monotonic() - start >= 0.5
    kill(holder)
    with exclusive_lock(target, wait=False) as path:
        assert read_lock_holder(target)["pid"] == os.getpid() and path == lock_file_of(target)
    assert not lock_file_of(target).exists()  # removed on release


def test_a_second_train_into_the_same_run_directory_is_refused(tmp_path):
    from clusterprobe.trainer import TrainConfig, train

    out = tmp_path / "run"
    holder = hold_lock(out, {})
    try:
        config = TrainConfig(method="resa", dataset="digits", epochs=1, batch_size=32, width=4,
                             projector_dims=[32, 32, 16], limit_train=64, out=str(out), progress=False)
        with pytest.raises(RunDirectoryError, match=rf"process {holder.pid}.*run directory {out}.*--resume"):
            train(config)
        assert not out.exists()
    finally:
        kill(holder)




def test_train_into_a_read_only_folder_is_a_clear_error(tmp_path, monkeypatch):
    from clusterprobe.trainer import TrainConfig, train

    target = read_only_folder(tmp_path / "readonly", monkeypatch)
    config = TrainConfig(method="resa", dataset="digits", epochs=1, batch_size=32, width=4,
                         projector_dims=[32, 32, 16], limit_train=64, out=str(target / "run"), progress=False)
    with pytest.raises(RunDirectoryError, match=rf"Cannot write the run directory {target / 'run'}: {target} "
                                                r"is not writable \(Read-only file system\).*--out"):
        train(config)
