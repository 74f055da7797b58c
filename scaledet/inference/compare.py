"""Compare two detection lists (same contract) with tolerances, robust to near-tie reordering.

Both are used at run time: :func:`detection_differences` reports the largest differences (the
equality lines of ``scaledet bench``); :func:`compare_detection_sets` matches detections as sets and
gives a PASS / FAIL verdict against stated tolerances (``scaledet export --check``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchvision.ops import box_iou


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


@dataclass
class SetComparison:
    """What :func:`compare_detection_sets` found; :attr:`passed` is the verdict, :meth:`summary` says why.

    Counts are over all images. ``matched``: pairs (same label, scores within ``score_tol``, every box
    coordinate within ``box_tol`` px). ``tied``: unmatched detections explained by a near-tie (see
    :func:`compare_detection_sets`), allowed up to ``max_tied_fraction`` of all detections.
    ``unexplained``: the other unmatched ones, described in ``problems`` (at most 5 kept).
    """

    score_tol: float
    box_tol: float
    max_tied_fraction: float
    swap_iou: float
    reference_count: int = 0
    other_count: int = 0
    matched: int = 0
    tied: int = 0
    unexplained: int = 0
    max_score_diff: float = 0.0  # over matched pairs and over scores rank by rank
    max_box_diff: float = 0.0  # px, over matched pairs
    problems: list[str] = field(default_factory=list)

    @property
    def too_many_ties(self) -> bool:
        return self.tied > self.max_tied_fraction * (self.reference_count + self.other_count)

    @property
    def passed(self) -> bool:
        return self.unexplained == 0 and not self.too_many_ties and self.max_score_diff <= self.score_tol

    def summary(self) -> str:
        """Lines: the numbers against the tolerances, then ``PASS`` or ``FAIL: <reasons>``."""
        lines = [
            f"{self.matched} of {self.reference_count} reference / {self.other_count} other detections matched "
            f"(same label, score within {self.score_tol:g}, box within {self.box_tol:g} px): "
            f"max score diff {self.max_score_diff:.3g}, max box diff {self.max_box_diff:.3g} px; "
            f"{self.tied} unmatched at near-tied scores, {self.unexplained} unexplained"
        ]
        reasons = list(self.problems)
        if self.unexplained > len(self.problems):
            reasons.append(f"... {self.unexplained - len(self.problems)} more unexplained differences")
        if self.max_score_diff > self.score_tol:
            reasons.append(f"scores differ by {self.max_score_diff:.3g} > {self.score_tol:g}")
        if self.too_many_ties:
            total = self.reference_count + self.other_count
            reasons.append(f"{self.tied} of {total} detections are unmatched at near-tied scores (more than "
                           f"{self.max_tied_fraction:.0%}): too many to tell ties from errors (untrained weights "
                           f"give tied scores; check with trained weights)")
        lines.append("PASS" if self.passed else "FAIL: " + "; ".join(reasons))
        return "\n".join(lines)


def compare_detection_sets(reference: list[dict[str, Tensor]], other: list[dict[str, Tensor]],
                           score_tol: float = 1e-4, box_tol: float = 1e-2, max_tied_fraction: float = 0.05,
                           swap_iou: float = 0.5) -> SetComparison:
    """Compare two detectors' outputs image by image as *sets* and give a verdict.

    Each image's detections (``boxes [N, 4]`` xyxy pixels, ``scores [N]``, ``labels [N]``) are
    matched greedily, closest boxes first, among pairs with the same label, scores within
    ``score_tol`` and every box coordinate within ``box_tol`` pixels; the order of the lists does
    not matter. A detection left unmatched is *tied* when its score is within ``score_tol`` of
    the lowest score of either list (which detections make the cut is then a tie), or of an
    unmatched same-label detection of the other list that overlaps it by IoU >= ``swap_iou``
    (two near-equal candidates NMS chose between; 0.5 is EfficientDet's NMS IoU); anything else
    is *unexplained*. Scores sorted descending must also agree rank by rank within ``score_tol``.

    The verdict passes when nothing is unexplained, scores agree, and at most ``max_tied_fraction``
    of the detections are tied. The cap matters: a box that moved but kept its score looks like
    such a swap, and with untrained weights (all scores tied) nearly everything is tied, which is
    no check at all.
    """
    if len(reference) != len(other):
        raise ValueError(f"got {len(reference)} reference images but {len(other)} others")
    out = SetComparison(score_tol, box_tol, max_tied_fraction, swap_iou)
    for index, (ref, det) in enumerate(zip(reference, other)):
        _compare_image(index, _as_float(ref), _as_float(det), out)
    return out


def _as_float(detections: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"boxes": detections["boxes"].detach().float().cpu().reshape(-1, 4),
            "scores": detections["scores"].detach().float().cpu().reshape(-1),
            "labels": detections["labels"].detach().cpu().reshape(-1).long()}


def _compare_image(index: int, ref: dict[str, Tensor], det: dict[str, Tensor], out: SetComparison) -> None:
    out.reference_count += len(ref["scores"])
    out.other_count += len(det["scores"])
    n = min(len(ref["scores"]), len(det["scores"]))
    if n:
        ranked = ref["scores"].sort(descending=True).values[:n] - det["scores"].sort(descending=True).values[:n]
        out.max_score_diff = max(out.max_score_diff, float(ranked.abs().max()))
    box_diff = (ref["boxes"][:, None, :] - det["boxes"][None, :, :]).abs().amax(-1)  # [N_ref, N_det] px
    score_diff = (ref["scores"][:, None] - det["scores"][None, :]).abs()
    same_label = ref["labels"][:, None] == det["labels"][None, :]
    candidates = same_label & (score_diff <= out.score_tol) & (box_diff <= out.box_tol)
    ref_free = torch.ones(len(ref["scores"]), dtype=torch.bool)
    det_free = torch.ones(len(det["scores"]), dtype=torch.bool)
    pairs = candidates.nonzero().tolist()
    for i, j in sorted(pairs, key=lambda pair: float(box_diff[pair[0], pair[1]])):
        if ref_free[i] and det_free[j]:
            ref_free[i] = det_free[j] = False
            out.matched += 1
            out.max_score_diff = max(out.max_score_diff, float(score_diff[i, j]))
            out.max_box_diff = max(out.max_box_diff, float(box_diff[i, j]))
    cutoffs = [float(d["scores"].min()) for d in (ref, det) if len(d["scores"])]
    overlap = box_iou(ref["boxes"], det["boxes"])
    for name, mine, free, theirs, their_free, diff, iou in (
        ("reference", ref, ref_free, det, det_free, box_diff, overlap),
        ("other", det, det_free, ref, ref_free, box_diff.T, overlap.T),
    ):
        for i in free.nonzero().flatten().tolist():
            label, score = int(mine["labels"][i]), float(mine["scores"][i])
            partners = (their_free & (theirs["labels"] == label) & ((theirs["scores"] - score).abs() <= out.score_tol)
                        & (iou[i] >= out.swap_iou))
            if partners.any() or any(abs(score - cutoff) <= out.score_tol for cutoff in cutoffs):
                out.tied += 1
                continue
            out.unexplained += 1
            if len(out.problems) < 5:
                same = theirs["labels"] == label
                nearest = f"{float(diff[i][same].min()):.3g} px" if same.any() else "none"
                box = [round(v, 1) for v in mine["boxes"][i].tolist()]
                out.problems.append(f"image {index}: {name} detection label {label} score {score:.4f} box {box} "
                                    f"has no counterpart (nearest same-label box: {nearest})")
