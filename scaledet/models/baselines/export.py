"""RetinaNet's ONNX graph: torchvision's backbone, head, anchors and box coder, then the same
selection as ``RetinaNet.postprocess_detections`` in export-friendly form, NMS inside.

Inputs ``images [B, 3, H, W]`` (as :meth:`RetinaNetDetector.preprocess
<scaledet.models.baselines.retinanet.RetinaNetDetector.preprocess>` makes them: normalised, resized,
padded to the model's square input; the batch is dynamic) and ``image_sizes [B, 2]`` float (h, w of each resized
image inside); outputs ``batch_index [M]`` int64, ``boxes [M, 4]`` xyxy resized-image pixels,
``scores [M]``, ``labels [M]`` int64 - per image at most ``detections_per_img``, by descending score.

Equal to torchvision's selection: per level, torchvision keeps the scores above ``score_thresh`` and
then their ``topk_candidates`` best; here the level's ``topk_candidates`` best scores are taken first
and the threshold applied after NMS. Both keep the same boxes: the top-k of the scores above the
threshold are the top-k overall that are above it, and greedy NMS is decided in score order, so boxes
below the threshold (all scored lower) suppress none above it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from scaledet.models.ops import nms_per_class

INPUT_NAMES = ["images", "image_sizes"]
OUTPUT_NAMES = ["batch_index", "boxes", "scores", "labels"]


class RetinaNetExport(nn.Module):
    """Network + anchors + per-level top-k + decode + clip + NMS + score threshold (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model.net
        self.topk_candidates = self.net.topk_candidates
        self.score_thresh = self.net.score_thresh
        self.nms_thresh = self.net.nms_thresh
        self.detections_per_img = self.net.detections_per_img

    def _level_candidates(self, logits: Tensor, codes: Tensor, anchors: Tensor,
                          limit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One level: logits ``[B, n, K]``, codes ``[B, n, 4]``, anchors ``[n, 4]``, limit ``[B, 1, 4]``
        (w, h, w, h) -> the ``topk_candidates`` best (boxes ``[B, k, 4]`` clipped, scores ``[B, k]``,
        labels ``[B, k]``)."""
        batch, count, num_classes = logits.shape
        scores = logits.sigmoid().flatten(1)
        scores, flat = scores.topk(torch.sym_min(self.topk_candidates, count * num_classes), dim=1)
        anchor_index, labels = flat // num_classes, flat % num_classes
        codes = torch.gather(codes, 1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))
        boxes = self.net.box_coder.decode_single(codes.reshape(-1, 4), anchors[anchor_index].reshape(-1, 4))
        return boxes.reshape(batch, -1, 4).clamp(min=0).minimum(limit), scores, labels

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        features = list(self.net.backbone(images).values())
        head = self.net.head(features)
        anchors = self.net.anchor_generator(ImageList(images, [tuple(images.shape[-2:])]), features)[0]
        per_location = self.net.anchor_generator.num_anchors_per_location()[0]
        per_level = [f.shape[2] * f.shape[3] * per_location for f in features]
        limit = image_sizes.flip(-1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] = (w, h, w, h)
        levels = [self._level_candidates(logits, codes, level_anchors, limit) for logits, codes, level_anchors in
                  zip(head["cls_logits"].split(per_level, 1), head["bbox_regression"].split(per_level, 1),
                      anchors.split(per_level))]
        boxes, scores, labels = (torch.cat(parts, dim=1) for parts in zip(*levels))
        batch_index, boxes, scores, labels = nms_per_class(boxes, scores, labels, self.detections_per_img,
                                                           self.nms_thresh, image_sizes.max() + 1)
        keep = scores > self.score_thresh
        return batch_index[keep], boxes[keep], scores[keep], labels[keep]
