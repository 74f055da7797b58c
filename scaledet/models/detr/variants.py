"""The DETR variant table and the COCO class names (the training recipe: :mod:`scaledet.models.detr.recipes`).

Variants are rows of one table (:data:`VARIANTS`); ``create_model(name, **overrides)`` replaces
fields of the row with :func:`dataclasses.replace`, so every override is a typed field here.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaledet.models.coco_names import COCO_NAMES_BY_ID

# The official DETR checkpoints predict the 91 COCO ids (0..90) plus the no-object class (index 91).
COCO91_CLASS_NAMES: list[str] = list(COCO_NAMES_BY_ID)

# DETR's multi-scale training resize: shorter side drawn from these, longer side at most max_size.
DETR_TRAIN_SCALES: tuple[int, ...] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)

_URL = "https://dl.fbaipublicfiles.com/detr/"


@dataclass(frozen=True)
class DetrVariant:
    """One DETR configuration. All fields can be overridden through ``create_model(**overrides)``.

    Architecture fields follow the paper / official code; ``min_size``/``max_size`` are the eval
    resize (shorter side, cap on the longer side); ``train_min_sizes`` the shorter sides drawn at
    random per batch in training mode (DETR's multi-scale augmentation).
    """

    backbone: str = "resnet50"  # any torchvision ResNet name (resnet18/34 without dilation)
    dilation: bool = False  # DC5: dilation instead of stride in layer4 (stride 16)
    backbone_norm: str = "frozen"  # "frozen" (FrozenBatchNorm2d, as published) or "batch" (from scratch)
    backbone_trainable_layers: int = 3  # layer2-4 train, stem + layer1 frozen (official); 5 = all
    num_classes: int = 91  # object classes, no-object excluded (COCO ids 0..90)
    hidden_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 2048
    enc_layers: int = 6
    dec_layers: int = 6
    num_queries: int = 100
    dropout: float = 0.1
    min_size: int = 800
    max_size: int = 1333
    train_min_sizes: tuple[int, ...] = DETR_TRAIN_SCALES  # at min_size 800; scaled with min_size unless given
    aux_loss: bool = True
    # matcher costs and loss weights (paper: class 1, L1 5, GIoU 2; no-object weight 0.1)
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    eos_coef: float = 0.1
    # training accelerators (scaledet.models.detr.accelerators), off = the published DETR; no effect at inference
    query_groups: int = 1  # Group DETR: query groups matched one-to-one each (Group DETR: 11; 1 = off)
    denoising_groups: int = 0  # DN-DETR: groups of noised ground-truth queries (DN-DETR: 5; 0 = off)
    denoising_label_noise: float = 0.2  # probability of flipping a denoising query's label (DN-DETR: 0.2)
    denoising_box_noise: float = 0.4  # box noise scale: centre shift / size change up to this x w/2, h/2 (DN-DETR: 0.4)
    denoising_contrastive: bool = False  # DINO's negative copies (noise box_noise..2 x box_noise, target: no object)
    url: str = ""  # published COCO checkpoint (official format)
    sha256_prefix: str = ""  # hash prefix the published file name carries


VARIANTS: dict[str, DetrVariant] = {
    "detr_r50": DetrVariant(url=_URL + "detr-r50-e632da11.pth", sha256_prefix="e632da11"),
    "detr_r50_dc5": DetrVariant(dilation=True, url=_URL + "detr-r50-dc5-f0fb7ef5.pth", sha256_prefix="f0fb7ef5"),
    "detr_r101": DetrVariant(backbone="resnet101", url=_URL + "detr-r101-2c7b67e5.pth", sha256_prefix="2c7b67e5"),
    "detr_r101_dc5": DetrVariant(
        backbone="resnet101", dilation=True, url=_URL + "detr-r101-dc5-a2e86def.pth", sha256_prefix="a2e86def"
    ),
}
