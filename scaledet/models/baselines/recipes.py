"""RetinaNet's training recipe rows, read by the training engine
(:func:`scaledet.engine.recipe.family_recipe`; the fields are
:class:`~scaledet.engine.config.TrainConfig`'s, ``reference_batch`` is the batch at which ``lr`` is
given). There is no ``paper`` row: ``--recipe paper`` gets the engine's generic row.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # RetinaNet (the paper's Table 4 baselines): its paper's SGD, relative schedule; not tuned.
    "auto": dict(
        batch_size=8, optimizer="sgd", lr=0.02, reference_batch=16, momentum=0.9, weight_decay=1e-4,
        schedule="cosine", warmup_fraction=0.1, warmup_factor=0.01, min_lr_ratio=0.0, clip_grad=10.0,
        freeze_bn_fraction=0.2,
    ),
}
