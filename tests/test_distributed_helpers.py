"""clusterprobe.distributed against single-process torch on the global batch.

Two plain Python processes (``__main__`` below) start a gloo group themselves, over TCP and
without torchrun's variables (as under ``torch.multiprocessing.spawn``), then join it with
``init_distributed``. They hold unequal shares of one global batch (5 and 3 rows), run
:class:`GlobalBatchNorm` forward and backward for two steps, and save what they got; the tests
compare it with ``torch.nn.BatchNorm`` run on the whole batch in this process, and check the
semantics of ``all_reduce_`` and ``gather``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SIZES = (5, 3)  # rows per rank: unequal, so a per-rank mean of means would be wrong
CASES = {  # name: (BatchNorm class, feature shape, dtype, momentum, affine)
    "2d_float32": (torch.nn.BatchNorm2d, (4, 3, 3), torch.float32, 0.1, True),
    "2d_float32_cumulative": (torch.nn.BatchNorm2d, (4, 3, 3), torch.float32, None, True),
    "1d_float32_affine_free": (torch.nn.BatchNorm1d, (6,), torch.float32, 0.1, False),
    "2d_float64": (torch.nn.BatchNorm2d, (4, 3, 3), torch.float64, 0.1, True),
}
STEPS = 2


def case_data(name: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of one step and the weights of the loss sum(y * w)."""
    _, shape, dtype, _, _ = CASES[name]
    generator = torch.Generator().manual_seed(1000 * step + len(name))
    x = torch.randn(sum(SIZES), *shape, generator=generator, dtype=torch.float64) * 3 + 1.5
    w = torch.randn(sum(SIZES), *shape, generator=generator, dtype=torch.float64)
    return x.to(dtype), w.to(dtype)


def case_module(name: str) -> torch.nn.Module:
    cls, shape, dtype, momentum, affine = CASES[name]
    module = cls(shape[0], momentum=momentum, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            module.weight.copy_(torch.linspace(0.5, 2.0, shape[0]))
            module.bias.copy_(torch.linspace(-1.0, 1.0, shape[0]))
    return module


def run_case(name: str, rank: int | None) -> dict:
    """STEPS training steps on this rank's rows (``rank=None``: the whole batch, one process).

    Returns outputs and input gradients (this rank's rows), parameter gradients summed over ranks
    (the gradient of the sum of every rank's loss, what DDP averages), running statistics and
    an eval-mode output after training.
    """
    from clusterprobe import distributed

    module = case_module(name).train()
    if rank is not None:
        module = distributed.convert_sync_batchnorm(module, torch.device("cpu"))
    rows = slice(None) if rank is None else slice(sum(SIZES[:rank]), sum(SIZES[:rank + 1]))
    result = {"y": [], "grad_x": [], "grad_weight": [], "grad_bias": []}
    for step in range(STEPS):
        x, w = case_data(name, step)
        x = x[rows].clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        y = module(x)
        (y * w[rows]).sum().backward()
        result["y"].append(y.detach())
        result["grad_x"].append(x.grad)
        if module.affine:
            for key, param in (("grad_weight", module.weight), ("grad_bias", module.bias)):
                grad = param.grad.clone()
                if rank is not None:
                    torch.distributed.all_reduce(grad)
                result[key].append(grad)
    result.update(running_mean=module.running_mean.clone(), running_var=module.running_var.clone(),
                  num_batches_tracked=module.num_batches_tracked.clone(), dtype=str(result["y"][0].dtype))
    with torch.no_grad():
        result["eval"] = module.eval()(case_data(name, STEPS)[0][rows])
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("distributed_helpers")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    port = _free_port()
    workers = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(out)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    logs = [worker.communicate(timeout=180)[0] for worker in workers]
    for rank, (worker, log) in enumerate(zip(workers, logs)):
        assert worker.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.mark.distributed
def test_init_distributed_joins_a_group_started_without_torchrun_variables(ranks):
    # Before: WORLD_SIZE unset read as one process, so every rank called itself rank 0 of 1 while
    # gather/all_reduce_/GlobalBatchNorm acted on the real group of 2.
    for rank, result in enumerate(ranks):
        assert result["env"] == {"rank": rank, "world_size": 2, "started_group": False, "distributed": True}
        assert result["group_alive_after_shutdown"]  # shutdown ends only a group it started


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(CASES))
def test_global_batchnorm_equals_batchnorm_on_the_global_batch(ranks, name):
    reference = run_case(name, rank=None)
    dtype = CASES[name][2]
    # float64 to round-off (before: computed in float32, errors ~1e-7); float32 to its round-off
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    results = [r["cases"][name] for r in ranks]
    assert not any(isinstance(r, str) for r in results), results  # the worker's error, if any
    assert all(r["dtype"] == str(dtype) for r in results)
    for key in ("y", "grad_x"):
        for step in range(STEPS):
            torch.testing.assert_close(torch.cat([r[key][step] for r in results]), reference[key][step], **tol)
    for key in ("grad_weight", "grad_bias"):
        for step in range(len(reference[key])):
            for result in results:
                torch.testing.assert_close(result[key][step], reference[key][step], **tol)
    for result in results:
        for key in ("running_mean", "running_var"):
            torch.testing.assert_close(result[key], reference[key], **tol)
        assert int(result["num_batches_tracked"]) == int(reference["num_batches_tracked"]) == STEPS
    torch.testing.assert_close(torch.cat([r["eval"] for r in results]), reference["eval"], **tol)


@pytest.mark.distributed
def test_all_reduce_and_gather_semantics(ranks):
    values = [torch.tensor([1.0, -2.0, 3.5]), torch.tensor([4.0, 5.0, -6.0])]  # what each rank held
    for result in ranks:
        torch.testing.assert_close(result["sum"], values[0] + values[1], rtol=0, atol=0)
        torch.testing.assert_close(result["mean"], (values[0] + values[1]) / 2, rtol=0, atol=0)
        torch.testing.assert_close(result["max"], torch.maximum(values[0], values[1]), rtol=0, atol=0)
        assert result["sum_int"].dtype == torch.int64 and result["sum_int"].tolist() == [3, 5]
        # a misspelt op used to run as a sum under torchrun (and do nothing in one process)
        assert result["min"].startswith("ValueError") and result["avg"].startswith("ValueError")
        assert result["mean_int"].startswith("TypeError")
        torch.testing.assert_close(result["gathered"], torch.arange(12.0).reshape(4, 3))
    # gather(grad=True): rank r's loss is sum(gathered * (r + 1)); the gradient reaching each
    # rank's rows is the sum over ranks of (r + 1) = 3, as one process's loss over both gives
    for result in ranks:
        torch.testing.assert_close(result["gather_grad"], torch.full((2, 3), 3.0))


def test_all_reduce_refuses_unknown_ops_in_one_process():
    from clusterprobe import distributed

    with pytest.raises(ValueError, match="sum, mean, max"):
        distributed.all_reduce_(torch.ones(2), op="min")
    with pytest.raises(TypeError, match="floating-point"):
        distributed.all_reduce_(torch.ones(2, dtype=torch.int64), op="mean")
    torch.testing.assert_close(distributed.all_reduce_(torch.ones(2), op="mean"), torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conversion_keeps_the_batchnorms_own_tensors(dtype):
    """GlobalBatchNorm takes over the BatchNorm's Parameters and buffers, as torch's
    SyncBatchNorm.convert_sync_batchnorm does. Before, new float32 tensors were made and the values
    copied: a float64 model became float32 (its eval forward then failed on mixed dtypes), frozen
    parameters (the momentum branch's) required gradients again, and an optimiser built before
    the conversion held parameters the model no longer used."""
    from clusterprobe.distributed import GlobalBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.BatchNorm1d(4, affine=False)).to(dtype)
    model.train()(torch.randn(16, 3, dtype=dtype) * 2 + 1)  # running statistics off their initial values
    model[1].weight.requires_grad_(False)
    before = {name: tensor for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    reference = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.randn(8, 3, dtype=dtype)
    with torch.no_grad():
        expected = model.eval()(x)
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[2], GlobalBatchNorm)
    assert not converted[1].training
    after = dict([*converted.named_parameters(), *converted.named_buffers()])
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert converted[1].weight.dtype == dtype and not converted[1].weight.requires_grad
    assert converted[1].bias.requires_grad and converted[2].weight is None
    assert converted.state_dict().keys() == reference.keys()
    for key, value in converted.state_dict().items():
        assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), key
    with torch.no_grad():
        torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)  # eval: BatchNorm's own forward


def _outcome(call) -> object:
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - recorded for the test
        return f"{type(error).__name__}: {error}"


if __name__ == "__main__":  # one of two workers: RANK PORT OUT
    import torch.distributed as dist

    from clusterprobe import distributed

    torch.set_num_threads(1)
    rank, port, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    env = distributed.init_distributed("cpu")
    saved = {"env": {"rank": env.rank, "world_size": env.world_size, "started_group": env.started_group,
                     "distributed": env.distributed}}
    distributed.shutdown(env)
    saved["group_alive_after_shutdown"] = dist.is_initialized()
    saved["cases"] = {name: _outcome(lambda: run_case(name, rank)) for name in CASES}
    mine = [torch.tensor([1.0, -2.0, 3.5]), torch.tensor([4.0, 5.0, -6.0])][rank]
    for op in ("sum", "mean", "max"):
        saved[op] = distributed.all_reduce_(mine.clone(), op=op)
    saved["sum_int"] = distributed.all_reduce_(torch.tensor([1 + rank, 2 + rank]))
    for op in ("min", "avg"):
        saved[op] = str(_outcome(lambda: distributed.all_reduce_(mine.clone(), op=op)))
    saved["mean_int"] = str(_outcome(lambda: distributed.all_reduce_(torch.tensor([1, 2]), op="mean")))
    rows = torch.arange(6.0).reshape(2, 3) + 6 * rank
    saved["gathered"] = distributed.gather(rows)
    leaf = rows.clone().requires_grad_(True)
    (distributed.gather(leaf, grad=True) * (rank + 1)).sum().backward()
    saved["gather_grad"] = leaf.grad
    torch.save(saved, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
