"""The EfficientDet paper's numbers that ``scaledet paper`` compares against (Tan, Pang, Le, CVPR 2020).

Table 1 and Table 2's params / FLOPs / AP live in the EfficientDet variant table
(:data:`scaledet.models.efficientdet.VARIANTS`, field ``paper``); the baselines' in
:data:`scaledet.models.baselines.VARIANTS`. This module holds the rest: Table 2 latencies and
Tables 4-6. The paper's "FLOPs" are multiply-adds, compared with our MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

#: D0..D7x in the paper's order.
EFFICIENTDET_MODELS: tuple[str, ...] = tuple(f"efficientdet_d{i}" for i in range(8)) + ("efficientdet_d7x",)

#: Table 2 batch-1 latency in ms (TF2.1, no TensorRT).
PAPER_LATENCY_MS: dict[str, dict[str, float]] = {
    "titan_v": dict(zip(EFFICIENTDET_MODELS, (12, 16, 23, 37, 65, 128, 169, 232, 285))),
    "v100": dict(zip(EFFICIENTDET_MODELS, (10.2, 13.5, 17.7, 29.0, 42.8, 72.5, 92.8, 122, 153))),
}


@dataclass(frozen=True)
class Table4Row:
    label: str
    model: str  # create_model name
    ap: float
    params_m: float
    gflops: float


#: Table 4: disentangling backbone and BiFPN.
TABLE4: tuple[Table4Row, ...] = (
    Table4Row("ResNet50 + FPN", "retinanet_r50_fpn", 37.0, 34, 97),
    Table4Row("EfficientNet-B3 + FPN", "retinanet_effb3_fpn", 40.3, 21, 75),
    Table4Row("EfficientNet-B3 + BiFPN", "efficientdet_d3", 44.4, 12, 24),
)


@dataclass(frozen=True)
class FeatureNetworkRow:
    """One row of Table 5 (or Table 6's extra softmax row): topology + fusion and the paper's numbers."""

    key: str
    label: str
    topology: str
    fusion: str
    ap: float | None  # paper's COCO AP (Table 5; softmax: Table 6 D3-row AP)
    params_ratio: float | None  # vs repeated top-down FPN
    flops_ratio: float | None


#: Table 5 (ratios vs repeated top-down FPN) plus the softmax fusion of Table 6.
FEATURE_NETWORKS: tuple[FeatureNetworkRow, ...] = (
    FeatureNetworkRow("fpn", "Repeated top-down FPN", "fpn", "sum", 42.29, 1.0, 1.0),
    FeatureNetworkRow("panet", "Repeated FPN+PANet", "panet", "sum", 44.08, 1.0, 1.0),
    FeatureNetworkRow("nasfpn", "NAS-FPN", "nasfpn", "sum", 43.16, 0.71, 0.72),
    FeatureNetworkRow("fcfpn", "Fully-Connected FPN", "fcfpn", "sum", 43.06, 1.24, 1.21),
    FeatureNetworkRow("bifpn_sum", "BiFPN (w/o weighted)", "bifpn", "sum", 43.94, 0.88, 0.67),
    FeatureNetworkRow("bifpn_fast", "BiFPN (fast normalized)", "bifpn", "fast", 44.39, 0.88, 0.68),
    FeatureNetworkRow("bifpn_softmax", "BiFPN (softmax)", "bifpn", "softmax", None, None, None),
)

#: Table 6: (model, softmax AP, fast AP, GPU speed-up of fast fusion).
TABLE6: tuple[tuple[str, float, float, float], ...] = (
    ("efficientdet_d0", 33.96, 33.85, 1.28),
    ("efficientdet_d3", 43.78, 43.77, 1.26),
    ("efficientdet_d6", 48.79, 48.74, 1.31),
)
