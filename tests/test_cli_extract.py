import json
import numpy as np
from typer.testing import CliRunner

from cli.main import app
from clusterprobe import FeatureBank

runner = CliRunner()


def test_layers_lists_names_dims_and_modules(own_checkpoint):
    path, _, _ = own_checkpoint
    result = runner.invoke(app, ["layers", str(path)])
    assert result.exit_code == 0, result.output
    for row in ("H", "64", "projector.2", "projector.5", "Z", "32", "momentum branch (also: online), epoch 3", "backbone.layer3", "Assumed: nothing"):
        assert row in result.output


def test_extract_writes_the_run_bank_by_default(own_checkpoint):
    path, _, _ = own_checkpoint
    result = runner.invoke(app, ["extract", str(path), "--layers", "H,Z", "--dataset", "digits", "--split", "test"])
    assert result.exit_code == 0, result.output
    bank = FeatureBank.open(path.parent.parent / "features" / "test" / "epoch_0003")
    assert bank.layers == ["H", "Z"] and bank.n == 450 and "wrote 450 samples" in result.output
    assert np.isfinite(bank["Z"]).all()


def test_cli_errors_are_one_clean_paragraph(own_checkpoint, tmp_path):
    path, _, _ = own_checkpoint
    result = runner.invoke(app, ["extract", str(path), "--layers", "H,Q", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert "Unknown layer 'Q'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["extract", str(tmp_path / "missing.pt")])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = runner.invoke(app, ["extract", str(path), "--dataset", "cifar10", "--data-root", str(tmp_path)])
    assert result.exit_code == 1 and "--download" in result.output


def test_data_set_that_does_not_fit_the_model_is_explained(solo_checkpoint, tmp_path):
    path, _, _ = solo_checkpoint  # a 3-channel CIFAR model
    result = runner.invoke(app, ["extract", str(path), "--dataset", "digits", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "takes 3-channel images" in result.output and "(1, 8, 8)" in result.output


def test_dataset_defaults_to_the_one_the_checkpoint_names(own_checkpoint, tmp_path):
    path, _, _ = own_checkpoint  # trained on digits
    result = runner.invoke(app, ["extract", str(path), "--layers", "H", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert FeatureBank.open(tmp_path / "b").meta["dataset"]["name"] == "digits"


def test_a_damaged_bank_is_refused_not_reused_and_overwrite_repairs_it(own_checkpoint, tmp_path):
    """Issue 9: a truncated H.npy used to be reused as complete ("wrote 450 samples", exit 0)."""
    import os

    import numpy as np

    path, _, _ = own_checkpoint
    out = tmp_path / "bank"
    args = ["extract", str(path), "--layers", "H,Z", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    reference = np.array(FeatureBank.open(out)["H"])
    with open(out / "H.npy", "r+b") as handle:
        handle.truncate(os.path.getsize(out / "H.npy") - 64)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "H.npy has" in result.output and "truncated" in result.output and "--overwrite" in result.output
    (out / "meta.json").write_text('{"format": ')  # a truncated meta.json
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "meta.json is not valid JSON" in result.output
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    np.testing.assert_array_equal(FeatureBank.open(out)["H"], reference)


def test_mean_and_std_options_set_the_normalisation(own_checkpoint, tmp_path):
    path, _, _ = own_checkpoint
    result = runner.invoke(app, ["extract", str(path), "--dataset", "digits", "--layers", "H",
                                 "--out", str(tmp_path / "bank"), "--mean", "0.5", "--std", "0.25"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "bank" / "meta.json").read_text())
    assert meta["dataset"]["info"]["mean"] == [0.5] and meta["dataset"]["info"]["std"] == [0.25]
    result = runner.invoke(app, ["extract", str(path), "--mean", "half"])
    assert result.exit_code != 0 and "--mean takes numbers" in result.output


def test_normalisation_or_size_that_does_not_fit_the_images_is_one_clean_error(own_checkpoint, tmp_path):
    """These ended in a torch/PIL traceback after the model was loaded (or, --image-size 0, were
    silently ignored)."""
    path, _, _ = own_checkpoint  # digits: 1 channel
    for option, message in ((["--mean", "0.5,0.5,0.5"], "mean has 3 values but digits images have 1 channel"),
                            (["--std", "0"], "std values must be > 0"),
                            (["--image-size", "0"], "image_size must be a whole number of pixels >= 1"),
                            (["--image-size", "-3"], "image_size must be a whole number of pixels >= 1")):
        result = runner.invoke(app, ["extract", str(path), "--layers", "H", "--out", str(tmp_path / "b"), *option])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
        assert not (tmp_path / "b").exists()


def test_a_negative_number_of_workers_is_a_usage_error(own_checkpoint, tmp_path):
    """--num-workers -1 ended in torch's ValueError traceback from the DataLoader."""
    path, _, _ = own_checkpoint
    result = runner.invoke(app, ["extract", str(path), "--layers", "H", "--out", str(tmp_path / "b"), "--num-workers", "-1"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "Invalid value for '--num-workers'" in result.output, result.output
    assert not (tmp_path / "b").exists()


def test_image_size_resizes_any_data_set_as_its_help_says(own_checkpoint, tmp_path):
    """The help said --image-size was for imagefolder; it resizes every data set (digits here)
    and defaults to the size the run trained at."""
    path, _, _ = own_checkpoint
    help_text = " ".join(runner.invoke(app, ["extract", "--help"], env={"COLUMNS": "300"}).output.split())
    assert "for any data set (default: the image_size the checkpoint's run trained at" in help_text
    assert "(imagefolder)." not in help_text
    result = runner.invoke(app, ["extract", str(path), "--layers", "H", "--out", str(tmp_path / "b"), "--image-size", "16"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["dataset"]["info"]["image_size"] == 16 and "Resize(size=16" in meta["dataset"]["transform"]


def test_an_out_below_a_file_says_the_file_is_not_a_folder(own_checkpoint, tmp_path):
    """`extract --out x.txt/b` with x.txt a file said "x.txt is not writable (File exists)": the
    operating system's words for mkdir over a file, which sent users after permissions."""
    path, _, _ = own_checkpoint
    (tmp_path / "x.txt").write_text("notes\n")
    for out in (tmp_path / "x.txt" / "b", tmp_path / "x.txt" / "deeper" / "b"):
        result = runner.invoke(app, ["extract", str(path), "--layers", "H", "--out", str(out)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        text = " ".join(result.output.split())
        assert f"{tmp_path / 'x.txt'} is a file, not a folder" in text
        assert "not writable" not in text and "File exists" not in text and "Not a directory" not in text
    assert (tmp_path / "x.txt").read_text() == "notes\n"
