"""How EfficientDet weights files map onto the model (:data:`CHECKPOINT`, used by
:func:`scaledet.models.checkpoints.build_pretrained`): our safetensors files, the reference port's
(effdet 0.4.1) ``.pth`` files (converted by :mod:`.convert`) and the published COCO weights
(downloaded, hash-checked, converted)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from scaledet import hub
from scaledet.models.checkpoints import CheckpointSpec

from .config import VARIANTS
from .convert import convert_effdet_state_dict, is_effdet_state_dict
from .model import EfficientDet

#: key prefix of the class predictor (depthwise + pointwise conv shared over levels) in our names
CLASS_PREDICTOR = "network.class_net.predict."


def coco_checkpoint(name: str) -> Path:
    """Local path of model ``name``'s published COCO checkpoint (downloaded into torch.hub's cache)."""
    variant = VARIANTS[name]
    if not variant.pretrained_url:
        raise ValueError(f"{name} has no published COCO weights")
    return hub.download_checkpoint(variant.pretrained_url, variant.pretrained_sha256)


def to_our_names(state_dict: dict[str, Tensor], model: EfficientDet) -> dict[str, Tensor]:
    """A state dict of ours (unchanged) or of the reference port (renamed for ``model.variant``'s
    levels and topology); ValueError for anything else."""
    if is_effdet_state_dict(state_dict):
        return convert_effdet_state_dict(state_dict, model.variant)
    if not any(key.startswith("network.") for key in state_dict):
        raise ValueError(f"neither a scaledet EfficientDet nor an effdet checkpoint (first keys: {list(state_dict)[:5]})")
    return state_dict


CHECKPOINT = CheckpointSpec(class_head=(CLASS_PREDICTOR,), class_bias=CLASS_PREDICTOR + "pointwise.bias",
                            convert=to_our_names, coco=coco_checkpoint)
