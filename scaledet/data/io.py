"""Opening any supported dataset by path, and writing a dataset out as COCO JSON + images."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from scaledet.data.base import DetectionDataset
from scaledet.data.coco import CocoDataset
from scaledet.data.shapes import ShapesDataset, shapes_split
from scaledet.data.voc import VOCDataset, find_voc_root
from scaledet.data.yolo import YOLODataset
from scaledet.errors import UserError


def open_dataset(
    path: str | Path,
    images: str | Path | None = None,
    split: str | None = None,
    *,
    allow_empty: bool = False,
    progress: bool = True,
    **kwargs,
) -> DetectionDataset:
    """Open a detection dataset, detecting its format.

    Args:
        path: one of
            * ``"shapes"``, ``"shapes:train"``, ``"shapes:val"``: the built-in synthetic set
              (``kwargs`` go to :class:`~scaledet.data.shapes.ShapesDataset`, e.g. ``image_size``);
            * a COCO annotation ``.json`` (images beside it, in ``images/`` next to it, or ``images=``);
            * a Pascal VOC folder (``Annotations/``, ``JPEGImages/``; ``split=`` picks ``ImageSets/Main/<split>.txt``);
            * a YOLO ``data.yaml`` (``split=`` ``"train"``/``"val"``/``"test"`` required).
        images: COCO only: the image folder.
        split: VOC / YOLO / shapes split.
        allow_empty: accept a set without a single box (background images only); by default
            such a set raises, since it is nearly always mislabelled data.
        progress: show the image-check progress bar (sets of 200 images or more).
        **kwargs: passed to the dataset class (``transforms=``, ``check_images=``, shapes sizes).

    Raises:
        UserError (a ValueError): unknown format, bad file (named with line/record), no
        category, no usable image, or no box (unless ``allow_empty``).
    """
    text = str(path)
    if text == "shapes" or text.startswith("shapes:"):
        name = text.partition(":")[2] or split or "train"
        _check_options(ShapesDataset, kwargs, text, given=())
        return shapes_split(name, allow_empty=allow_empty, **kwargs)
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: dataset path does not exist")
    kwargs.update(allow_empty=allow_empty, progress=progress)
    if path.suffix.lower() == ".json":
        return _check_options(CocoDataset, kwargs, path, given=("annotation_file", "images"))(path, images=images, **kwargs)
    if path.suffix.lower() in (".yaml", ".yml"):
        return _check_options(YOLODataset, kwargs, path, given=("data_yaml", "split"))(path, split=split, **kwargs)
    if path.is_dir() and find_voc_root(path) is not None:
        return _check_options(VOCDataset, kwargs, path, given=("root", "split"))(path, split=split, **kwargs)
    voc_children = [c.name for c in sorted(path.glob("*")) if (c / "Annotations").is_dir()] if path.is_dir() else []
    if len(voc_children) > 1:
        raise UserError(f"{path}: holds {len(voc_children)} Pascal VOC folders ({', '.join(voc_children)}); give one of "
                        "them")
    if path.name == "Annotations" and (path.parent / "JPEGImages").is_dir():
        raise UserError(f"{path}: give the VOC folder that holds Annotations/ and JPEGImages/ ({path.parent})")
    raise UserError(f"{path}: not a COCO .json, a YOLO data.yaml or a Pascal VOC folder (with Annotations/)")


def _check_options(cls: type, options: dict, source: object, given: tuple[str, ...]) -> type:
    """``cls`` itself, after checking that it takes every key of ``options`` (e.g. a config's
    ``data_options``); UserError naming the unknown ones and the accepted ones otherwise.
    ``given``: the arguments :func:`open_dataset` passes itself (not options)."""
    accepted = [name for name in inspect.signature(cls).parameters if name not in given]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"{source}: unknown data option(s) {', '.join(unknown)} for {cls.__name__}; "
                        f"it takes {', '.join(accepted)}")
    return cls


def write_coco(dataset: DetectionDataset, out_dir: str | Path, annotation_name: str = "annotations.json") -> Path:
    """Write ``dataset`` as ``out_dir/images/<id>.png`` plus ``out_dir/<annotation_name>`` (COCO).

    Images are rendered / decoded without the dataset's transforms. Returns the JSON path,
    which :func:`open_dataset` reads back to the same boxes, labels and category ids.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    gt = dataset.coco_gt()
    for index, row in enumerate(tqdm(gt["images"], desc=f"writing {out_dir}", unit="img", leave=False)):
        row["file_name"] = f"{row['id']:06d}.png"
        array = (dataset.load_image(index).permute(1, 2, 0).numpy() * 255.0).round().astype("uint8")
        Image.fromarray(array).save(out_dir / "images" / row["file_name"])
    json_path = out_dir / annotation_name
    json_path.write_text(json.dumps(gt))
    return json_path


def write_shapes_coco(out_dir: str | Path, split: str = "train", **kwargs) -> Path:
    """Render a shapes split to COCO JSON + PNG images in ``out_dir``; returns the JSON path."""
    return write_coco(shapes_split(split, **kwargs), out_dir)
