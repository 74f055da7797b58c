"""``scaledet.optimize``: an inference-optimised copy of any :class:`~scaledet.models.base.Detector`
with the same eval call contract.

What it does to a deep copy (the original model is left untouched), through the contract only:

* ``model.prepare_for_inference()``: the family's own rewrites (e.g. unsharing convs shared across
  pyramid levels so that each has one BatchNorm, freezing learned fusion weights);
* every conv -> BatchNorm (or FrozenBatchNorm) pair is folded (:func:`fold_batchnorm`), found by one
  example forward through ``preprocess`` / ``forward_features``;
* on CPU, 1x1 convs are routed to oneDNN (:func:`route_pointwise_to_onednn`, output unchanged);
* conv weights and 4-D inputs use ``torch.channels_last`` (a head's permute to ``[B, H, W, C]``
  becomes free);
* ``precision="bf16"``: ``forward_features`` runs under ``torch.autocast`` with bfloat16 (outputs
  cast back to float32 before post-processing); ``"fp16"`` likewise on CUDA only;
* ``compile=True``: ``forward_features`` is wrapped with :func:`torch.compile`;
* post-processing is the family's ``postprocess(..., fast=True)`` (exact shortcuts).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from scaledet.inference.fold import fold_batchnorm
from scaledet.models.base import Detections, Detector
from scaledet.models.inputs import check_images

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# Input size (elements, whole batch) above which a 1x1 conv is faster through oneDNN than through
# PyTorch's generic CPU path; measured crossover on this project's CPU, one thread (at 64x8x8x8 the
# two are equal, at 64x32x32 oneDNN is 1.4-2.2x faster, at 48x1x1 it is 2-100x slower).
ONEDNN_POINTWISE_MIN_NUMEL = 32768


class OneDnnPointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1 convolution that asks for oneDNN on large inputs only.

    PyTorch's CPU dispatcher sends undilated 1x1 convs with batch < 16 on one thread to its generic
    im2col/GEMM path; a dilated conv goes to oneDNN when the input is large enough, which is faster on
    channels_last inputs. A 1x1 kernel has no taps to spread, so ``dilation=2`` gives the identical
    result. On small inputs (squeeze-excite vectors, the coarsest pyramid levels) the dilated conv
    falls back to a slow per-channel path instead, so those keep dilation 1.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        dilation = 2 if input.numel() > ONEDNN_POINTWISE_MIN_NUMEL else 1
        return nn.functional.conv2d(input, weight, bias, self.stride, self.padding, dilation, self.groups)


def route_pointwise_to_onednn(module: nn.Module) -> int:
    """Turn every plain 1x1, stride-1 ``nn.Conv2d`` under ``module`` into a
    :class:`OneDnnPointwiseConv2d` in place (same parameters and state-dict keys, same outputs).
    Returns the number changed."""
    changed = 0
    for conv in module.modules():
        if type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1) \
                and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1) and conv.padding_mode == "zeros":
            conv.__class__ = OneDnnPointwiseConv2d
            changed += 1
    return changed


def _compile(function):
    """torch.compile with inductor freezing (weights become constants: prepacked, fused convs)."""
    return torch.compile(function, options={"freezing": True})


def _to_float(outputs: Any) -> Any:
    """Floating tensors in (nested tuples / lists / dicts of) ``outputs`` cast to float32."""
    if isinstance(outputs, Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_to_float(o) for o in outputs)
    if isinstance(outputs, dict):
        return {key: _to_float(value) for key, value in outputs.items()}
    return outputs


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class OptimizedDetector(nn.Module):
    """An eval-only copy of a :class:`~scaledet.models.base.Detector`: folded BatchNorm, channels_last,
    optional autocast / compile, fast post-processing; made by :func:`optimize`.

    Attributes: ``model`` (the rewritten copy), ``folded`` (conv/BatchNorm pairs folded),
    ``precision`` and the source's ``class_names``, ``category_ids``, ``num_classes``,
    ``image_size`` and ``config``.
    """

    def __init__(self, model: Detector, precision: str = "fp32", compile: bool = False) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        model = copy.deepcopy(model).eval()
        self.model = model
        self.precision = precision
        self.class_names = model.class_names
        self.category_ids = model.category_ids
        self.num_classes = model.num_classes
        self.image_size = model.image_size
        model.prepare_for_inference()
        device = next(model.parameters()).device
        example = model.preprocess([torch.zeros(3, *model.input_size(), device=device)])
        self.folded = fold_batchnorm(model, lambda: model.forward_features(*example.inputs))
        if device.type == "cpu":
            route_pointwise_to_onednn(model)
        model.to(memory_format=torch.channels_last)
        self.features = _compile(model.forward_features) if compile else model.forward_features
        self.training = False  # eval-only from the start (train(True) raises)

    @property
    def config(self) -> dict:
        return self.model.config

    def autocast(self, device: torch.device):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return nullcontext()
        if dtype is torch.float16 and device.type != "cuda":
            raise ValueError("precision='fp16' needs a CUDA device; use 'bf16' on CPU")
        return torch.autocast(device.type, dtype=dtype)

    def train(self, mode: bool = True):
        if mode:
            raise ValueError("an optimised model is inference-only (BatchNorm is folded); train the original")
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: list[Tensor] | Tensor, targets=None) -> list[Detections]:
        """The eval contract of :class:`~scaledet.models.base.Detector`: ``preprocess`` ->
        ``forward_features`` (channels_last, autocast) -> outputs to float32 -> ``postprocess(fast=True)``."""
        if targets is not None:
            raise ValueError("an optimised model is inference-only; pass targets to the original model")
        images = check_images(images)
        batch = self.model.preprocess(images)
        inputs = tuple(_channels_last(x) for x in batch.inputs)
        with self.autocast(inputs[0].device):
            outputs = self.features(*inputs)
        return self.model.postprocess(_to_float(outputs), batch, fast=True)


def optimize(model: Detector, precision: str = "fp32", compile: bool = False) -> OptimizedDetector:
    """An inference-optimised copy of ``model`` with the same eval call contract.

    Args:
        model: a scaledet detector (:class:`~scaledet.models.base.Detector`, from
            :func:`scaledet.create_model`); it is left untouched.
        precision: ``"fp32"`` (output equals eager up to float rounding), ``"bf16"`` (autocast) or
            ``"fp16"`` (autocast, CUDA only).
        compile: wrap the model's ``forward_features`` with :func:`torch.compile`.

    Returns:
        an eval-only module: ``list[Tensor[3,H,W]]`` -> ``list[dict(boxes xyxy px, scores, labels)]``.
    """
    if not isinstance(model, Detector):
        raise ValueError(f"optimize needs a scaledet Detector (scaledet.create_model), got {type(model).__name__}")
    return OptimizedDetector(model, precision, compile)
