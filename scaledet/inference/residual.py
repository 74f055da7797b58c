"""ResNet blocks with the residual add and the ReLUs fused into their convolutions (CPU, fp32, inference).

A torchvision ``Bottleneck`` ends ``conv3 -> out += identity -> ReLU``. Run eagerly that is a fresh
output tensor for ``conv3``, then an add pass and a ReLU pass over it. oneDNN can do all three in the
convolution: a *sum* post-op accumulates the conv's result into an existing tensor and an eltwise
post-op applies the ReLU, both while the output tile is still in registers
(``torch.ops.mkldnn._convolution_pointwise_.binary``, the op inductor's CPU freezing passes emit). The
fused block writes its result into the identity tensor in place, so the block allocates nothing for
its output; ``conv1`` / ``conv2`` take their ReLU as a post-op likewise.

The fresh output is most of what this saves. A large new tensor is memory the kernel must map and
zero page by page on first touch: DETR R50's layer1 writes 256 x 200 x 267 float32 maps (55 MB),
above glibc's largest ``mmap`` threshold (32 MB), so each comes fresh from the kernel on every call.
On a 2-core AVX2 AMD EPYC (1 thread) one such 64 -> 256 1x1 conv with its add and ReLU took 72-91 ms
eagerly and 27 ms fused (docs/inference.md "Fused residual blocks").

The blocks: torchvision's ``Bottleneck`` / ``BasicBlock`` (DETR, RetinaNet) and any block whose class
says how it computes ``relu(main(x) + shortcut(x))`` with a ``residual_parts()`` method (RT-DETR's
ResNet-vd blocks), see :func:`residual_parts`.

Which tensor is written in place: the shortcut's output when the block has a projection (made for this
block alone), else the block's input, but only when that input is the output of the previous fused
block of the same ``nn.Sequential`` (a ResNet stage: nothing else holds it). Otherwise (the first
block of a stage without a downsample, e.g. ResNet18's layer1) the sum goes to a new tensor
(``_convolution_pointwise.binary``), still with the add and ReLU fused. A conv that runs a Winograd
kernel at this input size (:class:`~scaledet.inference.winograd.WinogradConv2d`) keeps it and takes
its ReLU / add separately. Autograd, other dtypes and devices, and small inputs take the block's own
forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from scaledet.inference.winograd import WinogradConv2d

# Inputs at most this large (elements, whole batch) keep the eager forward: oneDNN's fixed cost per
# call is not worth it there (the same crossover as the 1x1 routing in optimize.py).
FUSED_MIN_NUMEL = 32768


def fused_ops_available() -> bool:
    """Whether this PyTorch build has oneDNN and its fused convolution ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise_")


def _onednn_conv(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv`` on ``x`` can run as a fused oneDNN convolution: a plain ``nn.Conv2d`` (or a subclass
    that computes exactly what it does: class attribute ``plain_conv2d``, e.g. the 1x1-routed one) with
    numeric zero padding, or a Winograd-routed one whose kernel at this input size is the direct one."""
    if isinstance(conv, WinogradConv2d):
        return conv.kernel_for(x) == "direct"
    plain = type(conv) is nn.Conv2d or getattr(conv, "plain_conv2d", False)
    return plain and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


# the fused ops' post-op arguments: binary op "add" (the in-place op refuses "sum") with scale 1, then ReLU
_ADD_RELU = ("add", 1.0, "relu", [], "")


def _args(conv: nn.Conv2d) -> tuple:
    return conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def conv_relu(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``relu(conv(x))``, the ReLU fused into oneDNN's conv where the conv runs there."""
    if _onednn_conv(conv, x):
        return torch.ops.mkldnn._convolution_pointwise(x, *_args(conv), "relu", [], "")
    return torch.relu_(conv(x))


def conv_add_relu(conv: nn.Conv2d, x: Tensor, residual: Tensor, in_place: bool) -> Tensor:
    """``relu(conv(x) + residual)``; written into ``residual`` when ``in_place`` (else a new tensor)."""
    if _onednn_conv(conv, x):
        if in_place:
            return torch.ops.mkldnn._convolution_pointwise_.binary(residual, x, *_args(conv), *_ADD_RELU)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *_args(conv), *_ADD_RELU)
    out = conv(x)
    return torch.relu_(out.add_(residual))


class FusedResidualBlock:
    """Mixin put in front of a residual block's class by :func:`fuse_residual_blocks`: the same block with
    its ReLUs and residual add fused (:func:`conv_relu`, :func:`conv_add_relu`). ``fused_convs``: the
    main path's convs by name, each but the last followed by a ReLU; ``fused_shortcut``: the shortcut's
    name (``None``: identity); ``owns_input``: the input is the previous fused block's output."""

    fused_convs: tuple[str, ...] = ()
    fused_shortcut: str | None = None
    owns_input = False

    def _fusable(self, x: Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and not torch.is_grad_enabled()
                and x.numel() > FUSED_MIN_NUMEL)

    def forward(self, x: Tensor) -> Tensor:
        if not self._fusable(x):
            return super().forward(x)
        *inner, last = (self.get_submodule(name) for name in self.fused_convs)
        out = x
        for conv in inner:
            out = conv_relu(conv, out)
        if self.fused_shortcut is not None:  # a projection: a new tensor made for this block alone
            return conv_add_relu(last, out, self.get_submodule(self.fused_shortcut)(x), in_place=True)
        return conv_add_relu(last, out, x, in_place=self.owns_input)


def _torchvision_parts(block: Bottleneck | BasicBlock) -> tuple[tuple[str, ...], str | None] | None:
    """torchvision's blocks as :func:`residual_parts` describes them, when every BatchNorm is folded
    (``Identity``), the downsample (if any) is a conv alone or followed by ``Identity`` and the ReLU plain."""
    names = ("conv1", "conv2", "conv3") if isinstance(block, Bottleneck) else ("conv1", "conv2")
    norms = [getattr(block, f"bn{index}") for index in range(1, len(names) + 1)]
    downsample = block.downsample
    plain_downsample = downsample is None or (
        isinstance(downsample, nn.Sequential) and isinstance(downsample[0], nn.Conv2d)
        and all(isinstance(part, nn.Identity) for part in list(downsample)[1:]))
    if not (all(isinstance(norm, nn.Identity) for norm in norms) and plain_downsample and type(block.relu) is nn.ReLU):
        return None
    return names, None if downsample is None else "downsample"


def residual_parts(block: nn.Module) -> tuple[tuple[str, ...], str | None] | None:
    """How ``block`` computes ``relu(main(x) + shortcut(x))``, for fusing: the names of the main path's
    convs (each but the last followed by a ReLU) and of the shortcut (``None``: identity), or ``None``
    when ``block`` is not such a block (or its BatchNorms are not folded). torchvision's ``Bottleneck`` /
    ``BasicBlock`` are known here; a family's own block says it with a ``residual_parts()`` method."""
    own = getattr(block, "residual_parts", None)
    if callable(own):
        return own()
    if type(block) in (Bottleneck, BasicBlock):
        return _torchvision_parts(block)
    return None


_fused_classes: dict[type, type] = {}


def fused_class(block_class: type) -> type:
    """``block_class`` with :class:`FusedResidualBlock` in front (made once per class)."""
    if block_class not in _fused_classes:
        _fused_classes[block_class] = type(f"Fused{block_class.__name__}", (FusedResidualBlock, block_class),
                                           {"__doc__": f"{block_class.__name__} with its add and ReLUs fused."})
    return _fused_classes[block_class]


def fuse_residual_blocks(module: nn.Module) -> int:
    """Turn every residual block under ``module`` that :func:`residual_parts` recognises (torchvision's
    ``Bottleneck`` / ``BasicBlock``, RT-DETR's ResNet-vd blocks; BatchNorms folded) into its
    :func:`fused_class` in place (same parameters and state-dict keys; outputs equal up to float
    rounding). Returns the number changed (0 where the fused ops are missing)."""
    if not fused_ops_available():
        return 0
    changed = 0
    for parent in module.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        previous_fused = False
        for child in parent:
            parts = None if isinstance(child, FusedResidualBlock) else residual_parts(child)
            if parts is None:
                previous_fused = isinstance(child, FusedResidualBlock)
                continue
            child.__class__ = fused_class(type(child))
            child.fused_convs, child.fused_shortcut = parts
            child.owns_input = previous_fused
            previous_fused = True
            changed += 1
    return changed
