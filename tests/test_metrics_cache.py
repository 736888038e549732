"""The metrics cache file under concurrent saves: two evaluations writing into one table."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from clusterprobe.io import exclusive_lock, lock_file_of
from clusterprobe.metrics import cache as cache_module
from clusterprobe.metrics.cache import MetricsCache
from clusterprobe.metrics.table import MetricRow


def _row(epoch: int, value: float) -> MetricRow:
    return MetricRow(run="r", method="resa", epoch=epoch, layer="H", split="test", metric="nmi", value=value,
                     unit="kmeans", settings_hash="s", data_id=f"d{epoch}")


def test_concurrent_saves_keep_each_others_rows(tmp_path, monkeypatch):
    """A save that read the file before another save wrote it must not overwrite that save's rows.

    Without the lock: A reads (empty), B reads (empty) and writes epoch 2, A writes epoch 1 only.
    """
    path = tmp_path / "metrics.csv"
    first, second = MetricsCache(path), MetricsCache(path)
    first.add([_row(1, 0.5)])
    second.add([_row(2, 0.7)])

    in_write, release = threading.Event(), threading.Event()
    real_write = cache_module.atomic_write

    def slow_write(*args, **kwargs):
        if threading.current_thread().name == "first":
            in_write.set()
            assert release.wait(10)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(cache_module, "atomic_write", slow_write)
    a = threading.Thread(target=first.save, name="first")
    a.start()
    assert in_write.wait(10)
    b = threading.Thread(target=second.save, name="second")
    b.start()
    b.join(0.5)
    assert b.is_alive(), "the second save did not wait for the first one's lock"
    release.set()
    a.join(10)
    b.join(10)
    table = pd.read_csv(path)
    assert sorted(table["epoch"]) == [1, 2]
    assert dict(zip(table["epoch"], table["value"])) == {1: 0.5, 2: 0.7}
    assert not lock_file_of(path).exists()


def test_save_gives_up_with_a_clear_error_when_the_lock_stays_held(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    cache = MetricsCache(path)
    cache.add([_row(1, 0.5)])
    monkeypatch.setattr(cache_module, "LOCK_WAIT_S", 0.3)
    done = {}

    def save_elsewhere():  # another thread opens its own lock file description: it conflicts
        with pytest.warns(UserWarning, match="not cached"):
            done["saved"] = cache.save()

    with exclusive_lock(path):
        worker = threading.Thread(target=save_elsewhere)
        worker.start()
        worker.join(10)
    assert done["saved"] is False
    assert "in use by process" in cache.error and str(path) in cache.error
    assert not path.exists()
