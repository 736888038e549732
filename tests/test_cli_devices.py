"""--device on the command line (clusterprobe.devices): a GPU that is not there is a clear error
before any work, on a machine without GPUs too (torch.cuda is stubbed to show one GPU)."""

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from clusterprobe.devices import check_device_name, resolve_device
from clusterprobe.errors import DeviceError

runner = CliRunner()


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_a_gpu_index_beyond_the_gpus_is_refused_by_name(one_gpu, monkeypatch):
    """cuda:3 on a one-GPU machine became torch.device('cuda:3') and failed later with CUDA's
    'invalid device ordinal' (under torchrun, LOCAL_RANK 1 of a one-GPU machine too)."""
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0) == resolve_device("cuda")
    with pytest.raises(DeviceError, match=r"'cuda:3' was asked for, but torch sees 1 GPU \(cuda:0;"):
        resolve_device("cuda:3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DeviceError, match=r"cuda:1 \(LOCAL_RANK\), but torch sees 1 GPU.*--nproc_per_node 1"):
        resolve_device("auto")


def test_a_cuda_name_without_its_index_is_refused():
    """'cuda:' passed the spelling check and failed inside torch.device."""
    for name in ("cuda:", "cpu:", "cuda:x", "cuda:-1", "cuda:١"):
        with pytest.raises(DeviceError, match="Unknown device"):
            check_device_name(name)
    assert check_device_name(" CUDA:1 ") == "cuda:1"


def test_the_metrics_command_names_the_missing_gpu(one_gpu, tmp_path):
    result = runner.invoke(app, ["metrics", str(tmp_path), "--device", "cuda:2"])
    assert result.exit_code == 1 and "torch sees 1 GPU" in result.output and "Traceback" not in result.output, result.output
