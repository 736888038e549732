"""The suite: tidy table, feature banks and run directories, incremental cache, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import silhouette_samples as sk_samples

from clusterprobe import FeatureBank
from clusterprobe.errors import LayerError, NonFiniteFeaturesError
from clusterprobe.metrics import (
    MetricRow,
    MetricsError,
    MetricSettings,
    cluster_agreement,
    default_cache_path,
    evaluate,
    evaluate_arrays,
    kmeans,
    knn_accuracy,
    linear_probe,
    rankme,
    resolve_metrics,
)

CHECKPOINT = {"path": "/runs/demo/checkpoints/epoch_0002.pt", "sha256": "ab" * 32, "epoch": 2,
              "method": "resa", "run": "demo", "branch": "momentum"}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def layers_of(X: np.ndarray) -> dict[str, np.ndarray]:
    """Two 'layers' of real features: the pixels and a fixed ReLU projection of them."""
    W = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    return {"H": X, "Z": np.maximum(X @ W, 0) / 10}


def write_bank(path, X, y, split, checkpoint=CHECKPOINT, **kwargs):
    meta = {"dataset": {"name": "digits", "split": split}, "checkpoint": dict(checkpoint), "num_classes": 10}
    return FeatureBank.write(path, features=layers_of(X), labels=y, meta=meta, **kwargs)


@pytest.fixture
def run_dir(tmp_path, digits):
    X, y = digits
    run = tmp_path / "demo"
    write_bank(run / "features" / "train" / "epoch_0002", X[:1300], y[:1300], "train")
    write_bank(run / "features" / "test" / "epoch_0002", X[1300:], y[1300:], "test")
    return run


def value(table: pd.DataFrame, metric: str, layer: str = "H", split: str = "test") -> float:
    row = table[(table.metric == metric) & (table.layer == layer) & (table.split == split)]
    assert len(row) == 1, (metric, layer, split, len(row))
    return float(row.value.iloc[0])


# -- the table ----------------------------------------------------------------------------------
def test_arrays_suite_is_tidy_and_matches_the_metric_functions(digits):
    X, y = digits
    Xtr, ytr, Xte, yte = X[:1300], y[:1300], X[1300:], y[1300:]
    table = evaluate_arrays(Xtr, ytr, Xte, yte, layer="H")
    assert list(table.columns[:9]) == ["run", "method", "epoch", "layer", "split", "metric", "value", "std", "n"]
    assert {"k", "normalize", "distance", "seeds", "protocol", "evaluation", "settings"} <= set(table.columns)
    assert not table.duplicated(["layer", "split", "metric"]).any()
    assert (table.note == "").all() and table.value.notna().all()
    for split, (Xs, ys) in {"train": (Xtr, ytr), "test": (Xte, yte)}.items():
        agreement = cluster_agreement(ys, kmeans(Xs, 10, seeds=3))
        row = table[(table.metric == "nmi") & (table.split == split)].iloc[0]
        assert (row.value, row["std"]) == pytest.approx(agreement["nmi"])
        assert (row.k, row.seeds, row.n, bool(row.normalize)) == (10, "0,1,2", len(ys), True)
        assert value(table, "ari", split=split) == pytest.approx(agreement["ari"][0])
        reference = sk_samples(Xs, ys, metric="cosine")
        assert value(table, "silhouette_true", split=split) == pytest.approx(reference.mean(), abs=1e-5)
        assert value(table, "silhouette_true_spread", split=split) == pytest.approx(reference.std(), abs=1e-5)
        assert value(table, "rankme", split=split) == pytest.approx(rankme(Xs))
    assert value(table, "linear_top1") == pytest.approx(linear_probe(Xtr, ytr, Xte, yte).top1)
    assert value(table, "knn_top1") == pytest.approx(knn_accuracy(Xtr, ytr, Xte, yte).top1)
    probe_rows = table[table.metric.str.startswith(("linear", "knn"))]
    assert set(probe_rows.split) == {"test"} and set(probe_rows.evaluation) == {"train->test"}


def test_settings_are_recorded_and_validated(digits):
    X, y = digits
    table = evaluate_arrays(X, y, metrics="nmi,silhouette", k=12, seeds=2, distance="euclidean", normalize=False)
    nmi = table[table.metric == "nmi"].iloc[0]
    assert (nmi.k, nmi.seeds, bool(nmi.normalize)) == (12, "0,1", False)
    assert json.loads(nmi.settings)["k"] == 12
    sil = table[table.metric == "silhouette_true"].iloc[0]
    assert sil.distance == "euclidean" and sil.value == pytest.approx(sk_samples(X, y).mean(), abs=1e-5)
    assert set(table.metric) == {"nmi", "silhouette_true", "silhouette_true_spread", "silhouette_kmeans",
                                 "silhouette_kmeans_spread"}
    with pytest.raises(MetricsError, match="Did you mean 'silhouette'"):
        MetricSettings(metrics="silhouete")
    with pytest.raises(MetricsError, match="Unknown setting"):
        evaluate_arrays(X, y, clusters=3)
    with pytest.raises(MetricsError, match="distance"):
        MetricSettings(distance="manhattan")
    assert resolve_metrics("kmeans,knn") == ("nmi", "ari", "cluster_acc", "knn")


def test_selection_names_are_the_metric_names(digits):
    X, y = digits
    assert resolve_metrics(None) == resolve_metrics("all") == (
        "rankme", "nmi", "ari", "cluster_acc", "davies_bouldin", "calinski_harabasz", "silhouette_true",
        "silhouette_kmeans", "linear", "knn")
    assert resolve_metrics("silhouette") == ("silhouette_true", "silhouette_kmeans")
    assert resolve_metrics(["knn", "Cluster-Acc", "nmi"]) == ("nmi", "cluster_acc", "knn")  # suite order
    assert MetricSettings(metrics="ari,nmi") == MetricSettings(metrics=["nmi", "ari"])
    # a metric name selects that metric alone (its rows: value and spread)
    table = evaluate_arrays(X[:400], y[:400], metrics="silhouette_true,davies_bouldin", k=10, seeds=1)
    assert list(table.metric) == ["davies_bouldin", "silhouette_true", "silhouette_true_spread"]
    for former, name in (("acc", "cluster_acc"), ("db", "davies_bouldin"), ("ch", "calinski_harabasz"),
                         ("probe", "linear"), ("linear_probe", "linear")):
        with pytest.raises(MetricsError, match=f"Unknown metric '{former}'.*Did you mean '{name}'"):
            resolve_metrics(former)
    with pytest.raises(MetricsError, match="No metrics"):
        resolve_metrics(" , ")


def test_rows_are_metric_row_records_and_the_cache_columns_are_their_fields(digits, monkeypatch):
    import dataclasses

    from clusterprobe.metrics import cache, engine

    assert cache.COLUMNS == [f.name for f in dataclasses.fields(MetricRow)]
    X, y = digits
    seen = []
    original = engine._compute_split_units

    def spy(*args):
        rows = original(*args)
        seen.extend(rows)
        return rows

    monkeypatch.setattr(engine, "_compute_split_units", spy)
    table = evaluate_arrays(X[:300], y[:300], metrics="nmi,rankme", seeds=1)
    assert seen and all(isinstance(row, MetricRow) for row in seen)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].value = 0.0
    assert list(table.columns) == cache.COLUMNS
    kinds = {c: str(t) for c, t in table.dtypes.items()}
    assert {c: kinds[c] for c in ("epoch", "n", "k", "value", "std", "normalize")} == {
        "epoch": "Int64", "n": "Int64", "k": "Int64", "value": "float64", "std": "float64", "normalize": "boolean"}
    assert all(pd.api.types.is_string_dtype(table[c]) for c in cache.COLUMNS if c not in
               ("epoch", "n", "k", "value", "std", "normalize"))
    nmi_row = seen[[r.metric for r in seen].index("nmi")]
    assert table[table.metric == "nmi"].value.iloc[0] == nmi_row.value


def test_progress_and_cache_arguments(digits, tmp_path, capsys):
    X, y = digits
    Xs, ys = X[:300], y[:300]
    messages = []
    evaluate_arrays(Xs, ys, metrics="rankme,knn", progress=messages.append)
    assert messages == ["layer features, train: rankme", "layer features, knn probe (train hold-out)"]
    capsys.readouterr()
    evaluate_arrays(Xs, ys, metrics="rankme", progress=True)
    assert capsys.readouterr().err == "layer features, train: rankme\n"
    evaluate_arrays(Xs, ys, metrics="rankme", progress=False)
    evaluate_arrays(Xs, ys, metrics="rankme")  # silent by default
    assert capsys.readouterr().err == ""
    with pytest.raises(MetricsError, match="progress must be True"):
        evaluate_arrays(Xs, ys, metrics="rankme", progress="yes")
    # cache: a path, False/None (none), True (arrays have no default file: a clear error)
    with pytest.raises(MetricsError, match="no default cache file.*path of a CSV file"):
        evaluate_arrays(Xs, ys, metrics="rankme", cache=True)
    path = tmp_path / "arrays.metrics.csv"
    first = evaluate_arrays(Xs, ys, metrics="rankme", cache=path)
    assert first.attrs["cache"] == str(path) and len(pd.read_csv(path)) == 1
    messages.clear()
    again = evaluate_arrays(Xs, ys, metrics="rankme", cache=str(path), progress=messages.append)
    assert messages == [] and again.value.iloc[0] == first.value.iloc[0] == pytest.approx(rankme(Xs))
    for off in (False, None):
        assert evaluate_arrays(Xs, ys, metrics="rankme", cache=off).attrs["cache"] is None
    with pytest.raises(MetricsError, match="cache must be True"):
        evaluate_arrays(Xs, ys, metrics="rankme", cache=3)
    with pytest.raises(MetricsError, match="settings must be a MetricSettings"):
        evaluate_arrays(Xs, ys, settings={"k": 3})


def test_no_global_random_state_is_used_or_changed(digits):
    import torch

    X, y = digits
    torch.manual_seed(1234)
    torch.rand(3)
    before = torch.get_rng_state()
    evaluate_arrays(X[:600], y[:600], X[600:900], y[600:900], metrics="all", probe="reference", probe_epochs=3)
    assert torch.equal(torch.get_rng_state(), before)


def test_without_labels_label_free_metrics_still_run(digits):
    X, _ = digits
    table = evaluate_arrays(X, None, k=10)
    ran = table[table.note == ""]
    assert set(ran.metric) == {"rankme", "davies_bouldin", "calinski_harabasz", "silhouette_kmeans",
                               "silhouette_kmeans_spread"}
    skipped = table[table.note != ""]
    assert set(skipped.metric) >= {"nmi", "ari", "silhouette_true", "linear_top1", "knn_top1"}
    assert skipped.note.str.contains("has no labels").all() and skipped.value.isna().all()
    # and without k either, only RankMe can run
    table = evaluate_arrays(X, None)
    assert set(table[table.note == ""].metric) == {"rankme"}
    assert table[table.metric == "davies_bouldin"].note.iloc[0] == "skipped: no labels to take k from; pass k"


def test_bad_arrays_are_refused(digits):
    X, y = digits
    with pytest.raises(MetricsError, match="single class"):
        evaluate_arrays(X, np.zeros(len(X), dtype=int))
    with pytest.raises(MetricsError, match="larger than the number of samples"):
        evaluate_arrays(X[:20], y[:20], k=30, metrics="nmi")
    with pytest.raises(MetricsError, match="'features' has 64 dimensions in the train features but 63"):
        evaluate_arrays(X, y, X[:, :63], y)
    bad = X.copy()
    bad[10:14, 3] = np.nan
    with pytest.raises(NonFiniteFeaturesError, match="layer 'features'.*4 of 1797 rows"):
        evaluate_arrays(bad, y)


# -- banks and run directories --------------------------------------------------------------------
def test_run_directory_pairs_train_and_test_by_epoch(run_dir):
    table = evaluate(run_dir)
    assert set(table.run) == {"demo"} and set(table.method) == {"resa"} and set(table.epoch) == {2}
    assert list(dict.fromkeys(table.layer)) == ["H", "Z"] and list(dict.fromkeys(table.split)) == ["train", "test"]
    probes = table[table.metric.isin(["linear_top1", "knn_top1"])]
    assert len(probes) == 4 and set(probes.split) == {"test"} and set(probes.evaluation) == {"train->test"}
    assert value(table, "linear_top1", "H") > 0.9
    assert default_cache_path(run_dir) == run_dir / "metrics.csv" and (run_dir / "metrics.csv").exists()
    on_disk = pd.read_csv(run_dir / "metrics.csv")
    assert len(on_disk) == len(table) and set(on_disk.metric) == set(table.metric)


def test_single_bank_uses_a_holdout_unless_given_its_train_bank(run_dir):
    test_bank = run_dir / "features" / "test" / "epoch_0002"
    alone = evaluate(test_bank, metrics="linear,nmi", layers=["H"])
    assert set(alone.split) == {"test"}
    assert set(alone[alone.metric == "linear_top1"].evaluation) == {"holdout 20% stratified, seed 0"}
    assert default_cache_path(test_bank) == test_bank.parent / "epoch_0002.metrics.csv"
    assert (test_bank.parent / "epoch_0002.metrics.csv").exists()
    paired = evaluate(FeatureBank.open(test_bank), metrics="linear", layers=["H"],
                      train=run_dir / "features" / "train" / "epoch_0002", cache=False)
    assert set(paired.evaluation) == {"train->test"} and set(paired.run) == {"demo"}


def test_asking_again_computes_only_what_is_missing(run_dir, monkeypatch):
    from clusterprobe.metrics import clustering, probes, spectra

    first = evaluate(run_dir)
    calls = []
    # the functions the engine computes with (on data it has validated)
    for module, name in ((clustering, "_kmeans"), (probes, "_linear_probe"), (probes, "_knn_accuracy"),
                         (spectra, "_rankme")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    again = evaluate(run_dir)
    assert calls == []
    pd.testing.assert_frame_equal(first, again)
    # new settings for k-means only: k-means metrics recomputed, probes and RankMe from the cache
    changed = evaluate(run_dir, k=12)
    assert sorted(set(calls)) == ["_kmeans"] and calls.count("_kmeans") == 4  # 2 layers x 2 splits
    assert set(changed[changed.metric == "nmi"].k) == {12}
    assert value(changed, "rankme") == value(first, "rankme")
    assert value(changed, "nmi") != value(first, "nmi")
    # both settings now live side by side in the file; each is returned only for its settings
    on_disk = pd.read_csv(run_dir / "metrics.csv")
    assert set(on_disk[on_disk.metric == "nmi"].k) == {10, 12}
    calls.clear()
    pd.testing.assert_frame_equal(evaluate(run_dir), first)
    assert calls == []
    # recompute=True computes everything again (the spies see each unit's work), to equal values
    recomputed = evaluate(run_dir, recompute=True)
    assert sorted(set(calls)) == ["_kmeans", "_knn_accuracy", "_linear_probe", "_rankme"]
    assert calls.count("_linear_probe") == calls.count("_knn_accuracy") == 2  # a probe per layer
    pd.testing.assert_frame_equal(recomputed.drop(columns="std"), first.drop(columns="std"), check_exact=False)


def test_changed_features_are_never_answered_from_the_cache(run_dir, digits):
    X, y = digits
    first = evaluate(run_dir, metrics="rankme,linear")
    bank = run_dir / "features" / "test" / "epoch_0002"
    write_bank(bank, X[1300:] * 2 + 1, y[1300:], "test", overwrite=True)  # re-extracted in place
    second = evaluate(run_dir, metrics="rankme,linear")
    assert value(second, "rankme") != value(first, "rankme")
    assert value(second, "rankme") == pytest.approx(rankme(layers_of(X[1300:] * 2 + 1)["H"]))
    on_disk = pd.read_csv(run_dir / "metrics.csv")
    test_rankme = on_disk[(on_disk.metric == "rankme") & (on_disk.split == "test") & (on_disk.layer == "H")]
    assert len(test_rankme) == 1  # the stale row is gone


def test_a_corrupt_cache_file_is_ignored_and_rewritten(run_dir):
    (run_dir / "metrics.csv").write_text("this is, not\n a metrics table\n")
    with pytest.warns(UserWarning, match="not a clusterprobe metrics table"):
        table = evaluate(run_dir, metrics="rankme")
    assert len(pd.read_csv(run_dir / "metrics.csv")) == len(table) == 4


def test_banks_without_labels(tmp_path, digits):
    X, _ = digits
    bank = FeatureBank.write(tmp_path / "unlabelled", features=layers_of(X), meta={"dataset": {"name": "digits", "split": "test"}})
    table = evaluate(bank, cache=False)
    assert set(table[table.note == ""].metric) == {"rankme"}
    table = evaluate(bank, k=10, cache=False)
    assert "davies_bouldin" in set(table[table.note == ""].metric)
    assert set(table[table.metric == "linear_top1"].note) == {f"skipped: feature bank {bank.path} has no labels"}


def test_mismatched_train_and_test_banks_are_refused(tmp_path, digits):
    X, y = digits
    run = tmp_path / "run"
    write_bank(run / "features" / "train" / "epoch_0002", X[:1300], y[:1300], "train")
    other = dict(CHECKPOINT, sha256="cd" * 32)
    write_bank(run / "features" / "test" / "epoch_0002", X[1300:], y[1300:], "test", checkpoint=other)
    with pytest.raises(MetricsError, match="different checkpoints"):
        evaluate(run, cache=False)
    # different layers
    FeatureBank.write(run / "features" / "test" / "epoch_0002", features={"H": X[1300:]}, labels=y[1300:],
                      meta={"checkpoint": CHECKPOINT}, overwrite=True)
    with pytest.raises(MetricsError, match="different layers"):
        evaluate(run, cache=False)
    # same layer names, different dimensions
    FeatureBank.write(run / "features" / "test" / "epoch_0002", features={"H": X[1300:, :60], "Z": X[1300:, :32]},
                      labels=y[1300:], meta={"checkpoint": CHECKPOINT}, overwrite=True)
    with pytest.raises(MetricsError, match="'H' has 64 dimensions in the train features but 60"):
        evaluate(run, cache=False)
    # clustering alone does not need the pair
    assert len(evaluate(run, metrics="rankme", cache=False)) == 4


def test_non_finite_bank_features_name_the_layer_and_count(tmp_path, digits):
    X, y = digits
    features = layers_of(X)
    features["Z"][[1, 5, 9]] = np.nan
    bank = FeatureBank.write(tmp_path / "b", features=features, labels=y)
    with pytest.raises(NonFiniteFeaturesError, match=r"Layer 'Z' of feature bank .*3 of 1797 rows"):
        evaluate(bank, cache=False)


def test_unknown_sources_and_layers(tmp_path, run_dir):
    from clusterprobe.errors import FeatureBankError

    with pytest.raises(FeatureBankError, match="does not exist"):
        evaluate(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureBankError, match="neither a feature bank"):
        evaluate(tmp_path / "empty")
    with pytest.raises(LayerError, match="Did you mean 'Z'"):
        evaluate(run_dir, layers=["z"], cache=False)
    with pytest.raises(MetricsError, match="No banks"):
        evaluate(run_dir, epochs=[7])


def test_cached_rows_are_not_returned_under_another_run_or_epoch(digits, tmp_path):
    # the same arrays evaluated as run A epoch 1, then as run B epoch 5, with one cache file:
    # the second table must be labelled B / 5, not carry the first call's labels
    X, y = digits
    cache = tmp_path / "m.csv"
    first = evaluate_arrays(X, y, metrics="rankme", run="A", method="simclr", epoch=1, cache=cache)
    second = evaluate_arrays(X, y, metrics="rankme", run="B", method="byol", epoch=5, cache=cache)
    assert list(first.run) == ["A"] and list(first.epoch) == [1] and list(first.method) == ["simclr"]
    assert list(second.run) == ["B"] and list(second.epoch) == [5] and list(second.method) == ["byol"]
    assert value(second, "rankme", layer="features", split="train") == pytest.approx(rankme(X))
    on_disk = pd.read_csv(cache)
    assert sorted(on_disk.run) == ["A", "B"]
    # and each is answered from the file under its own labels
    again = evaluate_arrays(X, y, metrics="rankme", run="A", method="simclr", epoch=1, cache=cache)
    pd.testing.assert_frame_equal(again, first)


def test_the_reference_probe_seed_is_part_of_its_cache_key(digits, tmp_path):
    # the reference protocol's initialisation and batch order are drawn with holdout_seed even
    # with a separate test split; another seed must not be answered with the first seed's rows
    X, y = digits
    Xtr, ytr, Xte, yte = X[:1300], y[:1300], X[1300:], y[1300:]
    cache = tmp_path / "m.csv"
    options = dict(metrics="linear", probe="reference", probe_epochs=2)
    evaluate_arrays(Xtr, ytr, Xte, yte, holdout_seed=0, cache=cache, **options)
    cached = evaluate_arrays(Xtr, ytr, Xte, yte, holdout_seed=1, cache=cache, **options)
    fresh = evaluate_arrays(Xtr, ytr, Xte, yte, holdout_seed=1, **options)
    expected = linear_probe(Xtr, ytr, Xte, yte, protocol="reference", epochs=2, seed=1)
    assert value(fresh, "linear_top1", layer="features") == pytest.approx(expected.top1)
    assert value(cached, "linear_top1", layer="features") == pytest.approx(expected.top1)
    assert json.loads(cached.settings.iloc[0])["holdout_seed"] == 1


def test_swapped_train_and_evaluated_banks_are_refused(run_dir):
    # evaluate(train_bank, train=test_bank) labelled the train bank's rows 'test' and the test
    # bank's 'train', and fitted the probes on the test split: refused, the right order still works
    train_bank = run_dir / "features" / "train" / "epoch_0002"
    test_bank = run_dir / "features" / "test" / "epoch_0002"
    with pytest.raises(MetricsError, match="swapped"):
        evaluate(train_bank, train=test_bank, metrics="rankme,linear", layers=["H"], cache=False)
    table = evaluate(test_bank, train=train_bank, metrics="rankme", layers=["H"], cache=False)
    assert dict(zip(table.split, table.n)) == {"train": 1300, "test": 497}


def test_names_that_look_like_missing_values_survive_the_cache(digits, tmp_path):
    # a run 'None', method 'null', layer 'NA' were read back from the CSV as empty names: the
    # cached rows were never found again (one more row in the file at every call)
    X, y = digits
    cache = tmp_path / "m.csv"
    first = evaluate_arrays({"NA": X}, y, metrics="rankme", run="None", method="null", cache=cache)
    again = evaluate_arrays({"NA": X}, y, metrics="rankme", run="None", method="null", cache=cache)
    pd.testing.assert_frame_equal(again, first)
    on_disk = pd.read_csv(cache, keep_default_na=False)
    assert len(on_disk) == 1 and list(on_disk.run) == ["None"] and list(on_disk.layer) == ["NA"]


def test_banks_of_another_checkpoint_are_refused_even_without_probes(run_dir, digits):
    # evaluate(test_bank, train=bank_of_epoch_10, metrics='rankme') labelled the epoch-2 test
    # features' rows epoch 10 (the group took its epoch from the train bank); the checkpoint
    # check ran only when probes were asked for
    X, y = digits
    other = dict(CHECKPOINT, epoch=10, sha256="cd" * 32, path="/runs/demo/checkpoints/epoch_0010.pt")
    late_train = run_dir / "features" / "train" / "epoch_0010"
    write_bank(late_train, X[:1300], y[:1300], "train", checkpoint=other)
    test_bank = run_dir / "features" / "test" / "epoch_0002"
    with pytest.raises(MetricsError, match="different checkpoints"):
        evaluate(test_bank, train=late_train, metrics="rankme", layers=["H"], cache=False)
    # the same in a run directory whose epoch folder holds banks of two checkpoints
    misplaced = run_dir / "features" / "train" / "epoch_0002"
    write_bank(misplaced, X[:1300], y[:1300], "train", checkpoint=other, overwrite=True)
    with pytest.raises(MetricsError, match="different checkpoints"):
        evaluate(run_dir, metrics="rankme", epochs=[2], cache=False)


def test_two_bank_folders_of_one_epoch_are_refused(run_dir, digits):
    # a copy of an epoch's banks under another folder name (epoch_0002.bak) made a second group
    # with the same run and epoch: two sets of rows with identical labels
    import shutil

    for split in ("train", "test"):
        folder = run_dir / "features" / split
        shutil.copytree(folder / "epoch_0002", folder / "epoch_0002.bak")
    with pytest.raises(MetricsError, match="both hold run 'demo', epoch 2"):
        evaluate(run_dir, metrics="rankme", cache=False)


def test_an_epoch_left_out_is_not_checked(run_dir, digits):
    # the report skips an epoch whose banks it could not make (e.g. its folder holds another
    # checkpoint's bank) and evaluates the others with epochs=[...]: the skipped folder must not
    # stop them
    X, y = digits
    other = dict(CHECKPOINT, epoch=10, sha256="cd" * 32, path="/elsewhere/checkpoints/epoch_0003.pt")
    write_bank(run_dir / "features" / "test" / "epoch_0003", X[1300:], y[1300:], "test", checkpoint=other)
    write_bank(run_dir / "features" / "train" / "epoch_0003", X[:1300], y[:1300], "train",
               checkpoint=dict(CHECKPOINT, epoch=3, sha256="ef" * 32))
    table = evaluate(run_dir, metrics="rankme", layers=["H"], epochs=[2], cache=False)
    assert set(table["epoch"]) == {2} and len(table) == 2
    with pytest.raises(MetricsError, match="different checkpoints"):
        evaluate(run_dir, metrics="rankme", layers=["H"], epochs=[3], cache=False)


def test_options_that_do_not_apply_to_the_source_are_refused(run_dir):
    # epochs= with a single bank, and train= with a run directory, were silently ignored
    test_bank = run_dir / "features" / "test" / "epoch_0002"
    with pytest.raises(MetricsError, match="holds epoch 2"):
        evaluate(test_bank, metrics="rankme", epochs=[5], cache=False)
    assert set(evaluate(test_bank, metrics="rankme", epochs=[2], cache=False)["epoch"]) == {2}
    with pytest.raises(MetricsError, match="paired by epoch"):
        evaluate(run_dir, train=run_dir / "features" / "train" / "epoch_0002", metrics="rankme", cache=False)
