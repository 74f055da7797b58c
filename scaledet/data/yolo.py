"""YOLO (Ultralytics) ``data.yaml`` -> DetectionDataset.

``data.yaml`` holds ``path`` (optional root; a relative one is taken from the yaml's folder,
and without it the yaml's folder is the root, wherever the command runs), ``train`` / ``val`` /
``test`` (a folder of images, a ``.txt`` list of image paths, or a list of either; relative to
the root) and ``names`` (list, or dict index -> name). Labels are found by replacing the last
``images`` path component with ``labels`` and the suffix with ``.txt``; each line is
``class cx cy w h`` normalised to ``[0, 1]`` (or ``class x1 y1 x2 y2 x3 y3 ...`` polygon, whose
bounding box is used; a pose set's keypoints, after ``kpt_shape``, are dropped). A missing label
file means an image without objects (counted as ``missing_label``; when no image has a box the
dataset refuses to load unless ``allow_empty=True``). Class ``k`` has category id ``k + 1``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from scaledet.data.base import DetectionDataset, ImageRecord, RawBox, Transform, clean_boxes, probe_records, read_text
from scaledet.data.coco import as_int
from scaledet.data.images import IMAGE_SUFFIXES, files_under
from scaledet.data.report import DataReport
from scaledet.errors import UserError

#: a YOLO coordinate above this is not a fraction of the image (slightly above 1 is clipped, as other formats' boxes)
PIXEL_LIKE = 1.5


def read_data_yaml(path: Path) -> dict:
    """Parse and check ``data.yaml``; UserError naming the file on a bad one."""
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: invalid YAML ({error})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise UserError(f"{path}: a YOLO data.yaml needs a 'names' entry")
    names = data["names"]
    if isinstance(names, dict):  # keys 0..K-1, as numbers or as strings of them ("0": cat)
        keys = {as_int(key): name for key, name in names.items()}
        if len(keys) != len(names) or set(keys) != set(range(len(names))):
            raise UserError(f"{path}: 'names' keys must be the class indices 0..{len(names) - 1}, got "
                            f"{sorted(names, key=str)}")
        names = [keys[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: 'names' must be a non-empty list or dict")
    empty = [index for index, name in enumerate(names) if name is None or not str(name).strip()]
    if empty:
        raise UserError(f"{path}: 'names' has no name for class {empty[0]}; give every class a name")
    data["names"] = [str(n).strip() for n in names]
    if data.get("nc") is not None and as_int(data["nc"]) != len(names):
        raise UserError(f"{path}: 'nc' is {data['nc']!r} but 'names' lists {len(names)} classes; make them agree")
    return data


def _keypoint_fields(data: dict, path: Path) -> int:
    """Numbers of keypoints per label line of a pose set (``kpt_shape: [K, 2 or 3]``), else 0."""
    shape = data.get("kpt_shape")
    if shape is None:
        return 0
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise UserError(f"{path}: 'kpt_shape' must be [keypoints, 2 or 3], got {shape!r}")
    return shape[0] * shape[1]


def dataset_root(data: dict, yaml_path: Path) -> Path:
    """The folder split entries are relative to: ``path:`` (absolute, or relative to the yaml's
    folder), else the yaml's folder."""
    return yaml_path.parent / str(data.get("path") or ".")


def _list_images(entry: str | list, root: Path, where: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        path = root / str(item)  # an absolute item replaces root
        if not path.exists() and str(item).startswith("../") and (root / str(item)[3:]).exists():
            path = root / str(item)[3:]  # Roboflow's exports: "../train/images" with the yaml beside train/
        if path.is_dir():
            images.extend(p for p in files_under(path) if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix == ".txt" and path.is_file():
            lines = [line.strip().replace("\\", "/") for line in read_text(path).splitlines() if line.strip()]
            images.extend(root / line for line in lines)
        else:
            raise UserError(
                f"{where}: {item!r} -> {path} is neither an image folder nor a .txt list of images "
                f"(split entries are relative to {root})"
            )
    return images


def labels_without_image(entry: str | list, images: list[Path]) -> list[Path]:
    """Label files in the ``labels/`` folders of a split's image folders that none of its images has: an
    image saved with a suffix Pillow does not read (``.heic``) or in another folder trains as nothing.
    Splits given as ``.txt`` lists are not checked (several lists may share one folder)."""
    entries = entry if isinstance(entry, list) else [entry]
    if any(str(item).endswith(".txt") for item in entries):
        return []
    labels = {image: label_path(image) for image in images}
    used = set(labels.values())
    folders = {label.parent for image, label in labels.items() if label.parent != image.parent}  # (not beside images)
    return sorted(label for folder in folders for label in folder.glob("*.txt")
                  if label not in used and label.name != "classes.txt")


def label_path(image: Path) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (last ``images`` component)."""
    parts = list(image.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_label_file(path: Path, width: int, height: int, num_classes: int, report: DataReport,
                     keypoint_fields: int = 0) -> list[RawBox] | None:
    """Boxes in pixels from one YOLO label file; bad lines are skipped and reported, a missing
    file is counted as ``missing_label`` (an image without objects); ``None`` for a file that is not
    text (``bad_annotation_file``: the image is skipped, not trained on as a background image).
    ``keypoint_fields``: a pose set's numbers after ``class cx cy w h`` on each line (``kpt_shape``'s
    product), which are dropped (read as a polygon they would give another box)."""
    if not path.is_file():
        report.note("missing_label", f"{path}: label file not found")
        return []
    try:
        text = read_text(path)
    except UserError as error:
        report.skip("bad_annotation_file", str(error))
        return None
    raw = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        where = f"{path}:{number}"
        if not fields:
            continue
        if keypoint_fields:
            if len(fields) != 5 + keypoint_fields:
                report.skip("bad_yolo_line", f"{where}: {len(fields)} fields, expected {5 + keypoint_fields} "
                            "(class cx cy w h and the keypoints of the yaml's kpt_shape)")
                continue
            fields = fields[:5]
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            report.skip("bad_yolo_line", f"{where}: {len(fields)} fields, expected 5 (class cx cy w h) or a polygon")
            continue
        try:
            number_class, values = float(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            report.skip("bad_yolo_line", f"{where}: non-numeric field in {line.strip()!r}")
            continue
        if not number_class.is_integer():  # "0.0" (written by some exporters) is class 0
            report.skip("bad_yolo_line", f"{where}: class {fields[0]} is not a whole number")
            continue
        cls = int(number_class)
        if max(values) > PIXEL_LIKE:
            report.skip("yolo_pixel_coordinates", f"{where}: {line.strip()!r} has coordinates above {PIXEL_LIKE} "
                        "(YOLO boxes are fractions of the image: cx cy w h in 0-1; divide pixels by the image size)")
            continue
        if not 0 <= cls < num_classes:
            report.skip("unknown_category", f"{where}: class {cls} not in 0..{num_classes - 1}")
            continue
        raw.append(RawBox(_to_xyxy(values, width, height), cls, False, None, where))
    return raw


def _to_xyxy(values: list[float], width: int, height: int) -> list[float]:
    if len(values) == 4:
        cx, cy, w, h = values
        return [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    xs, ys = values[0::2], values[1::2]
    return [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]


class YOLODataset(DetectionDataset):
    """One split of a YOLO dataset described by ``data.yaml``.

    Args:
        data_yaml: the ``data.yaml`` file.
        split: ``"train"``, ``"val"`` or ``"test"`` (required: a yaml describes several).
        transforms, check_images, allow_empty, progress: as in :class:`~scaledet.data.coco.CocoDataset`.
    """

    empty_hint = " (YOLO labels are read from the 'labels' folder beside 'images': images/a.jpg -> labels/a.txt)"

    def __init__(
        self,
        data_yaml: str | Path,
        split: str | None = None,
        transforms: Transform | None = None,
        check_images: str = "header",
        allow_empty: bool = False,
        progress: bool = True,
    ) -> None:
        path = Path(data_yaml)
        data = read_data_yaml(path)
        splits = [s for s in ("train", "val", "test") if data.get(s)]
        if split not in splits:
            if split in ("train", "val", "test"):  # the command asked for it: --val data.yaml, eval --data ...
                listed = ", ".join(splits) or "no split"
                raise UserError(f"{path} has no {split!r} entry (it lists {listed}): add a line '{split}: images/{split}' "
                                "(a folder of images, a list file or a list of either)")
            raise UserError(f"{path}: split must be one of {splits} (got {split!r})")
        report = DataReport(source=f"{path} [{split}]")
        images = _list_images(data[split], dataset_root(data, path), f"{path}: {split}")
        for orphan in labels_without_image(data[split], images):
            report.skip("label_without_image", f"{orphan}: no image of the split has this name (an image saved with "
                                               "a suffix Pillow cannot read, e.g. .heic, or in another folder?)")
        infos = probe_records(images, path.name, report, check_images, progress)
        names = data["names"]
        keypoint_fields = _keypoint_fields(data, path)
        records = []
        for index, (image, info) in enumerate(zip(images, infos)):
            raw = None if info is None else parse_label_file(label_path(image), info.width, info.height, len(names),
                                                             report, keypoint_fields)
            if raw is not None:
                records.append(ImageRecord(image, index, info.width, info.height, **clean_boxes(raw, info.width, info.height, report)))
        super().__init__(records, names, list(range(1, len(names) + 1)), report, transforms, allow_empty)
