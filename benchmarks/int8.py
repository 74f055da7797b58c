"""INT8 (onnxruntime static quantization) vs optimised fp32: latency at the native size and AP on shapes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8.py [--models efficientdet_d0 efficientdet_lite0]
        [--threads 1] [--runs 20] [--json benchmarks/results/int8.json]

Per model, on one processor (recorded; the results files keep one table per processor kind):

* AP on the shapes validation split (``--val-images``, as ``scaledet demo``) with the model's demo
  weights (``runs/demo`` for efficientdet_d0, ``runs/demo_<model suffix>`` otherwise; missing ones are
  trained by ``scaledet demo --model M --out DIR`` when ``--train-missing`` is given, else the script
  says what to run): eager fp32, ``scaledet.optimize`` fp32, the float ONNX file in onnxruntime and the
  INT8 file (:func:`scaledet.inference.quantize.quantize_onnx`, calibrated on ``--calibration-images``
  labelled images of the shapes *train* split, which also judge the float-kept rules by AP), with the
  float-kept rule it chose;
* latency at the model's native size (``create_model(M).image_size``), batch 1, the same weights
  rebuilt at that size and the same float-kept rule: optimised fp32, float onnxruntime and INT8
  onnxruntime, ``--warmup`` untimed then ``--runs`` interleaved rounds, medians. (Demo weights trained
  at 128 px find up to ``max_detections`` boxes per image at 512, so post-processing runs at full load
  in every engine; the agreement of rules is judged at the demo size only.)

The timing is evidence only on an idle machine (check the load average in the record). ``--smoke``:
tiny sizes and counts, random weights where demo weights are missing, to check the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import scaledet
from scaledet.data import shapes_split
from scaledet.evaluation import evaluate_model
from scaledet.export import OnnxDetector, export_onnx
from scaledet.inference.benchmark import machine_info, merge_json_results, merge_markdown_results
from scaledet.inference.processor import current_processor
from scaledet.inference.quantize import DEFAULT_PERCENTILE, QuantizedDetector, quantize_onnx


def demo_folder(name: str) -> Path:
    """Where ``scaledet demo --model name`` is expected to have written its weights."""
    return Path("runs/demo" if name == "efficientdet_d0" else f"runs/demo_{name.removeprefix('efficientdet_')}")


def demo_model(name: str, args: argparse.Namespace):
    """The model with its demo weights (trained first with ``--train-missing``); ``None`` if missing.
    ``--smoke`` without weights: random weights at 64 px."""
    weights = demo_folder(name) / "weights.safetensors"
    if not weights.exists() and args.train_missing:
        subprocess.run([sys.executable, "-m", "scaledet", "demo", "--model", name, "--out", str(weights.parent)],
                       check=True)
    if weights.exists():
        return scaledet.load(str(weights)), str(weights)
    if args.smoke:
        return scaledet.create_model(name, num_classes=4, image_size=64).eval(), None
    print(f"{weights} not found: run `scaledet demo --model {name} --out {weights.parent}` (about 10 minutes), "
          "or pass --train-missing", file=sys.stderr)
    return None, None


def int8_files(model, folder: Path, calibration: list, args: argparse.Namespace, rules=None) -> tuple[Path, Path, dict]:
    """``(float file, int8 file, quantization report)`` of ``model``."""
    float_path = export_onnx(model, folder / "float.onnx")
    start = time.perf_counter()
    report = quantize_onnx(float_path, folder / "int8.onnx", calibration, rules=rules, threads=args.threads,
                           progress=print, percentile=args.calibration_percentile)
    print(f"quantize_onnx took {time.perf_counter() - start:.1f} s", flush=True)
    print(report.summary(), flush=True)
    return float_path, folder / "int8.onnx", report


def accuracy(name: str, model, args, folder: Path) -> dict:
    """AP of eager / optimised fp32 / float onnxruntime / INT8 on the shapes validation split."""
    size = model.image_size[0]
    val = shapes_split("val", num_images=args.val_images, image_size=size)
    train = shapes_split("train", num_images=args.calibration_images, image_size=size)
    calibration = [train[i] for i in range(args.calibration_images)]  # labelled: the rule is judged by AP
    float_path, int8_path, report = int8_files(model, folder, calibration, args)
    engines = {"eager-fp32": model, "optimized-fp32": scaledet.optimize(model),
               "onnxrt-fp32": OnnxDetector(float_path, threads=args.threads),
               "onnxrt-int8": QuantizedDetector(int8_path, threads=args.threads)}
    rows = {}
    for label, engine in engines.items():
        stats = evaluate_model(engine, val, batch_size=8)
        rows[label] = {"AP": round(stats["AP"], 4), "AP50": round(stats["AP50"], 4)}
        print(f"{name} {label}: AP {stats['AP']:.4f} AP50 {stats['AP50']:.4f}", flush=True)
    drop = rows["optimized-fp32"]["AP"] - rows["onnxrt-int8"]["AP"]
    return {"image_size": size, "val_images": args.val_images, "AP": rows, "int8_AP_drop": round(drop, 4),
            "report": {k: v for k, v in report.__dict__.items() if k != "float_nodes"}}


def latency(name: str, model, rule: str, args, folder: Path) -> dict:
    """Batch-1 medians at the native size: optimised fp32, float onnxruntime, INT8 onnxruntime (same rule)."""
    native = args.latency_size or scaledet.create_model(name).image_size[0]
    sized = scaledet.load(args.weights_used, image_size=native) if args.weights_used else \
        scaledet.create_model(name, num_classes=model.num_classes, image_size=native).eval()
    calibration = [shapes_split("train", num_images=args.calibration_images, image_size=native)[i][0]
                   for i in range(args.calibration_images)]
    float_path, int8_path, _ = int8_files(sized, folder, calibration, args, rules=[rule])
    engines = {"optimized-fp32": scaledet.optimize(sized),
               "onnxrt-fp32": OnnxDetector(float_path, threads=args.threads),
               "onnxrt-int8": QuantizedDetector(int8_path, threads=args.threads)}
    image = [shapes_split("val", num_images=1, image_size=native)[0][0]]
    times: dict[str, list[float]] = {label: [] for label in engines}
    with torch.inference_mode():
        for round_index in range(args.warmup + args.runs):
            for label, engine in engines.items():
                start = time.perf_counter()
                engine(image)
                if round_index >= args.warmup:
                    times[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(values) * 1e3 for label, values in times.items()}
    return {"input_hw": [native, native], "runs": args.runs, "median_ms": {k: round(v, 2) for k, v in medians.items()},
            "int8_speedup_vs_optimized_fp32": round(medians["optimized-fp32"] / medians["onnxrt-int8"], 3),
            "int8_speedup_vs_onnxrt_fp32": round(medians["onnxrt-fp32"] / medians["onnxrt-int8"], 3)}


def markdown(kind: str, results: list[dict], machine_line: str, command: str) -> str:
    lines = [f"## {kind}: {current_processor().describe()}", "",
             "| processor | model | AP opt fp32 | AP int8 | AP drop | kept float | size | ms opt fp32 | ms onnxrt fp32 "
             "| ms int8 | int8 speed-up vs opt fp32 | vs onnxrt fp32 |", "|---" * 12 + "|"]
    for r in results:
        a, t = r["accuracy"], r["latency"]
        timing = "| - | - | - | - | - | - |" if t is None else (
            f"| {t['input_hw'][0]} | {t['median_ms']['optimized-fp32']:.1f} | {t['median_ms']['onnxrt-fp32']:.1f} "
            f"| {t['median_ms']['onnxrt-int8']:.1f} | {t['int8_speedup_vs_optimized_fp32']:.2f}x "
            f"| {t['int8_speedup_vs_onnxrt_fp32']:.2f}x |")
        ap = a["AP"]
        lines.append(f"| {kind} | {r['model']} | {ap['optimized-fp32']['AP']:.4f} | {ap['onnxrt-int8']['AP']:.4f} "
                     f"| {a['int8_AP_drop']:.4f} | {a['report']['float_rule']} " + timing)
    note = "AP at the demo size on the shapes val split; latency batch 1 at the native size, interleaved medians."
    return "\n".join(lines) + f"\n\n{note}\n\nMachine: {machine_line}\n\nCommand: `{command}`\n"


def write_record(results: list[dict], table_of, command: str, args: argparse.Namespace, **extra) -> None:
    """Print ``table_of(kind, results, machine line, command)`` and merge it, and a JSON entry with
    ``extra`` fields, into ``args.markdown`` / ``args.json`` under this processor's kind (one table per
    kind; ``-smoke`` runs apart)."""
    machine = machine_info("cpu")
    machine_line = (f"{machine['cpu']}, {machine['cores']} cores, {args.threads} thread(s), load average "
                    f"{machine['load_average']} at the end, {machine['time_utc']} UTC")
    kind = current_processor().kind + ("-smoke" if args.smoke else "")
    table = table_of(kind, results, machine_line, command)
    print(table)
    entry = {"processor": current_processor().as_dict(), "machine": machine, "command": command, **extra,
             "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ}, "results": results}
    merge_json_results(Path(args.json), kind, entry)
    merge_markdown_results(Path(args.markdown), kind, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientdet_d0", "efficientdet_lite0"])
    parser.add_argument("--threads", type=int, default=1,
                        help="1 (default) for timings: with more, each engine's idle threads keep spinning while "
                             "the next runs (the engines are interleaved), which spoils the figures")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--val-images", type=int, default=200, help="as in scaledet demo")
    parser.add_argument("--calibration-images", type=int, default=64, help="as scaledet export --int8")
    parser.add_argument("--calibration-percentile", type=float, default=DEFAULT_PERCENTILE, metavar="P",
                        help=f"as scaledet export --int8 (default {DEFAULT_PERCENTILE}; 100 = min / max)")
    parser.add_argument("--latency-size", type=int, help="default: the model's native image size")
    parser.add_argument("--train-missing", action="store_true", help="run scaledet demo for missing demo weights")
    parser.add_argument("--no-latency", action="store_true", help="AP only (for a busy machine)")
    parser.add_argument("--smoke", action="store_true", help="tiny run that only checks the script works")
    parser.add_argument("--json", default="benchmarks/results/int8.json")
    parser.add_argument("--markdown", default="benchmarks/results/int8.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.warmup, args.val_images, args.calibration_images = 2, 1, 8, 4
        args.latency_size = args.latency_size or 64
    torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        model, args.weights_used = demo_model(name, args)
        if model is None:
            return 1
        with tempfile.TemporaryDirectory(prefix="scaledet-int8-bench-") as tmp:
            (Path(tmp) / "ap").mkdir()
            (Path(tmp) / "latency").mkdir()
            quality = accuracy(name, model, args, Path(tmp) / "ap")
            speed = None if args.no_latency else latency(name, model, quality["report"]["float_rule"], args,
                                                         Path(tmp) / "latency")
        results.append({"model": name, "weights": args.weights_used, "accuracy": quality, "latency": speed})
        print(json.dumps(speed), flush=True)
    write_record(results, markdown, "python benchmarks/int8.py " + " ".join(argv), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
