"""Inference helpers: :func:`optimize` (folded BatchNorm, channels_last, bf16, compile) and fast post-processing."""

from scaledet.inference.fold import fold_batchnorm
from scaledet.inference.optimize import optimize

__all__ = ["fold_batchnorm", "optimize"]
