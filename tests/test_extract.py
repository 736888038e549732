import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from clusterprobe import FeatureBank, load_checkpoint
from clusterprobe.data import load_dataset
from clusterprobe.errors import FeatureBankError, LayerError, NonFiniteFeaturesError
from clusterprobe.extract import extract_features

from conftest import REPO


def plain_forward(model, dataset):
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        h = model.encode(x)
        return h.numpy(), model.project(h).numpy()


def test_own_checkpoint_bank_matches_a_plain_forward(own_checkpoint, tmp_path):
    path, _, momentum = own_checkpoint
    data = load_dataset("digits", split="test")
    bank = extract_features(path, data, tmp_path / "bank", batch_size=100, progress=False)
    assert bank.layers == ["H", "P0", "P1", "Z"]
    assert bank.dims == {"H": 64, "P0": 64, "P1": 64, "Z": 32} and bank.n == 450
    h, z = plain_forward(momentum, data)  # the recorded default branch is the momentum one
    np.testing.assert_allclose(bank["H"], h, atol=1e-6, rtol=0)
    np.testing.assert_allclose(bank["Z"], z, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(bank.labels, data.targets)
    assert bank["H"].dtype == np.float32 and isinstance(bank["H"], np.memmap)
    meta = bank.meta
    assert meta["checkpoint"]["epoch"] == 3 and meta["checkpoint"]["sha256"] == load_checkpoint(path).sha256
    assert meta["dataset"]["name"] == "digits" and meta["dataset"]["split"] == "test"
    assert "Normalize" in meta["dataset"]["transform"] and meta["class_names"][0] == "0"


def test_solo_learn_bank_on_cifar10_images(solo_checkpoint, cifar10, tmp_path):
    path, online, _ = solo_checkpoint
    data = load_dataset("cifar10", root=cifar10, split="test")
    subset_indices = np.arange(0, len(data), 100)  # 100 images, 10 per class
    data.targets = data.targets[subset_indices]
    data._images = [data.image(int(i)) for i in subset_indices]
    bank = extract_features(path, data, tmp_path / "bank", batch_size=32, progress=False)
    assert bank.dims == {"H": 512, "P0": 64, "P1": 64, "Z": 32} and bank.n == 100
    h, z = plain_forward(online, data)
    np.testing.assert_allclose(bank["H"], h, atol=1e-6, rtol=0)
    np.testing.assert_allclose(bank["Z"], z, atol=1e-6, rtol=0)
    assert bank.meta["checkpoint"]["format"] == "solo-learn"
    assert sorted(np.bincount(bank.labels)) == [10] * 10


class CountingDataset(torch.utils.data.Dataset):
    """Wraps a data set, counts reads and can fail after a number of them (an interruption)."""

    def __init__(self, base, fail_after=None):
        self.base, self.fail_after, self.reads = base, fail_after, 0
        self.targets, self.description = base.targets, dict(base.description)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        if self.fail_after is not None and self.reads >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.reads += 1
        return self.base[index]


def test_interrupted_extraction_resumes_from_finished_chunks(own_checkpoint, tmp_path):
    path, _, _ = own_checkpoint
    base = load_dataset("digits", split="test")
    reference = extract_features(path, base, tmp_path / "reference", batch_size=50, progress=False)
    flaky = CountingDataset(base, fail_after=230)  # 4 chunks of 100 rows: dies inside chunk 2
    with pytest.raises(KeyboardInterrupt):
        extract_features(path, flaky, tmp_path / "bank", batch_size=50, chunk_batches=2, progress=False)
    assert not (tmp_path / "bank").exists() and (tmp_path / "bank.partial").exists()
    resumed = CountingDataset(base)
    bank = extract_features(path, resumed, tmp_path / "bank", batch_size=50, chunk_batches=2, progress=False)
    assert resumed.reads == 1 + 450 - 200  # one probe read for the dims; chunks 0, 1 not redone
    for layer in bank.layers:
        np.testing.assert_array_equal(bank[layer], reference[layer])
    assert not (tmp_path / "bank.partial").exists()


def test_resuming_with_another_chunk_size_recomputes_instead_of_leaving_zeros(own_checkpoint, tmp_path):
    """Done markers are chunk ids: resumed with other chunk sizes, chunk 0 (rows 0-99 when it
    was written) counted as rows 0-449, and rows 100-449 stayed zero in a 'finished' bank."""
    path, _, _ = own_checkpoint
    base = load_dataset("digits", split="test")
    reference = extract_features(path, base, tmp_path / "reference", batch_size=50, progress=False)
    with pytest.raises(KeyboardInterrupt):
        extract_features(path, CountingDataset(base, fail_after=230), tmp_path / "bank", batch_size=50,
                         chunk_batches=2, progress=False)
    resumed = CountingDataset(base)
    bank = extract_features(path, resumed, tmp_path / "bank", batch_size=50, progress=False)
    assert resumed.reads == 1 + 450  # started again: the old chunks cover other rows
    for layer in bank.layers:
        np.testing.assert_array_equal(bank[layer], reference[layer])


def test_existing_banks_are_reused_refused_or_overwritten(own_checkpoint, model, tmp_path):
    path, _, _ = own_checkpoint
    data = load_dataset("digits", split="test")
    first = extract_features(path, data, tmp_path / "bank", layers=["H"], progress=False)
    counting = CountingDataset(data)
    again = extract_features(path, counting, tmp_path / "bank", layers=["H"], progress=False)
    assert counting.reads == 0 and again.meta["created"] == first.meta["created"]
    with pytest.raises(FeatureBankError, match="already holds a different feature bank.*--overwrite"):
        extract_features(path, data, tmp_path / "bank", layers=["H", "Z"], progress=False)
    replaced = extract_features(path, data, tmp_path / "bank", layers=["H", "Z"], overwrite=True, progress=False)
    assert replaced.layers == ["H", "Z"]


def test_unknown_layer_is_explained_before_any_work(own_checkpoint, tmp_path):
    path, _, _ = own_checkpoint
    with pytest.raises(LayerError, match="offers H, P0, P1, Z.*Did you mean 'P1'"):
        extract_features(path, load_dataset("digits", split="test"), tmp_path / "b", layers=["H", "P11"])
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


def test_non_finite_features_are_refused_with_layer_and_count(model, tmp_path):
    with torch.no_grad():
        model.projector[6].weight[0, 0] = float("nan")  # output unit 0 of Z only
    data = load_dataset("digits", split="test")
    with pytest.raises(NonFiniteFeaturesError, match=r"features: layer Z: 450 values\."):  # 1 per sample
        extract_features(model, data, tmp_path / "bank", progress=False)
    assert not (tmp_path / "bank").exists() and not (tmp_path / "bank.partial").exists()


def test_in_memory_models_with_other_weights_never_reuse_a_bank(tmp_path):
    from conftest import tiny_model

    data = load_dataset("digits", split="test")
    extract_features(tiny_model(seed=0), data, tmp_path / "bank", layers=["H"], progress=False)
    with pytest.raises(FeatureBankError, match="different feature bank"):
        extract_features(tiny_model(seed=5), data, tmp_path / "bank", layers=["H"], progress=False)


@pytest.mark.distributed
def test_torchrun_with_two_processes_gives_the_single_process_bank(own_checkpoint, tmp_path):
    path, _, _ = own_checkpoint
    single = extract_features(path, load_dataset("digits", split="train"), tmp_path / "single",
                              batch_size=64, chunk_batches=2, progress=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "--module", "cli.main", "extract", str(path), "--dataset", "digits", "--split", "train",
               "--out", str(tmp_path / "ddp"), "--batch-size", "64", "--device", "cpu"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = FeatureBank.open(tmp_path / "ddp")
    assert ddp.meta["extraction"]["world_size"] == 2
    for layer in single.layers:
        np.testing.assert_allclose(ddp[layer], single[layer], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(ddp.labels, single.labels)


def test_library_defaults_match_the_cli(own_checkpoint):
    """extract_features(path) chooses the data set and bank path exactly as `clusterprobe extract` does."""
    from typer.testing import CliRunner

    from cli.main import app
    from clusterprobe.extract import checkpoint_dataset

    path, _, _ = own_checkpoint
    bank = extract_features(path, layers=["H"], progress=False)  # data set and place from the checkpoint
    assert bank.path == path.parent.parent / "features" / "test" / "epoch_0003"
    assert bank.meta["dataset"]["name"] == "digits" and bank.meta["dataset"]["split"] == "test"
    result = CliRunner().invoke(app, ["extract", str(path), "--layers", "H"])
    assert result.exit_code == 0, result.output
    assert str(bank.path) in result.output.replace("\n", "")  # the same bank, reused
    train_data = checkpoint_dataset(load_checkpoint(path), split="train")
    assert train_data.description["name"] == "digits" and len(train_data) == 1347
    with pytest.raises(Exception, match="needs a root|No cifar10 data"):
        checkpoint_dataset(load_checkpoint(path), "cifar10", root=path.parent / "nowhere")


def test_another_transform_of_the_same_data_set_never_reuses_its_bank(tmp_path):
    """with_transform keeps the description it was loaded with: the bank of the evaluation
    transform was returned for other images (the fingerprint said the same transform)."""
    import torchvision.transforms as T

    from conftest import tiny_model

    model = tiny_model()
    data = load_dataset("digits", split="test")
    extract_features(model, data, tmp_path / "bank", layers=["H"], progress=False)
    other = data.with_transform(T.ToTensor())  # no normalisation
    with pytest.raises(FeatureBankError, match="different feature bank"):
        extract_features(model, other, tmp_path / "bank", layers=["H"], progress=False)
    bank = extract_features(model, other, tmp_path / "other", layers=["H"], progress=False)
    x = torch.stack([other[i][0] for i in range(len(other))])
    with torch.no_grad():
        np.testing.assert_allclose(bank["H"], model.encode(x).numpy(), atol=1e-6, rtol=0)


def test_subsets_of_other_rows_never_reuse_a_bank(tmp_path):
    """Subsets were described by their class name and size only: the first 400 train images'
    bank was returned for the first 400 test images."""
    from torch.utils.data import Subset

    from conftest import tiny_model

    model = tiny_model()
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    extract_features(model, Subset(train, range(400)), tmp_path / "bank", layers=["H"], progress=False)
    for other in (Subset(test, range(400)), Subset(train, range(1, 401))):
        with pytest.raises(FeatureBankError, match="different feature bank"):
            extract_features(model, other, tmp_path / "bank", layers=["H"], progress=False)
    again = extract_features(model, Subset(train, range(400)), tmp_path / "bank", layers=["H"], progress=False)
    assert again.reused
    np.testing.assert_array_equal(again.labels, train.targets[:400])


def test_checkpoints_loaded_without_their_file_hash_are_told_apart_by_their_weights(tmp_path):
    """load_checkpoint(hash_file=False) records no sha256: the fingerprint then held only path,
    epoch and config, and a retrained checkpoint at the same path reused the old bank."""
    from clusterprobe import save_checkpoint

    from conftest import tiny_model

    data = load_dataset("digits", split="test")
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, tiny_model(seed=0), epoch=1, step=1, method="resa", dataset="digits")
    extract_features(load_checkpoint(path, hash_file=False), data, tmp_path / "bank", layers=["H"], progress=False)
    assert extract_features(load_checkpoint(path, hash_file=False), data, tmp_path / "bank", layers=["H"],
                            progress=False).reused  # the same weights: reused
    save_checkpoint(path, tiny_model(seed=7), epoch=1, step=1, method="resa", dataset="digits")
    with pytest.raises(FeatureBankError, match="different feature bank"):
        extract_features(load_checkpoint(path, hash_file=False), data, tmp_path / "bank", layers=["H"],
                         progress=False)


def test_an_in_memory_model_in_training_mode_is_left_in_training_mode(tmp_path):
    """Extraction switched the caller's model to eval() and left it there: a training loop that
    extracts between epochs then trained with frozen BatchNorm statistics."""
    from conftest import tiny_model

    model = tiny_model().train()
    model.projector[1].eval()  # a module the caller froze stays frozen
    before = {name: module.training for name, module in model.named_modules()}
    data = load_dataset("digits", split="test")
    bank = extract_features(model, data, tmp_path / "bank", layers=["H"], progress=False)
    assert {name: module.training for name, module in model.named_modules()} == before
    model.eval()
    x = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        np.testing.assert_allclose(bank["H"], model.encode(x).numpy(), atol=1e-6, rtol=0)  # eval-mode features


def test_another_branch_or_data_set_of_a_run_goes_to_its_analyses_folder(own_checkpoint):
    """The run's metrics read every bank under <run>/features as the run's own (its default
    branch, its data set), so extract puts a bank of the other branch, or of another data set,
    where the report keeps them: <run>/analyses/<dataset>-<branch>/features/..."""
    from clusterprobe import evaluate

    path, _, momentum = own_checkpoint
    run = path.parent.parent
    own = extract_features(path, layers=["H"], progress=False)  # ReSA: the momentum branch
    assert own.path == run / "features" / "test" / "epoch_0003" and own.meta["checkpoint"]["branch"] == "momentum"
    online = extract_features(load_checkpoint(path, branch="online"), layers=["H"], progress=False)
    assert online.path == run / "analyses" / "online" / "features" / "test" / "epoch_0003"
    assert not np.array_equal(online["H"], own["H"])
    same = extract_features(load_checkpoint(path, branch="momentum"), layers=["H"], progress=False)
    assert same.path == own.path  # the default branch named: the run's own bank, reused
    table = evaluate(run, layers=["H"], metrics=["rankme"], cache=False)
    assert set(table["split"]) == {"test"} and set(table["epoch"]) == {3}
    assert len(table) == 1  # only the run's own bank: the online one is not measured as the run's


def test_a_run_checkpoint_is_extracted_on_the_images_and_size_its_run_trained_on(tmp_path):
    """clusterprobe extract RUN/checkpoints/epoch_X.pt used the original image size and --data-root
    data, while the run's config.yaml says where its images are and the size it trained at (as the
    report and the training monitor use): an imagefolder run trained on 8x8 images was measured on
    its 12x12 originals."""
    from conftest import imagefolder_run

    images, run, path = imagefolder_run(tmp_path, images_per_class=6, size=12, trained_at=8)
    bank = extract_features(path, layers=["H"], progress=False)
    expected = extract_features(load_checkpoint(path), load_dataset("imagefolder", images, split="test", image_size=8),
                                tmp_path / "reference", layers=["H"], progress=False)
    assert bank.meta["dataset"]["info"]["image_size"] == 8
    np.testing.assert_allclose(bank["H"], expected["H"], atol=1e-6, rtol=0)
    # another size asked for explicitly is honoured (the command's --image-size)
    from clusterprobe.extract import checkpoint_dataset

    assert checkpoint_dataset(load_checkpoint(path), image_size=12).info.image_size == 12
    assert checkpoint_dataset(load_checkpoint(path)).info.image_size == 8
