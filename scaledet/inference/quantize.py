"""INT8: static post-training quantization of a detector's exported ONNX graph with onnxruntime.

:func:`quantize_onnx` takes a float file written by :func:`scaledet.export.export_onnx` and writes an
INT8 one: weights int8 per output channel, activations uint8 with ranges calibrated (min / max) on
images like the ones the model will see, in onnxruntime's QDQ format (its CPU provider fuses the
pairs into integer kernels). Only the *network* is quantized, i.e. the nodes that feed a
convolution plus the convolutions themselves; the post-processing (box decoding, top-k, NMS) stays
in float. Which network nodes also stay float is decided by measurement: the candidate
:data:`FLOAT_RULES` are tried from the most quantized to the least, and the first that keeps the float
graph's accuracy on the calibration images is kept. When the calibration images come with ground
truth, that is COCO AP: the rule's AP may be at most ``max_ap_drop`` (default
:data:`DEFAULT_MAX_AP_DROP`) below the float graph's; without ground truth, its detections must agree
with the float graph's (:func:`detection_agreement` against :data:`DEFAULT_TOLERANCE`), a looser test
(on EfficientDet-Lite0 it passed a rule that cost 0.011 AP). The file records the rule in its
metadata, and :class:`QuantizedDetector` runs it behind the detector contract.

:func:`quantize_int8` is ``scaledet.optimize(model, precision="int8", calibration=images)``: export,
quantize, and return a :class:`QuantizedDetector`. The graph analysis and rewrites live in
:mod:`scaledet.inference.quantize_graph`, the activation ranges (min / max, percentiles) in
:mod:`scaledet.inference.quantize_ranges`. onnxruntime and onnx are optional dependencies, imported
only inside these three modules' functions.
"""

from __future__ import annotations

import ast
import copy
import json
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch
from torch import Tensor
from torchvision.ops import box_iou

from scaledet.export.onnx import (CONFIG_KEY, PREPROCESSING_KEY, OnnxDetector, export_onnx, save_with_metadata,
                                  session_options, with_temporary_folder)
from scaledet.inference.processor import current_processor
from scaledet.inference.quantize_graph import (FLOAT_RULES, check_scales, constant_scales_folded, float_rules,
                                               network_nodes, spatial_means_as_global_pools)
from scaledet.inference.quantize_ranges import DEFAULT_PERCENTILE, QUANTIZED_OP_TYPES, CalibrationFeeds, calibrate
from scaledet.models.base import Detections, Detector
from scaledet.models.inputs import check_images

#: metadata key of an INT8 file: JSON of :class:`QuantizationReport` (without per-rule details)
INT8_KEY = "scaledet.int8"


@dataclass(frozen=True)
class Tolerance:
    """When INT8 detections count as agreeing with float ones (:func:`detection_agreement`).

    A float detection with score >= ``min_score`` is matched by an INT8 detection with the same label,
    IoU >= ``iou`` and a score within ``score_tol``; the rule passes when at least ``min_matched`` of
    them are matched and at most ``max_extra`` (as a fraction of them) INT8 detections with score
    >= ``min_score + score_tol`` match none.
    """

    min_score: float = 0.3
    iou: float = 0.8
    score_tol: float = 0.1
    min_matched: float = 0.95
    max_extra: float = 0.05


DEFAULT_TOLERANCE = Tolerance()
#: with labelled calibration images, how much COCO AP (0-1) a float-kept rule may lose against the
#: float graph on them; half of a 0.01 budget, since a few dozen images measure AP only roughly
DEFAULT_MAX_AP_DROP = 0.005


@dataclass
class Agreement:
    """INT8 vs float detections over some images (see :class:`Tolerance`)."""

    reference: int = 0  # float detections with score >= min_score
    matched: int = 0
    extra: int = 0  # INT8 detections >= min_score + score_tol that match no float one
    max_score_diff: float = 0.0  # over matched pairs

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    def passes(self, tolerance: Tolerance) -> bool:
        return (self.matched_fraction >= tolerance.min_matched
                and self.extra <= tolerance.max_extra * max(self.reference, 1))

    def summary(self) -> str:
        return (f"{self.matched}/{self.reference} float detections matched ({100 * self.matched_fraction:.1f}%), "
                f"{self.extra} extra, max score diff {self.max_score_diff:.3f}")


def detection_agreement(reference: Sequence[Detections], other: Sequence[Detections],
                        tolerance: Tolerance = DEFAULT_TOLERANCE) -> Agreement:
    """Greedy per-image matching of ``other`` (INT8) to ``reference`` (float) detections, best IoU first
    (boxes ``[N, 4]`` xyxy pixels, ``scores [N]``, ``labels [N]``); see :class:`Tolerance`."""
    out = Agreement()
    for ref, det in zip(reference, other, strict=True):
        keep_ref = ref["scores"] >= tolerance.min_score
        keep_det = det["scores"] >= tolerance.min_score - tolerance.score_tol
        ref_boxes, ref_scores, ref_labels = (ref[k][keep_ref].float() for k in ("boxes", "scores", "labels"))
        boxes, scores, labels = (det[k][keep_det].float() for k in ("boxes", "scores", "labels"))
        out.reference += len(ref_scores)
        used = torch.zeros(len(scores), dtype=torch.bool)
        if len(ref_scores) and len(scores):
            iou = box_iou(ref_boxes, boxes)  # [R, D]
            ok = (iou >= tolerance.iou) & (ref_labels[:, None] == labels[None, :]) \
                & ((ref_scores[:, None] - scores[None, :]).abs() <= tolerance.score_tol)
            iou = torch.where(ok, iou, torch.full_like(iou, -1.0))
            for _ in range(min(iou.shape)):
                best = int(iou.argmax())
                r, d = divmod(best, iou.shape[1])
                if iou[r, d] < 0:
                    break
                out.matched += 1
                out.max_score_diff = max(out.max_score_diff, float((ref_scores[r] - scores[d]).abs()))
                used[d] = True
                iou[r, :] = -1.0
                iou[:, d] = -1.0
        out.extra += int(((scores >= tolerance.min_score + tolerance.score_tol) & ~used).sum())
    return out


# ------------------------------------------------------------------------------------------------
# quantization


@dataclass
class QuantizationReport:
    """What :func:`quantize_onnx` did. ``float_rule``: the kept rule; ``float_nodes``: the network
    nodes it keeps float (names in the float graph); ``quantized_nodes``: network nodes quantized;
    ``tried``: ``[{rule, float_nodes, agreement, AP (with ground truth), passed}]`` in the order tried;
    ``passed``: whether the kept rule kept the float accuracy (if none did, the most accurate rule
    measured is kept when judged by AP, else the last, most float, one); ``unbounded_nodes``:
    network nodes float under every rule because a tensor they read or write has an infinite range on
    the calibration images (the ``-inf`` padding before a max-pool); ``float_modules``: the PyTorch
    modules (dotted paths, from the exporter's node metadata) the float-kept nodes come from;
    ``verified``: False when the float graph found nothing above ``min_score`` on the calibration
    images, so no rule could be judged (the first one is kept); ``choose``: how the rule was picked
    (``"first"`` agreeing or ``"fastest"`` agreeing); ``float_ms``: with ``"fastest"``, the float
    graph's median batch-1 time (each rule's is in ``tried``); ``float_ap``: with labelled calibration
    images, the float graph's COCO AP on them (each rule's is in ``tried``), which the rules were judged
    by (``max_ap_drop``), else ``None`` (judged by ``tolerance``); ``percentile``: the activation ranges'
    percentile (``None``: min / max)."""

    float_rule: str
    float_nodes: list[str]
    quantized_nodes: int
    network_nodes: int
    calibration_images: int
    reduce_range: bool
    tolerance: dict
    passed: bool
    tried: list[dict] = field(default_factory=list)
    unbounded_nodes: list[str] = field(default_factory=list)
    float_modules: list[str] = field(default_factory=list)
    verified: bool = True
    choose: str = "first"
    float_ms: float | None = None
    float_ap: float | None = None
    max_ap_drop: float | None = None
    percentile: float | None = None

    def summary(self) -> str:
        """The rule kept, the float-kept layers (module paths) and every rule tried, one line each."""
        criterion = (f"lost at most {self.max_ap_drop} AP on the labelled calibration images" if self.float_ap is not None
                     else "agreed with the float detections")
        fallback = "the most accurate one" if self.float_ap is not None else "the most float one"
        verdict = "" if self.passed else (f" - NO rule {criterion}, kept {fallback}" if self.verified
                                          else " - UNVERIFIED: the float graph finds nothing on the calibration images")
        ranges = "min / max ranges" if self.percentile is None else f"{self.percentile}th-percentile ranges"
        unbounded = (f"; {len(self.unbounded_nodes)} nodes always float (a tensor they read or write has an infinite "
                     "range: the -inf padding before a max-pool)") if self.unbounded_nodes else ""
        lines = [f"int8: {self.quantized_nodes} of {self.network_nodes} network nodes quantized; kept float: "
                 f"{self.float_rule} ({len(self.float_nodes)} nodes), post-processing float; calibrated on "
                 f"{self.calibration_images} images ({ranges}){unbounded}{verdict}"]
        if self.float_modules:
            shown = ", ".join(self.float_modules[:12])
            more = f" and {len(self.float_modules) - 12} more" if len(self.float_modules) > 12 else ""
            lines.append(f"  float-kept layers ({len(self.float_modules)} modules): {shown}{more}")
        if self.float_ms is not None:
            kept_ms = next((t.get("median_ms") for t in self.tried if t["rule"] == self.float_rule), None)
            slower = kept_ms is not None and kept_ms >= self.float_ms
            lines.append(f"  float graph: {self.float_ms:.1f} ms (batch 1, median)"
                         + (" - the int8 file is NOT faster than float on this machine" if slower else ""))
        if self.float_ap is not None:
            lines.append(f"  judged by AP on the labelled calibration images: float {self.float_ap:.4f}, "
                         f"a rule may lose at most {self.max_ap_drop}")
        for attempt in self.tried:
            timing = f", {attempt['median_ms']:.1f} ms" if attempt.get("median_ms") is not None else ""
            ap = f"AP {attempt['AP']:.4f}; " if attempt.get("AP") is not None else ""
            lines.append(f"  rule {attempt['rule']:<30} {ap}{attempt['agreement']}{timing} -> "
                         f"{'PASS' if attempt['passed'] else 'FAIL'}")
        return "\n".join(lines)


#: the processor flags whose integer dot products do not saturate on u8 x s8 (VNNI and AMX)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def has_vnni() -> bool:
    """Whether this processor multiplies u8 x s8 without saturating (VNNI or AMX); without, the INT8
    file is made with 7-bit weights (``reduce_range``)."""
    return bool(VNNI_FLAGS & current_processor().flags)


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def check_calibration(calibration: Sequence | None) -> tuple[list[Tensor], list[dict] | None]:
    """``(images, targets or None)`` from calibration images, or a clear error.

    ``calibration``: images ``Tensor[3, H, W]`` in [0, 1], or ``(image, target)`` pairs whose target
    holds the image's ground truth, ``boxes [N, 4]`` xyxy in that image's pixels and ``labels [N]`` in
    the model's class order (a dataset of the model's classes, e.g. ``shapes_split("val")``). Images
    come back as float CPU tensors; targets only when every item has one.
    """
    if calibration is None or len(calibration) == 0:
        raise ValueError("precision='int8' needs calibration images: optimize(model, precision='int8', "
                         "calibration=[Tensor[3, H, W] in [0, 1], ...]) (a few dozen like the ones to detect on; "
                         "(image, target) pairs judge the float-kept layers by AP); "
                         "on the command line: scaledet export --int8 --calibration DATA")
    items = list(calibration)
    paired = all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items)
    images = [item[0] for item in items] if paired else items
    images = [image.float().cpu() for image in check_images(images)]
    if not paired:
        return images, None
    targets = []
    for index, (_, target) in enumerate(items):
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"calibration item {index}: the target must be a dict with 'boxes' [N, 4] xyxy pixels "
                             "and 'labels' [N]")
        targets.append({"boxes": torch.as_tensor(target["boxes"]).float().reshape(-1, 4).cpu(),
                        "labels": torch.as_tensor(target["labels"]).long().reshape(-1).cpu()})
    return images, targets


def calibration_ap(detections: Sequence[Detections], targets: Sequence[dict], images: Sequence[Tensor],
                   num_classes: int) -> float:
    """COCO AP (0-1, pycocotools) of ``detections`` against ``targets`` (both per image: boxes ``[N, 4]``
    xyxy pixels of ``images[i]``, labels ``[N]`` in ``range(num_classes)``)."""
    from scaledet.evaluation.coco import COCOEvaluator, dense_max_dets

    annotations = []
    for image_id, target in enumerate(targets):
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            width, height = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [box[0], box[1], width, height], "area": width * height, "iscrowd": 0})
    gt = {"images": [{"id": i, "height": int(image.shape[-2]), "width": int(image.shape[-1])}
                     for i, image in enumerate(images)],
          "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in range(num_classes)]}
    max_dets, _ = dense_max_dets(gt, (1, 10, 100))
    evaluator = COCOEvaluator(gt, max_dets=max_dets, label_to_category_id=list(range(num_classes)))
    evaluator.update(list(detections), list(range(len(images))))
    return max(evaluator.compute()["AP"], 0.0)


def quantize_onnx(float_path: str | Path, output: str | Path, calibration: Sequence,
                  tolerance: Tolerance = DEFAULT_TOLERANCE, rules: Sequence[str] | None = None,
                  threads: int | None = None, progress: Callable[[str], None] | None = None,
                  choose: str = "first", timing_runs: int = 10,
                  max_ap_drop: float = DEFAULT_MAX_AP_DROP,
                  percentile: float | None = DEFAULT_PERCENTILE) -> QuantizationReport:
    """Write the INT8 version of the scaledet ONNX file ``float_path`` to ``output`` (see the module
    docstring) and return what was kept float.

    Args:
        calibration: images ``list[Tensor[3, H, W]]`` in [0, 1], or ``(image, target)`` pairs with
            ground truth (:func:`check_calibration`); they calibrate the activation ranges and are the
            images the float-kept rule is judged on: by AP with ground truth, else by agreement.
        tolerance: without ground truth, when a rule's detections agree with the float graph's.
        max_ap_drop: with ground truth, the most AP (0-1) a rule may lose against the float graph.
        rules: names from :data:`FLOAT_RULES` to try, in order (default all).
        threads: onnxruntime threads for calibration, checks and timing.
        progress: called with a line per step.
        choose: ``"first"``: the first rule (most int8) that agrees; ``"fastest"``: quantize with every
            rule, time the float graph and each agreeing rule on one calibration image (batch 1,
            ``timing_runs`` interleaved rounds, medians) and keep the fastest - on the processor that
            runs this, which should be the one that will run the file.
        percentile: activation ranges cover this percent of each tensor's calibration values
            (fixed-bin histograms over each min / max, both tails cut equally, one image at a time), except
            the tensors of :data:`~scaledet.inference.quantize_ranges.MINMAX_OP_TYPES` nodes (default
            :data:`DEFAULT_PERCENTILE`); ``100`` or ``None``: every range is the min / max.
    """
    if choose not in ("first", "fastest"):
        raise ValueError(f"choose must be 'first' or 'fastest', got {choose!r}")
    if percentile is not None and not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile:g}")
    if percentile == 100:
        percentile = None  # the whole range: min / max, without the histogram pass
    import onnx

    images, targets = check_calibration(calibration)
    say = progress or (lambda line: None)
    float_detector = OnnxDetector(float_path, threads=threads)
    model = float_detector.model  # weightless, for pre- and post-processing
    batches = [model.preprocess([image]) for image in images]  # batch 1 each
    feeds = [{k: v.numpy() for k, v in model.export_feeds(batch).items()} for batch in batches]
    reduce_range = not has_vnni()
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="scaledet-int8-") as tmp:
        prepared, cache = Path(tmp) / "prepared.onnx", Path(tmp) / "calibration.json"
        _pre_process(float_path, prepared, say)
        prepared_model = onnx.load(str(prepared))
        graph = prepared_model.graph
        if spatial_means_as_global_pools(graph):
            onnx.save(prepared_model, str(prepared))
        ranges = "min / max" if percentile is None else f"{percentile}th percentile"
        say(f"int8: calibrating activation ranges ({ranges}) on {len(feeds)} images")
        unbounded = calibrate(prepared, feeds, cache, Path(tmp), percentile)
        network = network_nodes(graph)
        # nodes reading or writing a tensor with an infinite range (the -inf padding of a max-pool)
        # cannot be quantized: always float
        always_float = {node.name for node in graph.node if node.name in network
                        and unbounded & {*node.input, *node.output}}
        candidates = [(name, nodes | always_float) for name, nodes in float_rules(graph)
                      if rules is None or name in rules]
        if not candidates:
            raise ValueError(f"no float rule among {list(rules or [])}; choose from {[n for n, _ in FLOAT_RULES]}")
        reference = _detections(float_detector.session, model, feeds, batches)
        float_ap = None
        if targets is not None:
            float_ap = calibration_ap(reference, targets, images, model.num_classes)
            verified = float_ap > 0
            say(f"int8: float AP {float_ap:.4f} on the calibration images; a rule may lose {max_ap_drop}")
        else:
            verified = any(bool((d["scores"] >= tolerance.min_score).any()) for d in reference)
        if not verified:  # nothing to compare: keep the first rule, say it is unverified
            say("int8: the float graph finds nothing on the calibration images (" +
                ("AP 0" if targets is not None else f"no detection with score >= {tolerance.min_score}") +
                "); the float-kept rule cannot be judged (calibrate on images with objects)")
            candidates = candidates[:1]
        tried, sessions = [], {}
        for index, (name, float_nodes) in enumerate(candidates):
            say(f"int8: quantizing with {name} kept float ({len(float_nodes)} nodes)")
            path = Path(tmp) / f"rule{index}.onnx"
            _quantize(prepared, path, feeds, network - float_nodes, reduce_range, cache)
            sessions[name] = _session(path, threads)
            detections = _detections(sessions[name], model, feeds, batches)
            agreement = detection_agreement(reference, detections, tolerance)
            attempt = {"rule": name, "float_nodes": len(float_nodes), "agreement": agreement.summary(), "file": path}
            if float_ap is not None:
                attempt["AP"] = round(calibration_ap(detections, targets, images, model.num_classes), 4)
                attempt["passed"] = verified and float_ap - attempt["AP"] <= max_ap_drop
            else:
                attempt["passed"] = verified and agreement.passes(tolerance)
            tried.append(attempt)
            if tried[-1]["passed"] and choose == "first":
                break
        float_ms = None
        if choose == "fastest":
            say(f"int8: timing the float graph and every agreeing rule ({timing_runs} rounds, batch 1)")
            timed = {"float": float_detector.session} | {t["rule"]: sessions[t["rule"]] for t in tried if t["passed"]}
            medians = _interleaved_medians(timed, feeds[0], timing_runs)
            float_ms = medians.pop("float")
            for attempt in tried:
                attempt["median_ms"] = medians.get(attempt["rule"])
        kept = _kept_rule(tried, choose)
        name, float_nodes = kept["rule"], dict(candidates)[kept["rule"]]
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept["file"], output)
        for attempt in tried:
            del attempt["file"]
    modules = _module_paths(float_path)
    report = QuantizationReport(name, sorted(float_nodes), len(network - float_nodes), len(network), len(images),
                                reduce_range, asdict(tolerance), kept["passed"], tried, sorted(always_float),
                                sorted({modules.get(node, node) for node in float_nodes}), verified, choose, float_ms,
                                None if float_ap is None else round(float_ap, 4),
                                max_ap_drop if float_ap is not None else None, percentile)
    _write_metadata(output, float_detector.session.get_modelmeta().custom_metadata_map, report)
    return report


def _pre_process(float_path: Path, prepared: Path, say: Callable[[str], None]) -> None:
    """onnxruntime's ``quant_pre_process`` (shape inference, graph optimisation) of ``float_path`` into
    ``prepared``. Where its symbolic shape inference fails on the graph (seen with onnxruntime 1.30 on
    torch 2.11's export: an assertion on a convolution's rank), ONNX's own shape inference alone (a
    spatial mean whose input rank it leaves unknown is then not rewritten by
    :func:`spatial_means_as_global_pools`; D0's 16 all are)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    say("int8: shape inference and graph optimisation (onnxruntime quant_pre_process)")
    try:
        quant_pre_process(str(float_path), str(prepared))
    except Exception as error:  # noqa: BLE001 - onnxruntime raises bare Exception / AssertionError here
        say(f"int8: onnxruntime's symbolic shape inference failed ({type(error).__name__}: {error}); "
            "using ONNX's shape inference only")
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)


def _kept_rule(tried: list[dict], choose: str) -> dict:
    """The attempt to keep: the fastest (``"fastest"``) or first (``"first"``) that passed; if none
    passed, the most accurate measured (highest ``"AP"``, the later on ties) when judged by AP, else the
    last (most float)."""
    passed = [attempt for attempt in tried if attempt["passed"]]
    if not passed:
        if all(attempt.get("AP") is not None for attempt in tried):
            return max(reversed(tried), key=lambda attempt: attempt["AP"])
        return tried[-1]
    return min(passed, key=lambda attempt: attempt["median_ms"]) if choose == "fastest" else passed[0]


def _interleaved_medians(sessions: dict, feed: dict, runs: int) -> dict[str, float]:
    """Median ms of ``session.run(feed)`` per session: one warm-up round, then ``runs`` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_index in range(runs + 1):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            if round_index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def _detections(session, model: Detector, feeds: list[dict], batches: list) -> list[Detections]:
    """One image's detections per feed, run by ``session`` and turned into the eval contract."""
    return [model.detections_from_export([torch.from_numpy(x) for x in session.run(None, feed)], batch)[0]
            for feed, batch in zip(feeds, batches)]


def _quantize(prepared: Path, output: Path, feeds: list[dict], nodes: set[str], reduce_range: bool,
              cache: Path) -> None:
    """``quantize_static`` of ``nodes`` of ``prepared`` into ``output`` (QDQ, per-channel int8 weights, uint8
    activations, MinMax ranges from ``cache``), with every scale checked and constant weights folded into
    the scales (:func:`constant_scales_folded`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # ranges exist for every tensor of these op types, post-processing ones included (some are constant
    # or infinite there: numpy warns); only the network's are used, and checked by check_scales
    with numpy.errstate(divide="ignore", invalid="ignore"):
        quantize_static(str(prepared), str(output), CalibrationFeeds(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=sorted(nodes), calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=cache)
    proto = onnx.load(str(output))
    check_scales(proto.graph)
    if constant_scales_folded(proto.graph):
        onnx.save(proto, str(output))


def _module_paths(path: str | Path) -> dict[str, str]:
    """``{node name: dotted module path}`` from the ``pkg.torch.onnx.name_scopes`` metadata the PyTorch
    exporter writes on each node (its last scope is the op itself, so the one before it)."""
    import onnx

    paths = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                scopes = ast.literal_eval(prop.value)
                if len(scopes) >= 2 and scopes[-2]:
                    paths[node.name] = scopes[-2]
    return paths


def _write_metadata(path: Path, float_metadata: dict[str, str], report: QuantizationReport) -> None:
    """Store the float file's model config (so :class:`~scaledet.export.OnnxDetector` can run the file) and
    preprocessing description, and the report (without the per-node list), in ``path``'s metadata, with
    the INT8 graph's own checksum (:func:`~scaledet.export.onnx.save_with_metadata`)."""
    import onnx

    summary = {k: v for k, v in asdict(report).items() if k != "float_nodes"}
    values = {key: float_metadata[key] for key in (CONFIG_KEY, PREPROCESSING_KEY) if key in float_metadata}
    values[INT8_KEY] = json.dumps(summary)
    save_with_metadata(onnx.load(str(path)), path, values)


class QuantizedDetector(OnnxDetector):
    """An INT8 file (:func:`quantize_onnx`) run by onnxruntime behind the detector eval contract:
    ``detector(list of float Tensor[3, H, W] in [0, 1]) -> list[dict(boxes [N, 4] xyxy input-image
    pixels, scores [N], labels [N] int64)]``, CPU only. Not an ``nn.Module``: no ``.to()``, no
    training. Attributes as :class:`~scaledet.export.OnnxDetector`, plus ``precision``
    (``"int8"``) and ``report`` (the stored :class:`QuantizationReport` summary, a dict)."""

    precision = "int8"

    def __init__(self, path: str | Path, threads: int | None = None, report: QuantizationReport | None = None,
                 session: Any = None) -> None:
        super().__init__(path, threads=threads, session=session)
        meta = self.session.get_modelmeta().custom_metadata_map
        if INT8_KEY not in meta:
            raise ValueError(f"{path} is not a scaledet INT8 file (no {INT8_KEY!r} metadata); "
                             "make one with scaledet export --int8 --calibration DATA")
        self.report = asdict(report) if report is not None else json.loads(meta[INT8_KEY])
        if not self.report.get("reduce_range", True) and not has_vnni():
            warnings.warn(f"{self.path.name} was quantized on a processor with VNNI (8-bit weights); this one has "
                          "none, so its u8 x s8 products can saturate and the detections drift: re-export it here "
                          "(scaledet export --int8 makes 7-bit weights on processors without VNNI)", stacklevel=2)


def quantize_int8(model: Detector, calibration: Sequence | None, output: str | Path | None = None,
                  tolerance: Tolerance = DEFAULT_TOLERANCE, threads: int | None = None,
                  choose: str = "first", max_ap_drop: float = DEFAULT_MAX_AP_DROP,
                  percentile: float | None = DEFAULT_PERCENTILE) -> QuantizedDetector:
    """``scaledet.optimize(model, precision="int8", calibration=images)``: export ``model`` to ONNX,
    quantize it (:func:`quantize_onnx`) and return the :class:`QuantizedDetector` running it.

    ``output``: where the INT8 file goes (default a temporary folder, kept for the detector's life;
    pass a path to keep it). ``threads``: onnxruntime threads (default ``torch.get_num_threads()``).
    ``calibration``, ``choose``, ``max_ap_drop``, ``percentile``: see :func:`quantize_onnx`. ``model`` is left untouched
    (a CPU copy is exported).
    """
    check_calibration(calibration)  # a clear error before exporting
    threads = threads or torch.get_num_threads()

    def build(folder: Path) -> QuantizedDetector:  # the temporary files live as long as the detector
        float_path = export_onnx(copy.deepcopy(model).cpu().eval(), folder / "float.onnx")  # model untouched
        int8_path = Path(output) if output is not None else folder / "int8.onnx"
        report = quantize_onnx(float_path, int8_path, calibration, tolerance, threads=threads, choose=choose,
                               max_ap_drop=max_ap_drop, percentile=percentile)
        return QuantizedDetector(int8_path, threads=threads, report=report)

    return with_temporary_folder("scaledet-int8-", build)
