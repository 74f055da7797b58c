"""3x3 convolutions through NNPACK's Winograd kernels where they measure faster (CPU, fp32, inference).

A 3x3, stride-1 convolution computed with Winograd's minimal filtering F(6x6, 3x3) needs about 5x
fewer multiplications than the direct (im2col / oneDNN) one, at the price of transforms that are
memory passes and of a float error ~1e-4 relative to the outputs' scale. PyTorch ships NNPACK's
Winograd kernels (``torch._nnpack_spatial_convolution``; AVX2, no AVX-512) but its convolution
dispatch does not pick them for detection's inputs (at most NCHW batches of 16 or more). Whether they beat oneDNN depends on the processor, the threads and the
shape: on a 2-core AVX2 AMD EPYC, one thread, ResNet-50's 3x3 convs at 256 channels, 50x67 run in
20 ms instead of 40 ms, at 64 channels, 200x267 they tie, and at 20x20 and below oneDNN wins
(docs/inference.md). So nothing is assumed: :func:`route_3x3_to_winograd` times both paths on every
3x3 conv at each input size an example forward gives it and keeps NNPACK only where it was faster;
:class:`WinogradConv2d` applies the verdict of the measured size nearest to each input's.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

#: NNPACK is kept for an input size only when it takes at most this fraction of oneDNN's time
#: (a margin against timing noise)
WINOGRAD_MARGIN = 0.9


def winograd_available() -> bool:
    """Whether this PyTorch build has NNPACK and it initialises on this processor (the call also
    initialises it: NNPACK's convolutions fail until it has been made once)."""
    return bool(torch._nnpack_available())


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, ungrouped conv that runs NNPACK's Winograd kernels for input sizes where it
    was measured faster, and the usual path otherwise; inference only (no autograd through NNPACK).

    ``winograd_verdicts``: ``((input H*W, NNPACK faster), ...)`` as measured by
    :func:`route_3x3_to_winograd`; an input takes the verdict of the measured area nearest to its own
    (in log scale), so a conv shared across pyramid levels, or an image of another size, is decided
    by the size it is closest to. Inputs ``[B, C, H, W]`` float32 in either memory format; outputs
    channels_last, as the optimised model's other convs give.
    """

    winograd_verdicts: tuple[tuple[int, bool], ...] = ()

    def uses_winograd(self, input: Tensor) -> bool:
        if not self.winograd_verdicts or input.dtype != torch.float32 or input.device.type != "cpu" \
                or torch.is_grad_enabled():
            return False
        log_area = math.log(max(input.shape[-1] * input.shape[-2], 1))
        return min(self.winograd_verdicts, key=lambda verdict: abs(math.log(verdict[0]) - log_area))[1]

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not self.uses_winograd(input):
            return super()._conv_forward(input, weight, bias)
        return winograd_conv(input, self.nchw_weight, bias, list(self.padding))


def winograd_conv(input: Tensor, weight: Tensor, bias: Tensor | None, padding: list[int]) -> Tensor:
    """A 3x3, stride-1 conv by NNPACK's Winograd kernels: ``input [B, C, H, W]`` float32 (any memory format),
    ``weight [O, C, 3, 3]`` contiguous -> ``[B, O, H', W']`` channels_last. One image per call: NNPACK's
    batched path (``nnp_convolution_output``) measured 1.0-2.3x slower per image than oneDNN at batches of
    2 and 4 where its single-image path (``nnp_convolution_inference``) was 1.5-1.9x faster
    (docs/inference.md)."""
    output = None
    for index, image in enumerate(input.split(1)):
        result = torch._nnpack_spatial_convolution(image.contiguous(), weight, bias, padding, [1, 1])
        if output is None:
            output = torch.empty((input.shape[0], *result.shape[1:]), dtype=result.dtype, device=result.device,
                                 memory_format=torch.channels_last)
        output[index:index + 1].copy_(result)  # NCHW -> channels_last in the same pass
    return output


def winograd_candidates(module: nn.Module) -> dict[str, nn.Conv2d]:
    """The convs under ``module`` NNPACK's Winograd kernels can compute: plain ``nn.Conv2d`` (or the
    already routed), 3x3, stride 1, no dilation, no groups, zero padding given as numbers, float32."""
    return {name: conv for name, conv in module.named_modules()
            if type(conv) in (nn.Conv2d, WinogradConv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and conv.weight.dtype == torch.float32}


def _median_ms(function: Callable[[], Any], runs: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure_winograd(module: nn.Module, run_example: Callable[[], Any], runs: int = 3) -> dict[str, list]:
    """For every :func:`winograd_candidates` conv and every input size ``run_example()`` gives it:
    ``{conv name: [[H*W, NNPACK faster, NNPACK ms, usual ms], ...]}``, medians of ``runs`` timed calls of
    each path (after one warm-up) on the captured input. Empty when NNPACK is unavailable."""
    candidates = winograd_candidates(module)
    if not candidates or not winograd_available():
        return {}
    inputs: dict[tuple[str, tuple[int, ...]], Tensor] = {}

    def keep_input(name: str, args: tuple) -> None:  # a forward hook must return None (else it replaces the output)
        inputs.setdefault((name, tuple(args[0].shape)), args[0])

    hooks = [conv.register_forward_hook(lambda conv, args, output, name=name: keep_input(name, args))
             for name, conv in candidates.items()]
    try:
        with torch.no_grad():
            run_example()
    finally:
        for hook in hooks:
            hook.remove()
    measured: dict[str, list] = {}
    with torch.no_grad():
        for (name, shape), x in inputs.items():
            conv = candidates[name]
            weight, padding = conv.weight.contiguous(), list(conv.padding)
            usual = _median_ms(lambda: nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias), runs)
            nnpack = _median_ms(lambda: winograd_conv(x, weight, conv.bias, padding), runs)
            measured.setdefault(name, []).append(
                [shape[-1] * shape[-2], nnpack <= WINOGRAD_MARGIN * usual, round(nnpack, 3), round(usual, 3)])
    return measured


def apply_winograd(module: nn.Module, measured: dict[str, list]) -> int:
    """Make every conv of ``measured`` that was faster through NNPACK at some size a
    :class:`WinogradConv2d` with those verdicts (in place; same parameters and state-dict keys).
    Returns the number of convs routed."""
    candidates = winograd_candidates(module)
    routed = 0
    for name, rows in measured.items():
        conv = candidates.get(name)
        if conv is None or not any(row[1] for row in rows):
            continue
        conv.__class__ = WinogradConv2d
        conv.winograd_verdicts = tuple((int(row[0]), bool(row[1])) for row in rows)
        # NNPACK reads the weight as [out, in, 3, 3] contiguous: kept once, not copied per call
        conv.register_buffer("nchw_weight", conv.weight.detach().contiguous(), persistent=False)
        routed += 1
    return routed


def route_3x3_to_winograd(module: nn.Module, run_example: Callable[[], Any], runs: int = 3) -> tuple[int, dict]:
    """:func:`measure_winograd` then :func:`apply_winograd`: returns (convs routed, measurements)."""
    measured = measure_winograd(module, run_example, runs)
    return apply_winograd(module, measured), measured
