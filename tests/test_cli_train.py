"""``clusterprobe train``: what its help promises about its options."""

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def _help(command):
    return " ".join(runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"}).output.split())


def test_image_size_help_says_it_applies_to_every_data_set():
    """The help said "imagefolder; others use their own size", but a CIFAR or digits run trains
    on views of the size given (test_data covers the resize; build_data uses config.image_size)."""
    from clusterprobe.trainer.config import TrainConfig

    text = _help("train")
    assert "others use their own size" not in text
    assert "Size NxN of the training views, for any data set" in text
    defaults = TrainConfig()
    assert f"{defaults.method} (default)" in text and f"{defaults.dataset} (default)" in text


def test_a_checkpoint_given_as_the_config_file_is_one_clean_error(tmp_path):
    (tmp_path / "epoch_0001.pt").write_bytes(b"PK\x03\x04\x80\x81\xfe binary")
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "epoch_0001.pt"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "is not a text file" in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run").exists()
