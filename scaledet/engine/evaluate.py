"""Run a detector over a validation set and compute COCO stats with the project's evaluator.

Every rank predicts its share of the images (strided by rank); detections are gathered on all
ranks and rank 0 computes the 12 COCO stats (``scaledet.evaluation.COCOEvaluator``), which are then
broadcast, so every rank returns the same numbers.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from scaledet.engine import distributed as dist_utils
from scaledet.evaluation.coco import STAT_KEYS  # the 12 COCO stats, in pycocotools' order


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 8,
    max_images: int | None = None,
    progress: bool = True,
    autocast: Callable[[], Any] | None = None,
) -> list[tuple[int, int, dict[str, torch.Tensor]]]:
    """Predictions for this rank's share of ``dataset``: ``[(index, image_id, prediction), ...]``.

    ``prediction`` is the model's output dict on CPU (boxes xyxy in that image's pixels).
    """
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = list(range(dist_utils.rank(), count, dist_utils.world_size()))
    was_training = model.training
    model.eval()
    records: list[tuple[int, int, dict[str, torch.Tensor]]] = []
    bar = tqdm(total=len(indices), desc="eval", unit="img", disable=not (progress and dist_utils.is_main()), leave=False)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        samples = [dataset[i] for i in chunk]
        with autocast() if autocast else contextlib.nullcontext():
            results = model([image.to(device) for image, _ in samples])
        for index, (_, target), result in zip(chunk, samples, results):
            records.append((index, _image_id(target), {k: _cpu(v) for k, v in result.items()}))
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return records


def _cpu(value: torch.Tensor) -> torch.Tensor:
    return value.detach().float().cpu() if value.is_floating_point() else value.detach().cpu()


def _image_id(target: dict[str, Any]) -> int:
    image_id = target["image_id"]
    return int(image_id.item() if isinstance(image_id, torch.Tensor) else image_id)


def coco_stats(dataset: Dataset, records: list[tuple[int, int, dict[str, torch.Tensor]]]) -> dict[str, float]:
    """The 12 COCO stats of ``records`` (from :func:`predict_dataset`) via the project evaluator.

    Only the images in ``records`` count (``eval_max_images`` evaluates a prefix of the set).
    """
    from scaledet.evaluation import COCOEvaluator

    evaluator = COCOEvaluator(_ground_truth_of(dataset, {image_id for _, image_id, _ in records}),
                              label_to_category_id=dataset.label_to_category_id)
    evaluator.update([prediction for _, _, prediction in records], [image_id for _, image_id, _ in records])
    stats = evaluator.compute()
    return {key: float(stats[key]) for key in STAT_KEYS}


def _ground_truth_of(dataset: Dataset, image_ids: set[int]) -> dict:
    """``dataset.coco_gt()`` restricted to ``image_ids``."""
    gt = dataset.coco_gt()
    if len(image_ids) == len(gt["images"]):
        return gt
    return {**gt, "images": [row for row in gt["images"] if row["id"] in image_ids],
            "annotations": [row for row in gt["annotations"] if row["image_id"] in image_ids]}


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 8,
    max_images: int | None = None,
    progress: bool = True,
    autocast: Callable[[], Any] | None = None,
) -> tuple[dict[str, float], list[tuple[int, int, dict[str, torch.Tensor]]]]:
    """COCO stats of ``model`` on ``dataset`` (same on every rank) and this rank's prediction records."""
    records = predict_dataset(model, dataset, device, batch_size, max_images, progress, autocast)
    everything = dist_utils.gather_objects(records)
    stats = None
    if dist_utils.is_main():
        everything.sort(key=lambda record: record[0])
        stats = coco_stats(dataset, everything)
    stats = dist_utils.broadcast_object(stats)
    return stats, records
