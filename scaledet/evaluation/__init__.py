"""COCO evaluation: :class:`COCOEvaluator`, :func:`evaluate_detections`, :func:`evaluate_model`."""

from scaledet.evaluation.coco import (
    STAT_KEYS,
    COCOEvaluator,
    evaluate_detections,
    format_per_class,
    format_stats,
    summarize_eval,
)
from scaledet.evaluation.runner import evaluate_model, predict_dataset

__all__ = [
    "STAT_KEYS", "COCOEvaluator", "evaluate_detections", "evaluate_model", "format_per_class", "format_stats",
    "predict_dataset", "summarize_eval",
]  # fmt: skip
