"""Compare two detection lists (same contract) with tolerances, robust to near-tie reordering."""

from __future__ import annotations

import torch
from torch import Tensor


def detection_differences(reference: list[dict[str, Tensor]], other: list[dict[str, Tensor]],
                          score_tol: float = 1e-4) -> dict[str, float]:
    """Match each image's detections of ``other`` to ``reference`` and report the worst differences.

    Scores are compared rank by rank; each detection of ``other`` is matched to the closest reference
    box among those with the same label and a score within ``score_tol`` (near-equal or tied scores
    may legitimately swap order). Returns ``{"max_score_diff", "max_box_diff" (px), "count_diff",
    "unmatched"}`` (``unmatched``: detections with no same-label reference of that score); equal
    detections give zeros everywhere.
    """
    if len(reference) != len(other):
        raise ValueError(f"got {len(reference)} reference images but {len(other)} others")
    out = {"max_score_diff": 0.0, "max_box_diff": 0.0, "count_diff": 0, "unmatched": 0}
    for ref, det in zip(reference, other):
        out["count_diff"] += abs(len(ref["scores"]) - len(det["scores"]))
        n = min(len(ref["scores"]), len(det["scores"]))
        if n == 0:
            continue
        ref_boxes, ref_scores, ref_labels = (ref[k][:n].float() for k in ("boxes", "scores", "labels"))
        boxes, scores, labels = (det[k][:n].float() for k in ("boxes", "scores", "labels"))
        out["max_score_diff"] = max(out["max_score_diff"], float((ref_scores - scores).abs().max()))
        for i in range(n):
            candidates = (ref_labels == labels[i]) & ((ref_scores - scores[i]).abs() <= score_tol)
            if not candidates.any():
                out["unmatched"] += 1
                continue
            diff = (ref_boxes[candidates] - boxes[i]).abs().amax(dim=1).min()
            out["max_box_diff"] = max(out["max_box_diff"], float(diff))
    return out


def same_detections(reference: list[dict[str, Tensor]], other: list[dict[str, Tensor]],
                    score_tol: float = 1e-4, box_tol: float = 1e-2) -> bool:
    """True when :func:`detection_differences` finds equal counts, scores rank by rank within
    ``score_tol`` and every box within ``box_tol`` pixels of a same-label reference box."""
    d = detection_differences(reference, other, score_tol)
    return (d["count_diff"] == 0 and d["unmatched"] == 0
            and d["max_score_diff"] <= score_tol and d["max_box_diff"] <= box_tol)
