"""Latency / throughput of our detectors, engine against engine, measured in one process.

Engines (each a callable taking the same list of ``[3, H, W]`` images in [0, 1]):

* ``ours-eager``, ``ours-opt-<precision>`` (``scaledet.optimize``; ``+compile`` with compile),
  ``ours-onnxrt`` (exported graph run by onnxruntime, CPU only);
* a reference engine, when the caller passes a :data:`ReferenceFactory`: the reference ports
  (effdet's ``DetBenchPredict``, transformers' DETR) live outside the package, in
  ``benchmarks/reference.py``, and ``python -m benchmarks.bench_reference`` adds them.

Timing: ``warmup`` untimed rounds, then ``runs`` rounds; in every round each engine runs once
(interleaved, so load changes hit all engines alike); the median is reported.

Results files keep one table per processor kind (:attr:`~scaledet.inference.processor.Processor.kind`):
the JSON is ``{"format": RESULTS_FORMAT, "tables": {kind: {"processor", "machine", "command", "args",
"results"}}}`` and the markdown has one ``## <kind>: <processor>`` section per kind; a run replaces
its own kind's table and keeps the others (:func:`merge_json_results`, :func:`merge_markdown_results`).
"""

from __future__ import annotations

import json
import re
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from scaledet.export import OnnxDetector, export_onnx
from scaledet.inference.optimize import optimize
from scaledet.inference.processor import current_processor
from scaledet.models.registry import create_model


@dataclass
class Engine:
    """A named callable on a list of images; ``prepare`` turns the images into its own input once.

    ``detections`` turns an output into our contract (list of dict(boxes [N, 4] xyxy pixels,
    scores [N], labels [N])) for the equality check against ``ours-eager``; ``reference`` marks
    the engine the ``vs_reference`` column divides by.
    """

    name: str
    run: Callable[[object], object]
    prepare: Callable[[list[Tensor]], object] = lambda images: images
    detections: Callable[[object], list[dict]] | None = None
    note: str = ""
    reference: bool = False
    times: dict[int, list[float]] = field(default_factory=dict)


#: ``(model name, device, scratch folder) -> (reference engine, our model with the reference's
#: weights)``, or ``None`` when there is no reference for that model
ReferenceFactory = Callable[[str, str, Path], "tuple[Engine, nn.Module] | None"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine_info(device: str) -> dict:
    """CPU model, processor kind and ISA flags (``"processor"``: :meth:`Processor.as_dict
    <scaledet.inference.processor.Processor.as_dict>`), cores, threads, load average, versions, GPU
    name when on CUDA."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "processor": current_processor().as_dict(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
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


def build_engines(name: str, device: str, precisions: list[str], compile: bool, onnx: bool, tmp: Path,
                  reference: ReferenceFactory | None = None, image_size: tuple[int, int] | None = None,
                  int8_calibration: int = 4, model: nn.Module | None = None) -> tuple[list[Engine], nn.Module]:
    """All engines for model ``name`` (``model``: that detector with its weights; default random
    weights, or the reference's): the reference first when ``reference`` gives one (our engines
    then share its weights), ``ours-eager``, ``ours-opt-<precision>`` [``+compile``], and
    ``ours-onnxrt`` (CPU, ``onnx``). Precision ``"int8"`` is ``ours-int8`` (onnxruntime, CPU, no compile
    variant), calibrated on ``int8_calibration`` random images of ``image_size`` (default
    ``model.input_size()``): its latency is real, its accuracy says nothing. Returns ``(engines, our
    eager model)``."""
    found = reference(name, device, tmp) if reference is not None and model is None else None
    reference_engine, model = found if found is not None else (None, model if model is not None else create_model(name))
    model = model.eval().to(device)
    engines = [reference_engine] if reference_engine is not None else []
    engines.append(Engine("ours-eager", model, detections=_same))
    for precision in precisions:
        if precision == "int8":
            if device != "cpu":
                raise ValueError(f"precision 'int8' runs in onnxruntime on the CPU (got device {device!r})")
            size = image_size or tuple(model.input_size())
            generator = torch.Generator().manual_seed(1)
            calibration = [torch.rand(3, *size, generator=generator) for _ in range(int8_calibration)]
            quantized = optimize(model, precision="int8", calibration=calibration)
            report = quantized.report  # a dict; which layers stayed float decides the speed: say it beside the time
            kept = f"float-kept rule {report['float_rule']!r}" + ("" if report["passed"] else
                                                                 " (no rule agreed with fp32 there: the last tried)")
            engines.append(Engine("ours-int8", quantized, detections=_same,
                                  note=f"onnxruntime, calibrated on {int8_calibration} random images, {kept}"))
            continue
        for compiled in ([False, True] if compile else [False]):
            optimised = optimize(model, precision=precision, compile=compiled)
            notes = []
            if optimised.precision != precision:  # bf16 on a CPU without it: the row says what ran
                if optimised.precision in precisions:
                    continue  # that precision has its own row
                notes.append(f"{precision} asked: not native on this processor, ran {optimised.precision}")
            label = f"ours-opt-{optimised.precision}" + ("+compile" if compiled else "")
            if optimised.winograd:
                notes.append(f"{optimised.winograd} 3x3 convs on Winograd kernels (measured faster here)")
            if optimised.fused_blocks:
                notes.append(f"{optimised.fused_blocks} ResNet blocks with add / ReLUs fused")
            note = "; ".join(notes)
            engines.append(Engine(label, optimised, detections=_same, note=note))
    if onnx and device == "cpu":
        path = export_onnx(model.cpu(), tmp / f"{name}.onnx", input_size=None)
        engines.append(Engine("ours-onnxrt", OnnxDetector(path, threads=torch.get_num_threads()), detections=_same))
    return engines, model


def _same(outputs: list[dict]) -> list[dict]:
    return outputs


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


def postprocess_share(model: nn.Module, images: list[Tensor], runs: int) -> dict[str, float]:
    """Median ms of the optimised fp32 model's post-processing alone (``postprocess(outputs, batch,
    fast=True)`` on its own raw outputs) and of its whole call on ``images``, interleaved, and
    the share of the first in the second."""
    fast = optimize(model)
    detector = fast.model  # the optimised copy: folded, channels_last
    with torch.inference_mode():
        batch = detector.preprocess(images)
        inputs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in batch.inputs]
        outputs = detector.forward_features(*inputs)
        post_times, total_times = [], []
        for index in range(runs + 2):
            start = time.perf_counter()
            detector.postprocess(outputs, batch, fast=True)
            middle = time.perf_counter()
            fast(images)
            end = time.perf_counter()
            if index >= 2:
                post_times.append(middle - start)
                total_times.append(end - middle)
    post_ms, total_ms = statistics.median(post_times) * 1e3, statistics.median(total_times) * 1e3
    return {"postprocess_ms": post_ms, "total_ms": total_ms, "share": post_ms / total_ms}


def summarise(name: str, engines: list[Engine], batch_size: int) -> list[dict]:
    """Rows ``{model, engine, batch, median_ms, images_per_s, vs_reference, vs_eager}``
    (``vs_reference``: against the engine marked ``reference``, ``None`` without one)."""
    medians = {e.name: statistics.median(e.times[batch_size]) * 1e3 for e in engines if batch_size in e.times}
    reference = next((medians[e.name] for e in engines if e.reference and e.name in medians), None)
    rows = []
    for engine in engines:
        if engine.name not in medians:
            continue
        ms = medians[engine.name]
        rows.append({"model": name, "engine": engine.name, "batch": batch_size, "median_ms": round(ms, 2),
                     "min_ms": round(min(engine.times[batch_size]) * 1e3, 2), "runs": len(engine.times[batch_size]),
                     "images_per_s": round(batch_size * 1e3 / ms, 2),
                     # ratios unrounded: a table rounds them once (0.3453 stored as 0.345 printed as 0.34)
                     "vs_reference": ms / reference if reference else None,
                     "vs_eager": ms / medians["ours-eager"], "note": engine.note})
    return rows


def markdown_table(rows: list[dict], processor: str) -> str:
    """The rows as a markdown table, every row labelled with ``processor`` (its kind); the ``x reference``
    column only when a reference engine was timed (``benchmarks/bench_reference.py``; the installed
    ``scaledet bench`` has none)."""
    with_reference = any(r["vs_reference"] is not None for r in rows)
    columns = ["processor", "model", "engine", "batch", "median ms", "img/s",
               *(["x reference"] if with_reference else []), "x ours eager"]
    header = f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n"
    lines = []
    for r in rows:
        ratio = "" if r["vs_reference"] is None else f"{r['vs_reference']:.2f}"
        cells = [processor, r["model"], r["engine"], str(r["batch"]), f"{r['median_ms']:.1f}",
                 f"{r['images_per_s']:.2f}", *([ratio] if with_reference else []), f"{r['vs_eager']:.2f}"]
        lines.append(f"| {' | '.join(cells)} |")
    notes = sorted({f"{r['engine']}: {r['note']}" for r in rows if r.get("note")})
    return header + "\n".join(lines) + "".join(f"\n\n{note}" for note in notes)


RESULTS_FORMAT = "scaledet-bench/2"


def results_by_processor(payload: dict) -> dict[str, dict]:
    """``{kind: table}`` of a results JSON payload; a file written before :data:`RESULTS_FORMAT` (one
    table, no processor kind) becomes ``{kind or "unrecorded": payload}``."""
    if payload.get("format") == RESULTS_FORMAT:
        return dict(payload["tables"])
    if not isinstance(payload.get("results"), list):  # any other JSON (an annotation file ...) is not one to rewrite
        raise ValueError("neither a results file of this format nor an older one with 'results'")
    kind = payload.get("machine", {}).get("processor", {}).get("kind", "unrecorded")
    return {kind: payload}


def read_results_tables(path: Path) -> dict[str, dict]:
    """``{kind: table}`` of an existing results file (``{}`` when there is none); a file that is not
    one is a ValueError naming it (checked before a benchmark, not after it)."""
    if not path.exists():
        return {}
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
        return results_by_processor(payload)
    except (ValueError, AttributeError, OSError) as error:
        raise ValueError(f"{path}: not a bench results JSON ({error}): give another --json (tables of other "
                         "processors are kept in it)") from None


def merge_json_results(path: Path, kind: str, table: dict) -> dict:
    """Write ``table`` as processor ``kind``'s entry of the results file ``path``, keeping the other
    kinds' tables; returns the whole payload."""
    tables = read_results_tables(path)
    tables[kind] = table
    payload = {"format": RESULTS_FORMAT, "tables": dict(sorted(tables.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return payload


def _markdown_sections(text: str) -> tuple[str, dict[str, str]]:
    """``(preamble, {kind: section})`` of a results markdown file; sections start with ``## <kind>:``.
    A file without sections (written before :data:`RESULTS_FORMAT`) is one ``unrecorded`` section."""
    if not any(line.startswith("## ") for line in text.splitlines()):
        old = {"unrecorded": f"## unrecorded: processor not recorded\n\n{text.strip()}\n"}
        return "", (old if text.strip() else {})
    preamble, sections, key = [], {}, None
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            key = line[3:].split(":", 1)[0].strip()
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", key) or key in sections:  # a notes file's own headings
                raise ValueError(f"its heading {line.strip()!r} is not one section per processor kind")
            sections[key] = ""
        if key is None:
            preamble.append(line)
        else:
            sections[key] += line
    return "".join(preamble), sections


def read_markdown_sections(path: Path) -> tuple[str, dict[str, str]]:
    """:func:`_markdown_sections` of the file ``path`` (none when absent); a file that is not a results
    markdown is a ValueError naming it (checked before a benchmark, not after it)."""
    if not path.exists():
        return "", {}
    try:
        return _markdown_sections(path.read_text())
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a bench results markdown ({error}): give another --markdown") from None


def merge_markdown_results(path: Path, kind: str, section: str) -> None:
    """Write ``section`` (starting ``## <kind>: ...``) into the markdown file ``path``, replacing that
    kind's section and keeping the others."""
    preamble, sections = read_markdown_sections(path)
    sections[kind] = section.rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(preamble + "\n".join(sections[key] for key in sorted(sections)))


def temporary_dir() -> tempfile.TemporaryDirectory:
    """A scratch folder for exported files and reference weights (removed on exit)."""
    return tempfile.TemporaryDirectory(prefix="scaledet-bench-")
