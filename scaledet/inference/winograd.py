"""3x3 convolutions through Winograd kernels where they measure faster (CPU, fp32, inference).

A 3x3, stride-1 convolution computed with Winograd's minimal filtering needs fewer multiplications
than the direct (oneDNN) one, at the price of transforms that are memory passes and of a small float
error. Two kernels are available here:

* ``"nnpack"``: NNPACK's F(6x6, 3x3) (``torch._nnpack_spatial_convolution``; ~5x fewer multiplications,
  AVX2 kernels, error ~1e-4 relative to the outputs' scale). PyTorch ships it, but its convolution
  dispatch does not pick it for detection's inputs (at most NCHW batches of 16 or more). It runs its
  own thread pool beside OpenMP's, and where both have several threads they compete: with 2 threads on
  a 2-core machine, a DETR R50 with 2 convs on NNPACK made the calls around it slower too (1.5x for a
  whole model in alternation with it). So it is a candidate only when PyTorch runs one thread, where
  the pool runs on the calling thread.
* ``"f2x2"``: F(2x2, 3x3) written with PyTorch ops (:func:`winograd_f2x2_conv`: 2.25x fewer
  multiplications in one batched matrix product on PyTorch's threads, error ~1e-5).

Which of the three (with ``"direct"``) wins depends on the processor, the threads and the shape: on a
2-core AVX2 AMD EPYC, 256 channels at 50x67 took 40 ms direct, 20 ms NNPACK and 27 ms F(2x2) on one
thread, and 21 / 24 / 15 ms on two (docs/inference.md). So nothing is assumed:
:func:`measure_winograd` times every kernel on every 3x3 conv at each input size an example forward
gives it, and :class:`WinogradConv2d` runs the kernel measured fastest at the size nearest to each
input's (a Winograd kernel only when it took at most :data:`WINOGRAD_MARGIN` of the direct time).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: a Winograd kernel is kept for an input size only when it takes at most this fraction of the
#: direct conv's time (a margin against timing noise)
WINOGRAD_MARGIN = 0.9
#: every kernel a 3x3 conv can run: PyTorch's own (oneDNN) and the two Winograd ones
KERNELS = ("direct", "nnpack", "f2x2")

# F(2x2, 3x3) (Lavin & Gray, 2016): output tile = A^T [(G g G^T) * (B^T d B)] A for a 4x4 input tile d
_F2X2_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def nnpack_available() -> bool:
    """Whether this PyTorch build has NNPACK and it initialises on this processor (the call also
    initialises it: NNPACK's convolutions fail until it has been made once)."""
    return bool(getattr(torch, "_nnpack_available", lambda: False)())


def nnpack_conv(input: Tensor, weight: Tensor, bias: Tensor | None, padding: list[int]) -> Tensor:
    """A 3x3, stride-1 conv by NNPACK's F(6x6, 3x3): ``input [B, C, H, W]`` float32 (any memory format),
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


def f2x2_weight(weight: Tensor) -> Tensor:
    """``weight [O, C, 3, 3]`` -> its F(2x2, 3x3) transform ``G g G^T`` as ``[16, C, O]`` (the weight
    :func:`winograd_f2x2_conv` takes)."""
    g = torch.tensor(_F2X2_G, dtype=weight.dtype, device=weight.device)
    transformed = torch.einsum("ki,ocij,lj->klco", g, weight.detach(), g)  # [4, 4, C, O]
    return transformed.reshape(16, weight.shape[1], weight.shape[0]).contiguous()


def winograd_f2x2_conv(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 3x3, stride-1, padding-1 conv by Winograd's F(2x2, 3x3) in PyTorch ops: ``input [B, C, H, W]``
    (channels_last is read without a copy), ``weight`` = :func:`f2x2_weight` ``[16, C, O]`` ->
    ``[B, O, H, W]`` channels_last.

    The input is cut into overlapping 4x4 tiles (stride 2), each transformed by ``B^T d B`` (adds and
    subtracts of the 16 strided views), multiplied with the transformed weight in one batched matrix
    product ``[16, tiles, C] @ [16, C, O]``, and each product transformed back by ``A^T m A`` into a 2x2
    output tile."""
    batch, channels, height, width = input.shape
    tiles_h, tiles_w = (height + 1) // 2, (width + 1) // 2
    nhwc = input.permute(0, 2, 3, 1)  # a view for channels_last input
    padded = F.pad(nhwc, (0, 0, 1, 2 * tiles_w + 1 - width, 1, 2 * tiles_h + 1 - height))
    d = [[padded[:, i:i + 2 * tiles_h:2, j:j + 2 * tiles_w:2] for j in range(4)] for i in range(4)]
    rows = [[d[0][j] - d[2][j], d[1][j] + d[2][j], d[2][j] - d[1][j], d[1][j] - d[3][j]] for j in range(4)]
    transformed = input.new_empty((16, batch, tiles_h, tiles_w, channels))
    for k in range(4):  # B^T d B: the row transform above, the column transform here
        t0, t1, t2, t3 = (rows[j][k] for j in range(4))
        torch.sub(t0, t2, out=transformed[4 * k])
        torch.add(t1, t2, out=transformed[4 * k + 1])
        torch.sub(t2, t1, out=transformed[4 * k + 2])
        torch.sub(t1, t3, out=transformed[4 * k + 3])
    products = torch.bmm(transformed.view(16, -1, channels), weight)
    m = products.view(4, 4, batch, tiles_h, tiles_w, -1)
    if bias is not None:  # m[1, 1] enters each of the four outputs of its tile with weight +1
        m[1, 1] += bias
    output = input.new_empty((batch, 2 * tiles_h, 2 * tiles_w, weight.shape[2]))
    for row, s in enumerate((m[0] + m[1] + m[2], m[1] - m[2] - m[3])):  # A^T m A: rows, then columns
        output[:, row::2, 0::2] = s[0] + s[1] + s[2]
        output[:, row::2, 1::2] = s[1] - s[2] - s[3]
    return output[:, :height, :width].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, ungrouped conv that runs, per input size, the kernel of :data:`KERNELS`
    measured fastest there; inference only (autograd, other dtypes and devices take the direct path).

    ``winograd_verdicts``: ``((input H*W, kernel), ...)`` as measured by :func:`measure_winograd`; an
    input takes the kernel of the measured area nearest to its own (in log scale), so a conv shared
    across pyramid levels, or an image of another size, is decided by the size it is closest to.
    Inputs ``[B, C, H, W]`` float32 in either memory format; Winograd outputs are channels_last, as the
    optimised model's other convs give.
    """

    winograd_verdicts: tuple[tuple[int, str], ...] = ()

    def kernel_for(self, input: Tensor) -> str:
        if not self.winograd_verdicts or input.dtype != torch.float32 or input.device.type != "cpu" \
                or torch.is_grad_enabled():
            return "direct"
        log_area = math.log(max(input.shape[-1] * input.shape[-2], 1))
        kernel = min(self.winograd_verdicts, key=lambda verdict: abs(math.log(verdict[0]) - log_area))[1]
        # measured on one thread; with more (set after optimising) NNPACK's pool would compete with OpenMP's
        return "direct" if kernel == "nnpack" and torch.get_num_threads() != 1 else kernel

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        kernel = self.kernel_for(input)
        if kernel == "nnpack":
            return nnpack_conv(input, self.nchw_weight, bias, list(self.padding))
        if kernel == "f2x2":
            return winograd_f2x2_conv(input, self.f2x2_weight, bias)
        return super()._conv_forward(input, weight, bias)


def winograd_candidates(module: nn.Module) -> dict[str, nn.Conv2d]:
    """The convs under ``module`` a Winograd kernel can compute: plain ``nn.Conv2d`` (or the already
    routed), 3x3, stride 1, no dilation, no groups, zero padding given as numbers, float32."""
    return {name: conv for name, conv in module.named_modules()
            if type(conv) in (nn.Conv2d, WinogradConv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and conv.weight.dtype == torch.float32}


def _kernels(conv: nn.Conv2d) -> dict[str, Callable[[Tensor], Tensor]]:
    """Each kernel of :data:`KERNELS` that can compute ``conv``, as a function of its input."""
    kernels = {"direct": lambda x: nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias)}
    if torch.get_num_threads() == 1 and nnpack_available():  # see the module docstring: one thread only
        weight, padding = conv.weight.detach().contiguous(), list(conv.padding)
        kernels["nnpack"] = lambda x: nnpack_conv(x, weight, conv.bias, padding)
    if tuple(conv.padding) == (1, 1):
        transformed = f2x2_weight(conv.weight)
        kernels["f2x2"] = lambda x: winograd_f2x2_conv(x, transformed, conv.bias)
    return kernels


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
    ``{conv name: [[H*W, chosen kernel, {kernel: ms, ...}], ...]}``, medians of ``runs`` timed calls of
    each kernel (after one warm-up) on the captured input; a Winograd kernel is chosen when it is the
    fastest and took at most :data:`WINOGRAD_MARGIN` of the direct time."""
    candidates = winograd_candidates(module)
    if not candidates:
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
    kernels: dict[str, dict[str, Callable[[Tensor], Tensor]]] = {}  # per conv, not per input size
    with torch.no_grad():
        for (name, shape), x in inputs.items():
            if name not in kernels:
                kernels[name] = _kernels(candidates[name])
            times = {kernel: round(_median_ms(lambda: run(x), runs), 3) for kernel, run in kernels[name].items()}
            fastest = min(times, key=times.get)
            chosen = fastest if times[fastest] <= WINOGRAD_MARGIN * times["direct"] else "direct"
            measured.setdefault(name, []).append([shape[-1] * shape[-2], chosen, times])
    return measured


def apply_winograd(module: nn.Module, measured: dict[str, list]) -> int:
    """Make every conv of ``measured`` that chose a Winograd kernel at some size a
    :class:`WinogradConv2d` with those verdicts (in place; same parameters and state-dict keys; the
    kernels' weight layouts are kept as non-persistent buffers). Returns the number of convs routed."""
    candidates = winograd_candidates(module)
    routed = 0
    for name, rows in measured.items():
        conv = candidates.get(name)
        chosen = {row[1] for row in rows}
        if conv is None or chosen <= {"direct"}:
            continue
        conv.__class__ = WinogradConv2d
        conv.winograd_verdicts = tuple((int(row[0]), str(row[1])) for row in rows)
        if "nnpack" in chosen:  # NNPACK reads [O, C, 3, 3] contiguous: kept once, not copied per call
            conv.register_buffer("nchw_weight", conv.weight.detach().contiguous(), persistent=False)
        if "f2x2" in chosen:
            conv.register_buffer("f2x2_weight", f2x2_weight(conv.weight), persistent=False)
        routed += 1
    return routed
