"""Loading weights into an :class:`EfficientDet`: our safetensors files, reference-port ``.pth``
files (converted) and the published COCO weights (downloaded, hash-checked, converted)."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor

from scaledet import hub, weights

from .config import EfficientDetVariant
from .convert import convert_effdet_state_dict, is_effdet_state_dict
from .model import EfficientDet

log = logging.getLogger(__name__)
CLASS_PREDICTOR = "network.class_net.predict."


def coco_checkpoint(variant: EfficientDetVariant) -> Path:
    """Local path of the variant's published COCO checkpoint (downloaded into torch.hub's cache)."""
    if not variant.pretrained_url:
        raise ValueError("this variant has no published COCO weights")
    return hub.download_checkpoint(variant.pretrained_url, variant.pretrained_sha256)


def checkpoint_num_classes(state_dict: dict[str, Tensor], num_anchors: int) -> int | None:
    """Classes of an effdet or scaledet state dict, from the class predictor's output channels."""
    for key in ("class_net.predict.conv_pw.bias", CLASS_PREDICTOR + "pointwise.bias"):
        if key in state_dict:
            return state_dict[key].shape[0] // num_anchors
    return None


def read_state_dict(path: str | Path, variant: EfficientDetVariant) -> dict[str, Tensor]:
    """A state dict in our key names from our file or the reference port's (converted, unchecked)."""
    state_dict = weights.load_checkpoint(path)
    if is_effdet_state_dict(state_dict):
        return convert_effdet_state_dict(state_dict, variant)
    if not any(k.startswith("network.") for k in state_dict):
        raise ValueError(f"{path} is neither a scaledet EfficientDet nor an effdet checkpoint "
                         f"(first keys: {list(state_dict)[:5]})")
    return state_dict


def load_into(model: EfficientDet, state_dict: dict[str, Tensor], source: str) -> None:
    """Load strictly; if the class predictor's class count differs, keep everything else and
    leave the freshly initialised class predictor (one log line says so)."""
    ours = model.state_dict()
    theirs_classes = checkpoint_num_classes(state_dict, model.variant.num_anchors)
    if theirs_classes is not None and theirs_classes != model.num_classes:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(CLASS_PREDICTOR)}
        state_dict.update({k: v for k, v in ours.items() if k.startswith(CLASS_PREDICTOR)})
        log.warning("%s: checkpoint has %d classes, model has %d: kept backbone, feature network and box net, "
                    "re-initialised the class predictor", source, theirs_classes, model.num_classes)
    missing = sorted(set(ours) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(ours))
    bad_shapes = sorted(k for k in set(ours) & set(state_dict) if ours[k].shape != state_dict[k].shape)
    if missing or unexpected or bad_shapes:
        raise ValueError(f"{source} does not fit {model.name}: missing {missing[:20]} ({len(missing)}), "
                         f"unexpected {unexpected[:20]} ({len(unexpected)}), wrong shapes {bad_shapes[:20]}")
    model.load_state_dict(state_dict, strict=True)
