"""Optimisers: SGD with momentum (ReSA's recipe) and LARS (the solo-learn CIFAR recipes of the
baselines). The learning rate of every group is set by the loop from the schedule each step."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..errors import TrainConfigError

OPTIMIZERS = ("sgd", "lars")

try:  # the device types torch's own optimisers default to multi-tensor (foreach) steps on
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices
except ImportError:  # pragma: no cover - older or newer torch without the helper
    def _get_foreach_kernels_supported_devices() -> list[str]:
        return ["cuda"]


def _foreach_by_default(params: list[torch.Tensor]) -> bool:
    """As torch's optimisers decide ``foreach=None``: multi-tensor steps when every parameter is a
    plain tensor on a device with foreach kernels (CUDA, not the CPU)."""
    if torch.jit.is_scripting():
        return False
    devices = _get_foreach_kernels_supported_devices()
    return all(type(p) in (torch.Tensor, nn.Parameter) and p.device.type in devices for p in params)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For each parameter with more than one dimension (or every parameter when
    ``exclude_bias_and_norm`` is false) the update ``g + wd * w`` is scaled by the trust ratio
    ``eta * ||w|| / (||g|| + wd * ||w|| + eps)``; with ``clip_lr`` the ratio is divided by the
    learning rate and capped at 1 (as in solo-learn). Biases and normalisation parameters
    (1-D) get neither weight decay nor adaptation when excluded. Then a momentum step.

    ``foreach`` picks the implementation: a Python loop over the parameters (``False``; the
    reference), or the same step with torch's multi-tensor ops over the parameters of each
    (device, dtype), adapted or not (``True``: a few kernel launches per group instead of ~8 per
    parameter, and no host synchronisation). ``None`` (default) decides as torch's own
    optimisers do: foreach for tensors on CUDA, the loop on the CPU. The two give the same
    result to float rounding (on the CPU bit for bit).

    The choice is not part of the state dict (unlike torch's optimisers, which keep ``foreach``
    in every param group): the state is ``momentum_buffer`` per parameter either way, so a run
    saved with one implementation resumes with the other, and loading a state dict never
    overrides the choice this optimiser was built with.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02, eps: float = 1e-8, clip_lr: bool = True,
                 exclude_bias_and_norm: bool = True, foreach: bool | None = None):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                        clip_lr=clip_lr, exclude_bias_and_norm=exclude_bias_and_norm)
        self.foreach = foreach
        super().__init__(params, defaults)

    def __getstate__(self):
        return {**super().__getstate__(), "foreach": self.foreach}

    def __setstate__(self, state):
        # load_state_dict passes only state and param_groups: keep the implementation chosen here
        state.setdefault("foreach", getattr(self, "foreach", None))
        super().__setstate__(state)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            foreach = self.foreach if self.foreach is not None else _foreach_by_default(params)
            if foreach:
                self._foreach_step(group, params)
            else:
                self._loop_step(group, params)
        return loss

    def _loop_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """The reference: one parameter at a time."""
        for p in params:
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

    def _foreach_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """The same step with multi-tensor ops, per (device, dtype, adapted) bucket: the same
        elementwise operations in the same order as :meth:`_loop_step`, on lists of tensors."""
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            adapted = p.ndim > 1 or not group["exclude_bias_and_norm"]
            buckets.setdefault((p.device, p.dtype, adapted), []).append(p)
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        for (_, _, adapted), ps in buckets.items():
            grads = [p.grad for p in ps]
            if adapted:
                n = len(ps)
                norms = torch.stack(torch._foreach_norm(ps + grads))  # one launch for both lists
                p_norm, g_norm = norms[:n], norms[n:]
                ratio = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                if group["clip_lr"]:
                    ratio = torch.clamp(ratio / lr, max=1.0)
                ratio = torch.where((p_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                updates = torch._foreach_add(grads, ps, alpha=wd)
                torch._foreach_mul_(updates, ratio.unbind(0))
            else:
                updates = grads  # read only below
            if momentum:
                states = [self.state[p] for p in ps]
                old = [i for i, s in enumerate(states) if "momentum_buffer" in s]
                if old:
                    buffers = [states[i]["momentum_buffer"] for i in old]
                    torch._foreach_mul_(buffers, momentum)
                    torch._foreach_add_(buffers, [updates[i] for i in old])
                for i, state in enumerate(states):
                    if "momentum_buffer" not in state:  # first step: the buffer is the update
                        state["momentum_buffer"] = updates[i].clone()
                updates = [state["momentum_buffer"] for state in states]
            torch._foreach_add_(ps, updates, alpha=-lr)


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float,
                    momentum: float = 0.9, fused: bool | None = None) -> torch.optim.Optimizer:
    """``sgd``: SGD with momentum and weight decay on all parameters (ReSA). ``lars``: :class:`LARS`.

    ``fused`` picks each optimiser's fast step (the trainer sets it from ``fused_optimizer``, on
    CUDA by default): ``True`` is torch's fused SGD kernel and LARS's multi-tensor (foreach) step;
    ``False`` is torch's default SGD and LARS's per-parameter loop; ``None`` leaves both to decide
    by device as torch's optimisers do (SGD unfused, LARS foreach on CUDA)."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               **({"fused": True} if fused else {}))
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=fused)
    raise TrainConfigError(f"Unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}.")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
