"""Distributed data parallel helpers: identity in one process, torch.distributed under torchrun.

Every helper works unchanged in a single process (no process group): gathering returns the
tensor itself and reductions do nothing, so method code is written once.

- :func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``) and starts a process group (NCCL on CUDA, gloo on CPU).
- :func:`gather` concatenates a tensor's rows from all ranks (rank order); with
  ``grad=True`` gradients flow back to every rank's rows (``torch.distributed.nn``).
- :func:`all_reduce_` sums (or maxes) a tensor over ranks, in place, without gradient.
- :func:`convert_sync_batchnorm` makes every BatchNorm normalise with the global batch's
  statistics: :class:`torch.nn.SyncBatchNorm` on GPUs, :class:`GlobalBatchNorm` on the CPU
  (torch's SyncBatchNorm refuses CPU tensors), with the same state-dict keys as BatchNorm.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .devices import resolve_device
from .errors import TrainingInputError


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process stands: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    started_group: bool = False  # this process created the process group (and ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistributedEnv:
    """Start (or join) the process group that torchrun describes in the environment.

    Without torchrun (``WORLD_SIZE`` unset or 1) nothing is started and a one-process
    :class:`DistributedEnv` is returned, unless this process already belongs to a process group
    (started by the caller, e.g. under ``torch.multiprocessing.spawn`` without torchrun's
    variables): then that group is joined and its rank and world size are this process's.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # A group this process already belongs to decides: the helpers below (gather, all_reduce_,
    # GlobalBatchNorm) act on it whatever the environment says, so the env must agree with them.
    joined_own = dist.is_available() and dist.is_initialized() and "LOCAL_RANK" not in os.environ
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if world <= 1:
        return DistributedEnv(device=resolved)
    if joined_own:
        # Started by the caller without torchrun's LOCAL_RANK: its current GPU is its choice
        # (resolve_device would name cuda:0 on every rank), and it is not changed here.
        if resolved.type == "cuda" and str(device) in ("auto", "cuda"):
            resolved = torch.device("cuda", torch.cuda.current_device())
    elif resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    started = False
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        started = True
    return DistributedEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                          local_rank=local_rank, device=resolved, started_group=started)


def shutdown(env: DistributedEnv) -> None:
    """End the process group if :func:`init_distributed` started it."""
    if env.started_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


REDUCE_OPS = ("sum", "mean", "max")


@torch.no_grad()
def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (``op="sum"``), max or average (``"mean"``) ``tensor`` over all ranks, in place.

    Any other ``op`` is refused (in one process too, so a misspelt one never runs as a sum), and
    so is ``"mean"`` of an integer tensor, which has no exact in-place result.
    """
    if op not in REDUCE_OPS:
        raise ValueError(f"all_reduce_ op must be one of {', '.join(REDUCE_OPS)}, got {op!r}.")
    if op == "mean" and not tensor.is_floating_point():
        raise TypeError(f"all_reduce_ op 'mean' needs a floating-point tensor, got {tensor.dtype}.")
    if not is_distributed():
        return tensor
    if op == "max":
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if op == "mean":
            tensor.div_(dist.get_world_size())
    return tensor


def gather(tensor: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Concatenate ``tensor`` (rows) from all ranks in rank order: (n, ...) -> (world * n, ...).

    With ``grad=True`` the result is differentiable and the gradient of every rank's loss
    reaches the rows it came from (the incoming gradients are summed over ranks and each rank
    keeps its own rows' share). All ranks must pass the same shape.
    """
    if not is_distributed():
        return tensor
    if grad:
        return _GatherRows.apply(tensor)
    with torch.no_grad():
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; backward: each rank's rows receive the sum over ranks of
    the gradients of their copies (what ``torch.distributed.nn.functional.all_gather`` did; that
    function is deprecated from torch 2.14 in favour of a private module)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows, ctx.rank = tensor.shape[0], dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class _SumOverRanks(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks, as every rank's loss
    depends on every rank's input (what ``torch.distributed.nn.functional.all_reduce`` did; that
    function is deprecated from torch 2.14 in favour of a private module)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def differentiable_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, with the gradient summed back to every rank (identity in one process)."""
    if not is_distributed():
        return tensor
    return _SumOverRanks.apply(tensor)


# ---------------------------------------------------------------------------------------------
class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over the global batch for CPU (gloo) process groups.

    In training mode with several processes, the per-channel mean and biased variance come from
    all ranks' samples (two differentiable all-reduces: sums, then squared deviations) and the
    running statistics are updated with them exactly as :class:`torch.nn.BatchNorm2d` would for
    the whole batch. Otherwise it is plain BatchNorm. State-dict keys are BatchNorm's.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise TrainingInputError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.size(1)], dtype=torch.float64)
        all_reduce_(count)
        total = float(count.item())
        if total <= 1:
            raise TrainingInputError("Expected more than 1 value per channel when training (global batch).")
        # float32 at least (half inputs), float64 kept: BatchNorm itself computes in the input's
        # precision, and a double model must not be normalised with single-precision statistics
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        mean = differentiable_all_reduce(x.sum(dim=dims)) / total
        centred = x - mean.view(shape)
        var = differentiable_all_reduce(centred.pow(2).sum(dim=dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                unbiased = var.detach() * (total / (total - 1))
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm of ``module`` by a global-batch one (in place where possible).

    CUDA: :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`. CPU: :class:`GlobalBatchNorm`,
    which, as torch's conversion does, takes over the BatchNorm's own parameter and buffer
    tensors (so their dtype, device, ``requires_grad`` and identity, e.g. in an optimiser built
    before, stay as they were) and state-dict keys. Returns the (possibly new) module.
    """
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum,
                                    module.affine, module.track_running_stats, device="meta")
        for name in ("weight", "bias"):
            setattr(converted, name, getattr(module, name))  # the same Parameters (or None)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(converted, name, getattr(module, name))  # the same buffers (or None)
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, device)
        if new is not child:
            setattr(module, name, new)
    return module
