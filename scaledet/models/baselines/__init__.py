"""Baselines of the EfficientDet paper's Tables 2 and 4: RetinaNet (ResNet / EfficientNet + FPN).

``create_model("retinanet_r50_fpn")`` is the paper's "ResNet50 + FPN" (Table 4 row 1, torchvision's
ResNet-50 + FPN + RetinaNet head); ``"retinanet_effb3_fpn"`` swaps in EfficientNet-B3 (row 2).
Any backbone is an override: ``create_model("retinanet_r50_fpn", backbone="tf_efficientnet_b3")``
(``resnet50``/``resnet101`` are torchvision's, other names are timm feature extractors). Row 3,
EfficientNet-B3 + BiFPN, is ``efficientdet_d3``. The EfficientDet family also accepts another
backbone, e.g. ``create_model("efficientdet_d3", backbone="resnet50", feature_network="fpn")``.
"""

from __future__ import annotations


from .recipes import RECIPES
from .retinanet import CHECKPOINT, VARIANTS, RetinaNetDetector, RetinaNetVariant, build, profile_info

__all__ = ["CHECKPOINT", "VARIANTS", "RetinaNetDetector", "RetinaNetVariant", "build", "profile_info"]
