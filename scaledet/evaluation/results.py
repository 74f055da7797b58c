"""The one detection-results format: what ``scaledet predict`` and ``scaledet eval --results``
write and ``scaledet eval --detections`` reads.

Two files:

* ``NAME.json``, a COCO results list, one row per detection::

      {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}

  ``bbox`` is in pixels of the original image, ``(x, y)`` its top-left corner. ``category_id`` is
  the dataset's own category id of the class (``model.category_ids[label]``: the ``categories[].id``
  of the COCO file the model was trained on, 1..K for VOC / YOLO / shapes data, COCO's 1..90 for
  the published weights), never the model's 0-based label. ``image_id`` is the dataset's image id
  when a dataset was predicted (``predict --data``, ``eval --model``), else a running number 1..N
  in input order.
* ``NAME.images.json`` beside it (:func:`images_path`) says what the ids mean, in COCO's layout::

      {"image_ids": "dataset" | "inputs",
       "images": [{"id", "file_name", "width", "height", "frame"[, "output"]}],
       "categories": [{"id", "name"}]}

  ``frame`` is the video frame index (``null`` for images); ``output`` (``scaledet predict``) the name of the
  file drawn for it in the output folder (same-named inputs of two folders are drawn as ``img.jpg``, ``img_2.jpg``).

When :func:`align_to_ground_truth` scores such a file against a ground truth, ``"inputs"`` image
ids are replaced by the ground truth's ids of the same file names, categories are matched by id
(or by name on request), and every id the ground truth does not know is an error naming both
files, never a silent AP of 0. A COCO results list from another tool, without the second file,
is taken with its ids as they are.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from scaledet.data.base import plain_name
from scaledet.data.coco import as_int, as_number, read_json

ROW_KEYS = ("image_id", "category_id", "bbox", "score")
#: ``image_ids`` values of the images file: ids of a dataset, or 1..N in the order the inputs were given
IMAGE_ID_SOURCES = ("dataset", "inputs")
MATCH_CATEGORIES = ("id", "name")


def images_path(detections_path: str | Path) -> Path:
    """The images file beside a detections file: ``out/detections.json -> out/detections.images.json``."""
    path = Path(detections_path)
    return path.with_name(f"{path.stem}.images.json")


def detection_rows(image_id: int, detections: dict[str, Tensor], category_ids: Sequence[int | None],
                   threshold: float = 0.0) -> list[dict]:
    """COCO result rows of one image's detections.

    Args:
        image_id: the id the rows carry.
        detections: ``dict(boxes=Tensor[N, 4] xyxy pixels, scores=Tensor[N], labels=Tensor[N] int)``.
        category_ids: label ``k`` is written as ``category_ids[k]`` (``None``: not written).
        threshold: rows only for scores >= this.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "score"}]`` in the input order.

    Raises:
        ValueError: a label outside ``[0, len(category_ids))``.
    """
    boxes = torch.as_tensor(detections["boxes"]).detach().float().cpu().reshape(-1, 4)
    scores = torch.as_tensor(detections["scores"]).detach().float().cpu().reshape(-1)
    labels = torch.as_tensor(detections["labels"]).detach().cpu().reshape(-1).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(category_ids)):
        raise ValueError(f"image {image_id}: labels must be in [0, {len(category_ids)}), got {labels.unique().tolist()}")
    keep = scores >= threshold
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)[keep].tolist()
    return [
        {"image_id": int(image_id), "category_id": int(category_ids[label]), "bbox": box, "score": score}
        for box, score, label in zip(xywh, scores[keep].tolist(), labels[keep].tolist())
        if category_ids[label] is not None
    ]


def categories_of(category_ids: Sequence[int | None], class_names: Sequence[str]) -> list[dict]:
    """COCO ``categories`` rows ``[{"id", "name"}]`` of a model's labels (label order; ``None`` ids left out)."""
    return [{"id": int(cid), "name": str(name)} for cid, name in zip(category_ids, class_names) if cid is not None]


def write_detections(path: str | Path, rows: list[dict], images: list[dict], categories: list[dict],
                     image_ids: str = "dataset") -> Path:
    """Write ``rows`` to ``path`` and the ids' meaning to :func:`images_path` of it.

    Args:
        rows: COCO result rows (:func:`detection_rows`).
        images: ``[{"id", "file_name", "width", "height"[, "frame"]}]``, every image predicted
            (with or without detections).
        categories: ``[{"id", "name"}]`` of the ids the rows use (:func:`categories_of`).
        image_ids: ``"dataset"`` (the ids are a dataset's) or ``"inputs"`` (1..N in input order).
    """
    if image_ids not in IMAGE_ID_SOURCES:
        raise ValueError(f"image_ids must be one of {IMAGE_ID_SOURCES}, got {image_ids!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    header = {"image_ids": image_ids, "images": images, "categories": categories}
    images_path(path).write_text(json.dumps(header, indent=1))
    return path


def read_detections(path: str | Path) -> tuple[list[dict], dict | None]:
    """``(rows, images file dict or None)`` of a detections file (see the module doc).

    Raises:
        ValueError: not a JSON list of ``{image_id, category_id, bbox, score}`` rows, or a bad images file.
    """
    path = Path(path)
    rows = read_json(path)
    check_rows(rows, path.name)
    header_path = images_path(path)
    header = read_json(header_path) if header_path.is_file() else None
    if header is not None and not (isinstance(header, dict) and isinstance(header.get("images"), list)
                                   and isinstance(header.get("categories"), list)
                                   and header.get("image_ids") in IMAGE_ID_SOURCES):
        raise ValueError(f"{header_path}: expected {{'image_ids': 'dataset'|'inputs', 'images': [...], "
                         f"'categories': [...]}} (written by scaledet predict / eval --results)")
    return rows, header


def check_rows(rows: object, name: str = "detections") -> None:
    """ValueError unless ``rows`` is a list of dicts with ``image_id``, ``category_id``, ``bbox`` and ``score``."""
    if not isinstance(rows, list):
        raise ValueError(f"{name}: a COCO results file is a JSON list of detections, got {type(rows).__name__}")
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not set(ROW_KEYS) <= row.keys():
            raise ValueError(f"{name}: detections[{index}] needs image_id, category_id, bbox and score, got {row!r}")


def record_id(record: object, key: str, where: str) -> int:
    """``record[key]`` as an integer id (an int, an integral float or a string of one), or ValueError."""
    value = as_int(record.get(key)) if isinstance(record, dict) else None
    if value is None:
        given = record.get(key) if isinstance(record, dict) else record
        raise ValueError(f"{where}: {key} must be an integer id, got {given!r}")
    return value


def coco_bbox(bbox: object, where: str) -> list[float]:
    """``bbox`` as four finite numbers ``[x, y, w, h]`` with ``w, h >= 0`` (numeric strings read), or ValueError."""
    values = [as_number(v) for v in bbox] if isinstance(bbox, (list, tuple)) and len(bbox) == 4 else None
    if values is None or not all(v is not None and math.isfinite(v) for v in values):
        raise ValueError(f"{where}: bbox {bbox!r} is not four finite numbers [x, y, width, height]")
    if values[2] < 0 or values[3] < 0:
        raise ValueError(f"{where}: bbox {bbox!r} has a negative width or height "
                         "(COCO's bbox is [x, y, width, height])")
    return values


def checked_rows(rows: object, name: str = "detections") -> list[dict]:
    """:func:`check_rows`, then each row with integer ids, a bbox of four finite numbers (width and height
    >= 0) and a finite score: numbers written as strings are read, anything else is a ValueError naming
    the row (a NaN box or a bool score scored silently, or crashed the scorer)."""
    check_rows(rows, name)
    out = []
    for index, row in enumerate(rows):
        where = f"{name}: detections[{index}]"
        score = as_number(row["score"])
        if score is None or not math.isfinite(score):
            raise ValueError(f"{where}: score {row['score']!r} is not a finite number")
        ids = {key: record_id(row, key, where) for key in ("image_id", "category_id")}
        out.append({**row, **ids, "bbox": coco_bbox(row["bbox"], where), "score": score})
    return out


def _ids(values: Iterable[int], limit: int = 10) -> str:
    """``{1, 5, 90}``, or the first ``limit`` and how many there are."""
    values = sorted(set(values))
    shown = ", ".join(str(v) for v in values[:limit])
    return "{" + shown + (f", ... ({len(values)} in all)" if len(values) > limit else "") + "}"


def check_ids(rows: list[dict], gt: dict, detections_name: str = "the detections list",
              gt_name: str = "the ground truth") -> None:
    """Raise a one-line ValueError naming both sides when ``rows`` use a category or image id
    that the COCO ground truth ``gt`` does not have (scoring them would silently count as misses)."""
    known_categories = {c["id"] for c in gt["categories"]}
    used = {r["category_id"] for r in rows}
    if used - known_categories:
        raise ValueError(
            f"{detections_name} uses category ids {_ids(used)}; {gt_name} has {_ids(known_categories)} "
            f"({_ids(used - known_categories)} not in {gt_name}): predict with weights trained on this dataset (they "
            f"keep its category ids), or match categories by name (--match-categories name)"
        )
    known_images = {image["id"] for image in gt["images"]}
    used = {r["image_id"] for r in rows}
    if used - known_images:
        raise ValueError(
            f"{detections_name} uses image ids {_ids(used)}; {gt_name} has {_ids(known_images)} "
            f"({_ids(used - known_images)} not in {gt_name}): predict the dataset itself (scaledet predict --data), "
            f"or keep the .images.json file beside the detections so images are matched by file name"
        )


def align_to_ground_truth(rows: list[dict], header: dict | None, gt: dict, match_categories: str = "id",
                          detections_name: str = "the detections list", gt_name: str = "the ground truth",
                          ) -> tuple[list[dict], list[str]]:
    """Put ``rows`` in the ids of the COCO ground truth ``gt``; returns ``(rows, notes)``.

    * images: ``"inputs"`` ids of ``header`` are replaced by the ground truth's id of the same file
      (matched by base name; by the longest common path tail when base names repeat);
      ``"dataset"`` ids, and every id when there is no header, are kept.
    * categories: ``match_categories="id"`` keeps the ids and checks that the header's names agree
      with the ground truth's for the ids both have (placeholder names like ``class_3`` are not
      compared); ``"name"`` maps each header category to the ground-truth category of that name
      (detections of classes the ground truth does not have are dropped, with a note).

    ``notes`` are lines for the user (e.g. ground-truth images that were never predicted, which
    score as misses).

    Raises:
        ValueError: one line naming both sides, for any id or name the ground truth lacks.
    """
    if match_categories not in MATCH_CATEGORIES:
        raise ValueError(f"match_categories must be one of {MATCH_CATEGORIES}, got {match_categories!r}")
    notes: list[str] = []
    header_name = images_path(detections_name).name
    if header is not None:
        if header["image_ids"] == "inputs":
            rows, predicted = _images_by_file_name(rows, header, gt, detections_name, gt_name)
        else:
            predicted = {image["id"] for image in header["images"]}
        missing = {image["id"] for image in gt["images"]} - predicted
        if missing:
            notes.append(f"{len(missing)} of the {len(gt['images'])} images of {gt_name} were not predicted "
                         f"(they count as misses): ids {_ids(missing)}")
    if match_categories == "name":
        if header is None:
            raise ValueError(f"--match-categories name needs the category names of {detections_name}: no "
                             f"{header_name} beside it (scaledet predict and eval --results write one)")
        rows, dropped = _categories_by_name(rows, header, gt, header_name, gt_name)
        if dropped:
            notes.append(f"{dropped} detection(s) of classes that {gt_name} does not have were left out")
    elif header is not None:
        _check_names_agree(rows, header, gt, header_name, gt_name)
    check_ids(rows, gt, detections_name, gt_name)
    return rows, notes


def _images_by_file_name(rows: list[dict], header: dict, gt: dict, detections_name: str,
                         gt_name: str) -> tuple[list[dict], set[int]]:
    """Rows with ``"inputs"`` image ids replaced by the ground truth's ids of the same files, and
    the ground-truth ids of every predicted image that was found."""
    by_base: dict[str, list[dict]] = defaultdict(list)
    for image in gt["images"]:
        if image.get("file_name"):
            by_base[_name_parts(image["file_name"])[-1]].append(image)
    if not by_base:
        raise ValueError(f"{gt_name} has no file names, so the input-order image ids of {detections_name} "
                         f"cannot be matched to it: predict the dataset itself (scaledet predict --data)")
    mapping, unmatched, matched_by = {}, [], {}
    used = {row["image_id"] for row in rows}
    for image in header["images"]:
        gt_image, ambiguous = _same_file(image, by_base)
        if ambiguous and image["id"] in used:
            raise ValueError(f"{detections_name}: {_file_label(image)} matches {len(ambiguous)} images of {gt_name} by "
                             f"file name ({', '.join(str(c['file_name']) for c in ambiguous[:3])}), so it cannot be "
                             "told which: predict the dataset itself (scaledet predict --data) or give the images "
                             "with their folders as the ground truth names them")
        if gt_image is None:
            unmatched.append(image)
            continue
        other = matched_by.setdefault(gt_image["id"], image)
        if other is not image and {other["id"], image["id"]} & used:  # a/img.png and b/img.png on one img.png
            raise ValueError(f"{detections_name}: {_file_label(other)} and {_file_label(image)} both match "
                             f"{gt_image['file_name']} of {gt_name} by file name, so their detections would be scored "
                             "on one image: predict only the ground truth's images (or name them with their folders)")
        mapping[image["id"]] = gt_image["id"]
    lost = [image for image in unmatched if image["id"] in used]
    unknown = used - {image["id"] for image in header["images"]}
    if lost or unknown:
        examples = ", ".join(_file_label(image) for image in lost[:3]) or f"image ids {_ids(unknown)}"
        raise ValueError(f"{detections_name} has detections on {len(lost) + len(unknown)} image(s) that are not "
                         f"in {gt_name} (matched by file name), e.g. {examples}")
    return [{**row, "image_id": mapping[row["image_id"]]} for row in rows], set(mapping.values())


def _same_file(image: dict, by_base: dict[str, list[dict]]) -> tuple[dict | None, list[dict]]:
    """``(the ground-truth image of the same file, [])``: one base-name match, else the one whose path
    is a tail of the other's; ``(None, [])`` for video frames and no match; ``(None, candidates)`` when
    several ground-truth images fit (``a/img.png`` and ``b/img.png`` for a bare ``img.png``)."""
    if image.get("frame") is not None or not image.get("file_name"):
        return None, []
    parts = _name_parts(image["file_name"])
    candidates = by_base.get(parts[-1], [])
    if len(candidates) > 1:
        def tail_matches(gt_image: dict) -> bool:
            gt_parts = _name_parts(gt_image["file_name"])
            n = min(len(parts), len(gt_parts))
            return parts[-n:] == gt_parts[-n:] and n == len(gt_parts)
        matching = [c for c in candidates if tail_matches(c)]
        return (matching[0], []) if len(matching) == 1 else (None, matching or candidates)
    return (candidates[0] if candidates else None), []


def _name_parts(file_name: object) -> tuple[str, ...]:
    """The folders and name of a ``file_name`` written with ``/`` or Windows' ``\\`` separators."""
    return tuple(part for part in str(file_name).replace("\\", "/").split("/") if part and part != ".") or ("",)


def _file_label(image: dict) -> str:
    name = str(image.get("file_name"))
    return name if image.get("frame") is None else f"{name}#frame={image['frame']}"


def _categories_by_name(rows: list[dict], header: dict, gt: dict, header_name: str,
                        gt_name: str) -> tuple[list[dict], int]:
    """Rows with category ids mapped through the names (header id -> name -> ground-truth id), and
    how many rows were dropped for classes the ground truth does not have."""
    gt_ids: dict[str, list[int]] = defaultdict(list)
    for category in gt["categories"]:
        gt_ids[plain_name(category.get("name", category["id"]))].append(category["id"])
    repeated = sorted(name for name, ids in gt_ids.items() if len(ids) > 1)
    if repeated:
        raise ValueError(f"{gt_name} repeats category names {repeated[:5]} (case and spaces aside), so categories "
                         "cannot be matched by name")
    names = {category["id"]: str(category["name"]) for category in header["categories"]}
    mapping = {cid: gt_ids[plain_name(name)][0] for cid, name in names.items() if plain_name(name) in gt_ids}
    used = {row["category_id"] for row in rows}
    unnamed = used - names.keys()
    if unnamed:
        raise ValueError(f"{header_name} names no category for ids {_ids(unnamed)} used by the detections")
    if used and not used & mapping.keys():
        raise ValueError(f"no category name of {header_name} is in {gt_name}: "
                         f"{sorted({names[c] for c in used})[:5]} vs {sorted(gt_ids)[:5]}")
    kept = [{**row, "category_id": mapping[row["category_id"]]} for row in rows if row["category_id"] in mapping]
    return kept, len(rows) - len(kept)


def is_placeholder_name(name: str) -> bool:
    """True for the names models get when they were not told any (``class_3``, ``3``)."""
    return name.removeprefix("class_").isdigit()


def _check_names_agree(rows: list[dict], header: dict, gt: dict, header_name: str, gt_name: str) -> None:
    """ValueError when a category id the rows use names different classes on the two sides."""
    gt_names = {c["id"]: str(c.get("name", c["id"])) for c in gt["categories"]}
    names = {c["id"]: str(c["name"]) for c in header["categories"]}
    clashes = [(cid, names[cid], gt_names[cid]) for cid in sorted({row["category_id"] for row in rows})
               if cid in names and cid in gt_names and plain_name(names[cid]) != plain_name(gt_names[cid])
               and not is_placeholder_name(names[cid])]
    if clashes:
        shown = "; ".join(f"id {cid} is {a!r} in {header_name} but {b!r} in {gt_name}" for cid, a, b in clashes[:3])
        raise ValueError(f"category ids name different classes: {shown}"
                         f"{f' (and {len(clashes) - 3} more)' if len(clashes) > 3 else ''}: "
                         f"match categories by name (--match-categories name), or use the detections of a model "
                         f"trained on this dataset")


def label_mapping(model_names: Sequence[str], dataset_names: Sequence[str]) -> list[int]:
    """Model label -> dataset label (``-1``: class not in the dataset), by class name (case and
    surrounding spaces aside, as :func:`~scaledet.data.base.plain_name` says, the rule fine-tuning
    matches a checkpoint's classes by).

    When some names match, the dataset's classes the model lacks are named in a warning (they can
    only score AP 0, and count in the mean). When no name matches, the same class order is assumed
    (with a warning) only if the counts are equal and one side's names are placeholders (``class_0``,
    ``0``, ...); otherwise the model was trained on other classes (or, unnamed, built for another
    class count): ValueError naming both sides.
    """
    model_names, dataset_names = list(model_names), list(dataset_names)
    if model_names == dataset_names:
        return list(range(len(model_names)))
    model_keys, dataset_keys = [plain_name(name) for name in model_names], [plain_name(name) for name in dataset_names]
    sides = (("the model's", model_names, model_keys, dataset_keys),
             ("the dataset's", dataset_names, dataset_keys, model_keys))
    for side, names, keys, other in sides:  # 'N/A' of the COCO-91 label space's gaps, repeated on one side only: harmless
        repeated = sorted({str(name) for name, key in zip(names, keys) if keys.count(key) > 1 and key in other})
        if repeated:  # 'red' twice on one side, once on the other: which would a 'red' detection be scored as?
            aside = " (case and spaces aside)" if len(repeated) > len({plain_name(name) for name in repeated}) else ""
            raise ValueError(f"{side} classes repeat the name(s) {short_list(repeated)}{aside}, so "
                             f"the model's classes {short_list(model_names)} cannot be matched to the dataset's "
                             f"{short_list(dataset_names)} by name: give each class its own name")
    index = {key: i for i, key in enumerate(dataset_keys)}
    mapping = [index.get(key, -1) for key in model_keys]
    if any(m >= 0 for m in mapping):
        known = set(model_keys)
        lacking = [name for name, key in zip(dataset_names, dataset_keys) if key not in known]
        if lacking:
            warnings.warn(f"the model has no class {short_list(lacking)} of the dataset ({len(lacking)} of "
                          f"{len(dataset_names)}): they score AP 0 and count in the mean AP", stacklevel=2)
        return mapping
    unnamed = [all(is_placeholder_name(str(name)) for name in names) for names in (model_names, dataset_names)]
    if len(model_names) == len(dataset_names) and any(unnamed):
        warnings.warn(f"model classes {short_list(model_names)} are not named as the dataset's {short_list(dataset_names)}; "
                      "assuming the same class order", stacklevel=2)
        return list(range(len(model_names)))
    if unnamed[0]:  # e.g. create_model(name, num_classes=5) for a 2-class dataset
        raise ValueError(f"the model's {len(model_names)} classes have no names {short_list(model_names)}, the "
                         f"dataset has {len(dataset_names)} {short_list(dataset_names)}: give the model the dataset's "
                         f"classes (create_model(..., num_classes={len(dataset_names)}, class_names=the dataset's "
                         "class_names)) or use weights trained on them")
    raise ValueError(f"the model's classes {short_list(model_names)} share no name with the dataset's "
                     f"{short_list(dataset_names)}: the weights were trained on other classes (use weights trained "
                     "on this dataset's classes; classes are matched by name)")


def short_list(names: Sequence[str], most: int = 5) -> str:
    """``[a, b, c, ...]`` with at most ``most`` names."""
    shown = ", ".join(str(name) for name in names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}]"
