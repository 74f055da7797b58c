"""The trainer's evaluation: :mod:`scaledet.evaluation`'s one path, sharded over DDP ranks.

Every rank predicts its share of the images (strided by rank) with
:func:`~scaledet.evaluation.predict_dataset`; the predictions are gathered on all ranks, rank 0
scores them (:func:`~scaledet.evaluation.score_predictions`) and broadcasts the 12 COCO stats, so
every rank returns the same numbers. A validation set carrying ``tile_options`` (a
:class:`~scaledet.inference.tiling.TileOptions`, set by :func:`scaledet.engine.run.open_datasets`
for ``--tile``) is predicted through tiles, as ``scaledet eval --tile`` does.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from scaledet.engine import distributed as dist_utils
from scaledet.evaluation import STAT_KEYS, Prediction, predict_dataset, score_predictions

__all__ = ["STAT_KEYS", "evaluate"]


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 8,
    max_images: int | None = None,
    progress: bool = True,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[dict[str, float], list[Prediction]]:
    """``(stats, predictions)``: the 12 COCO stats of ``model`` on the first ``max_images`` images
    of ``dataset`` (default all; the same numbers on every rank) plus ``stats["max_dets"]``, the three
    detection caps they were scored with (raised for dense images), and this rank's
    :class:`~scaledet.evaluation.Prediction` list (boxes xyxy in each image's original pixels)."""
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    predictions = predict_dataset(model, dataset, batch_size=batch_size, device=device,
                                  indices=range(dist_utils.rank(), count, dist_utils.world_size()),
                                  progress=progress and dist_utils.is_main(), autocast=autocast,
                                  tile=getattr(dataset, "tile_options", None))
    everything = dist_utils.gather_objects(predictions)
    stats = None
    if dist_utils.is_main():
        scored = score_predictions(dataset, sorted(everything, key=lambda prediction: prediction.index))
        stats = {key: float(scored[key]) for key in STAT_KEYS}
        stats["max_dets"] = list(scored["max_dets"])  # raised for dense images (the note below)
        for note in scored.get("notes", []):
            print(f"note: {note}")
    return dist_utils.broadcast_object(stats), predictions
