"""The LaMo policy: backbone loading, LoRA, RL embeddings and heads."""
from lamo_scale.model.backbone import BackboneError, load_backbone
from lamo_scale.model.policy import LaMoPolicy, build_policy

__all__ = ["BackboneError", "LaMoPolicy", "build_policy", "load_backbone"]
