"""Anchors and the Faster R-CNN box coder. Boxes are xyxy pixels in our API; the network's
regression outputs are (ty, tx, th, tw) per anchor, as the published weights expect."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def feature_sizes(image_size: tuple[int, int], min_level: int, max_level: int) -> list[tuple[int, int]]:
    """(h, w) of levels min..max: each level halves the previous one, rounding up."""
    h, w = image_size
    sizes = []
    for level in range(1, max_level + 1):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        if level >= min_level:
            sizes.append((h, w))
    return sizes


def generate_anchors(image_size: tuple[int, int], min_level: int, max_level: int, num_scales: int,
                     aspect_ratios: Sequence[tuple[float, float]], anchor_scale: float) -> Tensor:
    """All anchors of an input of ``image_size`` (h, w) as ``Tensor[A, 4]`` xyxy pixels (float32).

    Order: level, then row-major position, then octave scale, then aspect. Per level the stride is
    ``image / feature_size`` per axis; centres sit at ``stride/2 + k * stride``; the size is
    ``anchor_scale * stride * 2**(octave/num_scales) * aspect``. Computed in float64.
    """
    per_level = []
    for fh, fw in feature_sizes(image_size, min_level, max_level):
        stride_y, stride_x = image_size[0] / fh, image_size[1] / fw
        cy = (torch.arange(fh, dtype=torch.float64) + 0.5) * stride_y
        cx = (torch.arange(fw, dtype=torch.float64) + 0.5) * stride_x
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
        half_sizes = []
        for octave in range(num_scales):
            for ax, ay in aspect_ratios:
                scale = anchor_scale * 2 ** (octave / num_scales) / 2.0
                hx, hy = scale * stride_x * ax, scale * stride_y * ay
                half_sizes.append([-hx, -hy, hx, hy])
        per_level.append((centres + torch.tensor(half_sizes, dtype=torch.float64)).reshape(-1, 4))
    return torch.cat(per_level).float()


def decode_boxes(codes: Tensor, anchors: Tensor) -> Tensor:
    """(ty, tx, th, tw) codes ``[..., 4]`` relative to xyxy anchors ``[..., 4]`` -> xyxy boxes."""
    wa, ha = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    xa, ya = anchors[..., 0] + wa / 2, anchors[..., 1] + ha / 2
    ty, tx, th, tw = codes.unbind(-1)
    w, h = torch.exp(tw) * wa, torch.exp(th) * ha
    x, y = tx * wa + xa, ty * ha + ya
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=-1)


def encode_boxes(boxes: Tensor, anchors: Tensor, eps: float = 1e-8) -> Tensor:
    """xyxy ``boxes`` relative to xyxy ``anchors`` (both ``[..., 4]``) -> (ty, tx, th, tw)."""
    wa, ha = anchors[..., 2] - anchors[..., 0] + eps, anchors[..., 3] - anchors[..., 1] + eps
    xa, ya = anchors[..., 0] + (wa - eps) / 2, anchors[..., 1] + (ha - eps) / 2
    w, h = boxes[..., 2] - boxes[..., 0] + eps, boxes[..., 3] - boxes[..., 1] + eps
    x, y = boxes[..., 0] + (w - eps) / 2, boxes[..., 1] + (h - eps) / 2
    return torch.stack([(y - ya) / ha, (x - xa) / wa, torch.log(h / ha), torch.log(w / wa)], dim=-1)


def num_anchors_for(image_size: tuple[int, int], min_level: int, max_level: int, per_location: int) -> int:
    """Anchor count without building them."""
    return per_location * sum(h * w for h, w in feature_sizes(image_size, min_level, max_level))

