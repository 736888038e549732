"""float16 feature banks (issue 11, item 3): half the disk, values rounded once to float16, and
every metric computing in float32 from them without a float32 copy of the whole bank.

The reference for each metric is the same metric on the float16 values widened to float32 in
memory (``X16.astype(np.float32)``): storing in float16 may change the numbers only by that
rounding, never by computing in float16.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clusterprobe import FeatureBank
from clusterprobe.data import load_dataset
from clusterprobe.errors import FeatureBankError
from clusterprobe.extract import extract_features
from clusterprobe.metrics import (
    kmeans,
    knn_accuracy,
    linear_probe,
    rankme,
    silhouette_samples_multi,
)
from clusterprobe.metrics._validation import as_features


def clustered(n=600, d=24, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = 3 * rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.standard_normal((n, d)) + 1.0).astype(np.float32), y


def test_float16_bank_stores_rounded_values_in_half_the_space(tmp_path):
    X, y = clustered()
    wide = FeatureBank.write(tmp_path / "f32", {"H": X}, labels=y)
    half = FeatureBank.write(tmp_path / "f16", {"H": X}, labels=y, dtype="float16")
    assert half.dtype == np.float16 and half["H"].dtype == np.float16 and isinstance(half["H"], np.memmap)
    np.testing.assert_array_equal(half["H"], X.astype(np.float16))
    # the rounding is within float16's half unit in the last place: 2^-11 relative
    np.testing.assert_allclose(half["H"].astype(np.float32), X, rtol=2.0**-11, atol=0)
    assert (half.path / "H.npy").stat().st_size - 128 == X.size * 2
    assert (wide.path / "H.npy").stat().st_size - 128 == X.size * 4
    # float32 banks stay readable by earlier clusterprobe versions (format 1), float16 ones do not
    assert wide.meta["format_version"] == 1 and wide.meta["dtype"] == "float32" and wide.dtype == np.float32
    assert half.meta["format_version"] == 2 and half.meta["dtype"] == "float16"
    assert half.features("H").dtype == np.float32
    assert any("match meta.json" in note for note in half.verify(content=True))


def test_banks_written_before_dtypes_open_as_float32(tmp_path):
    X, y = clustered(n=50)
    bank = FeatureBank.write(tmp_path / "b", {"H": X}, labels=y)
    meta = json.loads((bank.path / "meta.json").read_text())
    del meta["dtype"]
    (bank.path / "meta.json").write_text(json.dumps(meta))
    old = FeatureBank.open(bank.path)
    assert old.dtype == np.float32
    np.testing.assert_array_equal(old["H"], X)


def test_a_float32_file_under_a_float16_meta_is_refused(tmp_path):
    X, y = clustered(n=50)
    half = FeatureBank.write(tmp_path / "b", {"H": X}, labels=y, dtype="float16")
    np.save(half.path / "H.npy", X)  # swapped for a float32 file of the same shape
    with pytest.raises(FeatureBankError, match=r"H\.npy holds a float32 array .* not float16"):
        FeatureBank.open(half.path)


def test_values_beyond_float16_range_are_refused_not_stored_as_inf(tmp_path):
    X, y = clustered(n=50)
    X[3, 2] = 1e5
    with pytest.raises(FeatureBankError, match=r"layer H: 1 values beyond \+-65,504.*float32"):
        FeatureBank.write(tmp_path / "b", {"H": X, "Z": X[:, :4] * 0}, labels=y, dtype="float16")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
    with pytest.raises(FeatureBankError, match="store float32 or float16, not 'bfloat16'"):
        FeatureBank.write(tmp_path / "b", {"H": X}, labels=y, dtype="bfloat16")


def test_extraction_to_float16_rounds_the_float32_bank(own_checkpoint, tmp_path):
    path, _, _ = own_checkpoint
    data = load_dataset("digits", split="test")
    wide = extract_features(path, data, tmp_path / "f32", batch_size=100, progress=False)
    half = extract_features(path, data, tmp_path / "f16", batch_size=100, progress=False, dtype="float16")
    assert half.dtype == np.float16 and half.layers == wide.layers
    for layer in wide.layers:  # torch's and NumPy's float16 rounding are the same (to nearest even)
        np.testing.assert_array_equal(half[layer], np.asarray(wide[layer]).astype(np.float16))
    np.testing.assert_array_equal(half.labels, wide.labels)
    # the dtype is part of what the bank is: never reused for the other dtype
    assert extract_features(path, data, tmp_path / "f16", progress=False, dtype="float16").reused
    with pytest.raises(FeatureBankError, match="different feature bank"):
        extract_features(path, data, tmp_path / "f16", progress=False)
    # a float32 bank keeps the fingerprint it had before dtypes existed (so it is still reused)
    from clusterprobe.extract import _bank_fingerprint

    assert wide.meta["fingerprint"] == _bank_fingerprint(
        wide.meta["checkpoint"], [load_checkpoint_spec(path, name) for name in wide.layers], wide.meta["dataset"])


def load_checkpoint_spec(path, name):
    from clusterprobe import load_checkpoint

    return load_checkpoint(path).model.resolve_layer(name)


def test_extraction_beyond_float16_range_names_the_layer_and_keeps_nothing(model, tmp_path):
    with torch.no_grad():
        model.projector[6].weight.mul_(1e7)  # Z only
    data = load_dataset("digits", split="test")
    with pytest.raises(FeatureBankError, match=r"layer Z: \d+ values beyond .*--dtype float32.*No bank was written"):
        extract_features(model, data, tmp_path / "bank", layers=["H", "Z"], dtype="float16", progress=False)
    assert not (tmp_path / "bank").exists() and not (tmp_path / "bank.partial").exists()
    bank = extract_features(model, data, tmp_path / "bank", layers=["H", "Z"], progress=False)
    assert np.abs(bank["Z"]).max() > 65504


def test_cli_extract_dtype(own_checkpoint, tmp_path):
    from cli.main import app

    path, _, _ = own_checkpoint
    result = CliRunner().invoke(app, ["extract", str(path), "--layers", "H", "--out", str(tmp_path / "b"),
                                      "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    assert "float16" in result.output and FeatureBank.open(tmp_path / "b").dtype == np.float16
    result = CliRunner().invoke(app, ["extract", str(path), "--out", str(tmp_path / "c"), "--dtype", "int8"])
    assert result.exit_code == 1 and "float32 or float16, not 'int8'" in result.output


@pytest.fixture(params=["in memory", "chunked"])
def budget(request, monkeypatch):
    """The default working memory (one chunk), or 16 KiB: many chunks and k-means' scratch file."""
    if request.param == "chunked":
        monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "16K")
    return request.param


def test_metrics_on_a_float16_bank_compute_in_float32(tmp_path, budget):
    X, y = clustered()
    half = FeatureBank.write(tmp_path / "b", {"H": X}, labels=y, dtype="float16")
    X16 = half["H"]
    wide = np.asarray(X16, dtype=np.float32)  # the reference: the stored values, in float32
    kept = as_features(X16)
    assert kept.dtype == np.float16 and np.shares_memory(kept, X16)  # not copied (nor widened) whole
    for normalize in (True, False):
        a = kmeans(X16, 6, seeds=2, normalize=normalize, device="cpu")
        b = kmeans(wide, 6, seeds=2, normalize=normalize, device="cpu")
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.objective, b.objective, rtol=1e-6)
    labels = [y, a.labels[0]]
    for metric in ("cosine", "euclidean"):
        np.testing.assert_allclose(silhouette_samples_multi(X16, labels, metric=metric, device="cpu"),
                                   silhouette_samples_multi(wide, labels, metric=metric, device="cpu"),
                                   atol=1e-6, rtol=0)
    train, test = slice(0, 450), slice(450, None)
    for protocol in ("weighted-cosine", "majority-euclidean"):
        assert knn_accuracy(X16[train], y[train], X16[test], y[test], protocol=protocol, device="cpu") == \
            knn_accuracy(wide[train], y[train], wide[test], y[test], protocol=protocol, device="cpu")
    p16 = linear_probe(X16[train], y[train], X16[test], y[test], device="cpu")
    p32 = linear_probe(wide[train], y[train], wide[test], y[test], device="cpu")
    assert p16.top1 == p32.top1 and p16.top1 > 0.9
    assert rankme(X16) == pytest.approx(rankme(wide), rel=1e-9)


def test_evaluate_on_a_float16_bank_matches_its_float32_values(tmp_path):
    from clusterprobe.metrics import evaluate, evaluate_arrays

    X, y = clustered()
    FeatureBank.write(tmp_path / "b", {"H": X}, labels=y, dtype="float16")
    metrics = ["nmi", "silhouette_true", "rankme", "knn"]
    half = evaluate(tmp_path / "b", metrics=metrics, device="cpu", cache=False, progress=False)
    wide = evaluate_arrays({"H": X.astype(np.float16).astype(np.float32)}, y, metrics=metrics, device="cpu",
                           progress=False)
    a = half.set_index("metric")["value"].sort_index()
    b = wide.set_index("metric")["value"].sort_index()
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-6, rtol=0)
