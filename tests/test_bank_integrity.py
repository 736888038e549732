"""Bank integrity (issue 9): content hashes and `clusterprobe verify`, "reused" vs "wrote", file
modes, a full disk and a read-only output folder: a correct bank or a clear error, never a lie."""

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


# -- verify -------------------------------------------------------------------------------------
@pytest.fixture
def bank(two_checkpoints, tmp_path):
    return plain_bank(two_checkpoints[0], tmp_path / "bank")


def test_verify_checks_content_hashes_recorded_at_finalize(bank, two_checkpoints):
    recorded = bank.meta["sha256"]
    assert sorted(recorded) == ["H.npy", "Z.npy", "labels.npy"]
    from clusterprobe.io import sha256_file

    assert recorded["H.npy"] == sha256_file(bank.path / "H.npy")
    assert "content matches the SHA-256 recorded for 3 files" in bank.verify(content=True)[-1]
    with open(bank.path / "H.npy", "r+b") as handle:  # one flipped byte: same size, same header
        handle.seek(-5, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-5, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert "shapes, dtypes and sizes match" in FeatureBank.open(bank.path).verify()[0]
    with pytest.raises(FeatureBankError, match=r"content of H.npy differs from the SHA-256.*--overwrite"):
        FeatureBank.open(bank.path).verify(content=True)
    result = runner.invoke(app, ["verify", str(bank.path)])
    assert result.exit_code == 1 and "content of H.npy differs" in result.output
    assert runner.invoke(app, ["verify", str(bank.path), "--quick"]).exit_code == 0


def test_verify_of_a_bank_without_recorded_hashes_says_so(bank):
    meta = json.loads((bank.path / "meta.json").read_text())
    del meta["sha256"]
    (bank.path / "meta.json").write_text(json.dumps(meta))
    notes = FeatureBank.open(bank.path).verify(content=True)
    assert "content not checked: this bank has no SHA-256 hashes recorded" in notes[-1]
    result = runner.invoke(app, ["verify", str(bank.path)])
    assert result.exit_code == 0 and "no SHA-256 hashes recorded" in result.output


def test_cli_extract_says_reused_when_it_reused(two_checkpoints, tmp_path):
    args = ["extract", str(two_checkpoints[0]), "--layers", "H", "--out", str(tmp_path / "b")]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0 and "wrote 450 samples" in first.output
    assert second.exit_code == 0 and f"reused the bank at {tmp_path / 'b'}" in second.output
    assert "wrote" not in second.output


# -- file modes ---------------------------------------------------------------------------------
def test_bank_files_follow_the_umask(two_checkpoints, tmp_path):
    old = os.umask(0o027)
    try:
        bank = plain_bank(two_checkpoints[0], tmp_path / "bank")
    finally:
        os.umask(old)
    assert mode(bank.path) == 0o750
    assert {p.name: mode(p) for p in bank.path.iterdir()} == {
        "H.npy": 0o640, "Z.npy": 0o640, "labels.npy": 0o640, "meta.json": 0o640}


# -- disk space ---------------------------------------------------------------------------------
def test_a_full_disk_is_a_clear_error_before_any_row_is_written(two_checkpoints, tmp_path, monkeypatch):
    """Issue 9, item 6: a sparse memory map on a full disk died of SIGBUS (exit 135), silently."""
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    monkeypatch.setattr("clusterprobe.bank.free_bytes", lambda path: 10_000_000)
    out = tmp_path / "bank"
    needed = (128 + 450 * 64 * 4) + (128 + 450 * 32 * 4) + (128 + 450 * 8)
    with pytest.raises(FeatureBankError, match=rf"disk space for the feature bank at {out}: it needs "
                                               rf"{needed} bytes \(172.6 KiB\) and 10000000 bytes \(9.5 MiB\) are free.*--out"):
        plain_bank(two_checkpoints[0], out)
    assert not out.exists() and not out.with_name("bank.partial").exists()


def test_too_little_free_space_is_refused_before_creating_files(two_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr("clusterprobe.bank.free_bytes", lambda path: 1000)
    out = tmp_path / "bank"
    with pytest.raises(FeatureBankError, match=r"needs 176784 bytes \(172.6 KiB\) and 1000 bytes are free"):
        plain_bank(two_checkpoints[0], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt1", "ckpt2"]


def test_layer_files_are_preallocated_not_sparse(tmp_path):
    from clusterprobe.bank import BankWriter

    writer = BankWriter(tmp_path / "big", n=4096, dims={"H": 512}, has_labels=False,
                        has_coarse_labels=False, fingerprint="f")
    h = writer.partial / "H.npy"
    assert h.stat().st_blocks * 512 >= h.stat().st_size  # blocks reserved for every byte


# -- read-only output ---------------------------------------------------------------------------
def test_a_read_only_output_folder_is_a_clear_error(two_checkpoints, tmp_path, monkeypatch):
    target = read_only_folder(tmp_path / "readonly", monkeypatch)
    with pytest.raises(OutputPathError, match=rf"Cannot write the feature bank {target / 'bank'}: "
                                              rf"{target} is not writable \(Read-only file system\).*--out"):
        plain_bank(two_checkpoints[0], target / "bank")
    result = runner.invoke(app, ["extract", str(two_checkpoints[0]), "--out", str(target / "bank")])
    assert result.exit_code == 1 and "is not writable" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_chmod_read_only_folder_is_a_clear_error(two_checkpoints, tmp_path):
    target = tmp_path / "readonly"
    target.mkdir()
    target.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match=rf"{target} is not writable \(Permission denied\)"):
            plain_bank(two_checkpoints[0], target / "bank")
    finally:
        target.chmod(0o755)


def test_a_finished_bank_in_a_read_only_folder_is_still_reused(bank, two_checkpoints, monkeypatch):
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    again = plain_bank(two_checkpoints[0], bank.path)
    assert again.reused and again.n == 450


def test_cli_turns_a_remaining_permission_or_full_disk_error_into_one_line(tmp_path):
    import typer

    from cli.common import friendly_errors

    app_ = typer.Typer()

    @app_.command()
    @friendly_errors
    def fail(code: int) -> None:
        raise OSError(code, os.strerror(code), str(tmp_path / "x.csv"))

    @app_.command()
    def other() -> None:
        pass

    for code, text in ((errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
                       (errno.ENOSPC, "no space left on the device")):
        result = runner.invoke(app_, ["fail", str(code)])
        assert result.exit_code == 1 and f"{text} at {tmp_path / 'x.csv'}" in result.output
        assert "Traceback" not in result.output
    result = runner.invoke(app_, ["fail", str(errno.EIO)])  # not a user's problem: not hidden
    assert result.exit_code == 1 and isinstance(result.exception, OSError)
