"""LR warm-up + cosine to a floor, the cosine EMA schedule, and the EMA update of the method."""

from __future__ import annotations

import math

import pytest
import torch

from clusterprobe.trainer import (CosineEMASchedule, TrainConfig, WarmupCosineSchedule, build_method,
                                resolve_config)
from clusterprobe.trainer.optim import LARS


def test_warmup_then_cosine_to_floor():
    base, total, warm = 0.3, 100, 10
    schedule = WarmupCosineSchedule(base, total, warm, final_lr=0.1 * base)
    assert schedule(0) == pytest.approx(base / warm)
    assert schedule(4) == pytest.approx(base * 5 / warm)
    assert schedule(warm - 1) == pytest.approx(base)
    assert schedule(warm) == pytest.approx(base)
    middle = warm + (total - warm) // 2
    assert schedule(middle) == pytest.approx(0.1 * base + 0.9 * base * 0.5 * (1 + math.cos(math.pi * 0.5)))
    values = [schedule(s) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert min(values) > 0.1 * base  # never below the floor...
    assert schedule(total - 1) == pytest.approx(0.1 * base, rel=5e-3)  # ...and ends at it
    assert schedule(total) == pytest.approx(0.1 * base)


def test_no_warmup_starts_at_peak():
    schedule = WarmupCosineSchedule(1.0, 10, 0, 0.0)
    assert schedule(0) == 1.0
    assert schedule(10) == pytest.approx(0.0, abs=1e-12)


def test_resa_defaults_give_spec_schedule():
    config = resolve_config(TrainConfig(method="resa", batch_size=512, out="unused"))
    assert config.scaled_lr() == pytest.approx(0.6)  # 0.3 x 512 / 256
    assert config.lr_floor == 0.1 and config.warmup_epochs == 2.0 and config.optimizer == "sgd"
    assert config.weight_decay == 1e-4 and config.momentum == 0.9 and config.ema_base == 0.996


def test_cosine_ema_schedule():
    schedule = CosineEMASchedule(0.996, 1000)
    assert schedule(0) == pytest.approx(0.996)
    assert schedule(500) == pytest.approx(0.998)
    assert schedule(1000) == pytest.approx(1.0)
    assert schedule(250) == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)
    values = [schedule(s) for s in range(1001)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def _method(name="resa", **changes):
    fields = dict(method=name, dataset="digits", epochs=1, batch_size=8, width=4,
                  projector_dims=[16, 16, 8], out="unused")
    if name == "byol":
        fields.update(projector_dims=[16, 8], predictor_dims=[16, 8])
    fields.update(changes)
    config = resolve_config(TrainConfig(**fields))
    torch.manual_seed(0)
    return build_method(config, 1, True, total_steps=20, steps_per_epoch=10)


@pytest.mark.parametrize("name", ["resa", "byol"])
def test_training_step_applies_scheduled_ema_before_momentum_forward(name):
    method = _method(name)
    method.train()
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.5)
    views = [torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)]
    # Take one step so that online and momentum weights differ.
    loss, _ = method.training_step(views, 0, 0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    online = {k: v.clone() for k, v in method.online.model.named_parameters()}
    momentum = {k: v.clone() for k, v in method.momentum.named_parameters()}
    buffers = {k: v.clone() for k, v in method.momentum.named_buffers()}
    step = 7
    rate = method.ema_schedule(step)
    assert rate == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi * 7 / 20)) / 2 if name == "resa"
                                 else 1 - 0.01 * (1 + math.cos(math.pi * 7 / 20)) / 2)
    _, logs = method.training_step(views, step, 0)
    assert logs["ema"] == pytest.approx(rate)
    changed = 0
    for key, value in method.momentum.named_parameters():
        expected = rate * momentum[key] + (1 - rate) * online[key]
        assert torch.allclose(value, expected, atol=1e-6), key
        changed += int(not torch.equal(value, momentum[key]))
    assert changed > 0
    # Buffers are not averaged: they come from the momentum branch's own forward (training mode).
    online_buffers = dict(method.online.model.named_buffers())
    running_means = [key for key, _ in method.momentum.named_buffers() if key.endswith("running_mean")]
    assert len(running_means) > 10  # every BatchNorm of the ResNet and the projector
    for key, value in method.momentum.named_buffers():
        if key.endswith("running_mean"):
            assert not torch.allclose(value, rate * buffers[key] + (1 - rate) * online_buffers[key]), key


def test_momentum_starts_as_copy_and_eval_branch():
    method = _method("resa")
    for (k, a), (_, b) in zip(method.online.model.state_dict().items(), method.momentum.state_dict().items()):
        assert torch.equal(a, b), k
    assert _method("simclr", projector_dims=[16, 8]).momentum is None


def test_lars_trust_ratio_and_exclusions():
    weight = torch.nn.Parameter(torch.full((2, 2), 1.0))
    bias = torch.nn.Parameter(torch.zeros(2))
    optimizer = LARS([weight, bias], lr=0.1, momentum=0.0, weight_decay=0.0, eta=0.02, clip_lr=False)
    weight.grad = torch.full((2, 2), 4.0)
    bias.grad = torch.ones(2)
    optimizer.step()
    # trust ratio = 0.02 * ||w|| / ||g|| = 0.02 * 2 / 8 = 0.005; update = 0.1 * 0.005 * 4
    assert torch.allclose(weight, torch.full((2, 2), 1.0 - 0.1 * 0.005 * 4.0))
    assert torch.allclose(bias, torch.full((2,), -0.1))  # 1-D: plain SGD, no adaptation
