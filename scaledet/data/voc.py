"""Pascal VOC folders (``Annotations/*.xml`` + ``JPEGImages/``) -> DetectionDataset.

Accepted roots: the ``VOC2007``-style folder itself, or a ``VOCdevkit`` holding exactly one.
Annotation files: ``Annotations/*.xml`` (any case of the suffix; macOS ``._`` and other hidden files
ignored). Each XML's image is ``JPEGImages/<XML stem>.<image suffix>`` (as the VOC devkit and
torchvision read it), else ``JPEGImages/<filename>`` from the XML; a stated ``<size>`` that differs
from the file is noted (``size_mismatch``). Without a split, images in ``JPEGImages/`` that have no
XML are counted as skipped (``missing_annotation``: a background image needs an XML without objects).
Class names: ``classes.txt`` / ``labels.txt`` in the root if present, else the 20 VOC classes
when every object name is one of them, else the sorted names found in *all* XML files (so
train and val splits of one folder always agree). VOC's 1-based pixel corners become
0-based xyxy (``xmin - 1, ymin - 1, xmax, ymax``), unless a box of the folder starts below 1 (a 0 that
1-based corners cannot hold: labelling tools such as CVAT write 0-based corners), then every box of the
folder is read as 0-based, unshifted (noted once, ``zero_based_voc``); ``difficult`` objects are flagged
like COCO crowd boxes (not trained on, ignored by evaluation).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from scaledet.data.base import (DetectionDataset, ImageRecord, RawBox, Transform, check_annotated_size, clean_boxes,
                                probe_records, read_text)
from scaledet.data.coco import as_int
from scaledet.data.images import IMAGE_SUFFIXES
from scaledet.data.report import DataReport
from scaledet.errors import UserError

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def find_voc_root(path: Path) -> Path | None:
    """The folder holding ``Annotations/`` (``path`` itself or its single VOC child), else None."""
    if (path / "Annotations").is_dir():
        return path
    children = [c for c in sorted(path.glob("*")) if (c / "Annotations").is_dir()] if path.is_dir() else []
    return children[0] if len(children) == 1 else None


def _parse_xml(path: Path) -> dict:
    """``{filename, width, height (None where not stated), objects: [(name, [x1,y1,x2,y2] strings, difficult)]}``."""
    root = ET.parse(path).getroot()
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        coords = [box.findtext(k) if box is not None else None for k in ("xmin", "ymin", "xmax", "ymax")]
        difficult = obj.findtext("difficult", "0").strip().lower() in ("1", "true")
        objects.append((str(obj.findtext("name", "")).strip(), coords, difficult))
    return {
        "filename": (root.findtext("filename") or "").strip() or None,
        "width": as_int(root.findtext("size/width")),
        "height": as_int(root.findtext("size/height")),
        "objects": objects,
    }


def split_or_every_image(path: str | Path, split: str) -> str | None:
    """``split``, or ``None`` (every annotated image) for a VOC folder without ``ImageSets/Main/<split>.txt``
    (labelling tools' exports: none, or CVAT's ``default.txt``), so that ``train --train A --val B`` works on
    two such folders; ``split`` for every other path (where a missing split stays an error)."""
    root = find_voc_root(Path(path)) if Path(path).is_dir() else None
    if root is None or (root / "ImageSets" / "Main" / f"{split}.txt").is_file():
        return split
    return None


class VOCDataset(DetectionDataset):
    """A Pascal VOC detection folder.

    Args:
        root: the VOC folder (with ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``) or a VOCdevkit.
        split: ``ImageSets/Main/<split>.txt`` to use (e.g. ``"train"``, ``"val"``); default: every XML.
        class_names: override the class list (see module doc for the default).
        transforms, check_images, allow_empty, progress: as in :class:`~scaledet.data.coco.CocoDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        class_names: list[str] | None = None,
        transforms: Transform | None = None,
        check_images: str = "header",
        allow_empty: bool = False,
        progress: bool = True,
    ) -> None:
        found = find_voc_root(Path(root))
        if found is None:
            raise UserError(f"{root}: not a Pascal VOC folder (no Annotations/ directory)")
        report = DataReport(source=str(found) + (f" [{split}]" if split else ""))
        parsed = self._parse_all(found, report)
        names = class_names or self._class_names(found, parsed)
        label_of = {name: label for label, name in enumerate(names)}
        stems = self._split_stems(found, split, parsed, report)
        corner_shift = self._corner_shift(parsed, report)
        by_stem = _images_by_stem(found / "JPEGImages")
        if split is None:
            for stem in sorted(set(by_stem) - set(parsed)):
                report.skip("missing_annotation", f"{by_stem[stem][0]}: no Annotations/{stem}.xml (a background image "
                            "needs an XML without <object>)")
        paths = [_image_of(found / "JPEGImages", stem, parsed[stem]["filename"], by_stem) for stem in stems]
        infos = probe_records(paths, found.name, report, check_images, progress)
        records = []
        for index, (stem, path, info) in enumerate(zip(stems, paths, infos)):
            if info is not None:
                check_annotated_size(path, parsed[stem]["width"], parsed[stem]["height"], info, report)
                raw = self._raw_boxes(parsed[stem]["objects"], label_of, f"Annotations/{parsed[stem]['xml']}", report,
                                      corner_shift)
                boxes = clean_boxes(raw, info.width, info.height, report)
                records.append(ImageRecord(path, index, info.width, info.height, **boxes))
        super().__init__(records, names, list(range(1, len(names) + 1)), report, transforms, allow_empty)

    @staticmethod
    def _parse_all(root: Path, report: DataReport) -> dict[str, dict]:
        parsed = {}
        xmls = [p for p in (root / "Annotations").iterdir() if p.suffix.lower() == ".xml" and not p.name.startswith(".")]
        for xml in sorted(xmls):
            try:
                parsed[xml.stem] = {**_parse_xml(xml), "xml": xml.name}
            except ET.ParseError as error:
                report.skip("bad_annotation_file", f"{xml}: invalid XML ({error})")
        return parsed

    @staticmethod
    def _class_names(root: Path, parsed: dict[str, dict]) -> list[str]:
        for name in ("classes.txt", "labels.txt"):
            if (root / name).is_file():
                return [line.strip() for line in read_text(root / name).splitlines() if line.strip()]
        found = {obj[0] for record in parsed.values() for obj in record["objects"] if obj[0]}
        return list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)

    @staticmethod
    def _split_stems(root: Path, split: str | None, parsed: dict, report: DataReport) -> list[str]:
        """The split's image names that have a parsed annotation; a listed name without an XML file
        is reported (``missing_annotation``; an unparsable one was reported when parsing)."""
        if split is None:
            return sorted(parsed)
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise UserError(f"{root}: split {split!r} not found ({split_file} missing)")
        stems = [_listed_stem(line.split()[0], parsed) for line in read_text(split_file).splitlines() if line.strip()]
        for stem in stems:
            if stem not in parsed and not (root / "Annotations" / f"{stem}.xml").is_file():  # else: unparsable
                report.skip("missing_annotation", f"{split_file}: {stem!r} has no Annotations/{stem}.xml")
        return [s for s in stems if s in parsed]

    @staticmethod
    def _corner_shift(parsed: dict[str, dict], report: DataReport) -> float:
        """What to subtract from ``xmin`` / ``ymin``: 1 for VOC's 1-based corners; 0 when some box of the
        folder (any split) starts below 1, which only 0-based corners can (noted once, with the count)."""
        starts_below_one, first = 0, None
        for record in parsed.values():
            for index, (_, coords, _) in enumerate(record["objects"]):
                try:
                    below = min(float(coords[0]), float(coords[1])) < 1.0
                except (TypeError, ValueError):
                    continue
                if below:
                    starts_below_one += 1
                    first = first or f"Annotations/{record['xml']}: object[{index}] at ({coords[0]}, {coords[1]})"
        if not starts_below_one:
            return 1.0
        report.note("zero_based_voc", f"{starts_below_one} box(es) start below 1 (first: {first}), which VOC's "
                    "1-based corners cannot: every box of this folder is read as 0-based, unshifted")
        return 0.0

    @staticmethod
    def _raw_boxes(objects: list, label_of: dict, where: str, report: DataReport,
                   corner_shift: float = 1.0) -> list[RawBox]:
        raw = []
        for index, (name, coords, difficult) in enumerate(objects):
            here = f"{where}: object[{index}] {name!r}"
            if not name:
                report.skip("unknown_category", f"{where}: object[{index}] has no <name>")
                continue
            if name not in label_of:
                report.skip("unknown_category", f"{here}: class {name!r} not in the class list")
                continue
            try:
                x1, y1, x2, y2 = (float(c) for c in coords)
            except (TypeError, ValueError):
                report.skip("malformed_box", f"{here}: bndbox {coords} is not 4 numbers")
                continue
            raw.append(RawBox([x1 - corner_shift, y1 - corner_shift, x2, y2], label_of[name], difficult, None, here))
        return raw


def _images_by_stem(folder: Path) -> dict[str, list[Path]]:
    """``JPEGImages``' image files by stem (sorted, ``.jpg`` first where a stem has several)."""
    found: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                found.setdefault(path.stem, []).append(path)
    for paths in found.values():
        paths.sort(key=lambda p: (p.suffix.lower() not in (".jpg", ".jpeg"), p.name))
    return found


def _image_of(folder: Path, stem: str, filename: str | None, by_stem: dict[str, list[Path]]) -> Path:
    """The image of ``Annotations/<stem>.xml``: the file its ``<filename>`` names when that is one of
    ``JPEGImages/<stem>.*``, else ``JPEGImages/<stem>.*`` (a ``<filename>`` another tool left stale, without
    a suffix or in other case), else the named file; a missing one is reported by the image check."""
    named = folder / filename if filename else None
    candidates = by_stem.get(stem, [])
    if named is not None and named in candidates:
        return named
    if candidates:
        return candidates[0]
    return named if named is not None else folder / f"{stem}.jpg"


def _listed_stem(listed: str, parsed: dict) -> str:
    """The image name a split file's line means: VOC lists bare names (``2008_000123``); ``a.jpg`` or
    ``JPEGImages/a.jpg``, as some export scripts write, name the annotated image ``a`` too."""
    if listed in parsed:
        return listed
    path = Path(listed.replace("\\", "/"))
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES and path.stem in parsed else listed
