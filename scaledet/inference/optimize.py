"""``scaledet.optimize``: an inference-optimised copy of a detector with the same call contract.

What it does (the original model is left untouched):

* EfficientDet: the class/box heads share conv weights across levels but keep per-level BatchNorm,
  so they are first unshared into one conv chain per level; then every conv -> BatchNorm pair
  (timm backbone, BiFPN, heads) is folded; DETR: the ResNet's FrozenBatchNorm is folded.
* on CPU, 1x1 convs are routed to oneDNN (:func:`route_pointwise_to_onednn`, output unchanged);
* conv weights and the input batch use ``torch.channels_last`` (the heads' permute to
  ``[B, H, W, A*K]`` becomes free);
* ``precision="bf16"``: the network runs under ``torch.autocast`` with bfloat16 (outputs cast back
  to float32 before post-processing); ``"fp16"`` likewise on CUDA only;
* ``compile=True``: the tensor network is wrapped with :func:`torch.compile`;
* EfficientDet post-processing uses :mod:`scaledet.inference.postprocess` (exact, batched).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from scaledet.inference.fold import fold_batchnorm

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class UnsharedHead(nn.Module):
    """An EfficientDet ``HeadNet`` with its shared convs copied per level, so each (conv, per-level
    BatchNorm) pair can be folded. list of ``[B, C, H_l, W_l]`` -> list of ``[B, A*outputs, H_l, W_l]``."""

    def __init__(self, head: nn.Module, num_levels: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            layers = []
            for conv, norms in zip(head.convs, head.norms):
                layers += [copy.deepcopy(conv), copy.deepcopy(norms[level]), copy.deepcopy(head.act)]
            self.levels.append(nn.Sequential(*layers))
        self.predict = head.predict

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [self.predict(chain(x)) for chain, x in zip(self.levels, features)]


class FrozenWeightedSum(nn.Module):
    """A BiFPN fusion node with its (eval-time constant) normalised weights precomputed:
    ``sum_i w_i * x_i`` via in-place adds instead of stacking the inputs."""

    def __init__(self, fusion: nn.Module) -> None:
        super().__init__()
        from scaledet.models.efficientdet.feature_network import FastNormalizedFusion, SoftmaxFusion

        with torch.no_grad():
            if isinstance(fusion, FastNormalizedFusion):
                weight = torch.relu(fusion.weight)
                weight = weight / (weight.sum() + fusion.eps)
            elif isinstance(fusion, SoftmaxFusion):
                weight = torch.softmax(fusion.weight, dim=0)
            else:
                weight = None
        self.weights = None if weight is None else [float(w) for w in weight]

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if self.weights is None:
            out = inputs[0].clone()
            for x in inputs[1:]:
                out.add_(x)
            return out
        out = inputs[0] * self.weights[0]
        for x, w in zip(inputs[1:], self.weights[1:]):
            out.add_(x, alpha=w)
        return out


def freeze_fusions(network: nn.Module) -> int:
    """Replace every BiFPN fusion module in ``network`` by :class:`FrozenWeightedSum`; returns the count."""
    from scaledet.models.efficientdet.feature_network import FUSION_MODULES

    fusion_types = tuple(FUSION_MODULES.values())
    names = [name for name, module in network.named_modules() if isinstance(module, fusion_types)]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = network.get_submodule(parent) if parent else network
        setattr(owner, child, FrozenWeightedSum(owner.get_submodule(child)))
    return len(names)


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


class _Optimized(nn.Module):
    """Shared wrapper state: the source model's contract attributes, precision and device handling."""

    def __init__(self, model: nn.Module, precision: str) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.model = model
        self.precision = precision
        self.class_names = model.class_names
        self.category_ids = getattr(model, "category_ids", None)
        self.num_classes = model.num_classes
        self.image_size = model.image_size
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


class OptimizedEfficientDet(_Optimized):
    """EfficientDet with folded BatchNorm, channels_last, optional autocast/compile, fast post-processing."""

    def __init__(self, model: nn.Module, precision: str = "fp32", compile: bool = False) -> None:
        model = copy.deepcopy(model).eval()
        super().__init__(model, precision)
        net = model.network
        levels = model.variant.num_levels
        net.class_net, net.box_net = UnsharedHead(net.class_net, levels), UnsharedHead(net.box_net, levels)
        example = torch.zeros(1, 3, *model.image_size, device=model.mean.device)
        self.folded = fold_batchnorm(net, lambda: net(example))
        freeze_fusions(net)
        if example.device.type == "cpu":
            route_pointwise_to_onednn(net)
        net.to(memory_format=torch.channels_last)
        self.network = _compile(net) if compile else net

    def forward(self, images: list[Tensor], targets=None) -> list[dict[str, Tensor]]:
        """Contract of :class:`~scaledet.models.efficientdet.EfficientDet` (eval only)."""
        from scaledet.models.efficientdet.head import flatten_outputs
        from scaledet.models.inputs import check_images
        from scaledet.inference.postprocess import efficientdet_detections

        if targets is not None:
            raise ValueError("an optimised model is inference-only; pass targets to the original model")
        images = check_images(images)
        model, variant = self.model, self.model.variant
        batch, scales, valid = model.preprocess(list(images))
        with torch.no_grad(), self.autocast(batch.device):
            cls_out, box_out = self.network(batch.contiguous(memory_format=torch.channels_last))
        cls_logits = flatten_outputs(cls_out, self.num_classes).float()
        box_codes = flatten_outputs(box_out, 4).float()
        anchors = model.anchors_for(tuple(batch.shape[-2:]))
        if variant.soft_nms:
            return model.postprocess(cls_logits, box_codes, anchors, scales, valid)
        sizes = torch.tensor(valid, dtype=torch.float64)
        results = efficientdet_detections(cls_logits, box_codes, anchors, sizes, variant.max_detection_points,
                                          variant.max_detections, variant.nms_iou)
        for result, scale in zip(results, scales):
            result["boxes"] = result["boxes"] / scale
        return results


class OptimizedDETR(_Optimized):
    """DETR with the ResNet's frozen BatchNorm folded, a channels_last backbone, optional autocast/compile."""

    def __init__(self, model: nn.Module, precision: str = "fp32", compile: bool = False) -> None:
        model = copy.deepcopy(model).eval()
        super().__init__(model, precision)
        backbone = model.backbone
        example = torch.zeros(1, 3, 64, 64, device=model.query_embed.weight.device)
        mask = torch.zeros(1, 64, 64, dtype=torch.bool, device=example.device)
        self.folded = fold_batchnorm(backbone, lambda: backbone(example, mask))
        if example.device.type == "cpu":
            route_pointwise_to_onednn(backbone)
        backbone.to(memory_format=torch.channels_last)
        self.features = _compile(model.forward_features) if compile else model.forward_features

    def forward(self, images: list[Tensor], targets=None) -> list[dict[str, Tensor]]:
        """Contract of :class:`~scaledet.models.detr.DETR` (eval only)."""
        from scaledet.models.detr.model import postprocess
        from scaledet.models.inputs import check_images

        if targets is not None:
            raise ValueError("an optimised model is inference-only; pass targets to the original model")
        images = check_images(images)
        batch, mask = self.model.preprocessor(images)
        with torch.no_grad(), self.autocast(batch.device):
            logits, boxes, _ = self.features(batch.contiguous(memory_format=torch.channels_last), mask)
        return postprocess(logits.float(), boxes.float(), [tuple(image.shape[1:]) for image in images])


def optimize(model: nn.Module, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """An inference-optimised copy of ``model`` with the same eval call contract.

    Args:
        model: a scaledet EfficientDet or DETR (from :func:`scaledet.create_model`).
        precision: ``"fp32"`` (output equals eager up to float rounding), ``"bf16"`` (autocast) or
            ``"fp16"`` (autocast, CUDA only).
        compile: wrap the tensor network with :func:`torch.compile`.

    Returns:
        an eval-only module: ``list[Tensor[3,H,W]]`` -> ``list[dict(boxes xyxy px, scores, labels)]``.
    """
    from scaledet.models.detr.model import DETR
    from scaledet.models.efficientdet.model import EfficientDet

    if isinstance(model, EfficientDet):
        return OptimizedEfficientDet(model, precision, compile)
    if isinstance(model, DETR):
        return OptimizedDETR(model, precision, compile)
    raise ValueError(f"optimize supports scaledet EfficientDet and DETR models, got {type(model).__name__}")
