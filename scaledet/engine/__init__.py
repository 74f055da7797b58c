"""Training engine: :class:`Trainer`, :class:`TrainConfig`, checkpoints, EMA, DDP helpers."""

from scaledet.engine.config import TrainConfig, family_recipe
from scaledet.engine.trainer import Trainer, build_optimizer, build_param_groups

__all__ = ["TrainConfig", "Trainer", "build_optimizer", "build_param_groups", "family_recipe"]
