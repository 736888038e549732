"""DDP on CPU: two torchrun processes (gloo) give the same losses and updates as one process on the
same global batch, and a torchrun training run (``torchrun --nproc_per_node 2 -m cli.main train
...``, the documented command) writes one run directory from rank 0.

Run as a script by torchrun (``__main__`` below) and driven by the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
METHODS = ("resa", "byol", "simclr", "vicreg", "barlow_twins", "swav")
GLOBAL_BATCH = 16
STEPS = 2


def _config(method: str, **changes):
    from clusterprobe.trainer import TrainConfig, resolve_config

    fields = dict(method=method, dataset="digits", epochs=1, batch_size=GLOBAL_BATCH, width=4,
                  projector_dims=[32, 32, 16], out="unused", lr=0.5)
    if method == "byol":
        fields.update(projector_dims=[32, 16], predictor_dims=[32, 16])
    if method == "swav":
        fields.update(projector_dims=[32, 16], options={"num_prototypes": 10, "queue_size": 0,
                                                        "freeze_prototypes_epochs": 0})
    fields.update(changes)
    return resolve_config(TrainConfig(**fields))


def run_steps(method: str, env=None, **changes) -> dict:
    """Two optimisation steps on a fixed global batch; this rank uses its share of the rows.

    Returns the global (rank-averaged) losses and the final online and momentum weights.
    """
    from clusterprobe import distributed
    from clusterprobe.trainer import build_method
    from clusterprobe.trainer.optim import build_optimizer

    config = _config(method, **changes)
    rank, world = (env.rank, env.world_size) if env else (0, 1)
    torch.manual_seed(0)
    method_obj = build_method(config, in_channels=3, cifar_stem=True, total_steps=10, steps_per_epoch=5)
    method_obj.train()
    if env is not None:
        method_obj.distribute(env)
    # LR 0.03: at 0.1 the second step of ReSA amplifies rounding-level differences ~1000-fold
    # (see perturbation_error), which would hide what the test compares
    optimizer = build_optimizer(config.optimizer, method_obj.trainable_parameters(), 0.03,
                                float(config.weight_decay), config.momentum)
    initial = {k: v.detach().clone() for k, v in method_obj.online.state_dict().items()}
    generator = torch.Generator().manual_seed(123)
    losses = []
    share = GLOBAL_BATCH // world
    for step in range(STEPS):
        views = [torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=generator) for _ in range(2)]
        local = [v[rank * share:(rank + 1) * share] for v in views]
        loss, _ = method_obj.training_step(local, step, epoch=0)
        losses.append(distributed.all_reduce_(loss.detach().clone(), op="mean").item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method_obj.after_backward(0)
        optimizer.step()
    return {
        "losses": losses,
        "initial": initial,
        "online": {k: v.detach().clone() for k, v in method_obj.online.state_dict().items()},
        "momentum": None if method_obj.momentum is None else
        {k: v.detach().clone() for k, v in method_obj.momentum.state_dict().items()},
    }


def _torchrun(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [torchrun, "--standalone", "--nproc_per_node", "2"] + args
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"torchrun failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def update_error(result: dict, reference: dict) -> float:
    """||w - w_ref|| / ||w_ref - w_0|| over the online parameters: the error relative to the update."""
    error = change = 0.0
    for key, value in reference["online"].items():
        if value.is_floating_point() and "running_" not in key:
            error += (result["online"][key] - value).pow(2).sum().item()
            change += (value - reference["initial"][key]).pow(2).sum().item()
    return (error / change) ** 0.5


def perturbation_error(method: str, reference: dict) -> float:
    """How far one process's two steps move when the inputs change by one part in a million:
    the rounding-level noise (summation order differs under gloo) that the steps amplify."""
    real = torch.randn

    def perturbed(*args, **kwargs):
        x = real(*args, **kwargs)
        return x * (1 + 1e-6 * real(x.shape, generator=torch.Generator().manual_seed(7)))

    torch.randn = perturbed
    try:
        return update_error(run_steps(method), reference)
    finally:
        torch.randn = real


@pytest.fixture
def one_thread():
    """The single-process reference uses one thread, like each torchrun worker (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _torchrun([__file__, str(out)], cwd=REPO)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("method", METHODS)
def test_ddp_matches_single_process(ddp_results, one_thread, method):
    distributed_result = torch.load(ddp_results / f"{method}.pt", weights_only=True)
    single = run_steps(method)
    # Same global loss at every step (the first step checks the loss itself; the second checks
    # that the update, the EMA and the BatchNorm statistics were global).
    assert distributed_result["losses"] == pytest.approx(single["losses"], rel=2e-5, abs=2e-6)
    # The same update (a wrong gradient scale or per-rank statistics give errors of 10-100 %),
    # on a problem where rounding-level differences (gloo sums in another order) stay small
    assert perturbation_error(method, single) < 1e-4, "the test's two steps are ill-conditioned: lower the LR"
    assert update_error(distributed_result, single) < 1e-3
    for branch in ("online", "momentum"):
        if single[branch] is None:
            assert distributed_result[branch] is None
            continue
        for key, value in single[branch].items():
            other = distributed_result[branch][key]
            if value.is_floating_point():  # includes BatchNorm running statistics
                assert torch.allclose(other, value, rtol=1e-3, atol=1e-3), (branch, key)
            else:
                assert torch.equal(other, value), (branch, key)


@pytest.mark.distributed
def test_ddp_resa_transposed_matches(ddp_results, one_thread):
    distributed_result = torch.load(ddp_results / "resa_transposed.pt", weights_only=True)
    single = run_steps("resa", options={"transposed": True})
    assert distributed_result["losses"] == pytest.approx(single["losses"], rel=2e-5, abs=2e-6)
    assert update_error(distributed_result, single) < 1e-3


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_training_run(tmp_path):
    from clusterprobe.checkpoints import load_checkpoint

    out = tmp_path / "ddp_run"
    _torchrun(["-m", "cli.main", "train", "--method", "resa", "--dataset", "digits", "--epochs", "2",
               "--batch-size", "32", "--width", "4", "--projector-dims", "32,32,16", "--limit-train", "128",
               "--out", str(out), "--quiet", "--save-every", "1"], cwd=REPO)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    loaded = load_checkpoint(out / "checkpoints" / "epoch_0002.pt")
    assert loaded.branch == "momentum" and loaded.epoch == 2 and loaded.method == "resa"
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * (128 // 32)  # header + one row per step, written once (rank 0)


if __name__ == "__main__":  # torchrun worker
    from clusterprobe import distributed as _distributed

    torch.set_num_threads(1)
    target = Path(sys.argv[1])
    environment = _distributed.init_distributed("cpu")
    try:
        for name in METHODS:
            result = run_steps(name, environment)
            if environment.is_main:
                torch.save(result, target / f"{name}.pt")
        result = run_steps("resa", environment, options={"transposed": True})
        if environment.is_main:
            torch.save(result, target / "resa_transposed.pt")
    finally:
        _distributed.shutdown(environment)
