"""EfficientDet's training recipe rows, read by the training engine
(:func:`scaledet.engine.recipe.family_recipe`, whose module documents the ``auto`` recipe; the
fields are :class:`~scaledet.engine.config.TrainConfig`'s, ``reference_batch`` is the batch at
which ``lr`` is given). Why each ``auto`` value: docs/training.md ("The default recipe").
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # EfficientDet paper: SGD momentum 0.9, wd 4e-5, lr 0.16 at batch 128 with warm-up then
    # cosine, EMA 0.9998, scale jitter 0.1-2.0 with colour jitter.
    "paper": dict(
        batch_size=16, optimizer="sgd", lr=0.16, reference_batch=128, momentum=0.9, weight_decay=4e-5,
        schedule="cosine", warmup_epochs=1.0, warmup_factor=0.001, min_lr_ratio=0.0, clip_grad=10.0,
        ema_decay=0.9998, freeze_bn_fraction=0.0, eval_every=1,
    ),
    # EfficientDet on a CPU budget, from scratch: AdamW (5-15x the AP of SGD after 300 steps on
    # shapes), lr 1.2e-2 at batch 8 (8.5e-3 at batch 4 by the square-root rule; too low an lr
    # costs far more than too high: D0 on shapes at batch 8, 300 steps: 1e-3 / 3e-3 / 5e-3 / 1e-2
    # -> AP 0.07 / 0.38 / 0.43 / 0.40; at batch 4, 600 steps, 6e-3 / 1.2e-2 at batch 8 -> 0.60 /
    # 0.66; 60 images of the `scenes` tune set, 500 steps, 2 seeds: 0.17 / 0.20, with the mild
    # augmentation 0.25 at 1.2e-2), wd 0.05 decoupled (1e-4: same AP); batch 4: for the same
    # 2400 images, D0 on shapes reached AP 0.43 / 0.63 / 0.66 at batch 8 / 4 / 2, and a batch-4
    # step costs only 10-25% more per image than batch 8 (batch 2 more still);
    # warm-up and everything else relative to the run (scaledet.engine.recipe's module doc). No
    # drop path: it slows short runs down. docs/training.md has the measurements.
    "auto": dict(
        batch_size=4, optimizer="adamw", lr=1.2e-2, reference_batch=8, weight_decay=0.05,
        schedule="cosine", warmup_fraction=0.1, warmup_factor=0.01, min_lr_ratio=0.0, clip_grad=10.0,
        freeze_bn_fraction=0.2, model_overrides={"backbone_drop_path_rate": 0.0},
    ),
}
