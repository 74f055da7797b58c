"""COCO box metrics through a maintained evaluator (pycocotools, or faster-coco-eval).

Matching and accumulation are the library's (``COCOeval.evaluate`` + ``accumulate``); this
module only reads the accumulated precision / recall arrays the way ``COCOeval.summarize``
does, with one fix: AP uses the largest ``maxDets`` (pycocotools hard-codes 100 for
``AP@[.5:.95]``, which gives -1 when ``maxDets`` is raised for dense scenes).
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scaledet.data.coco import as_number, box_from_segmentation, read_json
from scaledet.evaluation.results import (
    align_to_ground_truth,
    check_ids,
    check_rows,
    checked_rows,
    coco_bbox,
    detection_rows,
    label_mapping,
    read_detections,
    record_id,
    write_detections,
)

#: the 12 summary stats, in pycocotools' order
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# key -> (ap?, IoU threshold or None, area range, index into maxDets)
_STAT_SPECS = {
    "AP": (True, None, "all", -1), "AP50": (True, 0.5, "all", -1), "AP75": (True, 0.75, "all", -1),
    "APs": (True, None, "small", -1), "APm": (True, None, "medium", -1), "APl": (True, None, "large", -1),
    "AR1": (False, None, "all", 0), "AR10": (False, None, "all", 1), "AR100": (False, None, "all", 2),
    "ARs": (False, None, "small", -1), "ARm": (False, None, "medium", -1), "ARl": (False, None, "large", -1),
}  # fmt: skip
BACKENDS = ("pycocotools", "faster_coco_eval")


def _backend(name: str):
    """``(COCO, COCOeval)`` classes of the chosen library."""
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    elif name == "faster_coco_eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return COCO, COCOeval


def _check_max_dets(max_dets: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(int(m) for m in max_dets)
    if len(values) != 3 or any(v < 1 for v in values) or list(values) != sorted(set(values)):
        raise ValueError(f"max_dets must be 3 increasing positive ints (AR1, AR10, AR100 slots), got {max_dets!r}")
    return values


def dense_max_dets(gt: dict, max_dets: Sequence[int]) -> tuple[tuple[int, int, int], list[str]]:
    """``(max_dets, notes)``: ``max_dets`` with its last cap raised to the next multiple of 100 at
    or above twice the largest number of non-crowd boxes on one image of the COCO dict ``gt``, when
    that number is above the cap (with a note saying so: a cap below the object count bounds recall
    below 1 whatever the detector); else ``max_dets`` unchanged and no note."""
    max_dets = _check_max_dets(max_dets)
    counts: dict[int, int] = {}
    for annotation in gt.get("annotations", []):
        if not annotation.get("iscrowd", 0):
            counts[annotation["image_id"]] = counts.get(annotation["image_id"], 0) + 1
    densest = max(counts.values(), default=0)
    if densest <= max_dets[-1]:
        return max_dets, []
    raised = -(-2 * densest // 100) * 100
    note = (f"an image holds {densest} ground-truth objects, more than maxDets {max_dets[-1]}: "
            f"AP and AR use maxDets {raised} (--max-dets sets the caps)")
    return (*max_dets[:2], raised), [note]


def _load_gt(gt) -> dict:
    """Ground truth as a COCO dict from a dict, a path or a dataset with ``coco_gt()``."""
    if hasattr(gt, "coco_gt"):
        return gt.coco_gt()
    source = "ground truth"
    if isinstance(gt, (str, Path)):
        source = str(gt)
        gt = read_json(Path(gt))
    if not isinstance(gt, dict) or not {"images", "categories"} <= gt.keys():
        raise ValueError("ground truth must be a COCO dict / JSON file with 'images' and 'categories'")
    # ids and numbers written as strings are read as the dataset reader reads them (docs/data.md)
    images = [{**image, "id": record_id(image, "id", f"images[{index}]")} for index, image in enumerate(gt["images"])]
    categories = [{**category, "id": record_id(category, "id", f"categories[{index}]")}
                  for index, category in enumerate(gt["categories"])]
    annotations = []
    for index, ann in enumerate(gt.get("annotations", [])):
        where = f"{source}: annotations[{index}]"
        if isinstance(ann, dict) and ann.get("bbox") is None and ann.get("segmentation"):
            spanned = box_from_segmentation(ann["segmentation"])  # as the training reader does
            ann = {**ann, "bbox": spanned} if spanned is not None else ann
        if not isinstance(ann, dict) or not {"image_id", "category_id", "bbox"} <= ann.keys():
            missing = sorted({"image_id", "category_id", "bbox"} - ann.keys()) if isinstance(ann, dict) else None
            raise ValueError(f"{where} needs image_id, category_id and bbox" +
                             (f" (it has no {', '.join(missing)}: COCO evaluation scores boxes, so every ground-truth "
                              "annotation needs its bbox [x, y, width, height], or a segmentation it spans)"
                              if missing else ""))
        bbox = coco_bbox(ann["bbox"], where)
        ids = {key: record_id(ann, key, where) for key in ("image_id", "category_id")}
        annotations.append({"id": index + 1, "iscrowd": 0, "area": bbox[2] * bbox[3], **ann, **ids, "bbox": bbox})
        for key in ("area", "iscrowd"):
            if isinstance(annotations[-1][key], str):
                annotations[-1][key] = as_number(annotations[-1][key])
    return {**gt, "images": images, "categories": categories, "annotations": annotations}


def summarize_eval(coco_eval) -> dict[str, float]:
    """The 12 stats from an accumulated ``COCOeval`` (fractions; -1 where undefined).

    AP* use ``maxDets[-1]``; AR1 / AR10 / AR100 use ``maxDets[0..2]``; ARs/m/l ``maxDets[-1]``.
    """
    params = coco_eval.params
    stats = {}
    for key, (is_ap, iou, area, m) in _STAT_SPECS.items():
        values = coco_eval.eval["precision" if is_ap else "recall"]
        if iou is not None:
            values = values[np.where(np.isclose(params.iouThrs, iou))[0]]
        a = list(params.areaRngLbl).index(area)
        values = values[..., a, m]  # precision [T,R,K] / recall [T,K]
        valid = values[values > -1]
        stats[key] = float(np.mean(valid)) if valid.size else -1.0
    return stats


def per_class_ap(coco_eval, names: dict[int, str]) -> dict[str, dict[str, float]]:
    """``{class name: {"AP": .., "AP50": ..}}`` over all areas at ``maxDets[-1]``; -1 without GT. A name
    that several category ids share is keyed ``"name (id N)"`` for each, so no class's row is lost."""
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    at50 = np.where(np.isclose(coco_eval.params.iouThrs, 0.5))[0]
    shared = Counter(names[category_id] for category_id in coco_eval.params.catIds)
    out = {}
    for k, category_id in enumerate(coco_eval.params.catIds):
        table = {}
        for key, values in (("AP", precision[:, :, k, 0, -1]), ("AP50", precision[at50, :, k, 0, -1])):
            valid = values[values > -1]
            table[key] = float(np.mean(valid)) if valid.size else -1.0
        name = names[category_id]
        out[name if shared[name] == 1 else f"{name} (id {category_id})"] = table
    return out


class COCOEvaluator:
    """Accumulates detections and computes COCO box metrics.

    Args:
        gt: a dataset (``coco_gt()`` and ``label_to_category_id``), a COCO dict or a COCO JSON path.
        max_dets: the three detection caps (default ``(1, 10, 100)``; raise for dense scenes).
        backend: ``"pycocotools"`` or ``"faster_coco_eval"``.
        label_to_category_id: contiguous label -> category id (default: the dataset's, or the
            GT categories sorted by id).
        class_names: the model's class names in label order (``model.class_names``): its labels are
            then mapped to the ground truth's categories **by name**, as :func:`evaluate_model` does
            (:func:`~scaledet.evaluation.results.label_mapping`). Without it, label ``k`` must be the
            ``k``-th entry of ``label_to_category_id``: a model whose classes are in another order (a
            VOC folder lists them alphabetically, COCO / YOLO files in file order) scores a wrong AP.

    Use :meth:`update` with model outputs (boxes xyxy in original pixels, or in resized pixels
    with ``target["scale"]``, a float or ``Tensor[4]`` (sx, sy, sx, sy), as set by
    :func:`~scaledet.data.eval_transforms`), or :meth:`add_results` with COCO result dicts; then :meth:`compute`.
    """

    def __init__(self, gt, max_dets: Sequence[int] = (1, 10, 100), backend: str = "pycocotools",
                 label_to_category_id: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None) -> None:  # fmt: skip
        self.max_dets = _check_max_dets(max_dets)
        _backend(backend)
        self.backend = backend
        self.gt = _load_gt(gt)
        self.categories = {c["id"]: str(c.get("name", c["id"])) for c in self.gt["categories"]}
        if label_to_category_id is None:
            label_to_category_id = getattr(gt, "label_to_category_id", None) or sorted(self.categories)
        self.label_to_category_id: list[int | None] = list(label_to_category_id)
        if class_names is not None:  # the model's label -> the ground truth's category, by name
            gt_names = [self.categories.get(category, str(category)) for category in self.label_to_category_id]
            self.label_to_category_id = [self.label_to_category_id[k] if k >= 0 else None
                                         for k in label_mapping(class_names, gt_names)]
        self.image_ids = {img["id"] for img in self.gt["images"]}
        self.results: list[dict] = []

    def update(self, predictions: Sequence[dict], targets: Sequence[dict | int]) -> None:
        """Add one batch of model outputs.

        Args:
            predictions: per image ``dict(boxes=Tensor[N,4] xyxy, scores=Tensor[N], labels=Tensor[N])``.
            targets: per image the target dict (``image_id``, optional ``scale``) or the image id.
        """
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
        for prediction, target in zip(predictions, targets):
            image_id = target["image_id"] if isinstance(target, dict) else target
            scale = target.get("scale", 1.0) if isinstance(target, dict) else 1.0
            self.results.extend(self._to_results(prediction, int(image_id), scale))

    def _to_results(self, prediction: dict, image_id: int, scale) -> list[dict]:
        scale = torch.as_tensor(scale, dtype=torch.float32).cpu().reshape(-1)  # scalar or (sx, sy, sx, sy)
        boxes = torch.as_tensor(prediction["boxes"]).detach().float().cpu().reshape(-1, 4) / scale
        return detection_rows(image_id, {**prediction, "boxes": boxes}, self.label_to_category_id)

    def add_results(self, results: Sequence[dict]) -> None:
        """Add COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``)."""
        check_rows(list(results))
        self.results.extend(results)

    def coco_eval(self):
        """Run the backend: an accumulated ``COCOeval`` object."""
        check_ids(self.results, self.gt)
        coco_cls, eval_cls = _backend(self.backend)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = coco_cls()
            coco_gt.dataset = copy.deepcopy(self.gt)
            coco_gt.createIndex()
            if self.results:
                coco_dt = coco_gt.loadRes(copy.deepcopy(self.results))
            else:  # loadRes cannot take an empty list
                coco_dt = coco_cls()
                coco_dt.dataset = {"images": list(self.gt["images"]), "categories": list(self.gt["categories"]), "annotations": []}
                coco_dt.createIndex()
            evaluator = eval_cls(coco_gt, coco_dt, "bbox")
            evaluator.params.maxDets = list(self.max_dets)
            evaluator.evaluate()
            evaluator.accumulate()
        return evaluator

    def compute(self) -> dict:
        """The 12 stats (:data:`STAT_KEYS`, fractions, -1 where undefined) plus
        ``per_class`` (``{name: {"AP", "AP50"}}``), ``max_dets`` and ``num_detections``."""
        evaluator = self.coco_eval()
        stats: dict = summarize_eval(evaluator)
        stats["per_class"] = per_class_ap(evaluator, self.categories)
        stats["max_dets"] = list(self.max_dets)
        stats["num_detections"] = len(self.results)
        return stats

    def write_results(self, path: str | Path) -> Path:
        """Write the accumulated detections in scaledet's results format
        (:mod:`scaledet.evaluation.results`): the COCO results list at ``path`` and the ground
        truth's images and categories beside it."""
        return write_detections(path, self.results, self.gt["images"], self.gt["categories"], image_ids="dataset")


#: from this many detections on, ``evaluate_detections`` says it is scoring (pycocotools prints nothing for minutes)
LONG_EVALUATION_ROWS = 200_000


def evaluate_detections(gt, detections, max_dets: Sequence[int] = (1, 10, 100), backend: str = "pycocotools",
                        match_categories: str = "id") -> dict:
    """Stats for detections against a COCO GT dict / JSON file / dataset.

    ``detections`` is a COCO results list, or a results JSON file; beside a file, its images
    file (``NAME.images.json``, see :mod:`scaledet.evaluation.results`) is used to match images
    by file name and, with ``match_categories="name"``, categories by name. Ids the ground truth
    does not have raise ValueError naming both sides. Lines worth telling the user (e.g.
    ground-truth images that were not predicted, a ``max_dets`` cap raised for dense images as
    :func:`dense_max_dets` does) are returned under ``"notes"``.
    """
    header, detections_name = None, "the detections list"
    if isinstance(detections, (str, Path)):
        detections_name = Path(detections).name
        detections, header = read_detections(detections)
    detections = checked_rows(detections, detections_name)
    gt_name = Path(gt).name if isinstance(gt, (str, Path)) else "the ground truth"
    ground_truth = _load_gt(gt)
    max_dets, dense_notes = dense_max_dets(ground_truth, max_dets)  # as evaluate_model: the same AP either way
    evaluator = COCOEvaluator(ground_truth, max_dets=max_dets, backend=backend)
    rows, notes = align_to_ground_truth(detections, header, evaluator.gt, match_categories, detections_name, gt_name)
    notes = dense_notes + notes
    if len(rows) >= LONG_EVALUATION_ROWS:  # pycocotools shows no progress: say why nothing happens for a minute
        print(f"scoring {len(rows):,} detections on {len(evaluator.gt['images']):,} images with {backend} "
              f"(about a minute per million detections on one core)", file=sys.stderr, flush=True)
    evaluator.add_results(rows)
    stats = evaluator.compute()
    if notes:
        stats["notes"] = notes
    return stats


def format_stats(stats: dict) -> str:
    """The COCO summary table, one line per stat, like pycocotools prints it."""
    big = stats.get("max_dets", [1, 10, 100])[-1]
    rows = {
        "AP": ("AP", "0.50:0.95", "all", big), "AP50": ("AP", "0.50", "all", big), "AP75": ("AP", "0.75", "all", big),
        "APs": ("AP", "0.50:0.95", "small", big), "APm": ("AP", "0.50:0.95", "medium", big),
        "APl": ("AP", "0.50:0.95", "large", big),
    }  # fmt: skip
    max_dets = stats.get("max_dets", [1, 10, 100])
    for key, m in zip(("AR1", "AR10", "AR100"), max_dets):
        rows[key] = ("AR", "0.50:0.95", "all", m)
    for key, area in (("ARs", "small"), ("ARm", "medium"), ("ARl", "large")):
        rows[key] = ("AR", "0.50:0.95", area, big)
    lines = []
    for key in STAT_KEYS:
        kind, iou, area, m = rows[key]
        title = "Average Precision  (AP)" if kind == "AP" else "Average Recall     (AR)"
        lines.append(f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={m:>4d} ] = {stats[key]:0.3f}   {key}")
    return "\n".join(lines)


def format_per_class(stats: dict) -> str:
    """Per-class AP / AP50 table (``-1`` shown as ``n/a``: no ground truth)."""
    per_class = stats.get("per_class", {})
    width = max([len("class"), *(len(n) for n in per_class)])
    lines = [f"{'class':<{width}}      AP    AP50", "-" * (width + 16)]
    for name, row in per_class.items():
        cells = [f"{row[k]:7.3f}" if row[k] >= 0 else "    n/a" for k in ("AP", "AP50")]
        lines.append(f"{name:<{width}} {cells[0]} {cells[1]}")
    return "\n".join(lines)
