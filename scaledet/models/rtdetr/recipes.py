"""RT-DETR's training recipe rows, read by the training engine (:func:`scaledet.engine.recipe.family_recipe`;
the fields are :class:`~scaledet.engine.config.TrainConfig`'s, ``reference_batch`` is the batch at
which ``lr`` is given).

The official recipe (``rtdetr_pytorch`` configs): AdamW lr 1e-4, backbone 1e-5 (R50 / R101; the
R18 config trains its backbone at 1e-4 too), weight decay 1e-4 (none on norms and biases:
:meth:`RTDETR.param_groups <scaledet.models.rtdetr.model.RTDETR.param_groups>`), gradient clipping
at norm 0.1, EMA 0.9999 with a 2000-step ramp, linear warm-up over 2000 steps, constant lr,
72 epochs (R18 / R34 / R50 "6x") at 4 images per GPU. Augmentation there: photometric distortion,
zoom-out, IoU crop, flip and the resize to 640x640; here flip and the DETR family's random crop
(:meth:`RTDETR.train_transforms <scaledet.models.rtdetr.model.RTDETR.train_transforms>`).
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(
        batch_size=4, optimizer="adamw", lr=1e-4, backbone_lr=1e-5, reference_batch=4, weight_decay=1e-4,
        schedule="step", lr_drop_at=1.0, warmup_epochs=0.0, warmup_factor=1.0, clip_grad=0.1, ema_decay=0.9999,
        freeze_bn_fraction=0.0, eval_every=1,
    ),
    # not tuned yet: the paper's optimiser with the schedule relative to the run
    "auto": dict(
        batch_size=4, optimizer="adamw", lr=1e-4, backbone_lr=1e-5, reference_batch=4, weight_decay=1e-4,
        schedule="step", lr_drop_at=2 / 3, warmup_fraction=0.05, warmup_factor=0.001, clip_grad=0.1,
        freeze_bn_fraction=0.0,
    ),
}


def from_scratch(name: str) -> dict[str, Any]:
    """The auto recipe's changes for training RT-DETR variant ``name`` without pretrained weights
    (:func:`scaledet.engine.recipe.from_scratch_changes`): R50 / R101 are published with a frozen-
    BatchNorm backbone and a frozen stem, set up for fine-tuning, so from random weights their
    BatchNorm and stem train, at the full lr (as DETR's, docs/detr.md). R18 / R34 (BatchNorm, stem
    trained, as published) are left as they are: R18 reached AP 0.66 on shapes that way."""
    from scaledet.models.rtdetr.variants import VARIANTS

    if VARIANTS[name].backbone_norm != "frozen":
        return {}
    return {"model_overrides": {"backbone_norm": "batch", "freeze_stem": False}, "backbone_at_lr": True}
