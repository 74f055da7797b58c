"""COCO annotation JSON -> :class:`~scaledet.data.base.DetectionDataset`.

Category ids (any integers, e.g. COCO's non-contiguous 1..90) become contiguous labels in
order of increasing id; ``label_to_category_id`` maps back for evaluation. Images are looked
up in ``images=`` if given, else beside the JSON, in an ``images/`` folder next to it, or in COCO's own
layout (``annotations/instances_train2017.json`` -> ``train2017/``).

Files written by other tools sometimes hold numbers as strings: ids, ``category_id``,
``bbox`` values and ``area`` given as numeric strings (``"7"``, ``"12.5"``) are read as
numbers, and ``iscrowd`` accepts ``0``/``1``, ``true``/``false`` and the strings ``"0"``,
``"1"``, ``"true"``, ``"false"``, ``"yes"``, ``"no"`` (a string is never truthy by itself:
``"0"`` is not a crowd box). Other values are skipped and counted in the report. An annotation
without a ``bbox`` but with a ``segmentation`` (polygons or RLE) gets the box its segmentation spans
(:func:`box_from_segmentation`; counted as ``box_from_segmentation``), here and in evaluation.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from pathlib import Path

from scaledet.data.base import (DetectionDataset, ImageRecord, RawBox, Transform, check_annotated_size, clean_boxes,
                                corner_boxes_hint, probe_records, read_text)
from scaledet.data.report import DataReport, DataWarning
from scaledet.errors import UserError


def read_json(path: Path) -> object:
    """``json.load`` with a ValueError naming the file, line and column on bad JSON."""
    try:
        return json.loads(read_text(path))  # a BOM (Windows editors write one) is not an error
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None


def _require_list(data: dict, key: str, path: Path, required: bool = True) -> list:
    value = data.get(key, None if required else [])
    if key not in data and required:
        raise UserError(f"{path}: the COCO field {key!r} is missing (a COCO JSON has 'images', 'annotations' and "
                        "'categories' lists)")
    if not isinstance(value, list):
        raise UserError(f"{path}: COCO field {key!r} must be a list, got {type(value).__name__}")
    return value


def as_int(value: object) -> int | None:
    """An integer id from an int or a string of one (``"7"`` -> 7); ``None`` for anything else.

    Booleans and non-integral floats are not ids; an integral float (``7.0``) is accepted.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def as_number(value: object) -> float | None:
    """A float from a number or a numeric string; JSON ``null`` is NaN; ``None`` for anything else."""
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def box_from_segmentation(segmentation: object) -> list[float] | None:
    """The ``[x, y, width, height]`` a COCO ``segmentation`` spans, for annotations written without a
    ``bbox`` (some mask tools' exports); ``None`` when it holds nothing readable.

    Polygons (``[[x1, y1, x2, y2, ...], ...]``): the extent of their vertices, as COCO's own boxes.
    RLE (``{"size": [h, w], "counts": ...}``, compressed string or uncompressed list): the extent of
    its pixels (pycocotools' ``toBbox``).
    """
    if isinstance(segmentation, dict):
        from pycocotools import mask as coco_mask

        size = segmentation.get("size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and "counts" in segmentation):
            return None
        counts = segmentation["counts"]
        if not isinstance(counts, (list, str, bytes)):
            return None
        try:  # run lengths as a list: compressed first; a string is compressed already
            rle = coco_mask.frPyObjects(segmentation, int(size[0]), int(size[1])) if isinstance(counts, list) \
                else {"size": [int(size[0]), int(size[1])], "counts": counts}
            box = [float(v) for v in coco_mask.toBbox(rle)]
        except (TypeError, ValueError, OverflowError):
            return None
        return box if box[2] > 0 and box[3] > 0 else None
    if not isinstance(segmentation, list):
        return None
    xs, ys = [], []
    for polygon in segmentation:
        values = [as_number(v) for v in polygon] if isinstance(polygon, list) else [None]
        if None in values or len(values) % 2 or any(v != v for v in values):  # not numbers, odd count, NaN
            return None
        xs += values[0::2]
        ys += values[1::2]
    if not xs:
        return None
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


_FLAG_STRINGS = {"0": False, "1": True, "false": False, "true": True, "no": False, "yes": True}


def as_flag(value: object) -> bool | None:
    """``iscrowd``: numbers (non-zero = crowd), booleans, ``"0"``/``"1"``/``"true"``/``"false"``/
    ``"yes"``/``"no"`` (any case), JSON ``null`` (not crowd); ``None`` for anything else."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return bool(value)
    if isinstance(value, str):
        return _FLAG_STRINGS.get(value.strip().lower())
    return None


def parse_categories(categories: list, path: Path) -> tuple[list[int], list[str]]:
    """Sorted category ids and their names; UserError on none, malformed or duplicate ids."""
    if not categories:
        raise UserError(
            f"{path}: 'categories' is empty; a COCO file needs at least one, e.g. "
            '"categories": [{"id": 1, "name": "object"}]'
        )
    by_id: dict[int, str] = {}
    for index, category in enumerate(categories):
        category_id = as_int(category.get("id")) if isinstance(category, dict) else None
        if category_id is None:
            raise UserError(f"{path}: categories[{index}] needs an integer 'id', got {category!r}")
        if category_id in by_id:
            raise UserError(f"{path}: categories[{index}] repeats category id {category_id}")
        by_id[category_id] = str(category.get("name", category_id))
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def _image_candidates(file_name: str, json_path: Path, images: Path | None) -> list[Path]:
    """Where an image's ``file_name`` may be: under ``images`` when given, else beside the JSON, in
    ``images/`` beside it, or, for COCO's own layout (``annotations/instances_val2017.json`` with the
    images in ``val2017/``), in the folder named by the JSON name's last ``_`` part beside the JSON or
    beside its folder; a name written with Windows' ``\\`` separators is also tried with ``/``."""
    names = [file_name]
    if "\\" in file_name and os.sep == "/":
        names.append(file_name.replace("\\", "/"))
    json_dir = json_path.parent
    folders = [images] if images is not None else [json_dir, json_dir / "images"]
    if images is None and "_" in json_path.stem:
        split_folder = json_path.stem.rsplit("_", 1)[1]
        folders += [json_dir / split_folder, json_dir.parent / split_folder]
    return [folder / name for name in names for folder in folders]


def _resolve(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


class CocoDataset(DetectionDataset):
    """A COCO-format detection set.

    Args:
        annotation_file: the COCO JSON (``images``, ``annotations``, ``categories``).
        images: folder with the image files (default: beside the JSON, or ``images/`` next to it).
        transforms: optional v2-style ``transforms(image, target)``.
        check_images: ``"header"`` (read headers + tail, fast) or ``"full"`` (decode every file).
        allow_empty: accept a set without any box (see :class:`~scaledet.data.base.DetectionDataset`).
        progress: show the image-check progress bar (large sets only).

    Raises:
        UserError (a ValueError): invalid JSON (file, line, column), wrong structure, no
        category, no usable image, or no box at all (unless ``allow_empty``).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        images: str | Path | None = None,
        transforms: Transform | None = None,
        check_images: str = "header",
        allow_empty: bool = False,
        progress: bool = True,
    ) -> None:
        path = Path(annotation_file)
        data = read_json(path)
        if not isinstance(data, dict):
            results = isinstance(data, list) and data and isinstance(data[0], dict) and "score" in data[0]
            hint = (": this is a detections (results) file; score it against its ground truth with scaledet eval "
                    f"--gt GT.json --detections {path.name}") if results else ""
            raise UserError(f"{path}: a COCO file must be a JSON object, got {type(data).__name__}{hint}")
        report = DataReport(source=str(path))
        category_ids, names = parse_categories(_require_list(data, "categories", path), path)
        label_of = {cid: label for label, cid in enumerate(category_ids)}
        image_rows = self._image_rows(_require_list(data, "images", path), path, images, report)
        raw = self._raw_boxes(_require_list(data, "annotations", path, required=False), image_rows, label_of, path, report)
        present = {image_id: row for image_id, row in image_rows.items() if row["path"] is not None}
        infos = probe_records([row["path"] for row in present.values()], path.name, report, check_images, progress)
        records, sized = [], []
        for (image_id, row), info in zip(present.items(), infos):
            if info is None:
                continue
            check_annotated_size(row["path"], row["width"], row["height"], info, report)
            boxes = clean_boxes(raw.get(image_id, []), info.width, info.height, report)
            records.append(ImageRecord(row["path"], image_id, info.width, info.height, **boxes))
            sized += [(box, info.width, info.height) for box in raw.get(image_id, [])]
        hint = corner_boxes_hint(sized, str(path))
        if hint is not None:
            warnings.warn(hint, DataWarning, stacklevel=2)
        super().__init__(records, names, category_ids, report, transforms, allow_empty)

    @staticmethod
    def _image_rows(rows: list, path: Path, images: str | Path | None, report: DataReport) -> dict[int, dict]:
        """image id -> ``{"path", "width", "height"}``; ``path`` is ``None`` for a file found nowhere (reported)."""
        images_dir = Path(images) if images is not None else None
        out: dict[int, dict] = {}
        for index, row in enumerate(rows):
            image_id = as_int(row.get("id")) if isinstance(row, dict) else None
            if image_id is None or not row.get("file_name"):
                report.skip("bad_image_record", f"{path}: images[{index}] needs an integer 'id' and a 'file_name'")
                continue
            if image_id in out:
                raise UserError(f"{path}: images[{index}] repeats image id {image_id}")
            candidates = _image_candidates(str(row["file_name"]), path, images_dir)
            found = _resolve(candidates)
            if found is None:
                places = " or ".join(str(c) for c in dict.fromkeys(candidates))
                fix = "" if images_dir is not None else " (--images FOLDER names the image folder)"
                report.skip("missing_image", f"{row['file_name']}: image file not found at {places}{fix}")
            out[image_id] = {"path": found, "width": as_int(row.get("width")), "height": as_int(row.get("height"))}
        return out

    @staticmethod
    def _raw_boxes(annotations: list, image_rows: dict, label_of: dict, path: Path, report: DataReport) -> dict:
        raw: dict[int, list[RawBox]] = defaultdict(list)
        for index, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                report.skip("unknown_image_id", f"{path.name}: annotations[{index}] is not an object: {ann!r}")
                continue
            where = f"{path.name}: annotations[{index}] (id {ann.get('id')})"
            image_id, category_id = as_int(ann.get("image_id")), as_int(ann.get("category_id"))
            if image_id not in image_rows:
                report.skip("unknown_image_id", f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
                continue
            if category_id not in label_of:
                report.skip("unknown_category", f"{where}: category_id {ann.get('category_id')!r} not in 'categories'")
                continue
            bbox = ann.get("bbox")
            if bbox is None and ann.get("segmentation"):  # a mask tool's export: the box its outline spans
                bbox = box_from_segmentation(ann["segmentation"])
                if bbox is not None:
                    report.note("box_from_segmentation", f"{where}: no bbox; its segmentation spans {bbox}")
            values = [as_number(v) for v in bbox] if isinstance(bbox, (list, tuple)) and len(bbox) == 4 else None
            if values is None or None in values:
                report.skip("malformed_box", f"{where}: bbox {bbox!r} is not [x, y, w, h]")
                continue
            crowd = as_flag(ann.get("iscrowd"))
            if crowd is None:
                report.skip("bad_iscrowd", f"{where}: iscrowd {ann.get('iscrowd')!r} is not 0/1/true/false")
                continue
            x, y, w, h = values
            area = as_number(ann["area"]) if "area" in ann else None
            raw[image_id].append(RawBox([x, y, x + w, y + h], label_of[category_id], crowd, area, where))
        return raw
