"""The EfficientDet variant table and the paper's compound scaling rule.

Every published variant is one row (:class:`EfficientDetVariant`) of :data:`VARIANTS`; a user
changes a field with ``create_model(name, field=value)`` (see :func:`with_overrides`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from scaledet.models.inputs import check_option_names

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FUSIONS = ("fast", "softmax", "sum")
ACTIVATIONS = ("silu", "relu6")
_RELEASE = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"


@dataclass(frozen=True)
class PaperNumbers:
    """What the EfficientDet paper (or, for Lite, the reference port) reports for a variant."""

    params_m: float | None = None  # millions of parameters
    gflops: float | None = None  # billions of multiply-adds ("FLOPs" in the paper)
    ap_test_dev: float | None = None  # COCO test-dev AP@[.5:.95]
    ap_val: float | None = None  # COCO val AP of the official weights


@dataclass(frozen=True)
class EfficientDetVariant:
    """One EfficientDet configuration. Sizes are (height, width); levels are log2(stride)."""

    backbone: str  # any timm model name that supports features_only
    image_size: tuple[int, int]
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    min_level: int = 3
    max_level: int = 7
    anchor_scale: float = 4.0
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))  # (x, y) factors
    fusion: str = "fast"  # "fast" (fast normalised), "softmax" or "sum"
    activation: str = "silu"
    feature_network: str = "bifpn"  # a topology name from feature_network.TOPOLOGIES
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 90
    backbone_drop_path_rate: float = 0.2
    # post-processing
    max_detection_points: int = 5000
    max_detections: int = 100
    nms_iou: float = 0.5
    soft_nms: bool = False
    soft_nms_sigma: float = 0.5
    # training targets and loss
    match_iou: float = 0.5
    focal_alpha: float = 0.25
    focal_gamma: float = 1.5
    huber_delta: float = 0.1
    box_loss_weight: float = 50.0
    # published weights (reference port release) and the paper's numbers
    pretrained_url: str = ""
    pretrained_sha256: str = ""
    paper: PaperNumbers = field(default_factory=PaperNumbers)

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location."""
        return self.num_scales * len(self.aspect_ratios)

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.min_level < 3 or self.max_level <= 5 or self.min_level > 5:
            raise ValueError(f"levels must satisfy 3 <= min_level <= 5 < max_level, got {self.min_level}..{self.max_level}")


def _row(backbone, size, channels, fpn_repeats, head_repeats, checkpoint, sha, paper, **kw) -> EfficientDetVariant:
    return EfficientDetVariant(
        backbone=backbone, image_size=(size, size), fpn_channels=channels, fpn_repeats=fpn_repeats,
        head_repeats=head_repeats, pretrained_url=_RELEASE + checkpoint, pretrained_sha256=sha, paper=paper, **kw,
    )


_LITE = dict(fusion="sum", activation="relu6", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_P = PaperNumbers

#: The 15 published variants. URLs and sha256 prefixes of the reference port's release assets
#: (effdet 0.4.1, effdet/config/model_config.py); paper numbers from Tables 1-2.
VARIANTS: dict[str, EfficientDetVariant] = {
    "efficientdet_d0": _row("tf_efficientnet_b0", 512, 64, 3, 3, "tf_efficientdet_d0_34-f153e0cf.pth", "f153e0cf", _P(3.9, 2.5, 34.6, 34.3)),
    "efficientdet_d1": _row("tf_efficientnet_b1", 640, 88, 4, 3, "tf_efficientdet_d1_40-a30f94af.pth", "a30f94af", _P(6.6, 6.1, 40.5, 40.2)),
    "efficientdet_d2": _row("tf_efficientnet_b2", 768, 112, 5, 3, "tf_efficientdet_d2_43-8107aa99.pth", "8107aa99", _P(8.1, 11.0, 43.9, 43.5)),
    "efficientdet_d3": _row("tf_efficientnet_b3", 896, 160, 6, 4, "tf_efficientdet_d3_47-0b525f35.pth", "0b525f35", _P(12.0, 25.0, 47.2, 46.8)),
    "efficientdet_d4": _row("tf_efficientnet_b4", 1024, 224, 7, 4, "tf_efficientdet_d4_49-f56376d9.pth", "f56376d9", _P(21.0, 55.0, 49.7, 49.3)),
    "efficientdet_d5": _row("tf_efficientnet_b5", 1280, 288, 7, 4, "tf_efficientdet_d5_51-c79f9be6.pth", "c79f9be6", _P(34.0, 135.0, 51.5, 51.2)),
    "efficientdet_d6": _row("tf_efficientnet_b6", 1280, 384, 8, 5, "tf_efficientdet_d6_52-4eda3773.pth", "4eda3773", _P(52.0, 226.0, 52.6, 52.1), fusion="sum"),
    "efficientdet_d7": _row("tf_efficientnet_b6", 1536, 384, 8, 5, "tf_efficientdet_d7_53-6d1d7a95.pth", "6d1d7a95", _P(52.0, 325.0, 53.7, 53.4), fusion="sum", anchor_scale=5.0),
    "efficientdet_d7x": _row("tf_efficientnet_b7", 1536, 384, 8, 5, "tf_efficientdet_d7x-f390b87c.pth", "f390b87c", _P(77.0, 410.0, 55.1, 54.4), fusion="sum", max_level=8),
    "efficientdet_lite0": _row("tf_efficientnet_lite0", 320, 64, 3, 3, "tf_efficientdet_lite0-dfacfc78.pth", "dfacfc78", _P(), anchor_scale=3.0, backbone_drop_path_rate=0.0, **_LITE),
    "efficientdet_lite1": _row("tf_efficientnet_lite1", 384, 88, 4, 3, "tf_efficientdet_lite1-6dc7ab30.pth", "6dc7ab30", _P(), anchor_scale=3.0, **_LITE),
    "efficientdet_lite2": _row("tf_efficientnet_lite2", 448, 112, 5, 3, "tf_efficientdet_lite2-86c5d55b.pth", "86c5d55b", _P(), anchor_scale=3.0, **_LITE),
    "efficientdet_lite3": _row("tf_efficientnet_lite3", 512, 160, 6, 4, "tf_efficientdet_lite3-506852cb.pth", "506852cb", _P(), **_LITE),
    "efficientdet_lite3x": _row("tf_efficientnet_lite3", 640, 200, 6, 4, "tf_efficientdet_lite3x-8404c57b.pth", "8404c57b", _P(), anchor_scale=3.0, **_LITE),
    "efficientdet_lite4": _row("tf_efficientnet_lite4", 640, 224, 7, 4, "tf_efficientdet_lite4-391ddabc.pth", "391ddabc", _P(), **_LITE),
}


def as_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``int`` or ``(h, w)`` -> ``(h, w)`` of positive ints."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    return size


def with_overrides(variant: EfficientDetVariant, **overrides) -> EfficientDetVariant:
    """A copy of ``variant`` with some fields replaced; unknown names raise ``ValueError``."""
    check_option_names(overrides, variant, "EfficientDet")
    if "image_size" in overrides:
        overrides["image_size"] = as_size(overrides["image_size"])
    for key in ("mean", "std"):
        if key in overrides:
            overrides[key] = tuple(float(v) for v in overrides[key])
    if "aspect_ratios" in overrides:
        overrides["aspect_ratios"] = tuple(tuple(float(v) for v in pair) for pair in overrides["aspect_ratios"])
    return dataclasses.replace(variant, **overrides)


def round_width(width: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (EfficientNet's rule, never
    below ``divisor`` and never more than 10% under ``width``)."""
    rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * width else rounded


@dataclass(frozen=True)
class ScaledDims:
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    image_size: int


def compound_scaling(phi: int) -> ScaledDims:
    """The paper's equations 1-3 for compound coefficient ``phi``.

    W_bifpn = 64 * 1.35^phi rounded by :func:`round_width` (nearest multiple of 8),
    D_bifpn = 3 + phi, D_box = D_class = 3 + floor(phi / 3), R_input = 512 + 128 * phi.

    The published Table 1 departs from these equations in a few cells (see
    :data:`TABLE1_DEPARTURES`); the variant table holds the published values.
    """
    if phi < 0:
        raise ValueError(f"phi must be >= 0, got {phi}")
    return ScaledDims(
        fpn_channels=round_width(64 * 1.35**phi),
        fpn_repeats=3 + phi,
        head_repeats=3 + math.floor(phi / 3),
        image_size=512 + 128 * phi,
    )


#: Cells of the paper's Table 1 that the equations (with nearest-multiple-of-8 rounding) do not
#: give: phi -> {field: published value}. The equation values are 120, 216 channels (phi 2, 4),
#: 1152 px and 8 layers (phi 5), 9 layers (phi 6). D7 (phi 7) reuses D6's network at 1536 px.
TABLE1_DEPARTURES: dict[int, dict[str, int]] = {
    2: {"fpn_channels": 112},
    4: {"fpn_channels": 224},
    5: {"image_size": 1280, "fpn_repeats": 7},
    6: {"fpn_repeats": 8},
    7: {"fpn_channels": 384, "fpn_repeats": 8, "image_size": 1536},
}


def table1_row(phi: int) -> ScaledDims:
    """Table 1 of the paper for D0..D7: :func:`compound_scaling` plus :data:`TABLE1_DEPARTURES`."""
    return dataclasses.replace(compound_scaling(phi), **TABLE1_DEPARTURES.get(phi, {}))
