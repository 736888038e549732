"""A data set is identified by its files too: a bank of an image folder regenerated in place is
never reused (its features are those of the old images), while banks made before file
signatures existed are still reused, with a warning that they could not be checked."""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from clusterprobe import FeatureBank, extract_features, load_checkpoint
from clusterprobe import extract as extract_module
from clusterprobe.data import load_dataset
from clusterprobe.errors import FeatureBankError
from clusterprobe.extract import UncheckedDataWarning, _bank_fingerprint, _dataset_description

from conftest import tiny_model

runner = CliRunner()
OPTIONS = dict(layers=["H"], batch_size=4, progress=False)


def image_tree(root, per_class=3):
    """root/<a|b>/<i>.png, 8x8 RGB images of random pixels (each file's bytes differ)."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def load(root):
    """The images' features only change where their pixels do (fixed normalisation)."""
    return load_dataset("imagefolder", root=root, split="train", image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture
def rgb_checkpoint(tmp_path):
    from clusterprobe import save_checkpoint

    path = tmp_path / "run" / "checkpoints" / "epoch_0001.pt"
    save_checkpoint(path, tiny_model(in_channels=3), epoch=1, step=1, method="simclr", dataset="imagefolder", run="run")
    return path


def regenerate(path, size=(8, 8), seed=1):
    """Write other pixels (and so another size in bytes) into ``path``, keeping its name."""
    before = path.read_bytes()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    assert path.read_bytes() != before


def test_the_signature_is_stable_and_follows_the_files(tmp_path):
    root = image_tree(tmp_path / "data")
    first = load(root).files_signature()
    assert first["count"] == 6 and first["bytes"] == sum(f.stat().st_size for f in root.rglob("*.png"))
    assert set(first["per_class"]) == {"a", "b"} and first["per_class"]["a"][0] == 3
    again = load(root)
    assert again.files_signature() == first  # the same folder loaded again: the same signature
    assert again.files_signature() is again.files_signature()  # computed once per object
    assert again.with_transform(None).files_signature() == first
    regenerate(root / "a" / "1.png", size=(9, 9))
    changed = load(root).files_signature()
    assert changed["sha256"] != first["sha256"] and changed["per_class"]["b"] == first["per_class"]["b"]
    # the same bytes with another modification time (a rewrite of equal size, or a copy without -p)
    os.utime(root / "b" / "0.png", ns=(time.time_ns(), time.time_ns() - 10**9))
    touched = load(root).files_signature()
    assert touched["sha256"] != changed["sha256"] and touched["bytes"] == changed["bytes"]
    # and it is part of the description a bank is identified by (digits read no files)
    assert _dataset_description(load(root))["files_signature"] == touched
    assert "files_signature" not in _dataset_description(load_dataset("digits", split="test"))


def test_a_regenerated_image_is_a_different_bank(rgb_checkpoint, tmp_path):
    root = image_tree(tmp_path / "data")
    bank = extract_features(rgb_checkpoint, load(root), tmp_path / "bank", **OPTIONS)
    assert bank.meta["dataset"]["files_signature"]["count"] == 6
    assert extract_features(rgb_checkpoint, load(root), tmp_path / "bank", **OPTIONS).reused
    old = np.array(bank["H"])
    regenerate(root / "a" / "1.png")  # other pixels, same name, same count
    data = load(root)
    with pytest.raises(FeatureBankError) as refused:
        extract_features(rgb_checkpoint, data, tmp_path / "bank", **OPTIONS)
    message = str(refused.value)
    assert f"the files of {root.resolve()} changed since the bank was made" in message
    assert "class a: the same number of files" in message and "class b" not in message
    assert "--overwrite" in message
    assert FeatureBank.open(tmp_path / "bank").meta["created"] == bank.meta["created"]  # untouched
    again = extract_features(rgb_checkpoint, data, tmp_path / "bank", overwrite=True, **OPTIONS)
    assert not again.reused
    # the new bank holds the new image's features (row 1), the others unchanged
    fresh = extract_features(rgb_checkpoint, load(root), tmp_path / "fresh", **OPTIONS)
    np.testing.assert_array_equal(np.array(again["H"]), np.array(fresh["H"]))
    assert not np.allclose(old[1], np.array(again["H"])[1]) and np.allclose(old[3:], np.array(again["H"])[3:])


def test_an_added_image_is_named_through_the_cli(rgb_checkpoint, tmp_path):
    root = image_tree(tmp_path / "data")
    command = ["extract", str(rgb_checkpoint), "--dataset", "imagefolder", "--data-root", str(root), "--split",
               "train", "--layers", "H", "--out", str(tmp_path / "bank"), "--batch-size", "4", "--image-size", "8"]
    first = runner.invoke(app, command)
    assert first.exit_code == 0, first.output
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "b" / "3.png")
    result = runner.invoke(app, command)
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in text, result.output
    assert f"the files of {root.resolve()} changed since the bank was made" in text
    assert "6 files" in text and "7 files" in text and "class b: 3 files then, 4 now" in text
    replaced = runner.invoke(app, command + ["--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert FeatureBank.open(tmp_path / "bank").n == 7


def test_a_removed_and_an_added_image_with_the_same_count(rgb_checkpoint, tmp_path):
    root = image_tree(tmp_path / "data")
    extract_features(rgb_checkpoint, load(root), tmp_path / "bank", **OPTIONS)
    (root / "a" / "2.png").rename(root / "b" / "9.png")  # a fixed label: the count stays 6
    with pytest.raises(FeatureBankError, match="class a: 3 files then, 2 now; class b: 3 files then, 4 now"):
        extract_features(rgb_checkpoint, load(root), tmp_path / "bank", **OPTIONS)


def _old_style_bank(checkpoint, data, out):
    """A bank as clusterprobe wrote it before data sets had file signatures."""
    plain = extract_module._dataset_description

    def without_signature(dataset):
        description = plain(dataset)
        description.pop("files_signature", None)
        return description

    original = extract_module._dataset_description
    extract_module._dataset_description = without_signature
    try:
        return extract_features(checkpoint, data, out, **OPTIONS)
    finally:
        extract_module._dataset_description = original


def test_a_bank_made_before_signatures_is_reused_with_a_warning_once(rgb_checkpoint, tmp_path):
    root = image_tree(tmp_path / "data")
    old = _old_style_bank(rgb_checkpoint, load(root), tmp_path / "bank")
    assert "files_signature" not in old.meta["dataset"]
    loaded = load_checkpoint(rgb_checkpoint)
    specs = [loaded.model.resolve_layer("H")]
    description = _dataset_description(load(root))
    assert old.meta["fingerprint"] == _bank_fingerprint(loaded.provenance(), specs, {
        k: v for k, v in description.items() if k != "files_signature"})
    with pytest.warns(UncheckedDataWarning, match=f"made before .* files of {root.resolve()} changed since "
                                                  "it was made cannot be checked"):
        again = extract_features(rgb_checkpoint, load(root), tmp_path / "bank", **OPTIONS)
    assert again.reused and again.meta == old.meta  # reused as it is, meta.json untouched
    with warnings.catch_warnings(record=True) as said:  # once per bank and process
        warnings.simplefilter("always")
        assert extract_features(rgb_checkpoint, load(root), tmp_path / "bank", **OPTIONS).reused
    assert not [w for w in said if issubclass(w.category, UncheckedDataWarning)]
    # another request (other layers) on that bank is still a different bank
    with pytest.raises(FeatureBankError, match="already holds a different feature bank"):
        extract_features(rgb_checkpoint, load(root), tmp_path / "bank", **{**OPTIONS, "layers": ["H", "Z"]})


def test_the_metrics_cache_recomputes_after_the_bank_is_extracted_again(rgb_checkpoint, tmp_path):
    from clusterprobe.metrics import evaluate

    root = image_tree(tmp_path / "data", per_class=6)
    bank = extract_features(rgb_checkpoint, load(root), tmp_path / "bank", **OPTIONS)
    cache = tmp_path / "metrics.csv"
    first = evaluate(bank.path, metrics="rankme", cache=cache, device="cpu")
    for i in range(6):
        regenerate(root / "a" / f"{i}.png", seed=10 + i)
    extract_features(rgb_checkpoint, load(root), tmp_path / "bank", overwrite=True, **OPTIONS)
    again = evaluate(tmp_path / "bank", metrics="rankme", cache=cache, device="cpu")
    fresh = evaluate(tmp_path / "bank", metrics="rankme", cache=False, device="cpu")
    value = lambda table: float(table.loc[table["metric"] == "rankme", "value"].iloc[0])  # noqa: E731
    assert value(again) == pytest.approx(value(fresh), abs=1e-6) and value(again) != pytest.approx(value(first))
    import pandas as pd

    rows = pd.read_csv(cache)
    assert len(rows) == len(again) and set(rows["data_id"]) == set(again["data_id"])  # old rows dropped


def test_the_cifar10_folder_signature_is_computed_and_stable(cifar10):
    start = time.perf_counter()
    test = load_dataset("cifar10", root=cifar10, split="test")
    signature = test.files_signature()
    assert time.perf_counter() - start < 30  # about 0.1 s here; generous for a shared machine
    files = sorted((cifar10 / "test").rglob("*.jpg"))
    assert signature["count"] == len(test) == len(files) == 10000
    assert signature["bytes"] == sum(f.stat().st_size for f in files)
    assert sorted(signature["per_class"]) == sorted(test.classes)
    assert load_dataset("cifar10", root=cifar10, split="test").files_signature() == signature
    assert json.loads(json.dumps(signature)) == signature  # as meta.json holds it


def test_torchvision_cifar_batches_are_signed(tmp_path):
    """torchvision's pickled CIFAR-10 (small fake batches of the real format)."""
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f)
    import torchvision.datasets.cifar

    # torchvision checks the real files' MD5 sums; these are stand-ins of the same format
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
        test = load_dataset("cifar10", root=tmp_path, split="test")
        signature = test.files_signature()
        assert set(signature["per_file"]) == {"test_batch", "batches.meta"} and signature["count"] == 2
        assert load_dataset("cifar10", root=tmp_path, split="test").files_signature() == signature
        with open(folder / "test_batch", "ab") as f:
            f.write(b"\0")
        changed = load_dataset("cifar10", root=tmp_path, split="test").files_signature()
        assert changed["sha256"] != signature["sha256"]
        model = tiny_model(in_channels=3)
        extract_features(model, test, tmp_path / "bank", **OPTIONS)
        with pytest.raises(FeatureBankError, match=r"files of .* changed since .*test_batch changed"):
            extract_features(model, load_dataset("cifar10", root=tmp_path, split="test"), tmp_path / "bank", **OPTIONS)


def test_the_report_refuses_a_bank_of_regenerated_images_and_says_so(tmp_path):
    """The report reuses its banks by the same rule; it has no --overwrite, so it skips the epoch
    and says which folder to delete (then it extracts the bank again from the new files)."""
    from clusterprobe.errors import ReportError
    from clusterprobe.report import ReportSettings, build_report
    from conftest import imagefolder_run

    images, run, _ = imagefolder_run(tmp_path, images_per_class=8, size=8, trained_at=8)
    settings = ReportSettings(metric_overrides={"seeds": 1, "metrics": "nmi"}, umap=False, layers=("H",),
                              per_class=False, pixels=False)
    build_report(tmp_path / "runs", settings=settings, progress=False)
    bank = run / "features" / "test" / "epoch_0001"
    made = FeatureBank.open(bank).meta
    regenerate(images / "test" / "bees" / "3.png")
    with pytest.raises(ReportError) as refused:
        build_report(tmp_path / "runs", settings=settings, progress=False)
    text = " ".join(str(refused.value).split())
    assert f"the files of {(images / 'test').resolve()} changed since the bank was made" in text
    assert "class bees: the same number of files" in text and "delete the damaged or different bank folder" in text
    assert "--overwrite" not in text  # an option the report does not have
    assert FeatureBank.open(bank).meta == made  # untouched
    import shutil

    shutil.rmtree(bank)
    build_report(tmp_path / "runs", settings=settings, progress=False)
    rebuilt = FeatureBank.open(bank).meta["dataset"]["files_signature"]
    assert rebuilt["sha256"] != made["dataset"]["files_signature"]["sha256"]
    assert rebuilt == load_dataset("imagefolder", images, split="test", image_size=8).files_signature()


def test_the_extract_command_prints_the_unchecked_bank_warning_as_one_line(rgb_checkpoint, tmp_path):
    root = image_tree(tmp_path / "data")
    _old_style_bank(rgb_checkpoint, load(root), tmp_path / "bank")
    extract_module._UNCHECKED_SAID.clear()
    result = runner.invoke(app, ["extract", str(rgb_checkpoint), "--dataset", "imagefolder", "--data-root", str(root),
                                 "--split", "train", "--layers", "H", "--out", str(tmp_path / "bank"),
                                 "--batch-size", "4", "--image-size", "8", "--mean", "0.5,0.5,0.5",
                                 "--std", "0.25,0.25,0.25"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: " in text and "cannot be checked" in text and "UncheckedDataWarning" not in text
    assert "reused the bank" in text


def test_the_report_sums_up_banks_made_before_signatures_in_one_warning(tmp_path, monkeypatch):
    from clusterprobe import save_checkpoint
    from clusterprobe.report import ReportSettings, build_report

    images = tmp_path / "images"
    for split in ("train", "test"):
        image_tree(images / split)
    run = tmp_path / "runs" / "resa"
    for epoch in (1, 2):
        save_checkpoint(run / "checkpoints" / f"epoch_000{epoch}.pt", tiny_model(in_channels=3), epoch=epoch,
                        method="resa", dataset="imagefolder", run="resa")
    (run / "config.yaml").write_text(f"method: resa\ndataset: imagefolder\ndata_root: {images}\nimage_size: 8\n")
    settings = ReportSettings(metric_overrides={"seeds": 1, "metrics": "nmi"}, umap=False, layers=("H",),
                              per_class=False, pixels=False)
    plain = extract_module._dataset_description
    with monkeypatch.context() as patch:  # banks as versions before signatures wrote them
        patch.setattr(extract_module, "_dataset_description",
                      lambda d: {k: v for k, v in plain(d).items() if k != "files_signature"})
        build_report(tmp_path / "runs", settings=settings, progress=False)
    extract_module._UNCHECKED_SAID.clear()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = build_report(tmp_path / "runs", settings=settings, progress=False)
    assert not [w for w in said if issubclass(w.category, UncheckedDataWarning)]
    lines = [w for w in result.warnings if "made before banks recorded their data files" in w]
    assert len(lines) == 1 and "the banks of epochs 1, 2 were made" in lines[0], result.warnings
    assert str(run / "features") in lines[0]
