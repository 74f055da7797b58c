"""Bookkeeping for bad data: every skipped image, dropped box or converted file is counted.

A :class:`DataReport` lives on every dataset (``dataset.report``). Loaders call
:meth:`DataReport.skip` for records they drop (a warning is emitted for the first few of
each reason, all are counted) and :meth:`DataReport.note` for harmless fixes (grayscale
converted to RGB, boxes clipped to the image). :func:`format_report` renders the summary
the training engine prints before it starts.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: reason -> what happens to the record; the keys used by the loaders.
REASONS: dict[str, str] = {
    "missing_image": "image file not found: image skipped",
    "unreadable_image": "image file unreadable (truncated, not an image, or no read permission): image skipped",
    "bad_image_record": "image record malformed (no id / file name): image skipped",
    "bad_annotation_file": "annotation file unparsable: image skipped",
    "unknown_image_id": "annotation for an image id not in the file: annotation skipped",
    "unknown_category": "unknown category id / class index: box skipped",
    "malformed_box": "box is not 4 numbers: box skipped",
    "nan_box": "NaN or infinite coordinate: box skipped",
    "negative_box": "negative width or height: box skipped",
    "zero_area_box": "zero width or height: box skipped",
    "out_of_image_box": "box entirely outside the image: box skipped",
    "bad_iscrowd": "iscrowd is not 0/1/true/false: annotation skipped",
    "bad_yolo_line": "YOLO label line unreadable (wrong field count, a non-number, a fractional class): line skipped",
    "yolo_pixel_coordinates": "YOLO coordinates above 1.5 (pixels? YOLO wants fractions of the image, 0-1): "
                              "line skipped",
    "missing_annotation": "image listed in the split has no annotation file: image skipped",
    "missing_label": "YOLO label file not found: image has no objects (kept)",
    "label_without_image": "YOLO label file that no image of the split has (another suffix or folder?): labels unused",
    "clipped_box": "box partly outside the image: clipped (kept)",
    "size_mismatch": "annotated image size differs from the file: file size used (kept)",
    "converted_image": "grayscale / palette / RGBA / 16-bit / CMYK image: converted to RGB (kept)",
    "exif_rotated": "EXIF orientation applied (kept)",
    "box_from_segmentation": "COCO annotation without a bbox: box from its segmentation (kept)",
    "zero_based_voc": "VOC folder with boxes at x or y 0, impossible in VOC's 1-based corners: its boxes are read "
                      "as 0-based, not shifted by 1 pixel (kept)",
}

#: reasons that keep the record (reported as notes, not warnings)
KEPT_REASONS = frozenset({"clipped_box", "size_mismatch", "converted_image", "exif_rotated", "missing_label",
                          "box_from_segmentation", "zero_based_voc"})


class DataWarning(UserWarning):
    """Warning category for skipped or repaired records in a dataset."""


@dataclass
class DataReport:
    """Counts of skipped / repaired records per reason, with the first few messages.

    Attributes:
        source: the dataset's path or name, shown in messages.
        counts: ``Counter`` reason -> number of records (see :data:`REASONS`).
        examples: reason -> up to ``max_examples`` messages naming the file and record.
        max_warnings: per reason, how many :class:`DataWarning` are emitted (the rest are counted).
    """

    source: str = ""
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5
    max_warnings: int = 3

    def skip(self, reason: str, message: str) -> None:
        """Count a dropped record and warn (first ``max_warnings`` per reason)."""
        self._add(reason, message, warn=True)

    def note(self, reason: str, message: str) -> None:
        """Count a repaired-but-kept record (no warning)."""
        self._add(reason, message, warn=False)

    def _add(self, reason: str, message: str, warn: bool) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown data report reason {reason!r}")
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append(message)
        if warn and self.counts[reason] <= self.max_warnings:
            warnings.warn(self._located(message), DataWarning, stacklevel=3)

    def _located(self, message: str) -> str:
        """``message`` led by the source: ``SOURCE: message``, or, for a message that names the source's file
        first (``name.json: annotations[3] ...``), that name replaced by the source, not repeated."""
        source = str(self.source)
        name = Path(source.split(" [")[0]).name
        if message.startswith(source):
            return message
        if name and message.startswith(name + ":"):
            return source + message[len(name):]
        return f"{source}: {message}"

    @property
    def num_skipped(self) -> int:
        """Records dropped (images, annotations, boxes or label lines)."""
        return sum(n for reason, n in self.counts.items() if reason not in KEPT_REASONS)

    def as_dict(self) -> dict[str, int]:
        """JSON-able ``{reason: count}``."""
        return dict(sorted(self.counts.items()))


def format_report(report: DataReport, num_images: int | None = None, num_boxes: int | None = None) -> str:
    """A human summary: one line per reason with its count and first example."""
    head = f"data: {report.source}"
    if num_images is not None:
        head += f": {num_images} images"
    if num_boxes is not None:
        head += f", {num_boxes} boxes"
    if not report.counts:
        return head + "; no problems found"
    lines = [head + f"; {report.num_skipped} records skipped:"]
    for reason, count in sorted(report.counts.items()):
        kind = "kept" if reason in KEPT_REASONS else "skip"
        lines.append(f"  {kind} {count:6d} x {reason}: {REASONS[reason]}")
        lines.append(f"         e.g. {report.examples[reason][0]}")
    return "\n".join(lines)
