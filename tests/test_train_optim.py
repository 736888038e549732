"""LARS's multi-tensor (foreach) step against its per-parameter loop and a NumPy reference, state
dicts shared between the two, and the trainer's choice of implementation."""

from __future__ import annotations

import copy
import csv
import io

import numpy as np
import pytest
import torch

from clusterprobe import build_model
from clusterprobe.trainer.optim import LARS, _foreach_by_default, build_optimizer, set_learning_rate


def resnet_ish_params(seed: int = 0) -> list[torch.nn.Parameter]:
    """A narrow ResNet-18 + projector (convolutions, BatchNorm weights and biases, linear biases)
    and four odd ones: a zero-initialised matrix, a matrix whose gradient stays None, a float64
    matrix (a second dtype bucket) and a matrix whose gradient is zero."""
    torch.manual_seed(seed)
    model = build_model("resnet18", width=4, in_channels=3, cifar_stem=True, projector_dims=[32, 32, 16])
    params = [p for p in model.parameters()]
    zero = torch.nn.Parameter(torch.zeros(8, 4))
    unused = torch.nn.Parameter(torch.randn(3, 3))
    double = torch.nn.Parameter(torch.randn(5, 6, dtype=torch.float64))
    zero_grad = torch.nn.Parameter(torch.randn(4, 4))
    return params + [zero, unused, double, zero_grad]


def fake_gradients(params, step: int) -> list[torch.Tensor | None]:
    """Seeded gradients at scales from 1e-3 to 10 (so the clipped ratio is capped for some
    parameters and not for others); None for the unused one, zeros for the last one."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads = []
    for i, p in enumerate(params):
        scale = 10.0 ** (i % 5 - 3)
        grads.append(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)
    grads[-3] = None
    grads[-1] = torch.zeros_like(params[-1])
    return grads


def run_steps(optimizer, params, steps, start: int = 0) -> None:
    for step in range(start, start + steps):
        set_learning_rate(optimizer, 0.05 * (1 + step))  # a warm-up, as the trainer sets it each step
        for p, g in zip(params, fake_gradients(params, step)):
            p.grad = None if g is None else g.clone()
        optimizer.step()


def twins(**options):
    """The same parameters twice, with a loop LARS on one copy and a foreach LARS on the other."""
    a = resnet_ish_params()
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    return a, b, LARS(a, foreach=False, **options), LARS(b, foreach=True, **options)


def assert_same(a, b, rtol=1e-6):
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-7, msg=lambda m: f"parameter {i}: {m}")


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.9, 0.0])
@pytest.mark.parametrize("clip_lr", [True, False])
@pytest.mark.parametrize("exclude", [True, False])
def test_foreach_equals_the_loop(momentum, clip_lr, exclude):
    a, b, loop, foreach = twins(lr=0.1, momentum=momentum, weight_decay=1e-2, clip_lr=clip_lr,
                                exclude_bias_and_norm=exclude)
    initial = [p.detach().clone() for p in a]
    for step in range(4):
        run_steps(loop, a, 1, start=step)
        run_steps(foreach, b, 1, start=step)
        assert_same(a, b)
    assert torch.equal(a[-3], initial[-3]) and torch.equal(b[-3], initial[-3])  # grad None: untouched
    assert not torch.equal(a[-4], initial[-4])  # the zero-initialised one moved (ratio 1 at ||w|| = 0)
    if momentum:
        assert loop.state.keys() == {p for i, p in enumerate(a) if i != len(a) - 3}
        for p, q in zip(a, b):
            if p in loop.state:
                assert set(loop.state[p]) == set(foreach.state[q]) == {"momentum_buffer"}
                torch.testing.assert_close(loop.state[p]["momentum_buffer"],
                                           foreach.state[q]["momentum_buffer"], rtol=1e-6, atol=1e-7)
    else:
        assert not loop.state and not foreach.state


def test_two_tensors_against_a_numpy_reference():
    """Two steps for a weight matrix and a bias, computed by hand in float64: trust ratio
    eta*||w|| / (||g|| + wd*||w|| + eps), clipped by the LR, weight decay and adaptation on the
    matrix only, momentum buffer started at the first update."""
    lr, momentum, wd, eta, eps = 0.05, 0.9, 1e-3, 0.02, 1e-8
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(3, 4)), rng.normal(size=4)
    grads = [(rng.normal(size=(3, 4)) * s, rng.normal(size=4)) for s in (0.01, 3.0)]  # capped, then not

    w, b = w0.copy(), b0.copy()
    buf_w = buf_b = None
    capped = []
    for gw, gb in grads:
        pn, gn = np.linalg.norm(w), np.linalg.norm(gw)
        ratio = eta * pn / (gn + wd * pn + eps)
        capped.append(ratio / lr >= 1)
        ratio = min(ratio / lr, 1.0)
        update_w = (gw + wd * w) * ratio
        buf_w = update_w.copy() if buf_w is None else momentum * buf_w + update_w
        buf_b = gb.copy() if buf_b is None else momentum * buf_b + gb
        w, b = w - lr * buf_w, b - lr * buf_b
    assert capped == [True, False]  # both branches of clip_lr are exercised

    for foreach in (False, True):
        weight = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
        bias = torch.nn.Parameter(torch.tensor(b0, dtype=torch.float32))
        optimizer = LARS([weight, bias], lr=lr, momentum=momentum, weight_decay=wd, eta=eta, eps=eps,
                         foreach=foreach)
        for gw, gb in grads:
            weight.grad = torch.tensor(gw, dtype=torch.float32)
            bias.grad = torch.tensor(gb, dtype=torch.float32)
            optimizer.step()
        np.testing.assert_allclose(weight.detach().numpy(), w, rtol=1e-5, atol=1e-6, err_msg=f"foreach={foreach}")
        np.testing.assert_allclose(bias.detach().numpy(), b, rtol=1e-5, atol=1e-6, err_msg=f"foreach={foreach}")
        np.testing.assert_allclose(optimizer.state[weight]["momentum_buffer"].numpy(), buf_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("first, second", [(False, True), (True, False)])
def test_state_dicts_move_between_the_implementations(first, second):
    """Three steps with one implementation, its state dict through torch.save/torch.load
    (weights_only, as the trainer resumes), three more with the other: the same as six with one."""
    options = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    straight = resnet_ish_params()
    reference = LARS(straight, foreach=first, **options)
    run_steps(reference, straight, 6)

    params = resnet_ish_params()
    before = LARS(params, foreach=first, **options)
    run_steps(before, params, 3)
    buffer = io.BytesIO()
    torch.save(before.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    after = LARS(resumed_params, foreach=second, **options)
    after.load_state_dict(saved)
    assert after.foreach is second  # the checkpoint does not choose the implementation
    run_steps(after, resumed_params, 3, start=3)
    assert_same(straight, resumed_params)

    # same state dict layout either way (and as before the foreach step existed)
    other = LARS(resnet_ish_params(), foreach=second, **options)
    run_steps(other, other.param_groups[0]["params"], 3)
    ours, theirs = before.state_dict(), other.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    assert all(set(s) == {"momentum_buffer"} for s in ours["state"].values())
    assert "foreach" not in ours["param_groups"][0]


def test_the_choice_survives_a_deep_copy_and_defaults_by_device():
    optimizer = LARS(resnet_ish_params(), lr=0.1, foreach=True)
    assert copy.deepcopy(optimizer).foreach is True
    assert LARS(resnet_ish_params(), lr=0.1).foreach is None
    assert not _foreach_by_default([torch.nn.Parameter(torch.ones(2))])  # the CPU: the loop
    meta = torch.nn.Parameter(torch.ones(2, device="meta"))
    assert not _foreach_by_default([meta])


def test_build_optimizer_passes_the_choice():
    params = resnet_ish_params()
    assert build_optimizer("lars", params, 0.1, 1e-4, fused=True).foreach is True
    assert build_optimizer("lars", params, 0.1, 1e-4, fused=False).foreach is False
    assert build_optimizer("lars", params, 0.1, 1e-4).foreach is None
    assert build_optimizer("sgd", params, 0.1, 1e-4, fused=True).defaults["fused"] is True


def test_the_trainer_uses_the_foreach_step_when_fused_optimizer_is_set(tmp_path, monkeypatch):
    """fused_optimizer (None: on CUDA) picks LARS's foreach step as it picks SGD's fused kernel; on
    the CPU the two LARS runs give the same losses to float rounding."""
    from clusterprobe.trainer import TrainConfig, train
    from clusterprobe.trainer import optim

    made = []
    real = optim.LARS.__init__

    def record(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self.foreach)

    monkeypatch.setattr(optim.LARS, "__init__", record)
    losses = []
    for name, fused in (("loop", None), ("foreach", True)):
        config = TrainConfig(method="simclr", dataset="digits", epochs=1, batch_size=32, width=4,
                             projector_dims=[32, 16], limit_train=64, out=str(tmp_path / name),
                             progress=False, fused_optimizer=fused, save_init=False)
        run = train(config)
        with open(run / "epochs.csv", newline="") as handle:
            losses.append(float(next(csv.DictReader(handle))["loss"]))
    assert made == [False, True]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
