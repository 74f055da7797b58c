"""The RT-DETR variant table (Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection", CVPR 2024;
the official ``rtdetr_pytorch`` configs).

Variants are rows of one table (:data:`VARIANTS`); ``create_model(name, **overrides)`` replaces
fields of the row with :func:`dataclasses.replace`, so every override is a typed field here.
"""

from __future__ import annotations

from dataclasses import dataclass

BASIC_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_WIDTHS = (256, 512, 1024, 2048)


@dataclass(frozen=True)
class RtDetrVariant:
    """One RT-DETR configuration. ``image_size`` is the fixed (h, w) every image is resized to
    (no aspect ratio kept, no padding; multiples of 32)."""

    # backbone: ResNet-vd (PResNet)
    block: str = "bottleneck"  # "basic" (R18 / R34) or "bottleneck" (R50 / R101)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = BOTTLENECK_WIDTHS
    stem_width: int = 64
    backbone_norm: str = "frozen"  # "frozen" (official R50 / R101) or "batch" (official R18 / R34)
    freeze_stem: bool = True  # official freeze_at=0 for R50 / R101
    # hybrid encoder
    encoder_dim: int = 256
    encoder_heads: int = 8
    encoder_ffn_dim: int = 1024
    encoder_layers: int = 1
    expansion: float = 1.0  # CSP width fraction (0.5 for R18 / R34)
    # decoder
    decoder_dim: int = 256
    decoder_heads: int = 8
    decoder_ffn_dim: int = 1024
    decoder_layers: int = 6
    decoder_points: int = 4
    num_queries: int = 300
    dropout: float = 0.0
    num_classes: int = 80
    image_size: tuple[int, int] = (640, 640)
    # training: denoising queries, matcher costs, loss weights (paper / official config)
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    loss_vfl: float = 1.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0


_BASIC = dict(block="basic", widths=BASIC_WIDTHS, backbone_norm="batch", freeze_stem=False, expansion=0.5)

VARIANTS: dict[str, RtDetrVariant] = {
    "rtdetr_r18vd": RtDetrVariant(**_BASIC, depths=(2, 2, 2, 2), decoder_layers=3),
    "rtdetr_r34vd": RtDetrVariant(**_BASIC, depths=(3, 4, 6, 3), decoder_layers=4),
    "rtdetr_r50vd": RtDetrVariant(),
    "rtdetr_r101vd": RtDetrVariant(depths=(3, 4, 23, 3), encoder_dim=384, encoder_ffn_dim=2048),
}
