"""Datasets, augmentation and the sample format shared by training and evaluation.

Sample format (every dataset): ``dataset[i] -> (image, target)`` with ``image`` a float
``Tensor[3,H,W]`` RGB in ``[0, 1]`` and ``target = dict(boxes=Tensor[M,4] float32 xyxy pixels,
labels=Tensor[M] int64 in [0, K), image_id=int, orig_size=(h, w))``. Datasets expose
``class_names``, ``label_to_category_id`` (for COCO evaluation), ``report`` (bad-data counts)
and ``coco_gt()``. See ``docs/data.md``.
"""

from scaledet.data.base import DetectionDataset, ImageRecord, Sample, Target, print_report
from scaledet.data.coco import CocoDataset
from scaledet.data.images import load_image
from scaledet.data.io import open_dataset, write_coco, write_shapes_coco
from scaledet.data.report import DataReport, DataWarning, format_report
from scaledet.data.shapes import SHAPE_CLASSES, ShapesDataset, shapes_split
from scaledet.data.transforms import ResizeCropPad, collate_fn, eval_transforms, train_transforms
from scaledet.data.voc import VOCDataset
from scaledet.data.yolo import YOLODataset

__all__ = [
    "CocoDataset", "DataReport", "DataWarning", "DetectionDataset", "ImageRecord", "ResizeCropPad",
    "SHAPE_CLASSES", "Sample", "ShapesDataset", "Target", "VOCDataset", "YOLODataset", "collate_fn", "eval_transforms",
    "format_report", "load_image", "open_dataset", "print_report", "shapes_split", "train_transforms",
    "write_coco", "write_shapes_coco",
]  # fmt: skip
