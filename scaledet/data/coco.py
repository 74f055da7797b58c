"""COCO annotation JSON -> :class:`~scaledet.data.base.DetectionDataset`.

Category ids (any integers, e.g. COCO's non-contiguous 1..90) become contiguous labels in
order of increasing id; ``label_to_category_id`` maps back for evaluation. Images are looked
up in ``images=`` if given, else beside the JSON, else in an ``images/`` folder next to it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from scaledet.data.base import DetectionDataset, ImageRecord, RawBox, Transform, clean_boxes, probe_records
from scaledet.data.report import DataReport


def read_json(path: Path) -> object:
    """``json.load`` with a ValueError naming the file, line and column on bad JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _require_list(data: dict, key: str, path: Path, required: bool = True) -> list:
    value = data.get(key, None if required else [])
    if not isinstance(value, list):
        raise ValueError(f"{path}: COCO field {key!r} must be a list, got {type(value).__name__}")
    return value


def parse_categories(categories: list, path: Path) -> tuple[list[int], list[str]]:
    """Sorted category ids and their names; ValueError on malformed or duplicate ids."""
    by_id: dict[int, str] = {}
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise ValueError(f"{path}: categories[{index}] needs an integer 'id', got {category!r}")
        if category["id"] in by_id:
            raise ValueError(f"{path}: categories[{index}] repeats category id {category['id']}")
        by_id[category["id"]] = str(category.get("name", category["id"]))
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def _image_candidates(file_name: str, json_dir: Path, images: Path | None) -> list[Path]:
    if images is not None:
        return [images / file_name]
    return [json_dir / file_name, json_dir / "images" / file_name]


def _resolve(candidates: list[Path]) -> Path:
    return next((c for c in candidates if c.is_file()), candidates[-1])


class CocoDataset(DetectionDataset):
    """A COCO-format detection set.

    Args:
        annotation_file: the COCO JSON (``images``, ``annotations``, ``categories``).
        images: folder with the image files (default: beside the JSON, or ``images/`` next to it).
        transforms: optional v2-style ``transforms(image, target)``.
        check_images: ``"header"`` (read headers + tail, fast) or ``"full"`` (decode every file).

    Raises:
        ValueError: invalid JSON (file, line, column), wrong structure, or no usable image.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        images: str | Path | None = None,
        transforms: Transform | None = None,
        check_images: str = "header",
    ) -> None:
        path = Path(annotation_file)
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a COCO file must be a JSON object, got {type(data).__name__}")
        report = DataReport(source=str(path))
        category_ids, names = parse_categories(_require_list(data, "categories", path), path)
        label_of = {cid: label for label, cid in enumerate(category_ids)}
        image_rows = self._image_rows(_require_list(data, "images", path), path, images, report)
        raw = self._raw_boxes(_require_list(data, "annotations", path, required=False), image_rows, label_of, path, report)
        infos = probe_records([row["path"] for row in image_rows.values()], path.name, report, check_images)
        records = []
        for (image_id, row), info in zip(image_rows.items(), infos):
            if info is None:
                continue
            self._check_size(row, info, report)
            boxes = clean_boxes(raw.get(image_id, []), info.width, info.height, report)
            records.append(ImageRecord(row["path"], image_id, info.width, info.height, **boxes))
        super().__init__(records, names, category_ids, report, transforms)

    @staticmethod
    def _image_rows(rows: list, path: Path, images: str | Path | None, report: DataReport) -> dict[int, dict]:
        images_dir = Path(images) if images is not None else None
        out: dict[int, dict] = {}
        for index, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("id"), int) or not row.get("file_name"):
                report.skip("bad_image_record", f"{path}: images[{index}] needs an integer 'id' and a 'file_name'")
                continue
            if row["id"] in out:
                raise ValueError(f"{path}: images[{index}] repeats image id {row['id']}")
            candidates = _image_candidates(str(row["file_name"]), path.parent, images_dir)
            out[row["id"]] = {"path": _resolve(candidates), "width": row.get("width"), "height": row.get("height")}
        return out

    @staticmethod
    def _raw_boxes(annotations: list, image_rows: dict, label_of: dict, path: Path, report: DataReport) -> dict:
        raw: dict[int, list[RawBox]] = defaultdict(list)
        for index, ann in enumerate(annotations):
            where = f"{path.name}: annotations[{index}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
            if not isinstance(ann, dict) or ann.get("image_id") not in image_rows:
                image_id = ann.get("image_id") if isinstance(ann, dict) else None
                report.skip("unknown_image_id", f"{where}: image_id {image_id!r} is not in 'images'")
                continue
            if ann.get("category_id") not in label_of:
                report.skip("unknown_category", f"{where}: category_id {ann.get('category_id')!r} not in 'categories'")
                continue
            bbox = ann.get("bbox")
            if not _is_four_numbers(bbox):
                report.skip("malformed_box", f"{where}: bbox {bbox!r} is not [x, y, w, h]")
                continue
            x, y, w, h = (float(v) if v is not None else float("nan") for v in bbox)
            area = ann.get("area") if isinstance(ann.get("area"), (int, float)) else None
            raw[ann["image_id"]].append(
                RawBox([x, y, x + w, y + h], label_of[ann["category_id"]], bool(ann.get("iscrowd", 0)), area, where)
            )
        return raw

    @staticmethod
    def _check_size(row: dict, info, report: DataReport) -> None:
        if row["width"] is None or row["height"] is None:
            return
        if (row["width"], row["height"]) != (info.width, info.height):
            report.note(
                "size_mismatch",
                f"{row['path']}: annotated {row['width']}x{row['height']}, file is {info.width}x{info.height}",
            )


def _is_four_numbers(bbox: object) -> bool:
    """True for a 4-list of numbers (None counts as NaN, i.e. JSON ``null`` / ``NaN``)."""
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in bbox)
    )
