"""Tiled prediction for large images with small objects.

A large image is cut into overlapping tiles at native resolution; the tiles go through the model in
batches through the generic eval contract (``model(list[Tensor[3, h, w]]) -> list[dict]``, so any
family, an :func:`scaledet.optimize` copy or an :class:`~scaledet.export.OnnxDetector` works);
optionally a downscaled pass over the whole image adds the large objects. Detections are shifted
back to the image's pixels and merged:

1. **cut boxes**: a detection touching an inner tile border (one that is not an image border) is
   dropped when another tile sees that region whole (the box, pushed ``edge_margin`` px past the
   cut, lies inside the other tile away from its own inner borders); the whole view wins.
2. **duplicates** from overlapping tiles (and the full-image pass) are merged class by class with
   NMS (:func:`torchvision.ops.batched_nms`) or weighted box fusion (:func:`weighted_box_fusion`).

An image no larger than one tile (and no full-image pass) gives the model's own output unchanged.

    detections = scaledet.predict_tiled(model, image, tile=512, overlap=0.2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from scaledet.data.tiles import ImageSource, TensorImage, open_large_image, tile_grid

MERGES = ("nms", "wbf")
Detections = dict[str, Tensor]


#: the largest overlap taken: neighbouring tiles share 90% of a tile (ten tiles cover each pixel along a side)
MAX_OVERLAP = 0.9


@dataclass(frozen=True)
class TileOptions:
    """How :func:`predict_tiled` cuts and merges (the CLI's ``--tile`` / ``--overlap`` / ``--full-image``).

    Attributes:
        tile: tile side in pixels (square tiles; smaller where the image is smaller).
        overlap: fraction of the tile shared by neighbouring tiles, in ``[0, 1)``.
        full_image: also run the model on the whole image downscaled to ``full_image_size``.
        merge: ``"nms"`` (class-wise NMS) or ``"wbf"`` (class-wise weighted box fusion).
        iou_threshold: IoU above which two same-class detections are one object.
        edge_margin: a box edge within this many pixels of an inner tile border counts as cut.
        batch_size: tiles per model call (default :func:`default_batch_size`: 1 on a CPU, where batching
            tiles measured slower, 4 on a GPU).
        full_image_size: longest side of the full-image pass (default: ``tile``).
        max_detections: keep at most this many merged detections (``None``: all).
    """

    tile: int
    overlap: float = 0.2
    full_image: bool = False
    merge: str = "nms"
    iou_threshold: float = 0.5
    edge_margin: float = 4.0
    batch_size: int | None = None
    full_image_size: int | None = None
    max_detections: int | None = None

    def __post_init__(self) -> None:
        if int(self.tile) < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {self.tile}")
        if not 0.0 <= self.overlap <= MAX_OVERLAP:  # 0.99 of a 128 px tile: a step of 1 px, 200,000 tiles an image
            raise ValueError(f"overlap must be in [0, {MAX_OVERLAP}] (a fraction of the tile), got {self.overlap}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def default_batch_size(device: str | torch.device) -> int:
    """Tiles per model call when not given: 1 on a CPU (4 tiles a call ran at 0.80-0.84x the throughput of one
    at a time on 2 cores, docs/tiling.md), 4 on a GPU, where batches keep it busy."""
    return 1 if torch.device(device).type == "cpu" else 4


def predict_tiled(
    model: Callable[[list[Tensor]], list[Detections]],
    image: Tensor | ImageSource,
    tile: int | None = None,
    overlap: float = 0.2,
    *,
    full_image: bool = False,
    merge: str = "nms",
    batch_size: int | None = None,
    options: TileOptions | None = None,
    device: str | torch.device | None = None,
) -> Detections:
    """Detections of ``model`` on ``image`` through overlapping native-resolution tiles.

    Args:
        model: a detector following the eval contract (in eval mode).
        image: float ``Tensor[3, H, W]`` RGB in [0, 1], an :class:`~scaledet.data.tiles.ImageSource`
            (e.g. :func:`~scaledet.data.tiles.open_large_image`, which reads windows of a file) or an image
            file's path (opened with ``open_large_image``).
        tile, overlap, full_image, merge, batch_size: see :class:`TileOptions`; ``options`` gives
            all of them at once instead (then ``tile`` etc. are ignored).
        device: where the tiles go (default: the model's parameters' device, else the CPU).

    Returns:
        ``dict(boxes [N, 4] float xyxy pixels of ``image``, scores [N], labels [N] int64)`` by
        descending score. An image within one tile without ``full_image``: exactly ``model([image])[0]``.
    """
    if options is None:
        if tile is None:
            raise ValueError("predict_tiled needs tile=SIZE (or options=TileOptions(...))")
        options = TileOptions(int(tile), overlap, full_image, merge, batch_size=batch_size)
    if isinstance(image, (list, tuple)):
        raise ValueError(f"predict_tiled takes one image (a Tensor[3, H, W] or an ImageSource), got a "
                         f"{type(image).__name__} of {len(image)}: call it once per image")
    if isinstance(image, (str, Path)):
        image = open_large_image(image)
    if not isinstance(image, Tensor) and not all(hasattr(image, key) for key in ("height", "width", "read")):
        raise ValueError(f"predict_tiled takes a Tensor[3, H, W], an ImageSource or an image file's path, got a "
                         f"{type(image).__name__} (scaledet.data.load_image reads a file as a tensor)")
    source = TensorImage(image) if isinstance(image, Tensor) else image
    device = _device_of(model) if device is None else torch.device(device)
    windows = tile_grid(source.height, source.width, options.tile, options.overlap)
    if len(windows) == 1 and not options.full_image:
        with torch.no_grad():
            return model([source.read(tuple(windows[0].tolist())).to(device)])[0]
    batch_size = options.batch_size or default_batch_size(device)
    per_tile = _predict_windows(model, source, windows, batch_size, device)
    image_size = (source.height, source.width)
    kept = [_drop_cut_boxes(detections, index, windows, image_size, options.edge_margin)
            for index, detections in enumerate(per_tile)]
    if options.full_image and len(windows) > 1:
        full = _predict_full_image(model, source, options.full_image_size or options.tile, device)
        kept = [_drop_pieces_of_whole_objects(detections, index, windows, image_size, options.edge_margin, full)
                for index, detections in enumerate(kept)] + [full]
    merged = merge_detections(_concatenate(kept), options.merge, options.iou_threshold)
    if options.max_detections is not None:
        merged = {key: value[: options.max_detections] for key, value in merged.items()}
    return merged


def _device_of(model) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


def _predict_windows(model, source: ImageSource, windows: Tensor, batch_size: int,
                     device: torch.device) -> list[Detections]:
    """The model's detections of every window (``windows`` int ``[T, 4]`` xyxy), ``batch_size``
    tiles per call, shifted to image pixels (boxes float32)."""
    results: list[Detections] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        tiles = [source.read(tuple(window.tolist())).to(device) for window in chunk]
        with torch.no_grad():
            outputs = model(tiles)
        for window, output in zip(chunk, outputs):
            offset = window[:2].to(output["boxes"].device, torch.float32).repeat(2)
            results.append({"boxes": output["boxes"].float() + offset, "scores": output["scores"].float(),
                            "labels": output["labels"].long()})
    return results


def _predict_full_image(model, source: ImageSource, longest_side: int, device: torch.device) -> Detections:
    """The model's detections on the whole image downscaled to ``longest_side``, in image pixels."""
    small, (sx, sy) = source.downscaled(longest_side)
    with torch.no_grad():
        output = model([small.to(device)])[0]
    scale = torch.tensor([sx, sy, sx, sy], device=output["boxes"].device)
    boxes = output["boxes"].float() / scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, source.width)  # a reduced image's last pixel may reach past the edge
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, source.height)
    return {"boxes": boxes, "scores": output["scores"].float(), "labels": output["labels"].long()}


def _drop_cut_boxes(detections: Detections, index: int, windows: Tensor, image_size: tuple[int, int],
                    margin: float) -> Detections:
    """``detections`` of tile ``index`` (image pixels) without the boxes cut by an inner border of
    that tile that another tile sees whole.

    A box is cut on a side when its edge lies within ``margin`` px of the tile's border there and
    that border is inside the image. It is dropped when some other tile contains the box extended
    by ``margin`` past each cut side, with every edge of that extended box at least ``margin``
    from the other tile's own inner borders.
    """
    boxes = detections["boxes"]
    if not len(boxes):
        return detections
    windows = windows.to(boxes.device, torch.float32)
    inner = _inner_sides(windows, image_size)  # [T, 4] bool: x1, y1, x2, y2 side inside the image
    cut = _cut_sides(boxes, windows[index], inner[index], margin)  # [N, 4]
    if not cut.any():
        return detections
    push = torch.tensor([-margin, -margin, margin, margin], device=boxes.device)
    needed = boxes + cut * push  # [N, 4] the region the whole object needs
    safe = windows + inner * push.neg()  # [T, 4] each tile shrunk by margin on its inner sides
    inside = ((needed[:, None, :2] >= safe[None, :, :2]) & (needed[:, None, 2:] <= safe[None, :, 2:])).all(-1)
    inside[:, index] = False  # [N, T]
    drop = cut.any(1) & inside.any(1)
    return {key: value[~drop] for key, value in detections.items()}


def _cut_sides(boxes: Tensor, window: Tensor, inner: Tensor, margin: float) -> Tensor:
    """``[N, 4]`` bool: which sides (x1, y1, x2, y2) of ``boxes`` lie within ``margin`` px of an ``inner`` side of
    ``window`` (a tile border inside the image: the object may go on past it)."""
    near = torch.cat([boxes[:, :2] <= window[:2] + margin, boxes[:, 2:] >= window[2:] - margin], dim=1)
    return near & inner


#: a cut box with this much of its area inside a larger same-class full-image box may be that object's piece
PIECE_COVER = 0.8
#: ... and is dropped only when the full-image box scores this many times more (the whole view clearly more
#: confident): a real smaller object of the class inside the large one, seen whole by the tile, scores high
PIECE_SCORE_RATIO = 1.5


def _drop_pieces_of_whole_objects(detections: Detections, index: int, windows: Tensor, image_size: tuple[int, int],
                                  margin: float, full: Detections) -> Detections:
    """``detections`` of tile ``index`` without the pieces of objects the full-image pass sees whole.

    A piece is a box cut by an inner border of its tile (:func:`_cut_sides`; what remains after
    :func:`_drop_cut_boxes` is cut in every tile: an object larger than the overlap) with at least
    :data:`PIECE_COVER` of its area inside a larger full-image box of the same class that scores at least
    :data:`PIECE_SCORE_RATIO` times as much (so a box scoring above 1 / 1.5 is never dropped). Its IoU with the
    whole box is small, so the merge kept both.
    """
    boxes = detections["boxes"]
    if not len(boxes) or not len(full["boxes"]):
        return detections
    windows = windows.to(boxes.device, torch.float32)
    cut = _cut_sides(boxes, windows[index], _inner_sides(windows, image_size)[index], margin).any(1)  # [N]
    whole = full["boxes"].to(boxes.device)
    top_left = torch.maximum(boxes[:, None, :2], whole[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], whole[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(-1)  # [N, F]
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    whole_area = (whole[:, 2:] - whole[:, :2]).prod(-1)
    covers = ((overlap >= PIECE_COVER * area[:, None]) & (whole_area[None] > area[:, None])
              & (detections["labels"][:, None] == full["labels"].to(boxes.device)[None])
              & (full["scores"].to(boxes.device)[None] >= PIECE_SCORE_RATIO * detections["scores"][:, None]))
    drop = cut & covers.any(1)
    return {key: value[~drop] for key, value in detections.items()}


def _inner_sides(windows: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``[T, 4]`` bool: which sides (x1, y1, x2, y2) of each window lie inside the image, i.e. are
    cuts rather than the image's own border."""
    height, width = image_size
    return torch.stack([windows[:, 0] > 0, windows[:, 1] > 0, windows[:, 2] < width, windows[:, 3] < height], 1)


def _concatenate(parts: Sequence[Detections]) -> Detections:
    return {key: torch.cat([part[key] for part in parts]) for key in ("boxes", "scores", "labels")}


def merge_detections(detections: Detections, method: str = "nms", iou_threshold: float = 0.5) -> Detections:
    """Merge duplicate detections class by class: ``"nms"`` keeps the best of each group
    (:func:`torchvision.ops.batched_nms`), ``"wbf"`` fuses them (:func:`weighted_box_fusion`).

    ``detections``: boxes ``[N, 4]`` xyxy, scores ``[N]``, labels ``[N]``; returns the same
    format by descending score.
    """
    from torchvision.ops import batched_nms

    if method == "nms":
        keep = batched_nms(detections["boxes"], detections["scores"], detections["labels"], iou_threshold)
        return {key: value[keep] for key, value in detections.items()}
    if method == "wbf":
        return weighted_box_fusion(detections, iou_threshold)
    raise ValueError(f"merge must be one of {MERGES}, got {method!r}")


def weighted_box_fusion(detections: Detections, iou_threshold: float = 0.5) -> Detections:
    """Weighted box fusion (Solovyev et al. 2021), class by class, for one image.

    Boxes are visited by descending score; each joins the first cluster of its class whose fused
    box it overlaps with IoU > ``iou_threshold``, else starts a new cluster. A cluster's box is the
    score-weighted mean of its members' coordinates and its score their maximum (the members are
    views of one object from overlapping tiles, not votes of independent models, so the score is
    not averaged down).

    ``detections``: boxes ``[N, 4]`` xyxy, scores ``[N]``, labels ``[N]`` int64; returns
    ``[M, 4]``, ``[M]``, ``[M]`` (``M <= N``) by descending score.
    """
    boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
    parts = []
    for label in labels.unique().tolist():
        mine = (labels == label).nonzero().squeeze(1)
        mine = mine[scores[mine].argsort(descending=True)]
        fused, best = _fuse_one_class(boxes[mine], scores[mine], iou_threshold)
        parts.append({"boxes": fused, "scores": best, "labels": labels.new_full((len(best),), label)})
    if not parts:
        return {"boxes": boxes[:0], "scores": scores[:0], "labels": labels[:0]}
    merged = _concatenate(parts)
    order = merged["scores"].argsort(descending=True)
    return {key: value[order] for key, value in merged.items()}


def _fuse_one_class(boxes: Tensor, scores: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """Clusters of ``boxes [N, 4]`` (sorted by descending ``scores [N]``) -> (fused boxes [M, 4],
    best scores [M]); see :func:`weighted_box_fusion`."""
    from torchvision.ops import box_iou

    weighted_sums, weights = torch.zeros_like(boxes), torch.zeros_like(scores)
    fused, best = torch.zeros_like(boxes), torch.zeros_like(scores)
    count = 0
    for box, score in zip(boxes, scores):
        match = -1
        if count:
            iou, index = box_iou(box[None], fused[:count])[0].max(0)
            match = int(index) if iou > iou_threshold else -1
        if match < 0:
            match, count = count, count + 1
            best[match] = score
        weight = score.clamp_min(1e-6)  # zero-score members still count (as a plain mean)
        weighted_sums[match] += box * weight
        weights[match] += weight
        fused[match] = weighted_sums[match] / weights[match]
    return fused[:count], best[:count]


def tiles_per_image(height: int, width: int, options: TileOptions) -> int:
    """How many tiles :func:`predict_tiled` runs for an ``height x width`` image (full-image pass included)."""
    count = len(tile_grid(height, width, options.tile, options.overlap))
    return count + int(options.full_image and count > 1)


__all__ = ["MERGES", "TileOptions", "merge_detections", "predict_tiled", "tiles_per_image", "weighted_box_fusion"]
