"""Progress in logs: plain lines instead of a bar's carriage returns (and the shared formats)."""

from __future__ import annotations

import io

import pytest

from clusterprobe import progress
from clusterprobe.progress import LogProgress, format_duration, is_terminal, progress_bar


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 60, 80, 599, 600, 3900, 7199)] == \
        ["0s", "42s", "1m", "1m20s", "9m59s", "10m", "1h05m", "1h59m"]


def test_a_log_gets_lines_at_most_every_interval_and_one_at_the_end(clock):
    stream = io.StringIO()
    bar = progress_bar(total=50_000, desc="extract", unit="img", unit_scale=True, every=30, stream=stream)
    assert isinstance(bar, LogProgress)  # StringIO is no terminal
    for _ in range(10):  # 10 s of work: no line yet
        clock.now += 1
        bar.update(1000)
    assert stream.getvalue() == ""
    clock.now += 20
    bar.update(2800)  # 12,800 images after 30 s
    clock.now += 10
    bar.update(200)  # 10 s after the line: none
    bar.set_postfix(loss="4.0123")
    clock.now += 60
    bar.update(37_000)
    bar.close()
    bar.close()  # once only
    lines = stream.getvalue().splitlines()
    assert lines == [
        "[extract] 12.8k/50.0k img (26%), 30s elapsed, about 1m27s left, 427 img/s",
        "[extract] 50.0k/50.0k img (100%), 1m40s elapsed, 500 img/s, loss=4.0123",
    ]
    assert "\r" not in stream.getvalue()


def test_iteration_counts_items_and_plain_counts_have_separators(clock):
    stream = io.StringIO()
    seen = []
    for item in progress_bar(range(1500), desc="epoch 1/2", unit="step", every=30, stream=stream):
        seen.append(item)
        clock.now += 0.01
    assert seen == list(range(1500))
    assert stream.getvalue() == "[epoch 1/2] 1,500/1,500 step (100%), 15s elapsed, 100 step/s\n"


def test_disabled_prints_nothing_and_terminals_get_tqdm(monkeypatch):
    stream = io.StringIO()
    quiet = progress_bar(range(3), total=3, enabled=False, stream=stream)
    assert list(quiet) == [0, 1, 2] and stream.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    from tqdm.auto import tqdm

    terminal = Terminal()
    assert is_terminal(terminal) and not is_terminal(io.StringIO())
    bar = progress_bar(total=3, stream=terminal)
    assert isinstance(bar, tqdm)
    bar.close()


def test_extraction_into_a_log_writes_lines_not_carriage_returns(tmp_path, capsys):
    import torch

    from clusterprobe import build_model
    from clusterprobe.data import load_dataset
    from clusterprobe.extract import extract_features

    torch.manual_seed(0)
    model = build_model("resnet18", width=4, in_channels=1, projector_dims=(16, 16, 8))
    data = load_dataset("digits", split="test")
    extract_features(model, data, tmp_path / "bank", device="cpu", progress=True)
    err = capsys.readouterr().err  # captured: not a terminal, as in a log file
    assert "\r" not in err
    assert f"[extract] {len(data)}/{len(data)} img (100%)" in err
