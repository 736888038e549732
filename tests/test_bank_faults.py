"""Damaged bank files are refused by name when a bank is opened, never read as features."""

import os
import shutil

import numpy as np
import pytest

from clusterprobe import FeatureBank
from clusterprobe.errors import FeatureBankError


@pytest.fixture
def bank(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    X = rng.normal(size=(300, 8)).astype("float32")
    return FeatureBank.write(tmp_path / "bank", features={"H": X, "Z": X[:, :4]}, labels=y)


def damaged(bank, tmp_path, damage):
    copy = tmp_path / f"copy{len(list(tmp_path.glob('copy*')))}"
    shutil.copytree(bank.path, copy)
    damage(copy)
    with pytest.raises(FeatureBankError) as error:
        FeatureBank.open(copy)
    assert "--overwrite" in str(error.value)
    return str(error.value)


def test_intact_bank_opens(bank):
    assert FeatureBank.open(bank.path).n == 300


def test_truncated_layer_file(bank, tmp_path):
    def truncate(path):
        with open(path / "H.npy", "r+b") as handle:
            handle.truncate(os.path.getsize(path / "H.npy") - 100)
    assert "H.npy has 9628 bytes where its header implies 9728" in damaged(bank, tmp_path, truncate)


def test_zero_byte_layer_file(bank, tmp_path):
    assert "Z.npy has no readable .npy header (0 bytes" in damaged(
        bank, tmp_path, lambda path: open(path / "Z.npy", "wb").close())


def test_missing_layer_file(bank, tmp_path):
    assert "Z.npy is missing" in damaged(bank, tmp_path, lambda path: (path / "Z.npy").unlink())


def test_swapped_dtype_or_shape(bank, tmp_path):
    message = damaged(bank, tmp_path, lambda path: np.save(path / "labels.npy", np.zeros(300, np.float32)))
    assert "labels.npy holds a float32 array of shape (300,), not int64 (300,)" in message
    message = damaged(bank, tmp_path, lambda path: np.save(path / "H.npy", np.zeros((299, 8), np.float32)))
    assert "not float32 (300, 8)" in message


def test_truncated_meta_json(bank, tmp_path):
    def truncate(path):
        text = (path / "meta.json").read_text()
        (path / "meta.json").write_text(text[:50])
    assert "meta.json is not valid JSON" in damaged(bank, tmp_path, truncate)


def test_writing_a_bank_below_a_file_names_the_file(tmp_path):
    """FeatureBank.write(x.txt/b) with x.txt a file: OutputPathError saying x.txt is a file, not
    'x.txt is not writable (File exists)'."""
    from clusterprobe.errors import OutputPathError

    (tmp_path / "x.txt").write_text("notes\n")
    with pytest.raises(OutputPathError, match="x.txt is a file, not a folder") as caught:
        FeatureBank.write(tmp_path / "x.txt" / "b", features={"H": np.zeros((3, 2), np.float32)})
    assert "not writable" not in str(caught.value) and "File exists" not in str(caught.value)


def test_overwrite_never_deletes_a_folder_or_file_that_is_not_a_bank(tmp_path):
    """An --out typo that names someone's data folder must not be emptied by --overwrite."""
    from clusterprobe.errors import OutputPathError

    X, y = np.ones((4, 2), dtype=np.float32), np.arange(4)
    data = tmp_path / "my_data"
    (data / "images").mkdir(parents=True)
    (data / "notes.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match=r"my_data is not a feature bank \(it holds images, notes.txt\)"):
        FeatureBank.write(data, features={"H": X}, labels=y, overwrite=True)
    assert (data / "notes.txt").read_text() == "keep me" and (data / "images").is_dir()
    a_file = tmp_path / "table.csv"
    a_file.write_text("a,b\n")
    with pytest.raises(OutputPathError, match="table.csv is a file, not a feature bank"):
        FeatureBank.write(a_file, features={"H": X}, labels=y, overwrite=True)
    assert a_file.read_text() == "a,b\n"
    # a bank (or an empty folder) is still replaced
    bank = FeatureBank.write(tmp_path / "bank", features={"H": X}, labels=y)
    (tmp_path / "empty").mkdir()
    for target in (bank.path, tmp_path / "empty"):
        again = FeatureBank.write(target, features={"H": 2 * X}, labels=y, overwrite=True)
        np.testing.assert_array_equal(np.asarray(again["H"]), 2 * X)
