"""Inference helpers: :func:`optimize` (folded BatchNorm, channels_last, bf16, compile) for any detector."""

from scaledet.inference.fold import fold_batchnorm
from scaledet.inference.optimize import optimize

__all__ = ["fold_batchnorm", "optimize"]
