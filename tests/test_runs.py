"""The run-directory layout: names written by the trainer are the names every reader parses."""

import pytest

from clusterprobe.errors import ClusterprobeError
from clusterprobe.runs import (RunLayout, checkpoint_name, epoch_name, parse_epoch, read_config_file,
                               run_of_checkpoint)


def test_names_round_trip_and_sort_as_numbers(tmp_path):
    assert epoch_name(7) == "epoch_0007" and checkpoint_name(12345) == "epoch_12345.pt"
    assert parse_epoch("epoch_0007") == 7 and parse_epoch("epoch_0007.pt", ".pt") == 7
    assert parse_epoch("epoch_7.pt", ".pt") == 7  # hand-made names without padding still count
    for name in ("epoch_0007.pt", "epoch_x", "last.pt", "epoch_0007.pt.tmp", ".epoch_0007"):
        assert parse_epoch(name) is None
    assert parse_epoch("epoch_0007.ckpt", ".pt") is None
    layout = RunLayout(tmp_path / "run")
    for epoch in (10000, 2, 9999, 0):
        path = layout.checkpoint_path(epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (layout.checkpoint_dir / "notes.txt").write_text("")
    assert list(layout.checkpoints()) == [0, 2, 9999, 10000]
    assert layout.bank_path("test", 3) == tmp_path / "run" / "features" / "test" / "epoch_0003"
    other = layout.variant("cifar100", "online")
    assert other.bank_path("train", 3) == tmp_path / "run" / "analyses" / "cifar100-online" / "features" / "train" / "epoch_0003"
    assert layout.variant("cifar100").metrics_path == tmp_path / "run" / "analyses" / "cifar100" / "metrics.csv"
    assert layout.variant() is layout
    assert run_of_checkpoint(layout.checkpoint_path(2)).path == layout.path
    assert run_of_checkpoint(tmp_path / "model.pt") is None


def test_config_reader(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.read_config() == {}
    layout.config_path.write_text("method: resa\nepochs: 3\n")
    assert layout.read_config() == {"method": "resa", "epochs": 3}
    (tmp_path / "c.toml").write_text('method = "byol"\n')
    assert read_config_file(tmp_path / "c.toml") == {"method": "byol"}
    layout.config_path.write_text("- a list\n")
    with pytest.raises(ClusterprobeError, match="must hold a mapping"):
        layout.read_config()
    layout.config_path.write_text("method: [unclosed\n")
    with pytest.raises(ClusterprobeError, match="could not be parsed"):
        layout.read_config()
    with pytest.raises(ClusterprobeError, match="does not exist"):
        read_config_file(tmp_path / "missing.yaml")


def test_config_files_that_are_not_text_or_not_files_are_named(tmp_path, monkeypatch):
    """A checkpoint passed as --config ended in a UnicodeDecodeError traceback, a directory was
    said not to exist, and on Python 3.10 (no tomllib) a TOML file 'could not be parsed: No module
    named tomllib'."""
    import sys

    (tmp_path / "epoch_0001.pt").write_bytes(b"PK\x03\x04\x80\x81\xfe binary")
    with pytest.raises(ClusterprobeError, match=r"epoch_0001.pt is not a text file \(not UTF-8\)"):
        read_config_file(tmp_path / "epoch_0001.pt")
    with pytest.raises(ClusterprobeError, match="is a directory; give the YAML or TOML file in it"):
        read_config_file(tmp_path)
    (tmp_path / "c.toml").write_text('method = "byol"\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import fails, as on Python 3.10
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(ClusterprobeError, match=r"TOML, which needs Python 3.11 or later.*pip install tomli"):
        read_config_file(tmp_path / "c.toml")
    (tmp_path / "c.yaml").write_text("method: byol\n")  # YAML needs neither
    assert read_config_file(tmp_path / "c.yaml") == {"method": "byol"}
