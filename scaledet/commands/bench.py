"""scaledet bench: batch-1 latency and batch-N throughput of ours (eager, optimised, onnxruntime),
interleaved in one run; prints the processor (model, ISA flags, kind: :mod:`scaledet.inference.processor`)
and a markdown table, writes JSON. Results files keep one table per processor kind: a run replaces its
own kind's table in ``--json`` / ``--markdown`` and keeps the others. From a source checkout,
``python -m benchmarks.bench_reference`` (same options) adds effdet / transformers with the same weights.

CPU: ``scaledet bench --models efficientdet_d0 detr_r50 --threads 1 --json benchmarks/results/cpu.json``
A trained model: ``scaledet bench --weights runs/exp/weights.safetensors`` (else random weights, whose
near-equal scores make the engines' detections incomparable: the equality lines say so).
GPU: ``scaledet bench --device cuda --models efficientdet_d0 ... --batch-sizes 1 32 --precision fp16 bf16``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaledet.commands import add_threads_option, apply_threads

#: random images calibrating ``--precision int8``'s file (latency only: ``scaledet export --int8
#: --calibration DATA`` makes the file whose accuracy counts)
INT8_BENCH_CALIBRATION = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", help="model names (default efficientdet_d0, or the --weights files' "
                                                     "models); random weights without --weights")
    parser.add_argument("--weights", nargs="+", metavar="FILE",
                        help="time these weights (our .safetensors / a run's checkpoint; a reference checkpoint "
                             "with --models): one file per --models entry, or --models left out")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16", "int8"],
                        help="precisions of the optimised engine (default fp32 bf16; int8: onnxruntime, CPU, calibrated on "
                             f"{INT8_BENCH_CALIBRATION} random images: a latency figure, not an accuracy one)")
    parser.add_argument("--compile", action="store_true", help="also time optimised + torch.compile")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime engine")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    add_threads_option(parser)
    parser.add_argument("--runs", type=int, default=20, help="timed rounds (median reported; default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="size of the random test images (default: the model's typical input, model.input_size(); "
                             "DETR 800 1066); the model resizes them to its own input size, as any image")
    parser.add_argument("--json", help="write machine info + rows here")
    parser.add_argument("--markdown", help="write the table (with the machine line) here")


def _image_size(model, args) -> tuple[int, int]:
    """``--image-size``, else the model's typical inference input (``model.input_size()``)."""
    if args.image_size:
        return tuple(args.image_size)
    return tuple(model.input_size())


def _check_args(args: argparse.Namespace) -> None:
    from scaledet.engine.distributed import resolve_device

    if args.weights and args.models and len(args.models) != len(args.weights):
        raise ValueError(f"--weights gives {len(args.weights)} file(s) for {len(args.models)} --models: give one "
                         "file per model, or leave --models out (each file names its model)")
    for path in args.weights or []:
        if path != "coco" and not Path(path).exists():
            raise FileNotFoundError(f"--weights {path}: no such file")
        if Path(path).suffix.lower() == ".onnx":
            raise ValueError(f"--weights {path}: bench times our engines from PyTorch weights (an ONNX file is "
                             "one of them: give the .safetensors it was exported from)")
    if not args.models:
        args.models = [None] * len(args.weights) if args.weights else ["efficientdet_d0"]
    if args.runs < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        raise ValueError("--runs and --batch-sizes must be >= 1, --warmup >= 0")
    if args.image_size and min(args.image_size) < 1:
        raise ValueError(f"--image-size H W must be >= 1 pixel each, got {args.image_size[0]} {args.image_size[1]}")
    args.device = str(resolve_device(args.device))  # a misspelt name or a missing GPU: one line
    if "fp16" in args.precision and not args.device.startswith("cuda"):
        raise ValueError("fp16 needs --device cuda (use bf16 on CPU)")
    if "int8" in args.precision and args.device != "cpu":
        raise ValueError("int8 runs in onnxruntime on the CPU: use --device cpu")


def bench_model(name: str | None, args: argparse.Namespace, tmp: Path, reference=None,
                weights: str | None = None) -> dict:
    """Rows, equality checks and post-processing share of model ``name`` (``None``: the one ``weights``
    names) with ``weights`` (default random, or the reference's); ``reference``: a
    :data:`~scaledet.inference.benchmark.ReferenceFactory` adding a reference engine."""
    import torch
    from tqdm import tqdm

    import scaledet
    from scaledet.inference.benchmark import build_engines, postprocess_share, summarise, time_engines
    from scaledet.inference.compare import compare_detection_sets, detection_differences

    model = scaledet.load(weights, model=name, device=args.device) if weights else None
    name = model.name if model is not None else name
    engines, model = build_engines(name, args.device, args.precision, args.compile, not args.no_onnx, tmp,
                                   reference=reference, image_size=tuple(args.image_size) if args.image_size else None,
                                   int8_calibration=INT8_BENCH_CALIBRATION, model=model)
    size = _image_size(model, args)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=generator) for _ in range(max(args.batch_sizes))]
    rows, equality = [], {}
    for batch_size in args.batch_sizes:
        bar = tqdm(total=args.warmup + args.runs, desc=f"{name} b{batch_size}", leave=False)
        outputs = time_engines(engines, images, batch_size, args.runs, args.warmup, args.device, bar.update)
        bar.close()
        rows += summarise(name, engines, batch_size)
        for engine in engines:
            if engine.detections is not None and engine.name != "ours-eager":
                eager, other = outputs["ours-eager"], engine.detections(outputs[engine.name])
                sets = compare_detection_sets(eager, other)  # the verdict: near-tied scores may swap boxes
                equality[f"{engine.name}@b{batch_size}"] = {**detection_differences(eager, other),
                                                            "equal_as_sets": sets.passed, "tied": sets.tied,
                                                            "untestable_ties": _untestable(sets)}
    share = postprocess_share(model, images[:1], args.runs) if args.device == "cpu" else None
    with torch.no_grad():  # what the network runs on: the model resizes the test image to its own input
        network = list(model.preprocess([images[0].to(args.device)]).inputs[0].shape[-2:])
    return {"model": name, "weights": weights or ("reference's" if engines[0].name != "ours-eager" else "random"),
            "input_hw": list(size), "network_input_hw": network, "rows": rows,
            "vs_eager_detections": equality, "postprocess_batch1": share}


def _untestable(sets) -> bool:
    """True when only too many near-tied scores failed the set comparison: random weights score most
    candidates alike, so which of them an engine keeps is a coin toss (give ``--weights``)."""
    return not sets.passed and sets.unexplained == 0 and sets.max_score_diff <= sets.score_tol


def run(args: argparse.Namespace, reference=None, command: str | None = None) -> int:
    """``scaledet bench``; ``reference`` / ``command`` are given by ``benchmarks/bench_reference.py``
    (its reference engines, and its command line for the record)."""
    from scaledet.inference.benchmark import (machine_info, markdown_table, merge_json_results,
                                              merge_markdown_results, read_markdown_sections, read_results_tables,
                                              temporary_dir)
    from scaledet.inference.processor import current_processor

    _check_args(args)
    apply_threads(args.threads)
    if args.json:
        read_results_tables(Path(args.json))  # a file it cannot merge into: said now, not after the benchmark
    if args.markdown:
        read_markdown_sections(Path(args.markdown))
    processor = current_processor()
    print(f"processor: {processor.describe()}")
    results = []
    with temporary_dir() as tmp:
        for name, weights in zip(args.models, args.weights or [None] * len(args.models)):
            results.append(bench_model(name, args, Path(tmp), reference, weights))
    machine = machine_info(args.device)
    machine["load_average_end"] = machine.pop("load_average")
    rows = [row for result in results for row in result["rows"]]
    table = markdown_table(rows, processor.kind)
    print(f"\nprocessor: {processor.describe()}\n{table}")
    for result in results:
        (h, w), (net_h, net_w) = result["input_hw"], result["network_input_hw"]
        print(f"{result['model']}: test images {h}x{w} px, network input {net_h}x{net_w} "
              "(the model resizes every image to its own input; --image-size sets the test images)")
        if result["postprocess_batch1"]:
            p = result["postprocess_batch1"]
            print(f"{result['model']} post-processing (batch 1): {p['postprocess_ms']:.1f} ms of "
                  f"{p['total_ms']:.1f} ms = {100 * p['share']:.1f}%")
        for key, diff in result["vs_eager_detections"].items():
            print(f"{result['model']} {key} vs ours-eager (box differences in px): "
                  + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in diff.items()))
        if any(diff["untestable_ties"] for diff in result["vs_eager_detections"].values()):
            print(f"{result['model']}: {result['weights']} weights score many boxes alike, so which of them an "
                  "engine keeps is a tie; give --weights a trained file to compare detections")
    machine_line = (f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with "
                    f"{machine['torch_threads']} thread(s), load average {machine['load_average_end']} at the end, "
                    f"{machine['time_utc']} UTC" + (f", GPU {machine['gpu']}" if "gpu" in machine else ""))
    command = command or "scaledet bench " + " ".join(sys.argv[2:])
    print(f"\nmachine: {machine_line}\ncommand: {command}")
    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    entry = {"processor": processor.as_dict(), "machine": machine, "command": command, "args": arguments,
             "results": results}
    if args.json:
        merge_json_results(Path(args.json), processor.kind, entry)
    if args.markdown:
        section = (f"## {processor.kind}: {processor.describe()}\n\n{table}\n\nMachine: {machine_line}\n\n"
                   f"Command: `{command}`\n")
        merge_markdown_results(Path(args.markdown), processor.kind, section)
    return 0
