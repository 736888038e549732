"""Optimisers: SGD with momentum (ReSA's recipe) and LARS (the solo-learn CIFAR recipes of the
baselines). The learning rate of every group is set by the loop from the schedule each step."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..errors import TrainConfigError

OPTIMIZERS = ("sgd", "lars")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For each parameter with more than one dimension (or every parameter when
    ``exclude_bias_and_norm`` is false) the update ``g + wd * w`` is scaled by the trust ratio
    ``eta * ||w|| / (||g|| + wd * ||w|| + eps)``; with ``clip_lr`` the ratio is divided by the
    learning rate and capped at 1 (as in solo-learn). Biases and normalisation parameters
    (1-D) get neither weight decay nor adaptation when excluded. Then a momentum step.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02, eps: float = 1e-8, clip_lr: bool = True,
                 exclude_bias_and_norm: bool = True):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                        clip_lr=clip_lr, exclude_bias_and_norm=exclude_bias_and_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1 or not group["exclude_bias_and_norm"]:
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(update)
                    wd = group["weight_decay"]
                    ratio = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                    if group["clip_lr"]:
                        ratio = torch.clamp(ratio / group["lr"], max=1.0)
                    ratio = torch.where((p_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                    update = update.add(p, alpha=wd) * ratio
                if group["momentum"]:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = update.clone()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                    update = state["momentum_buffer"]
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float,
                    momentum: float = 0.9, fused: bool = False) -> torch.optim.Optimizer:
    """``sgd``: SGD with momentum and weight decay on all parameters (ReSA); ``fused`` uses
    torch's fused kernel (CUDA). ``lars``: :class:`LARS`."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               **({"fused": True} if fused else {}))
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise TrainConfigError(f"Unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}.")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
