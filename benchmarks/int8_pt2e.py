"""scaledet's ONNX INT8 (run by onnxruntime) against a PyTorch INT8 model of the same weights (PT2E).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.int8_pt2e [--models efficientdet_d0 efficientdet_lite0]
        [--threads 1] [--json benchmarks/results/int8_pt2e.json]

scaledet's INT8 is onnxruntime's static quantization of the exported graph
(:mod:`scaledet.inference.quantize`). The PyTorch INT8 model here is made independently of it: the
detector's network (``forward_features``) captured with ``torch.export``, annotated by torchao's
``X86InductorQuantizer`` (its default static configuration: int8 per-channel symmetric weights,
uint8 activations with histogram-calibrated ranges), calibrated on the same images, converted with
``convert_pt2e`` and run eagerly. That is PT2E's reference representation: every quantized tensor is
rounded to its 8-bit grid and the arithmetic is float, i.e. what integer kernels compute up to
accumulation order. The detector's own pre- and post-processing run around it. torchao is a dev
dependency (pyproject's ``dev`` extra); the package never imports it.

Per model (the demo weights of ``benchmarks/int8.py``; AP at the demo size on ``--val-images`` shapes
validation images; both INT8 models calibrated on the same ``--calibration-images`` shapes training
images): COCO AP of fp32 (eager), ONNX INT8 and PyTorch INT8, and how the detections agree
(:func:`scaledet.inference.quantize.detection_agreement` at ``DEFAULT_TOLERANCE``): the two INT8
models with each other, each way, next to each INT8 model against fp32 (the noise each quantization
adds). The two differ by design where the quantizers do: which ops are quantized (scaledet's
float-kept rule, chosen by AP, vs the x86 quantizer's patterns) and the activation ranges (99.999th
percentile vs histogram).

Only families whose preprocessing gives every image the same input size (EfficientDet) are
captured once; ``--smoke`` runs tiny random-weight models to check the script works.
"""

from __future__ import annotations

import argparse
import copy
import pydoc
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.int8 import demo_model, write_record
from scaledet.data import shapes_split
from scaledet.evaluation.runner import predict_dataset, score_predictions
from scaledet.export import export_onnx
from scaledet.inference.processor import current_processor
from scaledet.inference.quantize import DEFAULT_TOLERANCE, QuantizedDetector, detection_agreement, quantize_onnx
from scaledet.models.base import Detections, Detector
from scaledet.models.inputs import check_images


class Network(nn.Module):
    """A detector's pure network, ``forward_features(*batch.inputs) -> raw outputs``, as a module for
    ``torch.export``."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, *inputs: Tensor):
        return self.detector.forward_features(*inputs)


class PT2EDetector:
    """A PT2E-converted network between ``detector``'s pre- and post-processing: the eval contract
    (list of float ``Tensor[3, H, W]`` in [0, 1] -> list of detections, boxes xyxy input-image pixels),
    one image at a time (the network was captured at batch 1)."""

    precision = "int8"

    def __init__(self, detector: Detector, network: nn.Module) -> None:
        self.detector, self.network = detector, network

    def __call__(self, images: list[Tensor] | Tensor) -> list[Detections]:
        detections = []
        with torch.no_grad():
            for image in check_images(images):
                batch = self.detector.preprocess([image])
                detections += self.detector.postprocess(self.network(*batch.inputs), batch)
        return detections


def one_source_per_call(graph: torch.fx.Graph) -> None:
    """Give every call of a module a source of its own in ``graph``'s node metadata.

    The x86 quantizer finds conv + activation pairs by source partitions, which group nodes by the
    module's path: a module called several times (a head shared across pyramid levels, an activation
    module reused) becomes one partition with several outputs, which it refuses ("partition has more
    than one output node"). The nodes of one call are contiguous; each call gets ``path@N`` and, where
    the graph holds no source record (the quantizer's own transforms drop them), the nearest
    ``torch.nn`` module type of its innermost module (``nn_module_stack`` holds the class or its name)."""
    calls: dict[str, int] = {}
    previous = None
    for node in graph.nodes:
        module_stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not module_stack:
            previous = None
            continue
        path, kind = list(module_stack.values())[-1]
        if path != previous:
            calls[path] = calls.get(path, -1) + 1
            previous = path
        stack = node.meta.get("source_fn_stack")
        if stack:
            node.meta["source_fn_stack"] = [*stack[:-1], (f"{stack[-1][0]}@{calls[path]}", stack[-1][1])]
        else:
            kind = pydoc.locate(kind) if isinstance(kind, str) else kind  # the class or its dotted name
            if not isinstance(kind, type):
                continue
            base = next((c for c in kind.__mro__ if c.__module__.startswith("torch.nn.modules")), kind)
            node.meta["source_fn_stack"] = [(f"{path}@{calls[path]}", base)]


def pt2e_int8(detector: Detector, calibration: list[Tensor]) -> PT2EDetector:
    """``detector``'s network quantized by PT2E with torchao's ``X86InductorQuantizer`` (default static
    configuration), calibrated on ``calibration`` (``Tensor[3, H, W]`` in [0, 1]); ``detector`` is untouched."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    detector = copy.deepcopy(detector).cpu().eval()
    example = tuple(detector.preprocess([calibration[0]]).inputs)

    class Quantizer(X86InductorQuantizer):
        """The x86 quantizer, with every module call a source of its own when it looks for patterns
        (after its own graph transforms, which drop the export's source records)."""

        def transform_for_annotation(self, model):
            model = super().transform_for_annotation(model)
            one_source_per_call(model.graph)
            return model

    quantizer = Quantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        captured = torch.export.export(Network(detector).eval(), example).module()
        prepared = prepare_pt2e(captured, quantizer)
        for image in calibration:
            prepared(*detector.preprocess([image]).inputs)
        converted = convert_pt2e(prepared)
    return PT2EDetector(detector, converted)


def compare(name: str, model: Detector, args: argparse.Namespace) -> dict:
    """AP of fp32 / ONNX INT8 / PyTorch INT8 on shapes val and the agreement of their detections."""
    size = model.image_size[0]
    val = shapes_split("val", num_images=args.val_images, image_size=size)
    train = shapes_split("train", num_images=args.calibration_images, image_size=size)
    calibration = [train[i] for i in range(args.calibration_images)]  # labelled: scaledet's rule is judged by AP
    with tempfile.TemporaryDirectory(prefix="scaledet-int8-pt2e-") as tmp:
        float_path = export_onnx(model, Path(tmp) / "float.onnx")
        report = quantize_onnx(float_path, Path(tmp) / "int8.onnx", calibration, threads=args.threads, progress=print)
        print(report.summary(), flush=True)
        engines = {"fp32": model, "onnx-int8": QuantizedDetector(Path(tmp) / "int8.onnx", threads=args.threads),
                   "pytorch-int8": pt2e_int8(model, [image for image, _ in calibration])}
        predictions, rows = {}, {}
        for label, engine in engines.items():
            predictions[label] = predict_dataset(engine, val, batch_size=8, progress=False)
            stats = score_predictions(val, predictions[label])
            rows[label] = {"AP": round(stats["AP"], 4), "AP50": round(stats["AP50"], 4)}
            print(f"{name} {label}: AP {stats['AP']:.4f} AP50 {stats['AP50']:.4f}", flush=True)
    detections = {label: [p.detections for p in found] for label, found in predictions.items()}
    agreement = {}
    for reference, other in (("onnx-int8", "pytorch-int8"), ("pytorch-int8", "onnx-int8"),
                             ("fp32", "onnx-int8"), ("fp32", "pytorch-int8")):
        result = detection_agreement(detections[reference], detections[other], DEFAULT_TOLERANCE)
        agreement[f"{other} vs {reference}"] = {"summary": result.summary(), "matched": result.matched_fraction,
                                                "passes": result.passes(DEFAULT_TOLERANCE)}
        print(f"{name} {other} vs {reference}: {result.summary()}", flush=True)
    return {"model": name, "image_size": size, "val_images": args.val_images,
            "calibration_images": args.calibration_images, "AP": rows, "onnx_float_rule": report.float_rule,
            "agreement": agreement, "tolerance": DEFAULT_TOLERANCE.__dict__}


def markdown(kind: str, results: list[dict], machine_line: str, command: str) -> str:
    def cell(r: dict, key: str) -> str:
        a = r["agreement"][key]
        return f"{100 * a['matched']:.1f}% ({'passes' if a['passes'] else 'fails'})"

    lines = [f"## {kind}: {current_processor().describe()}", "",
             "| model | AP fp32 | AP ONNX int8 | AP PyTorch int8 | ONNX int8 float-kept | PyTorch int8 matches ONNX int8 "
             "| ONNX int8 matches PyTorch int8 | ONNX int8 matches fp32 | PyTorch int8 matches fp32 |", "|---" * 9 + "|"]
    for r in results:
        ap = r["AP"]
        lines.append(f"| {r['model']} | {ap['fp32']['AP']:.4f} | {ap['onnx-int8']['AP']:.4f} "
                     f"| {ap['pytorch-int8']['AP']:.4f} | {r['onnx_float_rule']} "
                     f"| {cell(r, 'pytorch-int8 vs onnx-int8')} | {cell(r, 'onnx-int8 vs pytorch-int8')} "
                     f"| {cell(r, 'onnx-int8 vs fp32')} | {cell(r, 'pytorch-int8 vs fp32')} |")
    tolerance = DEFAULT_TOLERANCE
    note = (f"Matches: the reference's detections with score >= {tolerance.min_score} found again (same label, IoU >= "
            f"{tolerance.iou}, score within {tolerance.score_tol}); 'passes': >= {100 * tolerance.min_matched:.0f}% "
            f"matched and <= {100 * tolerance.max_extra:.0f}% extra (scaledet.inference.quantize.DEFAULT_TOLERANCE). "
            "AP at the demo size on the shapes val split.")
    return "\n".join(lines) + f"\n\n{note}\n\nMachine: {machine_line}\n\nCommand: `{command}`\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientdet_d0"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-images", type=int, default=200, help="as in scaledet demo")
    parser.add_argument("--calibration-images", type=int, default=64, help="as scaledet export --int8")
    parser.add_argument("--train-missing", action="store_true", help="run scaledet demo for missing demo weights")
    parser.add_argument("--smoke", action="store_true", help="tiny run that only checks the script works")
    parser.add_argument("--json", default="benchmarks/results/int8_pt2e.json")
    parser.add_argument("--markdown", default="benchmarks/results/int8_pt2e.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.smoke:
        args.val_images, args.calibration_images = 8, 4
    torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        model, weights = demo_model(name, args)
        if model is None:
            return 1
        results.append({**compare(name, model, args), "weights": weights})
    import torchao

    write_record(results, markdown, "python -m benchmarks.int8_pt2e " + " ".join(argv), args,
                 versions={"torch": torch.__version__, "torchao": torchao.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
