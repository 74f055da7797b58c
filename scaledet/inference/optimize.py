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
* on CPU at fp32, 3x3 stride-1 convs run a Winograd kernel (NNPACK's F(6x6, 3x3) or our F(2x2, 3x3))
  at the input sizes where it measured faster than oneDNN on this processor
  (:mod:`scaledet.inference.winograd`; timed once on an example input per processor, threads, model
  config and input size, and cached on disk like the choices below;
  ``OptimizedDetector(..., winograd=False)`` keeps oneDNN everywhere);
* on CPU at fp32, ResNet blocks (torchvision's, and a family's own that describe themselves with
  ``residual_parts()``, e.g. RT-DETR's) run with their ReLUs and residual add fused into oneDNN's
  convolutions, the sum written into the identity tensor in place (:mod:`scaledet.inference.residual`;
  ``OptimizedDetector(..., fuse_residual=False)`` keeps the eager blocks);
* ``precision="bf16"``: ``forward_features`` runs under ``torch.autocast`` with bfloat16 (outputs
  cast back to float32 before post-processing); ``"fp16"`` likewise on CUDA only. On a CPU without
  native bfloat16 (:attr:`Processor.native_bf16 <scaledet.inference.processor.Processor.native_bf16>`:
  AVX512-BF16 or AMX-BF16, with ATen's AVX-512 kernels in use) bfloat16 is emulated and slower than
  float32, so ``"bf16"`` warns once and gives fp32 unless ``force=True``;
* ``precision="auto"``: the fastest precision this device runs natively whose detections on example
  inputs (the ``calibration`` images when given, else one noise image) stay within :data:`AUTO_SCORE_TOL` /
  :data:`AUTO_BOX_TOL` of fp32 (:func:`choose_precision`, measured once per processor, model config and
  weights, input size and example images, and cached on disk);
* ``precision="int8"``: static post-training quantization with onnxruntime, see
  :func:`scaledet.inference.quantize.quantize_int8` (needs ``calibration`` images);
* ``engine="onnxruntime"``: fp32 on the CPU through the exported graph and onnxruntime instead
  (:func:`scaledet.export.onnxruntime_detector`); ``engine="auto"``: whichever of the two is faster on
  this processor with detections within the same tolerances (:func:`choose_engine`, measured once per
  processor, model config and input size, and cached like ``precision="auto"``);
* ``compile=True``: ``forward_features`` is wrapped with :func:`torch.compile`;
* post-processing is the family's ``postprocess(..., fast=True)`` (exact shortcuts).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scaledet.inference.compare import compare_detection_sets
from scaledet.inference.fold import fold_batchnorm
from scaledet.inference.processor import current_processor
from scaledet.inference.residual import fuse_residual_blocks
from scaledet.inference.winograd import KERNELS, apply_winograd, measure_winograd
from scaledet.models.base import Detections, Detector
from scaledet.models.inputs import check_images
from scaledet.weights import tensors_crc32

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: every ``precision`` :func:`optimize` takes
PRECISION_CHOICES = (*PRECISIONS, "int8", "auto")
#: every ``engine`` :func:`optimize` takes
ENGINES = ("torch", "onnxruntime", "auto")
#: ``precision="auto"`` keeps a precision when its detections on the example input match fp32's as sets
#: (:func:`~scaledet.inference.compare.compare_detection_sets`) with scores within this ...
AUTO_SCORE_TOL = 0.01
#: ... and every box coordinate within this many pixels
AUTO_BOX_TOL = 1.0
#: set to ``0`` to neither read nor write the cache of ``precision="auto"`` choices
CACHE_ENV = "SCALEDET_OPTIMIZE_CACHE"


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

    plain_conv2d = True  # computes exactly nn.Conv2d: scaledet.inference.residual may run it as a fused oneDNN conv

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
    ``winograd`` (3x3 convs routed to a Winograd kernel at some input size) and ``winograd_timings``
    (what :func:`winograd_choices` measured or read from the cache: ``{conv name: [[H*W, kernel,
    {kernel: ms}], ...]}``), ``fused_blocks`` (ResNet blocks with fused add / ReLUs),
    ``precision``, ``engine`` (``"torch"``) and the source's ``class_names``, ``category_ids``,
    ``num_classes``, ``image_size`` and ``config``.
    """

    engine = "torch"

    def __init__(self, model: Detector, precision: str = "fp32", compile: bool = False,
                 winograd: bool = True, fuse_residual: bool = True) -> None:
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
        cpu_fp32_eager = device.type == "cpu" and precision == "fp32" and not compile  # the CPU kernel rewrites
        self.winograd, self.winograd_timings = 0, {}
        if winograd and cpu_fp32_eager:
            self.winograd_timings = winograd_choices(model)
            self.winograd = apply_winograd(model, self.winograd_timings)
        self.fused_blocks = 0
        if fuse_residual and cpu_fp32_eager:  # after the Winograd routing
            self.fused_blocks = fuse_residual_blocks(model)
        self.features = _compile(model.forward_features) if compile else model.forward_features
        self.training = False  # eval-only from the start (train(True) raises)

    @property
    def config(self) -> dict:
        return self.model.config

    def unresized_size(self) -> tuple[int, int]:
        return self.model.unresized_size()

    def input_scale(self, height: int, width: int, image_size: Any = None) -> tuple[float, float]:
        return self.model.input_scale(height, width, image_size)

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


def optimize(model: Detector, precision: str = "fp32", compile: bool = False, *, engine: str | None = None,
             force: bool = False, calibration: list[Tensor] | None = None, cache: bool = True):
    """An inference-optimised copy of ``model`` with the same eval call contract.

    Args:
        model: a scaledet detector (:class:`~scaledet.models.base.Detector`, from
            :func:`scaledet.create_model`); it is left untouched.
        precision: ``"fp32"`` (output equals eager up to float rounding), ``"bf16"`` (autocast; on a
            CPU without native bfloat16 it warns and gives fp32 unless ``force``), ``"fp16"``
            (autocast, CUDA only), ``"int8"`` (onnxruntime static quantization, CPU; needs
            ``calibration``) or ``"auto"`` (:func:`choose_precision`: fastest within tolerance of fp32).
        compile: wrap the model's ``forward_features`` with :func:`torch.compile`.
        engine: ``"torch"`` (the default for float precisions), ``"onnxruntime"`` (fp32 on the CPU
            through the exported graph; needs the ``onnx`` / ``onnxruntime`` packages; the export
            takes a while) or ``"auto"`` (:func:`choose_engine`: the faster of the two on this
            processor; ``"torch"`` off the CPU, for bf16 / fp16, with ``compile`` or without
            onnxruntime). ``precision="int8"`` always runs in onnxruntime.
        force: use ``"bf16"`` even where it is emulated.
        calibration: images (``list[Tensor[3, H, W]]`` in [0, 1]) like the ones the model will see:
            ``precision="int8"``'s activation ranges (a few dozen are enough); with ``"auto"`` precision or
            engine, what the choice judges agreement on (a few; the first is timed), instead of one noise
            image, which a trained model may answer with nothing worth comparing.
        cache: ``precision="auto"`` and ``engine="auto"`` read and write their choices in
            :func:`optimize_cache_dir` (also off with ``SCALEDET_OPTIMIZE_CACHE=0``).

    Returns:
        an eval-only detector, :class:`OptimizedDetector` (torch engine) or
        :class:`~scaledet.export.OnnxDetector` (onnxruntime; ``int8``: a
        :class:`~scaledet.inference.quantize.QuantizedDetector`), each with ``precision`` and ``engine``
        attributes: ``list[Tensor[3,H,W]]`` -> ``list[dict(boxes xyxy px, scores, labels)]``.
    """
    if not isinstance(model, Detector):
        raise ValueError(f"optimize needs a scaledet Detector (scaledet.create_model), got {type(model).__name__}")
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {list(PRECISION_CHOICES)}, got {precision!r}")
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if precision == "int8":
        if engine == "torch":
            raise ValueError("precision='int8' runs in onnxruntime; leave engine unset (or 'onnxruntime')")
        from scaledet.inference.quantize import quantize_int8

        return quantize_int8(model, calibration)
    if calibration is not None and "auto" not in (precision, engine):
        raise ValueError(f"calibration images are for precision='int8' or 'auto', or engine='auto' (got "
                         f"precision={precision!r}, engine={engine!r})")
    device = next(model.parameters()).device
    if precision == "auto":
        precision = choose_precision(model, compile, cache, images=calibration)
    precision = supported_precision(precision, device, force)
    if engine == "auto":
        engine, measured = _choose_engine(model, precision, compile, cache, images=calibration)
        if measured is not None:  # built while measuring: no second export
            return measured
    if engine == "onnxruntime":
        if device.type != "cpu" or precision != "fp32" or compile:
            raise ValueError(f"engine='onnxruntime' runs fp32 on the CPU without compile (got precision={precision!r}, "
                             f"device {device.type}, compile={compile}); use engine='torch' for the others")
        from scaledet.export import onnxruntime_detector

        return onnxruntime_detector(model)
    return OptimizedDetector(model, precision, compile)


_warned_emulated_bf16 = False


def supported_precision(precision: str, device: torch.device, force: bool = False) -> str:
    """``precision``, or ``"fp32"`` (with a warning, once per process) for ``"bf16"`` on a CPU without
    native bfloat16 unless ``force``. ValueError for ``"fp16"`` off CUDA (it failed at the first call)."""
    global _warned_emulated_bf16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device (the model is on {device.type}); use 'bf16' on a CPU")
    if precision != "bf16" or device.type != "cpu" or force or current_processor().native_bf16:
        return precision
    if not _warned_emulated_bf16:
        warnings.warn(f"precision='bf16' on {current_processor().describe()}: no native bfloat16 (AVX512-BF16 / "
                      "AMX-BF16 with ATen's AVX-512 kernels), so it is emulated and slower than fp32; using fp32 "
                      "(pass force=True to use bf16 anyway)", stacklevel=3)
        _warned_emulated_bf16 = True
    return "fp32"


def native_precisions(device: torch.device) -> list[str]:
    """The precisions ``device`` runs in hardware, fp32 first (CPU: bf16 where native; CUDA: bf16, fp16)."""
    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"]
    return ["fp32", "bf16"] if current_processor().native_bf16 else ["fp32"]


def optimize_cache_dir() -> Path:
    """Where ``precision="auto"`` keeps its choices: ``$SCALEDET_CACHE`` or ``$XDG_CACHE_HOME/scaledet``
    (default ``~/.cache/scaledet``), subfolder ``optimize``."""
    root = os.environ.get("SCALEDET_CACHE")
    root = root or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scaledet"
    return Path(root) / "optimize"


def timing_cache_key(model: Detector, device: torch.device, compile: bool) -> dict:
    """What a measured speed depends on: the processor (kind, generation and kernel caps; the GPU's name on
    CUDA), the model's config, its input size, compile, and the torch version (not the weights' values)."""
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        here = current_processor()
        processor = {"kind": here.kind, "generation": here.generation, "kernel_caps": here.kernel_caps}
    return {"processor": processor, "config": model.config, "input_size": list(model.input_size()),
            "compile": compile, "torch": torch.__version__}


def precision_cache_key(model: Detector, device: torch.device, compile: bool,
                        images: list[Tensor] | None = None) -> dict:
    """What a ``precision="auto"`` choice depends on: :func:`timing_cache_key`, plus the model's weights
    (whether detections agree depends on them: their :func:`~scaledet.weights.tensors_crc32`) and the example
    ``images`` (their CRC-32; ``"noise"`` for :func:`example_image`)."""
    examples = tensors_crc32({str(index): image for index, image in enumerate(images)}) if images else "noise"
    return {**timing_cache_key(model, device, compile), "weights": tensors_crc32(model.state_dict()),
            "images": examples}


def _cache_file(key: dict, choice: str) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return optimize_cache_dir() / f"{choice}-{digest}.json"


def example_image(model: Detector, device: torch.device) -> Tensor:
    """The input the automatic choices measure on: uniform noise (seed 0) at the model's input size."""
    return torch.rand(3, *model.input_size(), generator=torch.Generator().manual_seed(0)).to(device)


def judge(detectors: dict[str, Any], model: Detector, device: torch.device, images: list[Tensor] | None,
          runs: int) -> tuple[dict[str, float], dict]:
    """:func:`time_interleaved` on the first of ``images`` (default: :func:`example_image`) and each detector's
    detections of every image (``{name: [dict per image]}``), for an automatic choice."""
    examples = [image.to(device) for image in images] if images else [example_image(model, device)]
    medians, outputs = time_interleaved(detectors, examples[0], runs)
    if len(examples) > 1:
        outputs = {name: outputs[name] + [detector([image])[0] for image in examples[1:]]
                   for name, detector in detectors.items()}
    return medians, outputs


def time_interleaved(detectors: dict[str, Any], image: Tensor, runs: int) -> tuple[dict[str, float], dict]:
    """Median milliseconds of ``runs`` calls of each detector on ``[image]`` (interleaved, after one
    warm-up round) and each one's last detections."""
    times: dict[str, list[float]] = {name: [] for name in detectors}
    outputs = {}
    for round_index in range(runs + 1):  # the first round warms up
        for name, detector in detectors.items():
            start = time.perf_counter()
            outputs[name] = detector([image])
            if image.device.type == "cuda":
                torch.cuda.synchronize(image.device)
            if round_index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}, outputs


def _cache_on(cache: bool) -> bool:
    """Whether the automatic choices read and write the disk cache (``cache`` and not
    ``SCALEDET_OPTIMIZE_CACHE=0``)."""
    return cache and os.environ.get(CACHE_ENV, "1") != "0"


def _cached_choice(key: dict, choice: str, use_cache: bool) -> Any:
    """The cached ``choice`` for ``key``, or ``None`` (not cached, cache off, or a file that does not
    read as one: measured again and rewritten)."""
    path = _cache_file(key, choice)
    if not use_cache or not path.exists():
        return None
    try:
        return json.loads(path.read_text())[choice]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store_choice(key: dict, choice: str, chosen: Any, measured: dict, use_cache: bool) -> None:
    """Write the choice atomically (a temporary file renamed over the old one), so that a process
    reading the cache while another writes it never sees half a file."""
    if use_cache:
        path = _cache_file(key, choice)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps({"key": key, choice: chosen, "measured": measured}, indent=1, default=str))
            os.replace(partial, path)
        except OSError as error:  # a cache that cannot be written costs a measurement next time, not the result
            warnings.warn(f"could not keep the measured choice in {path.parent} ({error.strerror or error}): it is "
                          f"measured again next time; point SCALEDET_CACHE at a writable folder, or {CACHE_ENV}=0",
                          stacklevel=2)


def choose_precision(model: Detector, compile: bool = False, cache: bool = True, runs: int = 5,
                     images: list[Tensor] | None = None) -> str:
    """The fastest of :func:`native_precisions` whose detections on ``images`` (``list[Tensor[3, H, W]]`` in
    [0, 1], the first one timed; default: one example image, random, seed 0, the model's
    :meth:`~scaledet.models.base.Detector.input_size`) match optimised fp32's within
    :data:`AUTO_SCORE_TOL` / :data:`AUTO_BOX_TOL` (as sets, see
    :func:`~scaledet.inference.compare.compare_detection_sets`); medians of ``runs`` interleaved calls.
    Only fp32 available: fp32 without measuring. The choice and its measurements are cached in
    :func:`optimize_cache_dir` under :func:`precision_cache_key` (``cache=False`` or
    ``SCALEDET_OPTIMIZE_CACHE=0``: neither read nor written)."""
    device = next(model.parameters()).device
    candidates = native_precisions(device)
    if len(candidates) == 1:
        return candidates[0]
    use_cache = _cache_on(cache)
    key = precision_cache_key(model, device, compile, images)
    cached = _cached_choice(key, "precision", use_cache)
    if cached is not None:
        return cached
    detectors = {precision: OptimizedDetector(model, precision, compile) for precision in candidates}
    medians, outputs = judge(detectors, model, device, images, runs)
    measured = {}
    for precision in candidates:
        agreement = compare_detection_sets(outputs["fp32"], outputs[precision], AUTO_SCORE_TOL, AUTO_BOX_TOL)
        measured[precision] = {"median_ms": medians[precision], "agrees": agreement.passed}
    chosen = min((p for p in candidates if measured[p]["agrees"]), key=lambda p: measured[p]["median_ms"])
    _store_choice(key, "precision", chosen, measured, use_cache)
    return chosen


def winograd_choices(model: Detector, cache: bool = True) -> dict[str, list]:
    """Which kernel each 3x3 conv of ``model`` (a folded, channels_last CPU copy, as
    :class:`OptimizedDetector` makes) runs fastest, measured on one example image (random, seed 0, the
    model's input size) by :func:`~scaledet.inference.winograd.measure_winograd`: ``{conv name: [[H*W,
    kernel, {kernel: ms}], ...]}``. Cached in :func:`optimize_cache_dir` under :func:`timing_cache_key`
    plus the threads (``cache=False`` or ``SCALEDET_OPTIMIZE_CACHE=0``: neither
    read nor written)."""
    device = next(model.parameters()).device
    use_cache = _cache_on(cache)
    key = {**timing_cache_key(model, device, False), "threads": torch.get_num_threads(), "kernels": KERNELS}
    cached = _cached_choice(key, "winograd", use_cache)
    if cached is not None:
        return cached
    inputs = tuple(_channels_last(x) for x in model.preprocess([example_image(model, device)]).inputs)
    measured = measure_winograd(model, lambda: model.forward_features(*inputs))
    _store_choice(key, "winograd", measured, {}, use_cache)
    return measured


def onnxruntime_available() -> bool:
    """Whether the optional ``onnx`` and ``onnxruntime`` packages (the onnxruntime engine) are installed."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def choose_engine(model: Detector, precision: str = "fp32", compile: bool = False, cache: bool = True,
                  runs: int = 5, images: list[Tensor] | None = None) -> str:
    """``"onnxruntime"`` when, on this CPU, the exported graph in onnxruntime is faster than the
    optimised PyTorch model (:class:`OptimizedDetector` at fp32) on ``images`` (as in
    :func:`choose_precision`: medians of ``runs`` interleaved calls) and its detections match within
    :data:`AUTO_SCORE_TOL` / :data:`AUTO_BOX_TOL`; else ``"torch"``. ``"torch"`` without measuring off
    the CPU, for precisions other than fp32, with ``compile`` or without onnxruntime. Cached like
    :func:`choose_precision` (the key adds the onnxruntime version and the threads).

    Why it measures: which engine wins depends on the processor. D0 at 512, batch 1, one thread:
    onnxruntime 51.5 vs 61.1 ms on an AMD EPYC, 121.1 vs 171.2 ms on an Intel Xeon, both with AVX-512
    (README "Speed (CPU)", docs/inference.md)."""
    return _choose_engine(model, precision, compile, cache, runs, images)[0]


def _choose_engine(model: Detector, precision: str, compile: bool, cache: bool, runs: int = 5,
                   images: list[Tensor] | None = None) -> tuple[str, Any]:
    """:func:`choose_engine`'s choice, and the detector it built for it while measuring (``None`` when
    nothing was measured: a cached choice, or ``"torch"`` by rule)."""
    device = next(model.parameters()).device
    if device.type != "cpu" or precision != "fp32" or compile or not onnxruntime_available():
        return "torch", None
    import onnxruntime

    from scaledet.export import onnxruntime_detector

    use_cache = _cache_on(cache)
    key = {**precision_cache_key(model, device, compile, images), "onnxruntime": onnxruntime.__version__,
           "threads": torch.get_num_threads()}
    cached = _cached_choice(key, "engine", use_cache)
    if cached is not None:
        return cached, None
    detectors = {"torch": OptimizedDetector(model, precision), "onnxruntime": onnxruntime_detector(model)}
    medians, outputs = judge(detectors, model, device, images, runs)
    agrees = compare_detection_sets(outputs["torch"], outputs["onnxruntime"], AUTO_SCORE_TOL, AUTO_BOX_TOL).passed
    measured = {"torch": {"median_ms": medians["torch"]},
                "onnxruntime": {"median_ms": medians["onnxruntime"], "agrees": agrees}}
    chosen = "onnxruntime" if agrees and medians["onnxruntime"] < medians["torch"] else "torch"
    _store_choice(key, "engine", chosen, measured, use_cache)
    return chosen, detectors[chosen]
