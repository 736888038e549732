"""The report's progress (a bar on a terminal, plain lines in a log, nothing with --quiet) and its
UMAP (sample cap, cache, skipped with --no-umap)."""

import io
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from clusterprobe.report.build import _Progress

from test_report import make_run

runner = CliRunner()
FAST = ["--seeds", "2", "--no-umap"]
LINE = re.compile(r"^\[report\] .+ \(\d+/\d+ steps, \S+ elapsed, (about \S+ left|nothing left)\)$")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    make_run(runs / "resa", "resa", [0, 1])
    make_run(runs / "elsewhere", "vicreg", [0], dataset="cifar10")  # skipped with a warning
    return runs


def _progress_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[report]")]


def test_a_report_in_a_log_prints_progress_lines(runs, tmp_path):
    result = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "report"), *FAST])
    assert result.exit_code == 0, result.output
    lines = _progress_lines(result.stderr)
    assert lines, result.output
    assert all(LINE.match(line) for line in lines), lines
    # the first finished step is always printed, with an estimate; the last one always too
    assert "elsewhere: skipped" in lines[0] and "elapsed" in lines[0] and "about" in lines[0]
    assert " left" in lines[0] and lines[-1].endswith("nothing left)")
    assert "figures and page written" in lines[-1]
    assert "elsewhere skipped" in result.stderr  # the warning
    assert "report:" in result.stdout and "[report]" not in result.stdout  # progress goes to stderr
    # --no-umap skips all of UMAP: no figure, no embedding cache, not a UMAP step
    assert not (tmp_path / "report" / "cache" / "umap").exists()
    assert not (tmp_path / "report" / "figures" / "umap.png").exists() and "UMAP" not in result.stderr


def test_quiet_prints_no_progress_but_the_warnings(runs, tmp_path):
    result = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "report"), *FAST, "--quiet"])
    assert result.exit_code == 0, result.output
    assert _progress_lines(result.output) == [] and "elapsed" not in result.output
    assert "warning:" in result.stderr and "elsewhere skipped" in result.stderr
    assert "report:" in result.stdout


def test_lines_are_throttled_and_estimate_what_is_left(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("clusterprobe.report.build.time.monotonic", lambda: clock[0])
    stream = io.StringIO()
    bar = _Progress(4, "lines", every=10, stream=stream)
    clock[0] += 30
    bar.advance(done="first")  # always printed
    clock[0] += 5
    bar.advance(done="second")  # 5 s after the last line: held back
    clock[0] += 6
    bar.add_total(1)
    bar.advance(done="third")  # 11 s after it: printed
    clock[0] += 1
    bar.advance(done="fourth")
    clock[0] += 1
    bar.advance(done="last")  # the last step: always printed
    bar.close()
    assert stream.getvalue().splitlines() == [
        "[report] first (1/4 steps, 30s elapsed, about 1m30s left)",
        "[report] third (3/5 steps, 41s elapsed, about 27s left)",
        "[report] last (5/5 steps, 43s elapsed, nothing left)",
    ]


def test_a_long_step_gets_a_still_working_line(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("clusterprobe.report.build.time.monotonic", lambda: clock[0])
    stream = io.StringIO()
    bar = _Progress(2, "lines", every=5, heartbeat=60, stream=stream)
    bar.describe("resa metrics: layer H")  # not yet
    clock[0] = 61
    bar.describe("resa metrics: layer Z")
    assert stream.getvalue() == "[report] still working: resa metrics: layer Z (0/2 steps, 1m01s elapsed, time left unknown yet)\n"


def test_auto_mode_chooses_the_bar_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert _Progress(1, True, stream=io.StringIO()).mode == "lines"
    bar = _Progress(1, "auto", stream=Terminal())
    assert bar.mode == "bar"
    bar.advance()
    bar.close()
    assert _Progress(1, False).enabled is False
    with pytest.raises(ValueError):
        _Progress(1, "loud")


# ---- UMAP ---------------------------------------------------------------------------------------

class FakeBank:
    """What cached_bank_embedding reads of a FeatureBank."""

    def __init__(self, features, labels, fingerprint="bank-1"):
        self.features, self.labels, self.n = features, labels, len(labels)
        self.meta, self.path = {"fingerprint": fingerprint, "created": "now"}, "nowhere"

    def __getitem__(self, layer):
        return self.features[layer]


def _blobs(n=300, d=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, d)) * 4
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def test_cosine_knn_is_the_exact_cosine_neighbourhood():
    from sklearn.neighbors import NearestNeighbors

    from clusterprobe.report.embedding import cosine_knn

    x, _ = _blobs(n=257)
    x[5] = x[4]  # a duplicate: each point still comes first in its own row
    indices, distances = cosine_knn(x, 10, block=64)
    assert indices.shape == distances.shape == (257, 10) and indices.dtype == np.int32
    assert (indices[:, 0] == np.arange(257)).all() and np.allclose(distances[:, 0], 0, atol=1e-6)
    expected, _ = NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(x).kneighbors(x)
    reference = NearestNeighbors(metric="cosine", algorithm="brute").fit(x)
    exact = np.sort(reference.kneighbors(x, 10)[0], axis=1)
    assert np.allclose(distances, exact, atol=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()


def test_umap_is_deterministic_and_separates_blobs():
    from clusterprobe.report.embedding import umap_embedding

    x, labels = _blobs()
    first = umap_embedding(x, seed=0, backend="cpu")
    assert first.shape == (300, 2) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(first, umap_embedding(x, seed=0, backend="cpu"))
    centres = np.stack([first[labels == c].mean(0) for c in range(3)])
    spread = max(first[labels == c].std(0).max() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread


def test_embeddings_are_capped_stratified_and_cached(tmp_path, monkeypatch):
    import clusterprobe.report.embedding as embedding

    x, labels = _blobs(n=600)
    bank = FakeBank({"H": x, "Z": x[:, :8]}, labels)
    calls = []
    real = embedding.umap_embedding
    monkeypatch.setattr(embedding, "umap_embedding", lambda f, **kw: calls.append(len(f)) or real(f, **kw))
    points, chosen = embedding.cached_bank_embedding(bank, "H", tmp_path, max_points=200)
    assert points.shape == (200, 2) and sorted(np.bincount(chosen).tolist()) == [66, 67, 67] and calls == [200]
    # reused: same bank, layer and settings
    again, _ = embedding.cached_bank_embedding(bank, "H", tmp_path, max_points=200)
    np.testing.assert_array_equal(points, again)
    assert calls == [200] and len(list(tmp_path.glob("umap-*.npz"))) == 1
    # another layer, setting or bank is computed on its own
    embedding.cached_bank_embedding(bank, "Z", tmp_path, max_points=200)
    embedding.cached_bank_embedding(bank, "H", tmp_path, max_points=200, n_epochs=50)
    embedding.cached_bank_embedding(FakeBank(bank.features, labels, "bank-2"), "H", tmp_path, max_points=200)
    assert calls == [200] * 4 and len(list(tmp_path.glob("umap-*.npz"))) == 4
    # a damaged cache file is computed again
    damaged = sorted(tmp_path.glob("umap-*.npz"), key=lambda p: p.stat().st_mtime)[0]
    damaged.write_bytes(b"PK\x03\x04 truncated")
    embedding.cached_bank_embedding(bank, "H", tmp_path, max_points=200)
    assert len(calls) == 5


def test_a_failing_cuml_falls_back_to_the_cpu(monkeypatch):
    import clusterprobe.report.embedding as embedding

    def broken(*args, **kwargs):
        raise RuntimeError("no CUDA context")

    monkeypatch.setattr(embedding, "cuml_available", lambda: True)
    monkeypatch.setattr(embedding, "_cuml_umap", broken)
    x, _ = _blobs(n=100)
    with pytest.warns(RuntimeWarning, match="cuML's UMAP failed"):
        points = embedding.umap_embedding(x)
    np.testing.assert_array_equal(points, embedding.umap_embedding(x, backend="cpu"))
    with pytest.raises(RuntimeError, match="no CUDA"):
        embedding.umap_embedding(x, backend="cuml")
    with pytest.raises(ValueError, match="backend"):
        embedding.umap_embedding(x, backend="tpu")


def test_cuml_is_only_chosen_with_a_gpu(monkeypatch):
    import torch

    import clusterprobe.report.embedding as embedding

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert embedding.cuml_available() is False
