"""Models with named layers: backbones (H), projector/predictor heads (P0, P1, ..., Z)."""

from .backbones import BACKBONES, ResNetBackbone, backbone_out_dim
from .heads import build_sequential, describe_from_state_dict, mlp_description
from .model import LayerSpec, ModelConfig, SSLModel, build_model, resa_projector

__all__ = [
    "BACKBONES",
    "LayerSpec",
    "ModelConfig",
    "ResNetBackbone",
    "SSLModel",
    "backbone_out_dim",
    "build_model",
    "build_sequential",
    "describe_from_state_dict",
    "mlp_description",
    "resa_projector",
]
