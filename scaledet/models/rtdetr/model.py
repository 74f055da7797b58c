"""The RT-DETR detector behind the :class:`~scaledet.models.base.Detector` contract.

Pipeline: every image is resized (bilinear, antialiased, aspect ratio *not* kept) to the fixed
``image_size`` and kept in [0, 1] (no mean / std), as RT-DETR's image processor does; the
ResNet-vd backbone (:mod:`.backbone`) feeds the hybrid encoder (:mod:`.encoder`); the decoder
(:mod:`.decoder`) selects ``num_queries`` proposals and refines them layer by layer.

Box formats: the network predicts normalised ``(cx, cy, w, h)`` of the input image (stretched
from the original, so the same numbers in original-image coordinates); targets and detections are
xyxy pixels of the original images.

Training: :meth:`forward_features` in training mode stops after query selection (the decoder
inputs), and :meth:`loss` runs the decoder on the selected queries *and* the denoising queries
built from the targets (:mod:`.denoising`), which the network itself never sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from scaledet.models import preprocessing
from scaledet.models.base import Batch, Detections, Detector, ExportSpec, default_param_groups
from scaledet.models.detr import transforms as detr_transforms
from scaledet.models.detr.preprocess import normalized_targets
from scaledet.models.rtdetr import export
from scaledet.models.rtdetr.backbone import PResNet
from scaledet.models.rtdetr.criterion import RtDetrCriterion
from scaledet.models.rtdetr.decoder import Decoder
from scaledet.models.rtdetr.denoising import denoising_groups
from scaledet.models.rtdetr.encoder import HybridEncoder, RepVggBlock
from scaledet.models.rtdetr.postprocess import postprocess

#: raw eval outputs: (logits [B, Q, K], boxes [B, Q, 4] normalised cxcywh) of the last decoder layer
EvalOutputs = tuple[Tensor, Tensor]


class RTDETR(Detector):
    """RT-DETR (Zhao et al. 2024) following the :class:`~scaledet.models.base.Detector` contract.

    * ``model(images)`` in eval mode: list of float [3, H, W] RGB in [0, 1] -> list of
      ``dict(boxes [Q, 4] xyxy pixels, scores [Q], labels [Q] int64)`` by score (the best Q
      (query, class) pairs, no threshold).
    * ``model(images, targets)`` -> dict of losses (:class:`~scaledet.models.rtdetr.criterion.RtDetrCriterion`).

    Args:
        backbone / encoder / decoder: the three networks.
        criterion: the training loss.
        num_classes: K; image_size: the fixed (h, w) input.
        num_denoising / label_noise_ratio / box_noise_scale: the denoising queries of training.
        class_names, category_ids, name, overrides: see :class:`~scaledet.models.base.Detector`.
    """

    def __init__(self, backbone: PResNet, encoder: HybridEncoder, decoder: Decoder, criterion: RtDetrCriterion,
                 num_classes: int, image_size: tuple[int, int], num_denoising: int = 100,
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 class_names: Sequence[str] | None = None, name: str = "rtdetr_r50vd",
                 overrides: dict | None = None, category_ids: Sequence[int] | None = None) -> None:
        super().__init__(name, num_classes, image_size, class_names, category_ids, overrides)
        self.backbone, self.encoder, self.decoder = backbone, encoder, decoder
        self.criterion = criterion
        self.num_denoising = num_denoising
        self.label_noise_ratio, self.box_noise_scale = label_noise_ratio, box_noise_scale

    def input_scale(self, height: int, width: int, image_size: Sequence[int] | None = None) -> tuple[float, float]:
        """Every image is stretched to ``image_size`` (h, w): the two scales differ."""
        size = tuple(image_size or self.image_size)
        return size[0] / height, size[1] / width

    def describe_input(self, image_size: Sequence[int] | None = None) -> str:
        size = tuple(image_size or self.image_size)
        return f"{size[0]}x{size[1]} (stretched, aspect not kept)"

    # ----------------------------------------------------------------------------------------
    # the call chain
    def preprocess(self, images: list[Tensor], training: bool = False) -> Batch:
        """Resize each image to ``image_size`` (bilinear, antialiased, aspect ratio not kept) and
        stack: ``inputs = (batch [B, 3, h, w] in [0, 1],)``. Training uses the same resize."""
        size = tuple(self.image_size)
        resized = [image if tuple(image.shape[1:]) == size else
                   F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
                   for image in images]
        return Batch(inputs=(torch.stack(resized),), image_sizes=[(int(i.shape[1]), int(i.shape[2])) for i in images])

    def encode(self, images: Tensor) -> tuple[Tensor, list[tuple[int, int]], dict[str, Tensor]]:
        """images [B, 3, h, w] -> (memory [B, S, C], level shapes, the selected queries
        (:meth:`Decoder.select_queries <scaledet.models.rtdetr.decoder.Decoder.select_queries>`))."""
        memory, shapes = self.decoder.flatten(self.encoder(self.backbone(images)))
        return memory, shapes, self.decoder.select_queries(memory, shapes)

    def forward_features(self, images: Tensor):
        """Eval: images [B, 3, h, w] in [0, 1] -> (logits [B, Q, K], boxes [B, Q, 4] normalised
        cxcywh) of the last decoder layer. Training: the decoder inputs ``dict(memory, shapes,
        queries, boxes, enc_logits, enc_boxes)``; :meth:`loss` runs the decoder."""
        memory, shapes, selected = self.encode(images)
        if self.training:
            return {"memory": memory, "shapes": shapes, **selected}
        return self.decoder(selected["queries"], selected["boxes"], memory, shapes)

    def postprocess(self, outputs: EvalOutputs, batch: Batch, fast: bool = False) -> list[Detections]:
        """The best Q (query, class) pairs per image in original-image pixels
        (:func:`~scaledet.models.rtdetr.postprocess.postprocess`); ``fast`` changes nothing."""
        logits, boxes = outputs
        return postprocess(logits, boxes, batch.image_sizes)

    def loss(self, outputs: dict, batch: Batch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Run the decoder on the selected queries plus the denoising groups of ``targets`` (xyxy
        pixels of the original images, normalised here), every layer's outputs into the criterion."""
        targets = normalized_targets(batch.image_sizes, targets)
        queries, boxes, mask, groups = outputs["queries"], outputs["boxes"], None, None
        if self.decoder.denoising_class_embed is not None:
            groups = denoising_groups(targets, self.decoder.denoising_class_embed, self.num_classes,
                                      self.decoder.num_queries, self.num_denoising, self.label_noise_ratio,
                                      self.box_noise_scale)
        if groups is not None:
            queries = torch.cat([groups.queries.to(queries.dtype), queries], 1)
            boxes = torch.cat([groups.box_logits.to(boxes.dtype), boxes], 1)
            mask = groups.attn_mask
        logits, layer_boxes = self.decoder(queries, boxes, outputs["memory"], outputs["shapes"], mask, all_layers=True)
        results = {"enc_logits": outputs["enc_logits"], "enc_boxes": outputs["enc_boxes"]}
        if groups is not None:
            split = groups.queries.shape[1]
            results.update(dn_logits=logits[:, :, :split], dn_boxes=layer_boxes[:, :, :split])
            logits, layer_boxes = logits[:, :, split:], layer_boxes[:, :, split:]
        return self.criterion({**results, "logits": logits, "boxes": layer_boxes}, targets, groups)

    # ----------------------------------------------------------------------------------------
    # training hooks
    def param_groups(self, lr: float, weight_decay: float, backbone_lr: float | None = None) -> list[dict]:
        """The official groups: backbone at ``backbone_lr`` (default ``lr / 10``); no weight decay on
        norms and biases (1-D parameters) anywhere; everything else at ``lr``."""
        return default_param_groups(self, lr, weight_decay, lr / 10 if backbone_lr is None else backbone_lr)

    def train_transforms(self, hflip: float = 0.5, crop: float = 0.5, min_box_size: float = 1.0):
        """Flip and a random crop at the image's own size (the DETR family's pipeline,
        :func:`scaledet.models.detr.transforms.train_transforms`); :meth:`preprocess` then
        stretches to ``image_size``, as RT-DETR's RandomIoUCrop + Resize do."""
        return detr_transforms.train_transforms(hflip=hflip, crop=crop, min_box_size=min_box_size,
                                                model_resize=detr_transforms.StretchResize(*self.image_size))

    # ----------------------------------------------------------------------------------------
    # inference and export
    def prepare_for_inference(self) -> None:
        """RepVGG's deploy form: every RepVGG block of the encoder becomes one 3x3 convolution
        (:meth:`RepVggBlock.reparameterize <scaledet.models.rtdetr.encoder.RepVggBlock.reparameterize>`);
        eval output unchanged up to float rounding."""
        for module in self.encoder.modules():
            if isinstance(module, RepVggBlock) and module.fused is None:
                module.reparameterize()

    def export_spec(self, input_size: tuple[int, int] | None = None) -> ExportSpec:
        """The ONNX graph of :mod:`scaledet.models.rtdetr.export` at the model's fixed input size
        (``input_size``, if given, must equal it)."""
        if input_size is not None and tuple(input_size) != tuple(self.image_size):
            raise ValueError(f"RT-DETR runs at its fixed input {tuple(self.image_size)}, not {tuple(input_size)}")
        return export.export_spec(self, tuple(self.image_size))

    def export_feeds(self, batch: Batch) -> dict[str, Tensor]:
        """``images`` as preprocessed and ``image_sizes [B, 2]`` float (h, w) of the originals."""
        (images,) = batch.inputs
        sizes = torch.tensor([list(size) for size in batch.image_sizes], dtype=torch.float32, device=images.device)
        return dict(zip(export.INPUT_NAMES, (images, sizes)))

    def detections_from_export(self, outputs: Sequence[Tensor], batch: Batch) -> list[Detections]:
        """The graph's ``(boxes [B, Q, 4], scores [B, Q], labels [B, Q])`` -> one dict per image."""
        boxes, scores, labels = outputs
        return [{"boxes": b, "scores": s, "labels": l} for b, s, l in zip(boxes, scores, labels)]

    def preprocessing_spec(self) -> dict:
        """:meth:`preprocess` written out (:mod:`scaledet.models.preprocessing`): stretched to
        ``image_size``, values left in [0, 1] (no normalisation), no padding."""
        height, width = self.image_size
        return preprocessing.spec(
            constants={"H": height, "W": width}, let=[],
            steps=[preprocessing.resize("(H, W)", antialias=True)],
            feeds={"images": preprocessing.BATCH, "image_sizes": "[h, w]"},
            boxes="boxes [B, Q, 4] xyxy in each image's own pixels, scores [B, Q], labels [B, Q] (0-based: the "
                  "'config' metadata's class_names / category_ids)")

