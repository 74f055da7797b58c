"""scaledet's ONNX INT8 (run by onnxruntime) against a PyTorch INT8 model of the same weights (PT2E).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.int8_pt2e [--models efficientdet_d0 efficientdet_lite0]
        [--threads 1] [--json benchmarks/results/int8_pt2e.json]

scaledet's INT8 is onnxruntime's static quantization of the exported graph
(:mod:`scaledet.inference.quantize`). The PyTorch INT8 model here is made independently of it: the
detector's network (``forward_features``) captured with ``torch.export``, annotated by torchao's
``X86InductorQuantizer`` (its default static configuration: int8 per-channel symmetric weights,
uint8 activations with histogram-calibrated ranges, or ``--activation-ranges minmax``; shared
convolution weights untied first so every call folds its own BatchNorm, :func:`untie_shared_weights`),
calibrated on the same images, converted with
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
percentile vs histogram / min-max). One row per model and PT2E range method.

Only families whose preprocessing gives every image the same input size (EfficientDet) are
captured once; ``--smoke`` runs tiny random-weight models to check the script works.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import operator
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


def untie_shared_weights(module: torch.fx.GraphModule) -> None:
    """Give every convolution call of ``module`` (an exported graph) its own weight and bias tensors.

    EfficientDet's heads run the same convolutions on every pyramid level, each call followed by its
    own BatchNorm. PT2E folds BatchNorm into the convolution's weight tensor; with the tensor shared,
    torchao folds the first level's BatchNorm and drops the others' ("fake fuse"), so every other
    level runs with the wrong statistics (D0's class logits off by 1-5 at levels 4-7). Copies are made
    for the second and later calls of a tensor; the first keeps the original."""
    calls: dict[torch.fx.Node, int] = {}
    for node in list(module.graph.nodes):
        if node.op != "call_function" or node.target not in (torch.ops.aten.conv2d.default,
                                                             torch.ops.aten.convolution.default):
            continue
        args = list(node.args)
        for index in (1, 2):  # weight, bias
            source = args[index] if index < len(args) else None
            if not isinstance(source, torch.fx.Node) or source.op != "get_attr":
                continue
            calls[source] = calls.get(source, -1) + 1
            if calls[source] == 0:
                continue
            name = f"{source.target.replace('.', '_')}_call{calls[source]}"
            tensor = operator.attrgetter(source.target)(module)
            module.register_parameter(name, nn.Parameter(tensor.detach().clone(), requires_grad=False))
            with module.graph.inserting_before(node):
                args[index] = module.graph.get_attr(name)
            args[index].meta = dict(source.meta)
        node.args = tuple(args)
    module.recompile()


#: how PT2E calibrates activation ranges: the x86 quantizer's default (``HistogramObserver``: the range
#: that minimises the quantization error of the calibration histogram, which may clip the tails) or the
#: plain minimum / maximum (``MinMaxObserver``), closer to scaledet's 99.999th percentile
ACTIVATION_RANGES = ("histogram", "minmax")


def x86_config(activation_ranges: str):
    """The x86 quantizer's default static configuration (int8 per-channel symmetric weights, uint8
    per-tensor activations) with activation ranges from ``activation_ranges`` (:data:`ACTIVATION_RANGES`)."""
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

    config = get_default_x86_inductor_quantization_config()
    if activation_ranges == "histogram":
        return config
    activation = dataclasses.replace(config.input_activation,
                                     observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
    return dataclasses.replace(config, input_activation=activation, output_activation=activation)


def quantize_network(network: nn.Module, calibration: list[tuple[Tensor, ...]],
                     activation_ranges: str = "histogram") -> torch.fx.GraphModule:
    """``network`` (eval mode) captured with ``torch.export`` at ``calibration[0]``'s shapes, quantized by
    PT2E with torchao's ``X86InductorQuantizer`` (:func:`x86_config`) and calibrated on ``calibration``
    (each item: the network's positional inputs); ``network`` is untouched."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    class Quantizer(X86InductorQuantizer):
        """The x86 quantizer, with every module call a source of its own when it looks for patterns
        (after its own graph transforms, which drop the export's source records)."""

        def transform_for_annotation(self, model):
            model = super().transform_for_annotation(model)
            one_source_per_call(model.graph)
            return model

    quantizer = Quantizer()
    quantizer.set_global(x86_config(activation_ranges))
    with torch.no_grad():
        captured = torch.export.export(copy.deepcopy(network).eval(), calibration[0]).module()
        untie_shared_weights(captured)
        prepared = prepare_pt2e(captured, quantizer)
        for inputs in calibration:
            prepared(*inputs)
        return convert_pt2e(prepared)


def pt2e_int8(detector: Detector, calibration: list[Tensor], activation_ranges: str = "histogram") -> PT2EDetector:
    """``detector``'s network quantized by :func:`quantize_network`, calibrated on ``calibration``
    (``Tensor[3, H, W]`` in [0, 1]) after the detector's own preprocessing; ``detector`` is untouched."""
    detector = copy.deepcopy(detector).cpu().eval()
    inputs = [tuple(detector.preprocess([image]).inputs) for image in calibration]
    return PT2EDetector(detector, quantize_network(Network(detector), inputs, activation_ranges))


def compare(name: str, model: Detector, args: argparse.Namespace) -> list[dict]:
    """AP of fp32 / ONNX INT8 / PyTorch INT8 (one per ``args.activation_ranges``) on shapes val and the
    agreement of their detections: one row per PyTorch INT8 model."""
    size = model.image_size[0]
    val = shapes_split("val", num_images=args.val_images, image_size=size)
    train = shapes_split("train", num_images=args.calibration_images, image_size=size)
    calibration = [train[i] for i in range(args.calibration_images)]  # labelled: scaledet's rule is judged by AP
    with tempfile.TemporaryDirectory(prefix="scaledet-int8-pt2e-") as tmp:
        float_path = export_onnx(model, Path(tmp) / "float.onnx")
        report = quantize_onnx(float_path, Path(tmp) / "int8.onnx", calibration, threads=args.threads, progress=print)
        print(report.summary(), flush=True)
        engines = {"fp32": model, "onnx-int8": QuantizedDetector(Path(tmp) / "int8.onnx", threads=args.threads)}
        for ranges in args.activation_ranges:
            engines[f"pytorch-int8/{ranges}"] = pt2e_int8(model, [image for image, _ in calibration], ranges)
        predictions, ap = {}, {}
        for label, engine in engines.items():
            predictions[label] = predict_dataset(engine, val, batch_size=8, progress=False)
            stats = score_predictions(val, predictions[label])
            ap[label] = {"AP": round(stats["AP"], 4), "AP50": round(stats["AP50"], 4)}
            print(f"{name} {label}: AP {stats['AP']:.4f} AP50 {stats['AP50']:.4f}", flush=True)
    detections = {label: [p.detections for p in found] for label, found in predictions.items()}

    def agreement(reference: str, other: str) -> dict:
        result = detection_agreement(detections[reference], detections[other], DEFAULT_TOLERANCE)
        print(f"{name} {other} vs {reference}: {result.summary()}", flush=True)
        return {"summary": result.summary(), "matched": result.matched_fraction,
                "passes": result.passes(DEFAULT_TOLERANCE)}

    onnx_vs_fp32 = agreement("fp32", "onnx-int8")
    rows = []
    for ranges in args.activation_ranges:
        pytorch = f"pytorch-int8/{ranges}"
        rows.append({
            "model": name, "image_size": size, "val_images": args.val_images,
            "calibration_images": args.calibration_images, "pt2e_activation_ranges": ranges,
            "AP": {"fp32": ap["fp32"], "onnx-int8": ap["onnx-int8"], "pytorch-int8": ap[pytorch]},
            "onnx_float_rule": report.float_rule,
            "agreement": {"pytorch-int8 vs onnx-int8": agreement("onnx-int8", pytorch),
                          "onnx-int8 vs pytorch-int8": agreement(pytorch, "onnx-int8"),
                          "onnx-int8 vs fp32": onnx_vs_fp32,
                          "pytorch-int8 vs fp32": agreement("fp32", pytorch)},
            "tolerance": DEFAULT_TOLERANCE.__dict__})
    return rows


def markdown(kind: str, results: list[dict], machine_line: str, command: str) -> str:
    def cell(r: dict, key: str) -> str:
        a = r["agreement"][key]
        return f"{100 * a['matched']:.1f}% ({'passes' if a['passes'] else 'fails'})"

    lines = [f"## {kind}: {current_processor().describe()}", "",
             "| model | PT2E activation ranges | AP fp32 | AP ONNX int8 | AP PyTorch int8 | ONNX int8 float-kept "
             "| PyTorch int8 matches ONNX int8 | ONNX int8 matches PyTorch int8 | ONNX int8 matches fp32 "
             "| PyTorch int8 matches fp32 |", "|---" * 10 + "|"]
    for r in results:
        ap = r["AP"]
        lines.append(f"| {r['model']} | {r['pt2e_activation_ranges']} "
                     f"| {ap['fp32']['AP']:.4f} | {ap['onnx-int8']['AP']:.4f} "
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
    parser.add_argument("--activation-ranges", nargs="+", choices=ACTIVATION_RANGES, default=list(ACTIVATION_RANGES),
                        help="PT2E activation observers to compare (x86 default: histogram)")
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
        results += [{**row, "weights": weights} for row in compare(name, model, args)]
    import torchao

    write_record(results, markdown, "python -m benchmarks.int8_pt2e " + " ".join(argv), args,
                 versions={"torch": torch.__version__, "torchao": torchao.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
