"""The report's progress (a bar on a terminal, plain lines in a log, nothing with --quiet) and its
UMAP (sample cap, cache, skipped with --no-umap)."""

import io
import re

import pytest
from typer.testing import CliRunner

from cli.main import app
from clusterprobe.report.build import _duration, _Progress

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


def test_durations_read_short():
    assert [_duration(s) for s in (0, 42, 60, 80, 599, 600, 3725)] == ["0s", "42s", "1m", "1m20s", "9m59s", "10m", "1h02m"]
