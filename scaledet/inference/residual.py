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

Which tensor is written in place: the ``downsample`` output when the block has one (made for this
block alone), else the block's input, but only when that input is the output of the previous fused
block of the same ``nn.Sequential`` (a ResNet stage: nothing else holds it). Otherwise (the first
block of a stage without a downsample, e.g. ResNet18's layer1) the sum goes to a new tensor
(``_convolution_pointwise.binary``), still with the add and ReLU fused. A conv that runs a Winograd
kernel at this input size (:class:`~scaledet.inference.winograd.WinogradConv2d`) keeps it and takes
its ReLU / add separately. Autograd, other dtypes and devices, and small inputs take torchvision's own
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
    """Whether ``conv`` on ``x`` can run as a fused oneDNN convolution: a plain (or 1x1-routed) conv with
    numeric zero padding, or a Winograd-routed one whose kernel at this input size is the direct one."""
    if isinstance(conv, WinogradConv2d):
        return conv.kernel_for(x) == "direct"
    return isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


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


class _FusedResidual:
    """The shared part of the fused blocks: when to fuse and which tensor takes the sum."""

    owns_input = False  # set by fuse_residual_blocks: the input is the previous fused block's output

    def _fusable(self, x: Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and not torch.is_grad_enabled()
                and x.numel() > FUSED_MIN_NUMEL)

    def _residual(self, x: Tensor) -> tuple[Tensor, bool]:
        """The identity branch and whether the sum may be written into it."""
        if self.downsample is not None:
            return self.downsample(x), True
        return x, self.owns_input


class FusedBottleneck(_FusedResidual, Bottleneck):
    """torchvision's ``Bottleneck`` (BatchNorm folded) with fused ReLUs and residual add."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._fusable(x):
            return super().forward(x)
        out = conv_relu(self.conv1, x)
        out = conv_relu(self.conv2, out)
        residual, in_place = self._residual(x)
        return conv_add_relu(self.conv3, out, residual, in_place)


class FusedBasicBlock(_FusedResidual, BasicBlock):
    """torchvision's ``BasicBlock`` (BatchNorm folded) with fused ReLUs and residual add."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._fusable(x):
            return super().forward(x)
        out = conv_relu(self.conv1, x)
        residual, in_place = self._residual(x)
        return conv_add_relu(self.conv2, out, residual, in_place)


_FUSED = {Bottleneck: FusedBottleneck, BasicBlock: FusedBasicBlock}


def _folded(block: nn.Module) -> bool:
    """Every BatchNorm of ``block`` folded into its conv (``Identity``), the downsample a conv alone or a
    conv followed by an ``Identity``, and the ReLU plain."""
    norms = [getattr(block, name) for name in ("bn1", "bn2", "bn3") if hasattr(block, name)]
    downsample = block.downsample
    plain_downsample = downsample is None or (
        isinstance(downsample, nn.Sequential) and isinstance(downsample[0], nn.Conv2d)
        and all(isinstance(part, nn.Identity) for part in list(downsample)[1:]))
    return all(isinstance(norm, nn.Identity) for norm in norms) and plain_downsample and type(block.relu) is nn.ReLU


def fuse_residual_blocks(module: nn.Module) -> int:
    """Turn every torchvision ``Bottleneck`` / ``BasicBlock`` under ``module`` whose BatchNorms are folded
    into a :class:`FusedBottleneck` / :class:`FusedBasicBlock` in place (same parameters and state-dict
    keys; outputs equal up to float rounding). Returns the number changed (0 where the fused ops are
    missing)."""
    if not fused_ops_available():
        return 0
    changed = 0
    for parent in module.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        previous_fused = False
        for child in parent:
            fused_class = _FUSED.get(type(child))
            if fused_class is None or not _folded(child):
                previous_fused = False
                continue
            child.__class__ = fused_class
            child.owns_input = previous_fused
            previous_fused = True
            changed += 1
    return changed
