"""ResNet blocks with the residual add and ReLUs fused into oneDNN's convolutions: same outputs as the
eager blocks, the sum written in place only into tensors nothing else holds, eager fallbacks, and the
optimised detectors using them (torchvision's blocks in DETR / RetinaNet, RT-DETR's own ResNet-vd blocks)."""

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from scaledet.inference.optimize import OptimizedDetector
from scaledet.inference.residual import FusedResidualBlock, fuse_residual_blocks, fused_class, fused_ops_available
from scaledet.inference.winograd import WinogradConv2d, f2x2_weight
from tests.fixtures import resnet_detector
from tests.test_optimize import assert_equal_detections

pytestmark = pytest.mark.skipif(not fused_ops_available(), reason="this PyTorch build has no oneDNN fused convolutions")


def folded(block: nn.Module) -> nn.Module:
    """``block`` as BatchNorm folding leaves it: norms -> ``Identity``, every conv with a (random) bias."""
    for name, child in list(block.named_modules()):
        if isinstance(child, nn.BatchNorm2d):
            parent, _, leaf = name.rpartition(".")
            setattr(block.get_submodule(parent) if parent else block, leaf, nn.Identity())
        elif isinstance(child, nn.Conv2d):
            child.bias = nn.Parameter(torch.randn(child.out_channels) * 0.1)
    return block.eval()


def stage(block_class, channels: int, first_downsample: bool, depth: int = 3) -> nn.Sequential:
    """A ResNet stage of ``depth`` folded blocks on ``channels`` inputs (first with a 1x1 projection or not)."""
    width = channels // block_class.expansion
    downsample = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels)) if first_downsample else None
    blocks = [block_class(channels, width, downsample=downsample if index == 0 else None) for index in range(depth)]
    return folded(nn.Sequential(*blocks)).to(memory_format=torch.channels_last)


@pytest.mark.parametrize("block_class, first_downsample", [(Bottleneck, True), (BasicBlock, False), (BasicBlock, True)])
def test_fused_stage_equals_eager_and_leaves_its_input_alone(block_class, first_downsample):
    torch.manual_seed(0)
    eager = stage(block_class, 64, first_downsample)
    fused = copy.deepcopy(eager)
    assert fuse_residual_blocks(fused) == 3
    assert all(type(block) is fused_class(block_class) and isinstance(block, block_class) for block in fused)
    # only blocks fed by the previous fused block write into their input
    assert [block.owns_input for block in fused] == [False, True, True]
    assert fused.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(2, 64, 24, 20).contiguous(memory_format=torch.channels_last)
    kept = x.clone()
    with torch.no_grad():
        expected, output = eager(x), fused(x)
    assert torch.equal(x, kept)  # the stage's input is never a sum's destination
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


def test_winograd_routed_conv_keeps_its_kernel_inside_a_fused_block():
    torch.manual_seed(0)
    eager = stage(Bottleneck, 64, True)
    fused = copy.deepcopy(eager)
    for block in fused:  # every 3x3 conv on our F(2x2, 3x3) at this size
        block.conv2.__class__ = WinogradConv2d
        block.conv2.winograd_verdicts = ((24 * 20, "f2x2"),)
        block.conv2.register_buffer("f2x2_weight", f2x2_weight(block.conv2.weight), persistent=False)
    fuse_residual_blocks(fused)
    x = torch.randn(2, 64, 24, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager(x), rtol=1e-4, atol=1e-4)


def test_small_inputs_and_autograd_take_the_eager_forward(monkeypatch):
    torch.manual_seed(0)
    eager = stage(Bottleneck, 64, True)
    fused = copy.deepcopy(eager)
    fuse_residual_blocks(fused)
    calls = []
    fused_op = torch.ops.mkldnn._convolution_pointwise

    class Spy:  # counts fused convolutions
        def __call__(self, *args):
            calls.append(args[0].shape)
            return fused_op(*args)

    monkeypatch.setattr("scaledet.inference.residual.torch.ops.mkldnn._convolution_pointwise", Spy(), raising=False)
    small = torch.randn(1, 64, 8, 8)  # 4096 elements: below FUSED_MIN_NUMEL
    with torch.no_grad():
        torch.testing.assert_close(fused(small), eager(small), rtol=1e-5, atol=1e-5)
    grad_input = torch.randn(1, 64, 32, 32, requires_grad=True)  # above FUSED_MIN_NUMEL
    fused(grad_input).sum().backward()  # autograd: the eager forward, which differentiates
    assert grad_input.grad is not None
    assert calls == []
    with torch.no_grad():  # the same input without autograd is fused (the spy sees it)
        fused(grad_input.detach())
    assert calls


def test_unfolded_blocks_are_left_alone():
    block = Bottleneck(64, 16).eval()  # BatchNorm still there
    assert fuse_residual_blocks(nn.Sequential(block)) == 0 and type(block) is Bottleneck


def test_fusing_twice_changes_nothing_more():
    fused = stage(Bottleneck, 64, True)
    assert fuse_residual_blocks(fused) == 3
    assert fuse_residual_blocks(fused) == 0
    assert [block.owns_input for block in fused] == [False, True, True]
    assert all(isinstance(block, FusedResidualBlock) for block in fused)


@pytest.mark.parametrize("name, blocks", [("detr_r50", 16), ("retinanet_r50_fpn", 16), ("rtdetr_r18vd", 8)])
def test_optimized_resnet_detectors_fuse_their_blocks_and_equal_eager(name, blocks):
    model = resnet_detector(name, (128, 160))
    fast = OptimizedDetector(model, winograd=False)
    assert fast.fused_blocks == blocks  # ResNet-50: 3 + 4 + 6 + 3 bottlenecks; R18-vd: 4 x 2 basic blocks
    assert OptimizedDetector(model, winograd=False, fuse_residual=False).fused_blocks == 0
    images = [torch.rand(3, 120, 150), torch.rand(3, 128, 100)]
    with torch.no_grad():
        assert_equal_detections(model(images), fast(images), score_tol=1e-4, box_tol=1e-2)
