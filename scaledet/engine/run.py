"""From a :class:`TrainConfig` to a finished run: datasets, model, :class:`Trainer`, report.

This is what ``scaledet train`` and ``scaledet demo`` call; the library user can call it too.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from scaledet.engine import distributed as dist_utils
from scaledet.engine.config import TrainConfig
from scaledet.engine.trainer import Trainer


def open_datasets(config: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """Training and validation sets as the data layer reads them, without transforms.

    Validation images are given to the model untransformed: the model resizes them itself and
    answers in their pixels, which is what COCO evaluation against the original boxes needs.
    The training set gets its augmentation from :func:`add_train_transforms` once the model
    (and so the input size) is known.
    """
    from scaledet.data import open_dataset, print_report

    options = {"allow_empty": config.allow_empty, "progress": config.progress, **config.data_options}
    train = open_dataset(config.train, images=config.images, split="train", **options)
    val = open_dataset(config.val, images=config.images, split="val", **options) if config.val else None
    if dist_utils.is_main():
        for name, dataset in (("train", train), ("val", val)):
            if dataset is not None:
                print(f"{name}: ", end="")
                print_report(dataset)
    return train, val


def build_model(config: TrainConfig, class_names: list[str]) -> nn.Module:
    """``create_model`` from the config; the head has ``len(class_names)`` classes unless
    ``config.num_classes`` says otherwise (it must then agree with the data)."""
    from scaledet import create_model

    num_classes = config.num_classes or len(class_names)
    if num_classes != len(class_names):
        raise ValueError(f"--num-classes {num_classes} but the training data has {len(class_names)} classes")
    model = create_model(config.model, num_classes=num_classes, pretrained=config.pretrained,
                         image_size=config.image_size, **config.model_overrides)
    model.class_names = list(class_names)  # models derive ``config["class_names"]`` from this
    return model


def add_train_transforms(dataset: Dataset, config: TrainConfig, image_size: tuple[int, int]) -> None:
    """Give ``dataset`` the paper's augmentation (flip, scale jitter, crop/pad) at ``image_size``."""
    from scaledet.data import train_transforms

    dataset.transforms = train_transforms(tuple(image_size), **config.augment)


def train_from_config(config: TrainConfig, train_set: Dataset | None = None, val_set: Dataset | None = None,
                      model: nn.Module | None = None) -> dict[str, Any]:
    """Build what is not given, train, evaluate, write ``config.out``; returns metrics.json's dict."""
    if train_set is None:
        train_set, val_set = open_datasets(config)
        if model is None:
            model = build_model(config, list(train_set.class_names))
        add_train_transforms(train_set, config, model.image_size)
    elif model is None:
        model = build_model(config, list(train_set.class_names))
    metrics = Trainer(config, model, train_set, val_set).fit()
    if dist_utils.is_main():
        if val_set is not None:
            from scaledet.evaluation import format_stats

            print(format_stats(metrics))
        print(f"wrote {config.out}: weights.safetensors, metrics.json, curves.png, predictions.png "
              f"({metrics['steps']} steps in {metrics['wall_time_s']:.0f} s, {metrics['bad_batches']} bad batches skipped)")
    dist_utils.shutdown()
    return metrics
