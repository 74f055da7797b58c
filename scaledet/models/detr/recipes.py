"""DETR's training recipe rows, read by the training engine (:func:`scaledet.engine.recipe.family_recipe`;
the fields are :class:`~scaledet.engine.config.TrainConfig`'s, ``reference_batch`` is the batch at
which ``lr`` is given).

The paper's recipe (Carion et al. 2020 / the official ``main.py``): AdamW, lr 1e-4 with the
backbone at 1e-5 (:meth:`DETR.param_groups <scaledet.models.detr.model.DETR.param_groups>`),
weight decay 1e-4, gradient clipping at norm 0.1, one lr drop x0.1 after 2/3 of the schedule
(official: epoch 200 of 300 epochs), 4 images per GPU (x 16 GPUs = 64). Augmentation: horizontal
flip 0.5 and the random crop (:mod:`scaledet.models.detr.transforms`) plus the model's own
multi-scale resize (``DetrVariant.train_min_sizes``, ``max_size``).

Training accelerators (:mod:`scaledet.models.detr.accelerators`: group queries, query denoising)
are model options, so a recipe turns them on with ``model_overrides`` (user overrides win). The auto
recipe turns them on when DETR trains **from scratch** (:func:`from_scratch`), where they were measured
(``benchmarks/detr_accelerators.py``, a small DETR, 3 seeds each, docs/detr.md): held-out ``fewshot``
at 30 CPU-minutes +0.012 AP on an AVX-512 machine (0.042 +- 0.010 vs 0.030 +- 0.004, just beyond the
spread) and +0.003 on an AVX2-only one (inside it); at 15 minutes +0.004 (AVX2-only) and +0.010
(AVX-512), inside it; ahead on average in every held-out comparison, never behind. Tune sets:
shapes +0.048 (15 minutes) and scenes +0.067 (30 minutes; +0.009 at 15 minutes, plain DETR still at
the floor), with ~30% fewer steps per minute. Fine-tuning published weights keeps them off (not
measured), and ``--recipe paper`` stays the published DETR.
"""

from __future__ import annotations

from typing import Any

#: the accelerator settings the auto recipe would use (and benchmarks/detr_accelerators.py measures):
#: Group DETR's one-to-many supervision with a few groups (the paper: 11 groups of 300 queries; the
#: decoder cost grows with the groups, so fewer for CPU budgets) and DN-DETR's 5 denoising groups
#: with its noise (label flip 0.2, box noise 0.4)
ACCELERATORS: dict[str, Any] = {"query_groups": 4, "denoising_groups": 5}

RECIPES: dict[str, dict[str, Any]] = {
    # DETR paper: AdamW 1e-4 (backbone 1e-5), wd 1e-4, grad clip 0.1, lr x0.1 at 2/3 of training;
    # lr 1e-4 at the paper's 4 images per process (the row had no reference_batch: --recipe paper
    # without --lr failed).
    "paper": dict(
        batch_size=4, optimizer="adamw", lr=1e-4, backbone_lr=1e-5, reference_batch=4, weight_decay=1e-4,
        schedule="step",
        lr_drop_at=2 / 3, warmup_epochs=0.0, warmup_factor=1.0, clip_grad=0.1, ema_decay=0.0,
        freeze_bn_fraction=0.0, eval_every=1,
    ),
    # DETR keeps its optimiser (AdamW, low backbone lr, tight clip); schedule relative to the run.
    "auto": dict(
        batch_size=4, optimizer="adamw", lr=1e-4, backbone_lr=1e-5, reference_batch=4, weight_decay=1e-4,
        schedule="step", lr_drop_at=2 / 3, warmup_fraction=0.0, warmup_factor=1.0, clip_grad=0.1, ema_decay=0.0,
        freeze_bn_fraction=0.0,
    ),
}


def backbone_from_scratch(name: str) -> dict[str, Any]:
    """The auto recipe's backbone changes for training DETR variant ``name`` (or Deformable DETR, same
    fields) without pretrained weights: the published backbone is set up for fine-tuning ImageNet
    weights - FrozenBatchNorm2d, stem and layer1 frozen, backbone lr / 10 - which from random weights
    left classification at chance on shapes (docs/detr.md); BatchNorm, every stage and the full lr made
    it learn (``benchmarks/detr_shapes.yaml``)."""
    return {"model_overrides": {"backbone_norm": "batch", "backbone_trainable_layers": 5}, "backbone_at_lr": True}


def from_scratch(name: str) -> dict[str, Any]:
    """The auto recipe's changes for training DETR variant ``name`` without pretrained weights
    (:func:`scaledet.engine.recipe.from_scratch_changes`): :func:`backbone_from_scratch` plus the
    training accelerators (:data:`ACCELERATORS`; measured from scratch, see the module docstring)."""
    changes = backbone_from_scratch(name)
    return {**changes, "model_overrides": {**changes["model_overrides"], **ACCELERATORS}}
