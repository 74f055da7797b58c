"""The one sample format every dataset returns, and the shared record cleaning.

``dataset[i] -> (image, target)``:

* ``image``: float ``Tensor[3,H,W]``, RGB in ``[0, 1]`` (EXIF-transposed; grayscale, RGBA,
  palette and 16-bit files converted);
* ``target``: ``dict(boxes=Tensor[M,4] float32 xyxy pixels, labels=Tensor[M] int64 in
  [0, K), image_id=int, orig_size=(h, w))``; transforms may add keys (``scale``).

Every dataset also has ``class_names: list[str]`` (label ``k`` is ``class_names[k]``),
``label_to_category_id: list[int]`` (label -> the category id of the source, used for COCO
evaluation), ``records`` (one :class:`ImageRecord` per image), ``report``
(:class:`~scaledet.data.report.DataReport`) and :meth:`DetectionDataset.coco_gt`.
"""

from __future__ import annotations

import codecs
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from tqdm.auto import tqdm

from scaledet.data.images import IMAGE_ERRORS, load_image, needs_conversion, probe_image, shrink_factor
from scaledet.data.report import KEPT_REASONS, REASONS, DataReport, DataWarning, format_report
from scaledet.data.transforms import largest_scale
from scaledet.errors import UserError

Transform = Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]]


class Target(TypedDict, total=False):
    """The target of one sample.

    ``boxes``: ``Tensor[M,4]`` float32 xyxy pixels of the returned image; ``labels``: ``Tensor[M]``
    int64 in ``[0, K)``; ``image_id``: the source's image id; ``orig_size``: ``(h, w)`` of the
    file as displayed; ``scale``: only after :func:`~scaledet.data.eval_transforms` or a shrunk decode
    (:meth:`DetectionDataset.decode_shrunk`), ``Tensor[4]`` ``(sx, sy, sx, sy)`` with
    ``original_box = box / scale``.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    image_id: int
    orig_size: tuple[int, int]
    scale: torch.Tensor


#: what ``dataset[i]`` returns: ``(image Tensor[3,H,W] float RGB in [0,1], target)``
Sample = tuple[torch.Tensor, Target]


@dataclass
class ImageRecord:
    """One image and its cleaned annotations.

    Attributes:
        path: image file (``None`` for generated images).
        image_id: the source's image id (COCO id, or the record's index for VOC/YOLO/shapes).
        width, height: displayed size in pixels (after EXIF rotation).
        boxes: ``float32 [M, 4]`` xyxy pixels, all finite, inside the image, positive area.
        labels: ``int64 [M]`` contiguous labels in ``[0, K)``.
        iscrowd: ``bool [M]``; crowd (COCO) / difficult (VOC) boxes: not trained on, ignored by COCO eval.
        areas: ``float32 [M]``; the source's ``area`` (COCO segmentation area) or the box area.
    """

    path: Path | None
    image_id: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    areas: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))


@dataclass
class RawBox:
    """An annotation before cleaning: xyxy floats (may be NaN / negative / outside)."""

    xyxy: Sequence[float]
    label: int
    iscrowd: bool = False
    area: float | None = None
    where: str = ""  # "file: record" for messages


#: a box passing its image's edge by at most this (pixels) is clipped without a note: rounding, e.g. of YOLO's
#: 6-decimal fractions (0.5e-6 of the side), not a labelling problem
CLIP_TOLERANCE_PX = 0.01


def plain_name(name: str) -> str:
    """A class name as classes are matched by name (a checkpoint's against the data's, a model's against a
    validation set's): case and surrounding spaces aside, ``"Person "`` is COCO's ``"person"``."""
    return str(name).strip().lower()


def clean_boxes(raw: list[RawBox], width: int, height: int, report: DataReport) -> dict[str, np.ndarray]:
    """Validate boxes against the image size: drop NaN / negative / zero-area / outside
    boxes and clip partly-outside ones, counting each case in ``report``.

    Returns:
        dict of ``boxes [M,4] float32``, ``labels [M] int64``, ``iscrowd [M] bool``, ``areas [M] float32``.
    """
    kept: list[tuple[list[float], int, bool, float]] = []
    for box in raw:
        xyxy = _clean_box(box, width, height, report)
        if xyxy is not None:
            area = box.area if box.area is not None and box.area > 0 else (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1])
            kept.append((xyxy, box.label, box.iscrowd, area))
    return {
        "boxes": np.asarray([k[0] for k in kept], np.float32).reshape(-1, 4),
        "labels": np.asarray([k[1] for k in kept], np.int64),
        "iscrowd": np.asarray([k[2] for k in kept], bool),
        "areas": np.asarray([k[3] for k in kept], np.float32),
    }


def _clean_box(box: RawBox, width: int, height: int, report: DataReport) -> list[float] | None:
    x1, y1, x2, y2 = (float(v) for v in box.xyxy)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        report.skip("nan_box", f"{box.where}: box {list(box.xyxy)} has a NaN/inf coordinate")
        return None
    if x2 < x1 or y2 < y1:
        report.skip("negative_box", f"{box.where}: box xyxy {[x1, y1, x2, y2]} has negative width/height")
        return None
    if x2 == x1 or y2 == y1:
        report.skip("zero_area_box", f"{box.where}: box xyxy {[x1, y1, x2, y2]} has zero area")
        return None
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if cx2 <= cx1 or cy2 <= cy1:
        report.skip(
            "out_of_image_box", f"{box.where}: box xyxy {[x1, y1, x2, y2]} is outside the {width}x{height} image"
        )
        return None
    overshoot = max(abs(cx1 - x1), abs(cy1 - y1), abs(cx2 - x2), abs(cy2 - y2))
    if overshoot > CLIP_TOLERANCE_PX:  # beyond rounding (YOLO's 6-decimal fractions): worth a count
        report.note("clipped_box", f"{box.where}: box xyxy {[x1, y1, x2, y2]} clipped to {width}x{height}")
    return [cx1, cy1, cx2, cy2]


def read_text(path: Path) -> str:
    """A text file (labels, lists, class names, yaml, JSON) as a string: UTF-8 with or without a BOM, or
    UTF-16 with its BOM (what Windows PowerShell's ``>`` writes); UserError naming the file otherwise."""
    data = path.read_bytes()
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None


def check_annotated_size(path: Path, width: int | None, height: int | None, info, report: DataReport) -> None:
    """Note ``size_mismatch`` when the size an annotation file states (COCO ``width`` / ``height``, VOC
    ``<size>``; ``None`` or 0 = not stated) differs from the file's displayed size ``info``; the boxes are
    taken in the file's displayed frame either way."""
    if not width or not height or (width, height) == (info.width, info.height):
        return
    turned = " (the file's EXIF rotation turns it: were the boxes drawn on the unrotated image?)" \
        if (width, height) == (info.height, info.width) and info.orientation != 1 else ""
    report.note("size_mismatch", f"{path}: annotated {width}x{height}, file is {info.width}x{info.height}{turned}")


def corner_boxes_hint(boxes: Sequence[tuple[RawBox, int, int]], source: str) -> str | None:
    """A sentence when a COCO file's ``bbox`` values look like corners ``[x1, y1, x2, y2]``, not ``[x, y,
    width, height]`` (the classic conversion slip, which otherwise trains on boxes clipped at the image
    edge): at least 20% of the boxes (and 5) pass the image's right or bottom edge, and read as corners
    nearly all of those (90%) would lie inside it. ``boxes``: ``(box read as [x, y, w, h], image width,
    image height)``; ``None`` when the file looks right."""
    past, corners_fit = 0, 0
    for box, width, height in boxes:
        x1, y1, x2, y2 = (float(v) for v in box.xyxy)
        if x2 > width + CLIP_TOLERANCE_PX or y2 > height + CLIP_TOLERANCE_PX:
            past += 1
            as_x2, as_y2 = x2 - x1, y2 - y1  # the file's third and fourth numbers
            corners_fit += int(x1 < as_x2 <= width + CLIP_TOLERANCE_PX and y1 < as_y2 <= height + CLIP_TOLERANCE_PX)
    if past < max(5, 0.2 * len(boxes)) or corners_fit < 0.9 * past:  # 5: a few odd boxes are no pattern
        return None
    return (f"{source}: {past} of {len(boxes)} boxes pass their image's right or bottom edge, and {corners_fit} of "
            "them would fit read as corners: 'bbox' looks like [x1, y1, x2, y2], but COCO's bbox is [x, y, width, "
            "height] (width = x2 - x1, height = y2 - y1); convert the file, or its boxes are trained clipped")


def probe_records(
    paths: list[Path], source: str, report: DataReport, check_images: str = "header", progress: bool = True
) -> list:
    """Header-check every image file (with a progress bar from 200 files on, unless ``progress=False``).

    Returns a list parallel to ``paths`` of :class:`~scaledet.data.images.ImageInfo`, or
    ``None`` for files that are missing or unreadable (counted in ``report``).
    ``check_images="full"`` decodes every file instead of reading headers only.
    """
    if check_images not in ("header", "full"):
        raise ValueError(f"check_images must be 'header' or 'full', got {check_images!r}")
    infos = []
    disable = not progress or len(paths) < 200
    for path in tqdm(paths, desc=f"checking images ({source})", unit="img", leave=False, disable=disable):
        infos.append(_probe_one(path, report, check_images))
    return infos


def _probe_one(path: Path, report: DataReport, check_images: str):
    if not path.is_file():
        report.skip("missing_image", f"{path}: image file not found")
        return None
    try:
        info = probe_image(path)
        if check_images == "full":
            load_image(path)
    except IMAGE_ERRORS as error:
        report.skip("unreadable_image", f"{path}: cannot read image ({error})")
        return None
    if needs_conversion(info.mode):
        report.note("converted_image", f"{path}: mode {info.mode} converted to RGB")
    if info.orientation != 1:
        report.note("exif_rotated", f"{path}: EXIF orientation {info.orientation} applied")
    return info


class DetectionDataset(Dataset):
    """Base class: a list of :class:`ImageRecord` served in the sample format (see module doc).

    Args:
        records: the cleaned records (at least one).
        class_names: name of each contiguous label.
        label_to_category_id: the source's category id for each label.
        report: what was skipped while loading.
        transforms: optional ``transforms(image, target) -> (image, target)`` (torchvision v2
            style, see :mod:`scaledet.data.transforms`); the image is a ``tv_tensors.Image``
            and ``target["boxes"]`` a ``tv_tensors.BoundingBoxes`` when it is called.
        allow_empty: accept a set without a single box to learn from (background images
            only). Off by default: such a set is nearly always mislabelled data (annotations
            missing, labels in the wrong folder, every box dropped as invalid), and training
            or evaluating on it would finish without an error but mean nothing.

    Raises:
        UserError: no usable image, no class, or (unless ``allow_empty``) no box.
    """

    #: a subclass's hint, appended to the "no boxes" error (where its format looks for labels)
    empty_hint: str = ""

    def __init__(
        self,
        records: list[ImageRecord],
        class_names: list[str],
        label_to_category_id: list[int],
        report: DataReport,
        transforms: Transform | None = None,
        allow_empty: bool = False,
    ) -> None:
        if not records:
            skipped = f" ({report.num_skipped} records skipped: {report.as_dict()})" if report.counts else ""
            raise UserError(f"{report.source}: dataset has no usable images{skipped}")
        if not class_names:
            raise UserError(f"{report.source}: no classes defined; a detector needs at least one class")
        if len(class_names) != len(label_to_category_id):
            raise ValueError("class_names and label_to_category_id must have the same length")
        if not allow_empty and not any((~record.iscrowd).any() for record in records):
            raise UserError(_no_boxes_message(records, report, self.empty_hint))
        folded: dict[str, list[str]] = {}
        for name in class_names:
            folded.setdefault(plain_name(name), []).append(name)
        alike = [names for names in folded.values() if len(names) > 1]
        if alike:  # 'Cup' and 'cup' (or 'cup' twice) are two classes to a detector: almost always a labelling slip
            warnings.warn(f"{report.source}: class names that repeat or differ only in case or spaces are separate "
                          "classes: " + "; ".join(f"{names[0]!r} ({len(names)} classes)" if len(set(names)) == 1
                                                  else " / ".join(repr(n) for n in names) for names in alike)
                          + " (rename them if they are one class; evaluation against other data matches classes by "
                          "name)", DataWarning, stacklevel=2)
        self.records = records
        self.class_names = list(class_names)
        self.label_to_category_id = list(label_to_category_id)
        self.report = report
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    #: how large the pipeline will resize each image (:meth:`decode_shrunk`); ``None``: decode at full size
    decode_scale: str | Callable[[int, int], float] | None = None

    def load_image(self, index: int) -> torch.Tensor:
        """Float ``Tensor[3,H,W]`` RGB in ``[0,1]`` of record ``index`` (subclasses may render): the
        file as displayed, or shrunk after :meth:`decode_shrunk`."""
        record = self.records[index]
        return load_image(record.path, self._shrink(record))

    def decode_shrunk(self, largest_scale: str | Callable[[int, int], float] | None = "transforms") -> None:
        """Decode each file only as large as it is used: an image that the pipeline shrinks at least
        2x is decoded a power of two smaller (:func:`~scaledet.data.images.load_image`), its boxes
        with it (``target["scale"]`` maps them back to the file's pixels, as after ``eval_transforms``).

        ``largest_scale(height, width)``: the largest factor the pipeline resizes an image of that
        displayed size by; ``"transforms"``: as the dataset's transforms say, at the time each file is
        read (:func:`~scaledet.data.transforms.largest_scale`: EfficientDet's resize, or the DETR family's
        pipelines for their model's resize; full size for transforms that do not say); ``None``: full
        size again. A 4032x3024 photo trained at 384x512 with scale jitter up to 2 decodes at
        2016x1512, about 4x faster and in a quarter of the memory :meth:`cache_images` keeps."""
        self.decode_scale = largest_scale

    def _shrink(self, record: ImageRecord) -> int:
        """The power of two record's file is decoded smaller by (:meth:`decode_shrunk`)."""
        rule = self.decode_scale
        if rule is None or record.path is None:
            return 1
        if rule == "transforms":
            scale = largest_scale(self.transforms, record.height, record.width)
            return 1 if scale is None else shrink_factor(scale)
        return shrink_factor(rule(record.height, record.width))

    def cache_images(self, max_bytes: int) -> None:
        """Keep decoded images in memory (uint8 ``[3,H,W]``, until ``max_bytes`` are used) so that
        each file is decoded once per run, not once per epoch. 8-bit sources come back exactly;
        16-bit ones are rounded to 8 bits. Each DataLoader worker process keeps its own cache."""
        self._image_cache: dict[int, torch.Tensor] = {}
        self._cache_bytes_left = int(max_bytes)

    def _load_image_cached(self, index: int) -> torch.Tensor:
        cache = getattr(self, "_image_cache", None)
        if cache is None:
            return self.load_image(index)
        cached = cache.get(index)
        if cached is not None:
            return cached.float().div_(255.0)
        # every image is served quantised while caching is on, cached or not (the budget may be
        # spent): the run then does not depend on which images fit, e.g. after --resume
        quantised = self.load_image(index).mul_(255.0).round_().to(torch.uint8)
        if quantised.numel() <= self._cache_bytes_left:
            cache[index] = quantised
            self._cache_bytes_left -= quantised.numel()
        return quantised.float().div_(255.0)

    def __getitem__(self, index: int) -> Sample:
        """``(image, target)`` of record ``index``; an unreadable file is reported and the next
        readable record is returned instead, so a run never dies on one bad file."""
        for offset in range(len(self.records)):
            current = (index + offset) % len(self.records)
            try:
                image = self._load_image_cached(current)
            except IMAGE_ERRORS as error:
                self.report.skip("unreadable_image", f"{self.records[current].path}: cannot read image ({error})")
                continue
            return self._sample(current, image)
        raise RuntimeError(f"{self.report.source}: no readable image left")

    def _sample(self, index: int, image: torch.Tensor) -> tuple[torch.Tensor, dict]:
        record = self.records[index]
        height, width = image.shape[-2:]
        keep = ~record.iscrowd
        boxes = torch.from_numpy(record.boxes[keep]).reshape(-1, 4)
        shrunk = record.path is not None and (height, width) != (record.height, record.width)
        if shrunk:  # decoded smaller (decode_shrunk): the boxes follow; "scale" maps them back
            scale = torch.tensor([width / record.width, height / record.height] * 2, dtype=torch.float32)
            boxes = boxes * scale
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.from_numpy(record.labels[keep]),
            "image_id": record.image_id,
            "orig_size": (int(record.height), int(record.width)) if shrunk else (int(height), int(width)),
        }
        if shrunk:
            target["scale"] = scale
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).float()
        return image.as_subclass(torch.Tensor), target

    def coco_gt(self) -> dict:
        """The ground truth as a COCO annotation dict (original category ids, crowd flags, areas)."""
        images, annotations = [], []
        for record in self.records:
            name = record.path.name if record.path is not None else f"{record.image_id:08d}.png"
            images.append({"id": record.image_id, "width": record.width, "height": record.height, "file_name": name})
            for box, label, crowd, area in zip(record.boxes, record.labels, record.iscrowd, record.areas):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": record.image_id,
                    "category_id": self.label_to_category_id[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(area),
                    "iscrowd": int(crowd),
                })
        categories = [{"id": cid, "name": name} for cid, name in zip(self.label_to_category_id, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def summary(self) -> str:
        """The bad-data summary (see :func:`~scaledet.data.report.format_report`)."""
        num_boxes = sum(len(r.boxes) for r in self.records)
        return format_report(self.report, num_images=len(self.records), num_boxes=num_boxes)


#: report reasons that lose boxes (not whole images, not harmless repairs): the causes of an empty set
_BOX_LOSS_REASONS = frozenset(REASONS) - KEPT_REASONS - {"missing_image", "unreadable_image", "bad_image_record",
                                                          "missing_annotation"} | {
    "missing_label"
}


def _no_boxes_message(records: list[ImageRecord], report: DataReport, hint: str) -> str:
    """Two lines: why a set has no box to learn from (the most frequent cause, with an example), and the fixes."""
    crowd = sum(len(record.boxes) for record in records)
    causes = Counter({r: n for r, n in report.counts.items() if r in _BOX_LOSS_REASONS})
    if crowd:
        why = f"all {crowd} boxes are crowd / difficult boxes, which are not trained on"
    elif causes:
        reason, count = causes.most_common(1)[0]
        why = f"{count} x {reason}, e.g. {report.examples[reason][0]}"
    else:
        why = "the annotations hold no boxes"
    return (
        f"{report.source}: no usable boxes in {len(records)} image{'s' if len(records) != 1 else ''}: {why}{hint}\n"
        "fix the annotations; if the images really hold no objects, allow that with --allow-empty (allow_empty=True)"
    )


def print_report(dataset: DetectionDataset, file=None) -> None:
    """Print ``dataset.summary()`` (the engine calls this before training starts)."""
    print(dataset.summary(), file=file)
