"""COCO evaluation and the one predict-and-score path (``scaledet eval`` and the trainer):
:func:`predict_dataset` -> :func:`score_predictions`, or both at once with :func:`evaluate_model`;
:func:`evaluate_detections` scores a detections file."""

from scaledet.evaluation.coco import (
    STAT_KEYS,
    COCOEvaluator,
    evaluate_detections,
    format_per_class,
    format_stats,
    summarize_eval,
)
from scaledet.evaluation.runner import Prediction, evaluate_model, predict_dataset, score_predictions

__all__ = [
    "STAT_KEYS", "COCOEvaluator", "Prediction", "evaluate_detections", "evaluate_model", "format_per_class",
    "format_stats", "predict_dataset", "score_predictions", "summarize_eval",
]  # fmt: skip
