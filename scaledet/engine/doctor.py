"""The dataset doctor: what a detector will see of a training set, before it trains on it.

``diagnose(dataset, model, image_size)`` -> a dict (JSON-able) with the category-id mapping, empty
images, boxes per image, box sides and aspect ratios at the network's input size, tiny boxes, the
input size the auto recipe picks, and, for families with anchors, how well the published anchors
and the fitted ones (``--anchors auto``) cover the boxes. ``format_diagnosis`` prints it.
``scaledet doctor DATA`` shows the report without training; ``scaledet train`` prints it first.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from scaledet.engine.recipe import box_statistics, fitted_input_size
from scaledet.models.base import longest_side_scale
from scaledet.models.registry import family_hook

TINY_SIDE = 8.0  # boxes with a side below this many input pixels are hard for any detector at stride 8


def diagnose(dataset: Any, model: str = "efficientdet_d0", image_size: tuple[int, int] | None = None,
             native_size: tuple[int, int] = (512, 512), overrides: dict | None = None,
             detector: Any = None, baseline: str = "published") -> dict[str, Any]:
    """Report on ``dataset`` (a :class:`scaledet.data.DetectionDataset`) for ``model``.

    ``image_size``: the network input size setting; ``None`` = what the auto recipe fits to the data
    (capped at ``native_size``) for families with a free input size, else ``detector.image_size``.
    Box sizes are measured after the model's eval resize, i.e. in the pixels the anchors live in:
    ``detector``'s (:meth:`Detector.input_scale <scaledet.models.base.Detector.input_scale>`, e.g.
    DETR's shorter-side resize) when given, else the longest side fitted into the input, aspect kept.
    ``baseline`` names the anchors ``overrides`` give, against which the fitted ones are measured ("published",
    or "the checkpoint's" when fine-tuning: ``overrides`` then carry its anchor settings).
    """
    records = dataset.records
    stats = box_statistics(records)
    free = detector is None or detector.input_size_is_free
    if image_size is not None:
        size = tuple(image_size)
    else:
        size = fitted_input_size(stats, tuple(native_size)) if free else tuple(detector.image_size)
    if detector is not None:
        scale_of, described = (lambda h, w: detector.input_scale(h, w, size)), detector.describe_input(size)
    else:
        scale_of, described = (lambda h, w: (longest_side_scale(h, w, size),) * 2), f"{size[0]}x{size[1]}"
    sides, aspects, per_image, label_counts, ignored = [], [], [], Counter(), 0
    for record in records:
        keep = ~np.asarray(record.iscrowd, bool)
        ignored += int((~keep).sum())
        boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)[keep]
        per_image.append(len(boxes))
        label_counts.update(np.asarray(record.labels)[keep].tolist())
        if len(boxes):
            scale_y, scale_x = scale_of(record.height, record.width)
            widths, heights = (boxes[:, 2] - boxes[:, 0]) * scale_x, (boxes[:, 3] - boxes[:, 1]) * scale_y
            sides.append(np.sqrt(widths * heights))
            aspects.append(widths / np.maximum(heights, 1e-9))
    sides = np.concatenate(sides) if sides else np.zeros(0)
    aspects = np.concatenate(aspects) if aspects else np.zeros(0)
    quantiles = (5, 25, 50, 75, 95)
    report: dict[str, Any] = {
        "source": str(getattr(getattr(dataset, "report", None), "source", "")),
        "model": model, "input_size": list(size), "input": described,
        "images": len(records), "unit": getattr(dataset, "record_unit", "images"),
        "boxes": int(len(sides)), "ignored_boxes": ignored,
        "empty_images": int(sum(n == 0 for n in per_image)),
        "max_boxes_per_image": int(max(per_image, default=0)),
        "categories": [
            {"label": label, "category_id": int(category_id), "name": name, "boxes": int(label_counts.get(label, 0))}
            for label, (name, category_id) in enumerate(zip(dataset.class_names, dataset.label_to_category_id))
        ],
        "box_side_px": dict(zip(map(str, quantiles), np.percentile(sides, quantiles).round(1).tolist()))
        if len(sides) else {},
        "aspect_w_over_h": dict(zip(map(str, quantiles), np.percentile(aspects, quantiles).round(2).tolist()))
        if len(aspects) else {},
        "tiny_boxes": int((sides < TINY_SIDE).sum()),
    }
    fit = family_hook(model, "fit_anchors_for")
    if fit is not None and len(sides):
        published, best = fit(model, records, size, overrides)
        report["anchors"] = {
            "published": {"anchor_scale": published.anchor_scale, "aspect_ratios": [list(a) for a in published.aspect_ratios],
                          "coverage": round(published.coverage, 4), "mean_best_iou": round(published.mean_best_iou, 4)},
            "fitted": {"anchor_scale": best.anchor_scale, "aspect_ratios": [list(a) for a in best.aspect_ratios],
                       "coverage": round(best.coverage, 4), "mean_best_iou": round(best.mean_best_iou, 4)},
            "auto_overrides": best.overrides() if best != published else {},
            "baseline": baseline,
        }
    report["advice"] = _advice(report)
    return report


def _advice(report: dict[str, Any]) -> list[str]:
    """One line per problem worth acting on."""
    advice = []
    boxes = max(report["boxes"], 1)
    if report["tiny_boxes"] / boxes > 0.1:
        advice.append(f"{report['tiny_boxes']} boxes ({report['tiny_boxes'] / boxes:.0%}) are under {TINY_SIDE:g} px at "
                      f"input {report.get('input', report['input_size'])}: a larger --image-size (or tiling) will help")
    rare = [c["name"] for c in report["categories"] if c["boxes"] < 10]
    if rare:
        advice.append(f"{len(rare)} class(es) have fewer than 10 boxes ({', '.join(rare[:5])}"
                      f"{' ...' if len(rare) > 5 else ''}): expect little AP on them")
    if report["empty_images"] > 0.5 * report["images"]:
        unit = "tiles" if "tiles" in report.get("unit", "images") else "images"
        advice.append(f"{report['empty_images']} of {report['images']} {unit} have no box")
    anchors = report.get("anchors")
    if anchors and anchors["published"]["coverage"] < 0.9:
        gain = anchors["fitted"]["coverage"] - anchors["published"]["coverage"]
        advice.append(f"{'the ' if anchors.get('baseline', 'published') == 'published' else ''}"
                      f"{anchors.get('baseline', 'published')} anchors cover {anchors['published']['coverage']:.0%} "
                      "of the boxes; " + (f"--anchors auto (the default) uses fitted ones covering "
                                          f"{anchors['fitted']['coverage']:.0%}" if gain > 0 else
                                          "no anchor setting of the search does better"))
    if report["max_boxes_per_image"] > 100:
        advice.append(f"up to {report['max_boxes_per_image']} boxes per image: evaluation raises maxDets accordingly")
    return advice


def format_diagnosis(report: dict[str, Any], max_categories: int = 20) -> str:
    """The report as a few aligned lines of text."""
    h, w = report["input_size"]
    ignored = f" (+ {report['ignored_boxes']} crowd / difficult, not trained)" if report.get("ignored_boxes") else ""
    unit = report.get("unit", "images")  # "tiles" when training on tiles: the records are the tiles
    lines = [f"doctor: {report['images']} {unit}, {report['boxes']} boxes{ignored}, "
             f"{report['empty_images']} empty {unit}, "
             f"up to {report['max_boxes_per_image']} boxes per {'tile' if 'tiles' in unit else 'image'}; "
             f"input {report.get('input', f'{h}x{w}')}"]
    categories = report["categories"]
    shown = ", ".join(f"{c['label']}={c['name']!r} (id {c['category_id']}, {c['boxes']} boxes)"
                      for c in categories[:max_categories])
    more = f" ... and {len(categories) - max_categories} more" if len(categories) > max_categories else ""
    lines.append(f"  labels: {shown}{more}")
    if report["box_side_px"]:
        side, aspect = report["box_side_px"], report["aspect_w_over_h"]
        lines.append("  box side at input px (5/25/50/75/95%): " + " / ".join(f"{v:g}" for v in side.values())
                     + f"; tiny (< {TINY_SIDE:g} px): {report['tiny_boxes']}")
        lines.append("  aspect w/h (5/25/50/75/95%): " + " / ".join(f"{v:g}" for v in aspect.values()))
    anchors = report.get("anchors")
    if anchors:
        published, fitted = anchors["published"], anchors["fitted"]
        lines.append(f"  anchors: {anchors.get('baseline', 'published')} (scale {published['anchor_scale']:g}) cover "
                     f"{published['coverage']:.1%} of "
                     f"boxes at IoU >= match threshold (mean best IoU {published['mean_best_iou']:.2f}); fitted "
                     f"(scale {fitted['anchor_scale']:g}, aspects {fitted['aspect_ratios']}) {fitted['coverage']:.1%} "
                     f"(mean {fitted['mean_best_iou']:.2f})")
    lines += [f"  advice: {line}" for line in report["advice"]]
    return "\n".join(lines)
