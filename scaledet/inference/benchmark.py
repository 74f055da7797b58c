"""Latency / throughput of our detectors against the reference ports, measured in one process.

Engines (each a callable taking the same list of ``[3, H, W]`` images in [0, 1]):

* ``ours-eager``, ``ours-opt-<precision>`` (``scaledet.optimize``; ``+compile`` with compile),
  ``ours-onnxrt`` (exported graph run by onnxruntime, CPU only);
* ``effdet`` - effdet's ``DetBenchPredict`` (eager fp32; it receives the already normalised batch,
  so its time excludes pre-processing that ours includes) with the same weights as ours;
* ``transformers`` - ``DetrForObjectDetection`` forward + ``post_process_object_detection`` on
  the normalised padded batch, with the same weights as ours.

Timing: ``warmup`` untimed rounds, then ``runs`` rounds; in every round each engine runs once
(interleaved, so load changes hit all engines alike); the median is reported.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class Engine:
    """A named callable on a list of images; ``prepare`` turns the images into its own input once."""

    name: str
    run: Callable[[object], object]
    prepare: Callable[[list[Tensor]], object] = lambda images: images
    detections: Callable[[object], list[dict]] | None = None  # output -> our contract (for equality)
    note: str = ""
    times: dict[int, list[float]] = field(default_factory=dict)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine_info(device: str) -> dict:
    """CPU model, cores, threads, load average, versions, GPU name when on CUDA."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
            "python": platform.python_version(), "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


@torch.no_grad()
def spread_random_weights(network: torch.nn.Module, class_conv: torch.nn.Conv2d, box_conv: torch.nn.Conv2d,
                          image_size: tuple[int, int], seed: int = 1) -> None:
    """Make a randomly initialised EfficientDet network's detections non-degenerate, in place.

    The default init gives every anchor nearly the same class logit (many exact score ties make
    "same detections" ill-defined). This perturbs BatchNorm statistics and affine terms a little
    and rescales the two predictor convs so that, on a random image, class logits have median -3
    and 99.9th percentile +2, and box codes median 0 and 99.9th percentile 0.5.
    ``network(x [1,3,H,W])`` must return (class outputs, box outputs) per level (ours or effdet's).
    """
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.1 - 0.05)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.2 + 0.9)
            module.weight.copy_(torch.rand(n, generator=generator) * 0.2 + 0.9)
            module.bias.copy_(torch.rand(n, generator=generator) * 0.1 - 0.05)
    network.eval()
    cls_out, box_out = network(torch.rand(1, 3, *image_size, generator=generator))
    for conv, outputs, low, high in ((class_conv, cls_out, -3.0, 2.0), (box_conv, box_out, 0.0, 0.5)):
        values = torch.cat([o.flatten() for o in outputs])
        q50, q999 = torch.quantile(values[:: max(1, values.numel() // 100_000)], torch.tensor([0.5, 0.999]))
        scale = (high - low) / (q999 - q50)
        conv.weight.mul_(scale)
        conv.bias.mul_(scale).add_(low - q50 * scale)


def reference_efficientdet(name: str, device: str, tmp: Path):
    """(effdet DetBenchPredict, our model with the same weights) or (None, our random model)."""
    import scaledet

    try:
        import effdet
    except ImportError:
        return None, scaledet.create_model(name)
    bench = effdet.create_model("tf_" + name, bench_task="predict", pretrained=False, pretrained_backbone=False)
    net = bench.model
    spread_random_weights(net, net.class_net.predict.conv_pw, net.box_net.predict.conv_pw, bench.config.image_size)
    path = tmp / f"{name}_effdet.pth"
    torch.save(bench.model.state_dict(), path)
    return bench.eval().to(device), scaledet.create_model(name, pretrained=path)


def reference_detr(name: str, device: str, tmp: Path):
    """(transformers DETR, our model with the same weights) or (None, our random model)."""
    import scaledet

    backbones = {"detr_r50": ("resnet50", False), "detr_r101": ("resnet101", False),
                 "detr_r50_dc5": ("resnet50", True), "detr_r101_dc5": ("resnet101", True)}
    try:
        import transformers
    except ImportError:
        return None, scaledet.create_model(name)
    backbone, dilation = backbones[name]
    config = transformers.DetrConfig(use_timm_backbone=True, backbone=backbone, use_pretrained_backbone=False,
                                     num_labels=91, auxiliary_loss=False, dilation=dilation)
    hf = transformers.DetrForObjectDetection(config).eval()
    path = tmp / f"{name}_hf.bin"
    torch.save(hf.state_dict(), path)
    return hf.to(device), scaledet.create_model(name, pretrained=path)


def _effdet_engine(bench, model, device: str) -> Engine:
    def prepare(images):
        return model.preprocess(images)[0].to(device)

    return Engine("effdet", lambda batch: bench(batch), prepare, note="DetBenchPredict, eager fp32, input pre-normalised")


def _hf_engine(hf, device: str) -> Engine:
    from transformers import DetrImageProcessor

    from scaledet.models.detr.preprocess import Preprocessor

    processor = DetrImageProcessor()

    def prepare(images):
        batch, mask = Preprocessor(800, 1333)(images)
        sizes = torch.tensor([list(image.shape[1:]) for image in images], device=device)
        return batch.to(device), (~mask).long().to(device), sizes

    def run(inputs):
        batch, pixel_mask, sizes = inputs
        outputs = hf(pixel_values=batch, pixel_mask=pixel_mask)
        return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)

    return Engine("transformers", run, prepare, note="DetrForObjectDetection + post_process, eager fp32, "
                  "input pre-normalised")


def build_engines(name: str, device: str, precisions: list[str], compile: bool, onnx: bool, tmp: Path,
                  reference: bool = True) -> tuple[list[Engine], torch.nn.Module]:
    """All engines for model ``name`` (reference first when available); returns (engines, our eager model)."""
    import scaledet

    family = "detr" if name.startswith("detr") else "efficientdet"
    make_reference = reference_detr if family == "detr" else reference_efficientdet
    ref, model = make_reference(name, device, tmp) if reference else (None, scaledet.create_model(name))
    model = model.eval().to(device)
    engines = []
    if ref is not None:
        engines.append(_hf_engine(ref, device) if family == "detr" else _effdet_engine(ref, model, device))
    engines.append(Engine("ours-eager", model, detections=lambda out: out))
    for precision in precisions:
        for compiled in ([False, True] if compile else [False]):
            label = f"ours-opt-{precision}" + ("+compile" if compiled else "")
            engines.append(Engine(label, scaledet.optimize(model, precision=precision, compile=compiled),
                                  detections=lambda out: out))
    if onnx and device == "cpu":
        from scaledet.export import OnnxDetector, export_onnx

        path = export_onnx(model.cpu(), tmp / f"{name}.onnx", input_size=None)
        engines.append(Engine("ours-onnxrt", OnnxDetector(path, threads=torch.get_num_threads()),
                              detections=lambda out: out))
    return engines, model


def time_engines(engines: list[Engine], images: list[Tensor], batch_size: int, runs: int, warmup: int,
                 device: str, progress: Callable | None = None) -> dict[str, list]:
    """Interleaved timing of every engine on ``images[:batch_size]``; returns {engine: [outputs of last run]}."""
    batch = [image.to(device) for image in images[:batch_size]]
    inputs = {engine.name: engine.prepare(batch) for engine in engines}
    outputs = {}
    with torch.inference_mode():
        for round_index in range(warmup + runs):
            for engine in engines:
                _sync(device)
                start = time.perf_counter()
                outputs[engine.name] = engine.run(inputs[engine.name])
                _sync(device)
                if round_index >= warmup:
                    engine.times.setdefault(batch_size, []).append(time.perf_counter() - start)
            if progress is not None:
                progress()
    return outputs


def postprocess_share(model, images: list[Tensor], runs: int) -> dict[str, float] | None:
    """EfficientDet only: median ms of our fast post-processing (flatten, top-k, decode, NMS) alone
    and of the whole optimised fp32 call, interleaved, on ``images``."""
    import scaledet
    from scaledet.inference.postprocess import efficientdet_detections
    from scaledet.models.efficientdet.head import flatten_outputs
    from scaledet.models.efficientdet.model import EfficientDet

    if not isinstance(model, EfficientDet):
        return None
    fast = scaledet.optimize(model)
    v = model.variant
    with torch.inference_mode():
        batch, scales, valid = model.preprocess(images)
        cls_out, box_out = fast.network(batch.contiguous(memory_format=torch.channels_last))
        anchors, sizes = model.anchors_for(tuple(batch.shape[-2:])), torch.tensor(valid, dtype=torch.float64)

        def post():
            efficientdet_detections(flatten_outputs(cls_out, model.num_classes).float(),
                                    flatten_outputs(box_out, 4).float(), anchors, sizes,
                                    v.max_detection_points, v.max_detections, v.nms_iou)

        post_times, total_times = [], []
        for index in range(runs + 2):
            start = time.perf_counter()
            post()
            middle = time.perf_counter()
            fast(images)
            end = time.perf_counter()
            if index >= 2:
                post_times.append(middle - start)
                total_times.append(end - middle)
    post_ms, total_ms = statistics.median(post_times) * 1e3, statistics.median(total_times) * 1e3
    return {"postprocess_ms": post_ms, "total_ms": total_ms, "share": post_ms / total_ms}


def summarise(name: str, engines: list[Engine], batch_size: int) -> list[dict]:
    """Rows ``{model, engine, batch, median_ms, images_per_s, vs_reference, vs_eager}``."""
    medians = {e.name: statistics.median(e.times[batch_size]) * 1e3 for e in engines if batch_size in e.times}
    reference = next((medians[n] for n in ("effdet", "transformers") if n in medians), None)
    rows = []
    for engine in engines:
        if engine.name not in medians:
            continue
        ms = medians[engine.name]
        rows.append({"model": name, "engine": engine.name, "batch": batch_size, "median_ms": round(ms, 2),
                     "min_ms": round(min(engine.times[batch_size]) * 1e3, 2), "runs": len(engine.times[batch_size]),
                     "images_per_s": round(batch_size * 1e3 / ms, 2),
                     "vs_reference": round(ms / reference, 3) if reference else None,
                     "vs_eager": round(ms / medians["ours-eager"], 3), "note": engine.note})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    header = "| model | engine | batch | median ms | img/s | x reference | x ours eager |\n|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        ratio = "" if r["vs_reference"] is None else f"{r['vs_reference']:.2f}"
        lines.append(f"| {r['model']} | {r['engine']} | {r['batch']} | {r['median_ms']:.1f} | "
                     f"{r['images_per_s']:.2f} | {ratio} | {r['vs_eager']:.2f} |")
    return header + "\n".join(lines)


def temporary_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="scaledet-bench-")
