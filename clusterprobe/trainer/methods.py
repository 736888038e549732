"""The training methods: each is a small module holding its networks and computing one step's
loss with ``training_step(views, step, epoch) -> (loss, logs)``.

- :class:`OnlineNetwork` is the trainable part (an :class:`~clusterprobe.models.SSLModel` and,
  for SwAV, the prototypes). Its ``forward(views)`` runs the views one at a time (so every
  BatchNorm sees one view's statistics) and is what DDP wraps.
- Momentum methods (ReSA, BYOL) keep an EMA copy of the online model (``momentum``), updated
  on parameters only, with the cosine schedule, before the momentum forward; it runs in training
  mode, so its BatchNorm buffers come from its own forward passes.

The named layers H, P0, P1, Z of every method are those of :class:`~clusterprobe.models.SSLModel`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any, Callable, ClassVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..distributed import DistributedEnv
from ..linalg import l2_normalize
from ..models import ModelConfig, SSLModel, mlp_description
from ..models.backbones import backbone_out_dim
from ..models.heads import head_dims
from .config import TrainConfig
from .losses import ReSALoss, barlow_twins_loss, byol_loss, nt_xent_loss, swav_loss, vicreg_loss
from .schedules import CosineEMASchedule
from .sinkhorn import sinkhorn_knopp


def model_config_for(config: TrainConfig, in_channels: int, cifar_stem: bool) -> ModelConfig:
    """The :class:`ModelConfig` of a (resolved) training config: backbone + method heads."""
    h_dim = backbone_out_dim(config.backbone, config.width)
    projector = mlp_description([h_dim, *config.projector_dims], batch_norm=config.projector_batch_norm,
                                last_batch_norm=config.projector_last_batch_norm)
    predictor = None
    if config.predictor_dims:
        predictor = mlp_description([config.projector_dims[-1], *config.predictor_dims])
    return ModelConfig(backbone=config.backbone, width=config.width, cifar_stem=cifar_stem,
                       stem_padding=config.stem_padding, in_channels=in_channels,
                       projector=projector, predictor=predictor)


class OnlineNetwork(nn.Module):
    """The trained network: ``model`` (encoder, projector, optional predictor) and optional
    ``prototypes`` (SwAV; a bias-free Linear applied to the L2-normalised projection).

    ``forward(views)`` -> one dict per view with ``h`` (H), ``z`` (Z), ``p`` (predictor output,
    if any) and ``scores`` (prototype scores, if any).
    """

    def __init__(self, model: SSLModel, prototypes: nn.Linear | None = None):
        super().__init__()
        self.model = model
        self.prototypes = prototypes

    def forward(self, views: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for x in views:  # one view at a time: BatchNorm statistics per view
            h = self.model.encode(x)
            z = self.model.project(h)
            out = {"h": h, "z": z}
            if self.model.predictor is not None:
                out["p"] = self.model.predict(z)
            if self.prototypes is not None:
                out["scores"] = self.prototypes(l2_normalize(z))
            outputs.append(out)
        return outputs


class Method(nn.Module):
    """Base class: holds ``online`` (:class:`OnlineNetwork`) and, for EMA methods, ``momentum``."""

    name: ClassVar[str] = ""
    uses_momentum: ClassVar[bool] = False

    def __init__(self, config: TrainConfig, model_config: ModelConfig, total_steps: int,
                 steps_per_epoch: int):
        super().__init__()
        self.config = config
        self.options = dict(config.options)
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.online = OnlineNetwork(SSLModel(model_config), self.build_prototypes(model_config))
        #: whether the residual branches started at zero (recorded in a new run's config.yaml)
        self.zero_init_residual = zero_init_residual(config, model_config)
        if self.zero_init_residual:
            self.online.model.backbone.zero_init_residual()
        self.momentum: SSLModel | None = None
        self.ema_schedule: CosineEMASchedule | None = None
        if self.uses_momentum:
            # The momentum branch is encoder + projector: the predictor is online-only.
            self.momentum = copy.deepcopy(self.online.model)
            self.momentum.predictor = None
            self.momentum.config = dataclasses.replace(model_config, predictor=None)
            for p in self.momentum.parameters():
                p.requires_grad_(False)
            self.ema_schedule = CosineEMASchedule(float(config.ema_base), total_steps)
        self._forward: Callable = self.online  # replaced by the DDP wrapper in distribute()
        self.autocast: Callable[[], Any] = contextlib.nullcontext

    def build_prototypes(self, model_config: ModelConfig) -> nn.Linear | None:
        return None

    @property
    def model(self) -> SSLModel:
        return self.online.model

    # -- pieces --------------------------------------------------------------------------------
    def forward_online(self, views: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with self.autocast():
            return self._forward(views)

    @torch.no_grad()
    def update_momentum(self, rate: float) -> None:
        """EMA of the parameters (not the buffers): ``w_m <- rate * w_m + (1 - rate) * w``."""
        online_parameters = dict(self.online.model.named_parameters())
        momentum, online = [], []
        for name, parameter in self.momentum.named_parameters():
            momentum.append(parameter)
            online.append(online_parameters[name].detach())
        torch._foreach_mul_(momentum, rate)
        torch._foreach_add_(momentum, online, alpha=1.0 - rate)

    @torch.no_grad()
    def forward_momentum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Momentum branch (training mode, no gradient): images -> (H', Z')."""
        with self.autocast():
            h = self.momentum.encode(x)
            return h, self.momentum.project(h)

    def training_step(self, views: list[torch.Tensor], step: int, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_backward(self, epoch: int) -> None:
        """Hook between backward and the optimiser step (SwAV freezes its prototypes here)."""

    # -- distribution and state ----------------------------------------------------------------
    def distribute(self, env: DistributedEnv) -> None:
        """Global-batch BatchNorm in both branches and DDP around the online network."""
        if not env.distributed:
            return
        self.online = distributed.convert_sync_batchnorm(self.online, env.device)
        if self.momentum is not None:
            self.momentum = distributed.convert_sync_batchnorm(self.momentum, env.device)
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        self._forward = DistributedDataParallel(self.online, device_ids=device_ids, broadcast_buffers=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.online.parameters() if p.requires_grad]

    def extra_checkpoint(self) -> dict[str, Any]:
        """Method modules outside the SSLModel (saved in the checkpoint's ``extra``)."""
        return {}

    def state_for_resume(self) -> dict[str, Any]:
        """Everything besides the models needed to resume (plain values and tensors)."""
        return {"online_extra": {k: v.detach().cpu() for k, v in self.online.state_dict().items()
                                 if not k.startswith("model.")}}

    def load_state_for_resume(self, state: dict[str, Any]) -> None:
        extra = state.get("online_extra") or {}
        if extra:
            own = self.online.state_dict()
            for key, value in extra.items():
                own[key].copy_(value)


# ---------------------------------------------------------------------------------------------
class ReSA(Method):
    """ReSA (Weng et al., ICML 2025), per ``docs/resa.md``.

    Step: online forward of both views; then without gradient the EMA update, the momentum
    forward of both views and the Sinkhorn target from the weak view's online and momentum
    encodings H (float32, over the global batch); loss :func:`~clusterprobe.trainer.losses.resa_loss`
    on the online embeddings (predictor outputs when the optional predictor is on).
    """

    name = "resa"
    uses_momentum = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.options
        self.criterion = ReSALoss(o["temperature"], o["sinkhorn_epsilon"], o["sinkhorn_iterations"], o["transposed"])

    def training_step(self, views, step, epoch):
        outputs = self.forward_online(views)
        with torch.no_grad():
            rate = self.ema_schedule(step)
            self.update_momentum(rate)
            momentum = [self.forward_momentum(x) for x in views]
        z = [out.get("p", out["z"]) for out in outputs]
        loss, _ = self.criterion(outputs[0]["h"], momentum[0][0], z, [zm for _, zm in momentum])
        return loss, {"ema": rate}


class BYOL(Method):
    """BYOL: online predictor regresses the momentum projection of the other view (both ways)."""

    name = "byol"
    uses_momentum = True

    def training_step(self, views, step, epoch):
        outputs = self.forward_online(views)
        with torch.no_grad():
            rate = self.ema_schedule(step)
            self.update_momentum(rate)
            targets = [self.forward_momentum(x)[1] for x in views]
        loss = byol_loss(outputs[0]["p"], targets[1]) + byol_loss(outputs[1]["p"], targets[0])
        return loss, {"ema": rate}


class SimCLR(Method):
    """SimCLR: NT-Xent over the global batch."""

    name = "simclr"

    def training_step(self, views, step, epoch):
        outputs = self.forward_online(views)
        return nt_xent_loss(outputs[0]["z"], outputs[1]["z"], self.options["temperature"]), {}


class VICReg(Method):
    """VICReg: invariance + variance + covariance terms."""

    name = "vicreg"

    def training_step(self, views, step, epoch):
        outputs = self.forward_online(views)
        o = self.options
        loss = vicreg_loss(outputs[0]["z"], outputs[1]["z"], o["sim_weight"], o["var_weight"], o["cov_weight"])
        return loss, {}


class BarlowTwins(Method):
    """Barlow Twins: cross-correlation of the standardised projections towards identity."""

    name = "barlow_twins"

    def training_step(self, views, step, epoch):
        outputs = self.forward_online(views)
        o = self.options
        return barlow_twins_loss(outputs[0]["z"], outputs[1]["z"], o["lambda_offdiag"], o["scale"]), {}


class SwAV(Method):
    """SwAV: swapped prediction of Sinkhorn codes over learned prototypes.

    Prototypes are L2-normalised before every step and frozen (no update) for the first
    ``freeze_prototypes_epochs`` epochs. A feature queue (``queue_size`` over all ranks; 0 = off)
    is filled from the start and joins the Sinkhorn problem from ``queue_start_epoch`` on.
    """

    name = "swav"

    def __init__(self, config, model_config, total_steps, steps_per_epoch):
        super().__init__(config, model_config, total_steps, steps_per_epoch)
        dim = head_dims(model_config.projector)[1]
        per_rank = self.options["queue_size"] // max(1, distributed.world_size())
        self.register_buffer("queue", torch.zeros(2, per_rank, dim), persistent=False)
        self.queue_filled = 0

    def build_prototypes(self, model_config):
        return nn.Linear(head_dims(model_config.projector)[1], self.options["num_prototypes"], bias=False)

    @torch.no_grad()
    def _codes(self, scores: torch.Tensor, view: int, epoch: int) -> torch.Tensor:
        o = self.options
        m = scores.shape[0]
        use_queue = (self.queue.shape[1] > 0 and epoch >= o["queue_start_epoch"]
                     and self.queue_filled >= self.queue.shape[1])
        if use_queue:
            queued = self.queue[view] @ self.online.prototypes.weight.t()
            scores = torch.cat([queued.to(scores.dtype), scores])
        return sinkhorn_knopp(scores, o["sinkhorn_epsilon"], o["sinkhorn_iterations"])[-m:]

    def training_step(self, views, step, epoch):
        with torch.no_grad():
            weight = self.online.prototypes.weight
            weight.copy_(l2_normalize(weight))
        outputs = self.forward_online(views)
        scores = [out["scores"] for out in outputs]
        codes = [self._codes(s.detach().float(), v, epoch) for v, s in enumerate(scores)]
        loss = swav_loss(scores, codes, self.options["temperature"])
        if self.queue.shape[1] > 0:
            with torch.no_grad():
                m = outputs[0]["z"].shape[0]
                for v, out in enumerate(outputs):
                    fresh = l2_normalize(out["z"].detach().float())
                    self.queue[v] = torch.cat([fresh, self.queue[v]])[: self.queue.shape[1]]
                self.queue_filled = min(self.queue.shape[1], self.queue_filled + m)
        return loss, {}

    def after_backward(self, epoch):
        if epoch < self.options["freeze_prototypes_epochs"]:
            self.online.prototypes.weight.grad = None

    def extra_checkpoint(self):
        return {"prototypes": self.online.prototypes.weight.detach().cpu().clone()}

    def state_for_resume(self):
        state = super().state_for_resume()
        state.update(queue=self.queue.detach().cpu().clone(), queue_filled=int(self.queue_filled))
        return state

    def load_state_for_resume(self, state):
        super().load_state_for_resume(state)
        if "queue" in state and state["queue"].shape == self.queue.shape:
            self.queue.copy_(state["queue"])
            self.queue_filled = int(state.get("queue_filled", 0))


METHOD_CLASSES: dict[str, type[Method]] = {
    cls.name: cls for cls in (ReSA, SimCLR, BYOL, VICReg, SwAV, BarlowTwins)
}


def zero_init_residual(config: TrainConfig, model_config: ModelConfig) -> bool:
    """Whether the residual branches' last BatchNorm starts at zero: ``config.zero_init_residual``,
    or by default as ReSA's reference code builds its encoders (on for ResNet-34/50 on CIFAR and
    for every ResNet at ImageNet size; off for ResNet-18 with the CIFAR stem); off for the
    baselines (torchvision's and solo-learn's default) and ViTs."""
    if not model_config.backbone.startswith("resnet"):
        return False
    if config.zero_init_residual is not None:
        return bool(config.zero_init_residual)
    return config.method == "resa" and not (config.backbone == "resnet18" and model_config.cifar_stem)


def build_method(config: TrainConfig, in_channels: int, cifar_stem: bool, total_steps: int,
                 steps_per_epoch: int) -> Method:
    """The method object of a resolved config (the model initialised from torch's current RNG)."""
    model_config = model_config_for(config, in_channels, cifar_stem)
    return METHOD_CLASSES[config.method](config, model_config, total_steps, steps_per_epoch)
