"""Deformable DETR's training recipe rows, read by the training engine (:func:`scaledet.engine.recipe.family_recipe`;
the fields are :class:`~scaledet.engine.config.TrainConfig`'s, ``reference_batch`` is the batch at
which ``lr`` is given).

The official recipe (fundamentalvision/Deformable-DETR ``main.py``, 50 epochs): AdamW, lr 2e-4 with
the backbone at 2e-5 and the sampling offsets / reference-point projections at 2e-5
(:meth:`DeformableDETR.param_groups <scaledet.models.deformable_detr.model.DeformableDETR.param_groups>`),
weight decay 1e-4, gradient clipping at norm 0.1, lr x0.1 at epoch 40 (4/5 of the run), 2 images
per GPU (x 8 GPUs). Augmentation: DETR's flip, crop and multi-scale resize.
"""

from __future__ import annotations

from typing import Any

_COMMON = dict(optimizer="adamw", lr=2e-4, backbone_lr=2e-5, weight_decay=1e-4, schedule="step", lr_drop_at=4 / 5,
               warmup_factor=1.0, clip_grad=0.1, ema_decay=0.0, freeze_bn_fraction=0.0)

RECIPES: dict[str, dict[str, Any]] = {
    # the paper's: lr 2e-4 at the official 2 images per process
    "paper": dict(_COMMON, batch_size=2, reference_batch=2, warmup_epochs=0.0, eval_every=1),
    # the same optimiser at DETR's auto batch; schedule relative to the run
    "auto": dict(_COMMON, batch_size=4, reference_batch=4, warmup_fraction=0.0),
}
