"""Issue 9: bad inputs a user can hand over, each answered by a clear error naming the file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from clusterprobe.data import collate_images, load_dataset
from clusterprobe.errors import DatasetError

runner = CliRunner()


def image_tree(root, sizes=None, per_class=3):
    """root/<a|b>/<i>.jpg, 8x8 RGB unless ``sizes`` maps a file name to another size."""
    sizes = sizes or {}
    for label, color in (("a", 30), ("b", 220)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"{label}/{i}.jpg"
            Image.new("RGB", sizes.get(name, (8, 8)), (color, 2 * i, 255 - color)).save(root / name)
    return root


@pytest.fixture
def rgb_checkpoint(tmp_path):
    """A 3-channel checkpoint (the image-folder data sets are RGB)."""
    from clusterprobe import save_checkpoint

    from conftest import tiny_model

    path = tmp_path / "run" / "checkpoints" / "epoch_0001.pt"
    save_checkpoint(path, tiny_model(in_channels=3), epoch=1, step=1, method="simclr", dataset="imagefolder", run="run")
    return path


def extract(checkpoint, root, out, *extra):
    return runner.invoke(app, ["extract", str(checkpoint), "--dataset", "imagefolder", "--data-root", str(root),
                               "--layers", "H", "--out", str(out), "--batch-size", "4", *extra])


def assert_clean(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())  # undo the console's line wrapping
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_an_empty_class_folder_is_named(tmp_path, rgb_checkpoint):
    root = image_tree(tmp_path / "data")
    (root / "c_empty").mkdir()
    result = extract(rgb_checkpoint, root, tmp_path / "bank")
    assert_clean(result, f"Class folder {root / 'c_empty'} holds no images", "remove the empty folder")
    assert not (tmp_path / "bank").exists()


def test_a_truncated_jpeg_is_named(tmp_path, rgb_checkpoint):
    root = image_tree(tmp_path / "data", sizes={"b/1.jpg": (64, 64)}, per_class=3)
    # a real, noisy JPEG cut in half (a flat one compresses to almost nothing)
    noise = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((64, 64)).save(root / "b" / "1.jpg", quality=95)
    whole = (root / "b" / "1.jpg").read_bytes()
    (root / "b" / "1.jpg").write_bytes(whole[: len(whole) // 2])
    result = extract(rgb_checkpoint, root, tmp_path / "bank", "--image-size", "8")
    assert_clean(result, f"Image {root / 'b' / '1.jpg'} could not be read (OSError", "truncated",
                 "Remove or replace it", "skip_unreadable=True")
    assert not (tmp_path / "bank").exists()


def test_random_bytes_named_jpg_are_named(tmp_path, rgb_checkpoint):
    root = image_tree(tmp_path / "data")
    (root / "a" / "1.jpg").write_bytes(np.random.default_rng(1).bytes(500))
    result = extract(rgb_checkpoint, root, tmp_path / "bank")
    assert_clean(result, f"Image {root / 'a' / '1.jpg'} could not be read (UnidentifiedImageError")


def test_images_of_different_sizes_name_the_file_and_image_size(tmp_path, rgb_checkpoint):
    root = image_tree(tmp_path / "data", sizes={"b/2.jpg": (12, 10)})
    result = extract(rgb_checkpoint, root, tmp_path / "bank")
    assert_clean(result, f"Image {root / 'b' / '2.jpg'} is 12x10 pixels but {root / 'a' / '0.jpg'} is 8x8",
                 "--image-size N")
    # the suggested fix works
    result = extract(rgb_checkpoint, root, tmp_path / "bank", "--image-size", "8")
    assert result.exit_code == 0, result.output
    assert "wrote 6 samples" in result.output


def test_collate_names_the_sizes_it_saw():
    batch = [(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 8, 8), 1), (torch.zeros(3, 10, 12), 0)]
    with pytest.raises(DatasetError, match=r"different sizes \(3x8x8 \(2 images\), 3x10x12 \(1 image\)\).*--image-size N"):
        collate_images(batch)
    images, labels = collate_images(batch[:2])
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]


def test_other_transforms_may_take_images_of_any_size(tmp_path):
    """The size check belongs to the evaluation transform only (training crops to one size)."""
    root = image_tree(tmp_path / "data", sizes={"b/2.jpg": (12, 10)})
    data = load_dataset("imagefolder", root=root, transform=None)
    assert data[5][0].size == (12, 10)
    crop = load_dataset("imagefolder", root=root).with_transform(lambda im: torch.zeros(3, 4, 4))
    assert crop[5][0].shape == (3, 4, 4)


def test_skip_unreadable_leaves_them_out_and_lists_them_in_meta_json(tmp_path, rgb_checkpoint):
    from clusterprobe import extract_features, load_checkpoint

    root = image_tree(tmp_path / "data")
    (root / "a" / "1.jpg").write_bytes(b"not an image at all")
    (root / "b" / "0.jpg").write_bytes((root / "b" / "0.jpg").read_bytes()[:40])
    with pytest.raises(DatasetError, match="could not be read"):
        [load_dataset("imagefolder", root=root)[i] for i in range(6)]
    data = load_dataset("imagefolder", root=root, skip_unreadable=True)
    assert len(data) == 4 and data.targets.tolist() == [0, 0, 1, 1]
    skipped = data.description["skipped_unreadable"]
    assert [s["file"] for s in skipped] == [str(root.resolve() / "a" / "1.jpg"), str(root.resolve() / "b" / "0.jpg")]
    assert skipped[0]["error"].startswith("UnidentifiedImageError") and skipped[1]["error"].startswith("OSError")
    # the kept samples are the readable files, in order, with their own labels
    assert [p for p, _ in data._images.folder.samples] == [str(root.resolve() / n) for n in ("a/0.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg")]
    bank = extract_features(load_checkpoint(rgb_checkpoint), data, tmp_path / "bank", layers=["H"])
    assert bank.n == 4 and bank.labels.tolist() == [0, 0, 1, 1]
    meta = json.loads((tmp_path / "bank" / "meta.json").read_text())
    assert json.dumps(skipped) in json.dumps(meta)
    # a clean tree records that the check ran and found nothing
    clean = load_dataset("imagefolder", root=image_tree(tmp_path / "clean"), skip_unreadable=True)
    assert len(clean) == 6 and clean.description["skipped_unreadable"] == []


def test_skip_unreadable_with_nothing_readable_is_refused(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "0.jpg").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"None of the 1 images .* could be read \(first: .*0.jpg: UnidentifiedImageError"):
        load_dataset("imagefolder", root=root, skip_unreadable=True)


def test_a_plain_state_dict_with_a_stray_projector_key_is_refused(tmp_path):
    """Issue 9: projector.9.weight beside a 0..7 head invented P2 (or died later in a matmul)."""
    from conftest import tiny_model

    state = dict(tiny_model().state_dict())  # projector 0..7, ending in an affine-free BatchNorm
    torch.save(state, tmp_path / "plain.pt")
    result = runner.invoke(app, ["layers", str(tmp_path / "plain.pt")])
    assert result.exit_code == 0 and "P2" not in result.output, result.output
    for stray in (torch.zeros(32, 32), torch.zeros(5, 3)):
        torch.save(dict(state, **{"projector.9.weight": stray}), tmp_path / "stray.pt")
        result = runner.invoke(app, ["extract", str(tmp_path / "stray.pt"), "--dataset", "digits",
                                     "--out", str(tmp_path / "bank")])
        assert_clean(result, "Cannot infer the head under 'projector.'",
                     "do not continue the head: projector.9.weight.", "remove them from the state dict")
        assert not (tmp_path / "bank").exists()


def test_a_raw_pickle_prints_only_our_refusal(tmp_path):
    """Issue 9: torch's pickle-protocol UserWarning printed before our clear error (a real process:
    pytest would record the warning instead of printing it)."""
    import argparse
    import pickle
    import subprocess
    import sys

    from conftest import REPO

    path = tmp_path / "raw.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, handle, protocol=4)
    done = subprocess.run([sys.executable, "-m", "cli.main", "extract", str(path), "--out", str(tmp_path / "bank")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1 and f"{path} cannot be loaded safely" in text and "take --trust" in text, text
    assert "Warning" not in text and "pickle protocol" not in text and "Traceback" not in text, text


def test_cli_extract_skip_unreadable(tmp_path, rgb_checkpoint):
    """The command line offers what the error suggests: --skip-unreadable."""
    root = image_tree(tmp_path / "data")
    (root / "a" / "1.jpg").write_bytes(b"not an image at all")
    assert_clean(extract(rgb_checkpoint, root, tmp_path / "refused"), "could not be read", "--skip-unreadable")
    result = extract(rgb_checkpoint, root, tmp_path / "bank", "--skip-unreadable")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "bank" / "meta.json").read_text())
    assert meta["n"] == 5
    assert [s["file"] for s in meta["dataset"]["skipped_unreadable"]] == [str(root.resolve() / "a" / "1.jpg")]


# -- errors raised in DataLoader worker processes ------------------------------------------------
def assert_no_worker_wrapping(result):
    for torch_text in ("Caught", "worker process", "Original Traceback"):
        assert torch_text not in result.output, result.output


def test_a_corrupt_image_read_in_a_worker_process_keeps_its_clean_message(tmp_path, rgb_checkpoint):
    """With --num-workers 1 torch re-raised our DatasetError as "Caught DatasetError in DataLoader
    worker process 0. Original Traceback ..." (a/1.jpg is only ever read by the worker)."""
    root = image_tree(tmp_path / "data")
    (root / "a" / "1.jpg").write_bytes(np.random.default_rng(1).bytes(500))
    result = extract(rgb_checkpoint, root, tmp_path / "bank", "--num-workers", "1")
    assert_clean(result, f"error: Image {root / 'a' / '1.jpg'} could not be read (UnidentifiedImageError",
                 "Remove or replace it", "--skip-unreadable")
    assert_no_worker_wrapping(result)


def test_a_corrupt_image_in_training_workers_keeps_its_clean_message(tmp_path):
    root = image_tree(tmp_path / "data", per_class=4)
    (root / "b" / "2.jpg").write_bytes(b"not an image at all")
    result = runner.invoke(app, ["train", "--method", "simclr", "--dataset", "imagefolder", "--data-root", str(root),
                                 "--image-size", "8", "--epochs", "1", "--batch-size", "4", "--width", "4",
                                 "--projector-dims", "16,8", "--views-on", "loader", "--num-workers", "1",
                                 "--out", str(tmp_path / "run"), "--quiet"])
    assert_clean(result, f"error: Image {root.resolve() / 'b' / '2.jpg'} could not be read (UnidentifiedImageError")
    assert_no_worker_wrapping(result)


class _Failing(torch.utils.data.Dataset):
    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 2

    def __getitem__(self, index):
        if index == 1:
            try:
                raise OSError("disk said no")
            except OSError as cause:
                raise self.error from cause  # a chained cause is printed before the error itself
        return torch.zeros(1), 0


def test_loader_batches_unwraps_only_our_errors():
    from torch.utils.data import DataLoader

    from clusterprobe.data import loader_batches
    from clusterprobe.errors import LayerError

    for error in (DatasetError("Image x.jpg could not be read.\nSecond line."), LayerError("No layer 'Q'.")):
        loader = DataLoader(_Failing(error), batch_size=1, num_workers=1)
        with pytest.raises(type(error)) as caught:
            list(loader_batches(loader))
        assert str(caught.value) == str(error)
        # the traceback starts where loader_batches re-raised it: torch's re-raise frames are gone
        assert [entry.path.name for entry in caught.traceback] == ["test_input_faults.py", "data.py"]
    # anything else keeps torch's message: the worker traceback locates a bug
    loader = DataLoader(_Failing(ValueError("a bug")), batch_size=1, num_workers=1)
    with pytest.raises(ValueError, match="Caught ValueError in DataLoader worker process 0"):
        list(loader_batches(loader))
    # without workers nothing changes
    with pytest.raises(DatasetError) as caught:
        list(loader_batches(DataLoader(_Failing(DatasetError("plain")), batch_size=1)))
    assert str(caught.value) == "plain"
