"""Running a detector over a dataset and scoring it (used by ``scaledet eval`` and the trainer)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scaledet.data.transforms import collate_fn
from scaledet.evaluation.coco import COCOEvaluator


def label_mapping(model_names: Sequence[str], dataset_names: Sequence[str]) -> list[int]:
    """Model label -> dataset label (``-1``: class not in the dataset).

    Matches by class name; when no name matches but the class counts are equal, assumes the
    same order (with a warning). Raises ValueError when neither works.
    """
    model_names, dataset_names = list(model_names), list(dataset_names)
    if model_names == dataset_names:
        return list(range(len(model_names)))
    index = {name: i for i, name in enumerate(dataset_names)}
    mapping = [index.get(name, -1) for name in model_names]
    if any(m >= 0 for m in mapping):
        return mapping
    if len(model_names) == len(dataset_names):
        warnings.warn("model and dataset class names differ; assuming the same class order", stacklevel=2)
        return list(range(len(model_names)))
    raise ValueError(f"model classes {model_names[:5]}... do not match dataset classes {dataset_names[:5]}...")


def _remap(prediction: dict, mapping: torch.Tensor) -> dict:
    labels = mapping[prediction["labels"].long().cpu()]
    keep = labels >= 0
    return {"boxes": prediction["boxes"].cpu()[keep], "scores": prediction["scores"].cpu()[keep], "labels": labels[keep]}


@torch.inference_mode()
def predict_dataset(
    model: nn.Module,
    dataset,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    max_dets: Sequence[int] = (1, 10, 100),
) -> COCOEvaluator:
    """Run ``model`` (eval contract) on every image of ``dataset`` and return the filled evaluator.

    Images are fed at their own size (the model resizes); predicted labels are mapped to the
    dataset's labels through :func:`label_mapping` when the model has ``class_names``.
    """
    names = getattr(model, "class_names", None) or dataset.class_names
    mapping = torch.tensor(label_mapping(names, dataset.class_names), dtype=torch.long)
    evaluator = COCOEvaluator(dataset, max_dets=max_dets)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn)
    was_training = model.training
    model.eval()
    try:
        for images, targets in tqdm(loader, desc="evaluating", unit="batch", leave=False):
            outputs = model([image.to(device) for image in images])
            evaluator.update([_remap(o, mapping) for o in outputs], targets)
    finally:
        model.train(was_training)
    return evaluator


def evaluate_model(
    model: nn.Module,
    dataset,
    max_dets: Sequence[int] = (1, 10, 100),
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    results_path=None,
) -> dict:
    """COCO stats of ``model`` on ``dataset`` (see :meth:`COCOEvaluator.compute`).

    ``dataset.transforms`` should be ``None`` (or keep the original geometry / set ``scale``):
    predicted boxes are scored in the dataset's original pixels.
    """
    evaluator = predict_dataset(model, dataset, batch_size, device, num_workers, max_dets)
    if results_path is not None:
        evaluator.write_results(results_path)
    return evaluator.compute()
