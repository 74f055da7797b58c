"""The one evaluation path: run a detector over a dataset, then score its detections.

``scaledet eval`` calls :func:`evaluate_model`; the trainer calls
:func:`scaledet.engine.evaluate.evaluate`, which gives each rank its share of the images through
``indices`` and gathers the :class:`Prediction` lists before :func:`score_predictions`. Both go
through :func:`predict_dataset` and :func:`score_predictions`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from scaledet.data.tiles import ImageSource, TensorImage, open_large_image
from scaledet.data.transforms import collate_fn
from scaledet.evaluation.coco import COCOEvaluator, dense_max_dets
from scaledet.evaluation.results import label_mapping
from scaledet.inference.tiling import TileOptions, predict_tiled


class Prediction(NamedTuple):
    """One image's detections.

    Attributes:
        index: the image's index in the dataset.
        image_id: the dataset's id of the image (its ``target["image_id"]``).
        detections: ``dict(boxes [N, 4] xyxy in the dataset image's original pixels, scores [N]
            float32, labels [N] int64 dataset labels)`` on the CPU, by descending score.
    """

    index: int
    image_id: int
    detections: dict[str, Tensor]


@torch.no_grad()
def predict_dataset(
    model: Callable[[list[Tensor]], list[dict[str, Tensor]]],
    dataset: Dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    indices: Iterable[int] | None = None,
    progress: bool = True,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    tile: TileOptions | None = None,
) -> list[Prediction]:
    """Run ``model`` (the eval contract: a torch detector, an optimised one or an ONNX runner) on
    the images ``indices`` of ``dataset`` (default all), in that order.

    Images are fed at their own size (the model resizes), or, with ``tile``, through
    :func:`scaledet.inference.tiling.predict_tiled` one image at a time (``tile.batch_size`` tiles
    per call; files of an untransformed dataset are read window by window where the format allows).
    Predicted labels are mapped to the
    dataset's labels by class name (:func:`label_mapping`; classes the dataset lacks are dropped);
    boxes go back to the original pixels when a target carries ``scale`` (``eval_transforms``).
    A torch model is put in eval mode for the run and restored after. ``autocast``: a context
    manager factory around each forward (e.g. bf16); outputs are stored as float32.
    """
    names = getattr(model, "class_names", None) or dataset.class_names
    mapping = torch.tensor(label_mapping(names, dataset.class_names), dtype=torch.long)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    if tile is not None:
        return _predict_tiled(model, dataset, indices, tile, mapping, device, progress, autocast)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_fn)
    predictions: list[Prediction] = []
    positions = iter(indices)
    with _eval_mode(model), _decoded_for(model, dataset):
        for images, targets in tqdm(loader, desc="evaluating", unit="batch", leave=False, disable=not progress):
            with autocast() if autocast is not None else contextlib.nullcontext():
                outputs = model([image.to(device) for image in images])
            for output, target in zip(outputs, targets):
                detections = _in_original_pixels(_to_dataset_labels(output, mapping), target)
                predictions.append(Prediction(next(positions), _image_id(target), detections))
    return predictions


def _predict_tiled(model, dataset: Dataset, indices: list[int], tile: TileOptions, mapping: Tensor, device,
                   progress: bool, autocast) -> list[Prediction]:
    """:func:`predict_dataset` through tiles, one image at a time."""
    predictions: list[Prediction] = []
    with _eval_mode(model):
        for index in tqdm(indices, desc="evaluating (tiled)", unit="img", leave=False, disable=not progress):
            source, target = _image_source(dataset, index)
            with autocast() if autocast is not None else contextlib.nullcontext():
                output = predict_tiled(model, source, options=tile, device=device)
            detections = _in_original_pixels(_to_dataset_labels(output, mapping), target)
            predictions.append(Prediction(index, _image_id(target), detections))
    return predictions


def _image_source(dataset: Dataset, index: int) -> tuple[ImageSource, dict[str, Any]]:
    """``(image source, target)`` of image ``index``: the file read window by window
    (:func:`~scaledet.data.tiles.open_large_image`) when the dataset is untransformed and the record
    has a file, else ``dataset[index]`` in memory."""
    records = getattr(dataset, "records", None)
    if records is not None and getattr(dataset, "transforms", None) is None and records[index].path is not None:
        return open_large_image(records[index].path), {"image_id": records[index].image_id}
    image, target = dataset[index]
    return TensorImage(image), target


@contextlib.contextmanager
def _decoded_for(model: Any, dataset: Dataset) -> Iterator[None]:
    """For the duration, files of an untransformed ``dataset`` that ``model``'s own resize shrinks at
    least 2x are decoded that much smaller (:meth:`~scaledet.data.DetectionDataset.decode_shrunk`, by
    the model's :meth:`~scaledet.models.base.Detector.input_scale`): a 12-megapixel photo evaluated at
    512x512 decodes at 1/4 scale, several times faster; the boxes come back in the file's pixels."""
    input_scale = getattr(model, "input_scale", None)
    records = getattr(dataset, "records", None)
    if input_scale is None or records is None or not hasattr(dataset, "decode_shrunk") \
            or getattr(dataset, "transforms", None) is not None:
        yield
        return
    previous = dataset.decode_scale
    sizes = {(record.height, record.width) for record in records}
    # a table, not the model: DataLoader workers started by spawn / forkserver get a copy of the dataset
    dataset.decode_shrunk(_ScaleBySize({size: max(input_scale(*size)) for size in sizes}))
    try:
        yield
    finally:
        dataset.decode_shrunk(previous)


class _ScaleBySize(dict):
    """``{(height, width): the model's resize factor}``, called as ``(height, width) -> factor``."""

    def __call__(self, height: int, width: int) -> float:
        return self[(height, width)]


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Eval mode for the duration (torch modules; an ONNX runner has no mode)."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _to_dataset_labels(output: dict[str, Tensor], mapping: Tensor) -> dict[str, Tensor]:
    """The detections on the CPU (float32 scores and boxes), labels mapped, unmapped classes dropped."""
    labels = mapping[output["labels"].detach().long().cpu()]
    keep = labels >= 0
    boxes, scores = (output[key].detach().float().cpu()[keep] for key in ("boxes", "scores"))
    return {"boxes": boxes, "scores": scores, "labels": labels[keep]}


def _in_original_pixels(detections: dict[str, Tensor], target: dict[str, Any]) -> dict[str, Tensor]:
    """Boxes / ``target["scale"]`` (a float or ``Tensor[4]`` (sx, sy, sx, sy)) when the target has one."""
    if "scale" not in target:
        return detections
    scale = torch.as_tensor(target["scale"], dtype=torch.float32).reshape(-1)
    return {**detections, "boxes": detections["boxes"] / scale}


def _image_id(target: dict[str, Any]) -> int:
    image_id = target["image_id"]
    return int(image_id.item() if isinstance(image_id, Tensor) else image_id)


def score_predictions(dataset: Dataset, predictions: Sequence[Prediction], max_dets: Sequence[int] = (1, 10, 100),
                      results_path: str | Path | None = None, backend: str = "pycocotools") -> dict:
    """COCO stats of ``predictions`` on ``dataset`` (:meth:`COCOEvaluator.compute`: the 12
    :data:`~scaledet.evaluation.coco.STAT_KEYS`, ``per_class``, ``max_dets``, ``num_detections``).

    Only the images in ``predictions`` count (the trainer's ``eval_max_images`` scores a prefix);
    ``results_path``: also write the detections in scaledet's results format. When an image holds
    more ground-truth objects than ``max_dets[-1]``, that cap is raised
    (:func:`~scaledet.evaluation.coco.dense_max_dets`) and ``stats["notes"]`` says so.
    """
    ground_truth = _ground_truth_of(dataset, {prediction.image_id for prediction in predictions})
    max_dets, notes = dense_max_dets(ground_truth, max_dets)
    evaluator = COCOEvaluator(ground_truth, max_dets=max_dets, backend=backend,
                              label_to_category_id=getattr(dataset, "label_to_category_id", None))
    evaluator.update([prediction.detections for prediction in predictions],
                     [prediction.image_id for prediction in predictions])
    if results_path is not None:
        evaluator.write_results(results_path)
    stats = evaluator.compute()
    if notes:
        stats["notes"] = notes
    return stats


def _ground_truth_of(dataset: Dataset, image_ids: set[int]) -> dict:
    """``dataset.coco_gt()`` restricted to ``image_ids``."""
    gt = dataset.coco_gt()
    if len(image_ids) == len(gt["images"]):
        return gt
    return {**gt, "images": [row for row in gt["images"] if row["id"] in image_ids],
            "annotations": [row for row in gt["annotations"] if row["image_id"] in image_ids]}


def evaluate_model(
    model: Callable[[list[Tensor]], list[dict[str, Tensor]]],
    dataset: Dataset,
    max_dets: Sequence[int] = (1, 10, 100),
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    results_path: str | Path | None = None,
    tile: TileOptions | None = None,
    backend: str = "pycocotools",
    progress: bool = True,
) -> dict:
    """COCO stats of ``model`` on every image of ``dataset`` (:func:`predict_dataset` then
    :func:`score_predictions`); ``results_path``: also write the detections there; ``tile``:
    predict through tiles (scored on the original images all the same); ``backend``: the COCO
    evaluation library (``"pycocotools"`` or ``"faster_coco_eval"``, equal stats); ``progress``: the bar.

    ``dataset.transforms`` should be ``None`` (or keep the original geometry / set ``scale``):
    predicted boxes are scored in the dataset's original pixels.
    """
    predictions = predict_dataset(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                                  tile=tile, progress=progress)
    return score_predictions(dataset, predictions, max_dets, results_path, backend=backend)
