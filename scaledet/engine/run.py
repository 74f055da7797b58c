"""From a :class:`TrainConfig` to a finished run: datasets, model, :class:`Trainer`, report.

This is what ``scaledet train`` and ``scaledet demo`` call; the library user can call it too.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from scaledet.data import DataWarning, open_dataset, print_report, train_transforms
from scaledet.data.tiles import TileCropDataset
from scaledet.data.voc import find_voc_root, split_or_every_image
from scaledet.engine import distributed as dist_utils
from scaledet.engine.checkpoint import load_training_checkpoint, resume_path
from scaledet.engine.config import TrainConfig
from scaledet.engine.doctor import diagnose, format_diagnosis
from scaledet.engine.recipe import augmentation_for, box_statistics, fitted_input_size, from_scratch_changes
from scaledet.engine.trainer import Trainer, seed_everything
from scaledet.errors import UserError
from scaledet.evaluation import format_stats
from scaledet.inference.tiling import TileOptions
from scaledet.models.base import Detector
from scaledet.models.inputs import category_ids_for
from scaledet.models.registry import create_model, family_hook


def open_datasets(config: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """Training and validation sets as the data layer reads them, without transforms.

    Validation images are given to the model untransformed: the model resizes them itself and
    answers in their pixels, which is what COCO evaluation against the original boxes needs.
    The training set gets its augmentation from :func:`add_train_transforms` once the model
    (and so the input size) is known.
    """
    options = {"allow_empty": config.allow_empty, "progress": config.progress, **config.data_options}
    splits = {"train": split_or_every_image(config.train, "train"),
              "val": split_or_every_image(config.val, "val") if config.val else "val"}
    for name, split in splits.items():
        if split is None and dist_utils.is_main():
            print(f"{name}: {getattr(config, name)} has no ImageSets/Main/{name}.txt: every annotated image is used")
    if splits["train"] is None and splits["val"] is None and _same_folder(config.train, config.val):
        raise UserError(f"--train and --val are the same VOC folder ({config.val}) without ImageSets/Main/train.txt "
                        "and val.txt: it would validate on the training images; write the two split files (one "
                        "image name per line) or give two folders")
    train = open_dataset(config.train, images=config.images, split=splits["train"], **options)
    val_images = config.val_images or config.images
    val = open_dataset(config.val, images=val_images, split=splits["val"], **options) if config.val else None
    if dist_utils.is_main():
        for name, dataset in (("train", train), ("val", val)):
            if dataset is not None:
                print(f"{name}: ", end="")
                print_report(dataset)
        if val is not None:
            warn_if_validating_on_training_images(train, val)
    return train, val


def warn_if_validating_on_training_images(train: Dataset, val: Dataset) -> int:
    """A :class:`~scaledet.data.DataWarning` when image files of ``val`` are also in ``train`` (the same COCO JSON
    or YOLO folder given twice, as some tutorials' data.yaml do): its AP then measures what the model memorised.
    A warning, not an error: it may be meant (an overfitting check). Returns how many are shared."""
    def files(dataset: Dataset) -> list[str]:
        return [os.path.abspath(record.path) for record in getattr(dataset, "records", []) if record.path is not None]

    trained = set(files(train))
    shared = [path for path in files(val) if path in trained]
    if shared:
        warnings.warn(f"{len(shared)} of {len(val)} validation images are training images too (e.g. {shared[0]}): "
                      "the validation AP will measure what the model memorised, not how it does on new images; give "
                      "--val other images", DataWarning, stacklevel=2)
    return len(shared)


def _same_folder(a: str, b: str) -> bool:
    return find_voc_root(Path(a)).resolve() == find_voc_root(Path(b)).resolve()


def use_tiles(config: TrainConfig, train: Dataset, val: Dataset | None) -> tuple[TrainConfig, Dataset, Dataset | None]:
    """For ``config.tile``: the config with the model's input size = the tile (unless
    ``image_size`` is given), the training set as native-resolution crops
    (:class:`~scaledet.data.tiles.TileCropDataset`) and the validation set marked to be predicted
    through tiles (``val.tile_options``, read by :func:`scaledet.engine.evaluate.evaluate`)."""
    if config.tile is None:
        return config, train, val
    if config.image_size is None:
        config = dataclasses.replace(config, image_size=config.tile)
    if not isinstance(train, TileCropDataset):
        train = TileCropDataset(train, config.tile, config.tile_min_visible)
    if val is not None:
        val.tile_options = TileOptions(config.tile, config.tile_overlap, batch_size=config.batch_size)
    if dist_utils.is_main():
        print(f"tiles: training on {config.tile}x{config.tile} crops ({len(train)} per epoch), validating "
              f"through {config.tile} px tiles with overlap {config.tile_overlap:g}")
    return config, train, val


def build_model(config: TrainConfig, class_names: list[str], category_ids: list[int] | None = None) -> nn.Module:
    """``create_model`` from the config; the head has ``len(class_names)`` classes unless
    ``config.num_classes`` says otherwise (it must then agree with the data). ``category_ids``:
    the training set's ``label_to_category_id`` (default 1..K), saved with the weights so that
    predictions are written in the dataset's own category ids. With ``--pretrained``, the file's class
    predictor rows are matched to ``class_names`` by name (:func:`~scaledet.models.checkpoints.match_class_rows`)."""
    num_classes = config.num_classes or len(class_names)
    if num_classes != len(class_names):
        raise ValueError(f"--num-classes {num_classes} but the training data has {len(class_names)} classes")
    names = {"class_names": list(class_names)} if config.pretrained else {}  # the file's rows are matched by name
    model = create_model(config.model, num_classes=num_classes, pretrained=config.pretrained,
                         image_size=config.image_size, **names, **config.model_overrides)
    model.class_names = list(class_names)  # models derive ``config["class_names"]`` from this
    model.category_ids = category_ids_for(category_ids, num_classes)  # ... and ``config["category_ids"]``
    return model


def fit_input_size(config: TrainConfig, model: nn.Module, train_set: Dataset) -> tuple[int, int] | None:
    """The input size the auto recipe picks for ``train_set`` when ``--image-size`` is not given,
    or ``None`` to keep the model's. Only for models whose input is a free (h, w)
    (``model.input_size_is_free``: anchor detectors, not DETR) and datasets that list their records.

    The size follows the data, capped at the variant's published size or, when larger, the size
    the ``--pretrained`` weights were trained at: fine-tuning a model trained on 128 px images on
    256 px data trains at 256, as training from scratch would, not at the checkpoint's 128."""
    if config.image_size is not None or config.recipe != "auto" or not hasattr(train_set, "records"):
        return None
    if not getattr(model, "input_size_is_free", Detector.input_size_is_free):
        return None
    cap = tuple(model.image_size)
    if config.pretrained:
        published = tuple(family_hook(config.model, "profile_info")(config.model)["native_size"])
        cap = (max(cap[0], published[0]), max(cap[1], published[1]))
    size = fitted_input_size(box_statistics(train_set.records), cap)
    return None if size == tuple(model.image_size) else size


#: the variant options that set the anchors
ANCHOR_KEYS = ("anchor_scale", "aspect_ratios")


def prepare_model(config: TrainConfig, train_set: Dataset) -> nn.Module:
    """Seed, then build the model for ``train_set``: at the input size the recipe picks and, with
    ``anchors="auto"``, with anchors fitted to the training boxes when they cover them better than
    the published ones (:mod:`scaledet.engine.doctor`). Prints the doctor's report. The model is
    rebuilt from the same seed when either differs from the first build."""
    seed_everything(config.seed)
    category_ids = getattr(train_set, "label_to_category_id", None)
    model = build_model(config, list(train_set.class_names), category_ids)
    if config.model_overrides and dist_utils.is_main():
        scratch = " (trained from scratch: no --pretrained)" if from_scratch_changes(config.model) \
            and config.recipe == "auto" and not config.pretrained else ""
        print(f"model: {config.model} with {config.model_overrides}{scratch}")
    size = fit_input_size(config, model, train_set) or tuple(model.image_size)
    overrides = dict(config.model_overrides)
    if hasattr(train_set, "records"):
        # fine-tuning with --anchors auto: fitted anchors must beat the checkpoint's, which its box head was trained for
        against_checkpoint = bool(config.pretrained) and config.anchors == "auto"
        checkpoint_anchors = {key: value for key, value in getattr(model, "overrides", {}).items()
                              if key in ANCHOR_KEYS} if against_checkpoint else {}
        report = diagnose(train_set, config.model, size, overrides={**config.model_overrides, **checkpoint_anchors},
                          detector=model, baseline="the checkpoint's" if against_checkpoint else "published")
        if dist_utils.is_main():
            print(format_diagnosis(report))
        user_anchors = set(ANCHOR_KEYS) & set(config.model_overrides)
        if config.anchors in ("auto", "fit") and "anchors" in report and not user_anchors:
            fitted = report["anchors"]["fitted"]  # "fit" when fine-tuning: the search's best, even the published
            overrides.update({key: fitted[key] for key in ANCHOR_KEYS} if config.anchors == "fit" and config.pretrained
                             else report["anchors"]["auto_overrides"])
    first_size = tuple(model.image_size)
    if size != first_size or overrides != config.model_overrides:
        seed_everything(config.seed)
        changed = dataclasses.replace(config, image_size=size, model_overrides=overrides)
        checkpoint_log = logging.getLogger("scaledet.models.checkpoints")
        was_disabled, checkpoint_log.disabled = checkpoint_log.disabled, True  # the first build said it
        try:
            model = build_model(changed, list(train_set.class_names), category_ids)
        finally:
            checkpoint_log.disabled = was_disabled
        if dist_utils.is_main():
            fitted = {k: overrides[k] for k in ANCHOR_KEYS
                      if k in overrides and overrides[k] != config.model_overrides.get(k)}
            parts = ([f"input {size[0]}x{size[1]} (fitted to the training images; --image-size sets it)"]
                     if size != first_size else [])
            unfitted = "the checkpoint's" if config.pretrained else "the published ones"
            parts += [f"anchors {fitted} (fitted to the training boxes; --anchors default keeps {unfitted})"] \
                if fitted else []
            print("model: " + ", ".join(parts))
    return model


def _pipeline_factory(model: nn.Module) -> Callable[..., Any]:
    """``model.train_transforms`` (every :class:`~scaledet.models.base.Detector`), else, for plain
    modules, :func:`scaledet.data.train_transforms` at ``model.image_size``."""
    factory = getattr(model, "train_transforms", None)
    if callable(factory):
        return factory
    return lambda **augmentation: train_transforms(tuple(model.image_size), **augmentation)


def _keywords(factory: Callable[..., Any]) -> set[str] | None:
    """The keyword arguments ``factory`` takes, or ``None`` when it takes any (``**kwargs``)."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def train_augmentation(config: TrainConfig, train_set: Dataset, planned_epochs: float | None,
                       accepted: set[str] | None = None) -> dict[str, Any]:
    """Keyword arguments of the model's training pipeline: the config's ``augment`` over the recipe's choice.

    The paper recipe uses the family's own augmentation; the auto recipe chooses the strength from
    the run's planned epochs (mild while unknown) and the training boxes' sizes
    (:func:`augmentation_for`: scale jitter and colour jitter). ``accepted``: the keywords the
    pipeline takes (``None``: any); the recipe's proposals outside it are left out (DETR has no
    scale jitter in its pipeline: its multi-scale resize is in the model), the config's own
    ``augment`` must fit it (``ValueError`` naming the keywords otherwise)."""
    unknown = sorted(set(config.augment) - accepted) if accepted is not None else []
    if unknown:
        raise ValueError(f"augment: {config.model} does not take {unknown}; its training pipeline takes "
                         f"{sorted(accepted)}")
    if config.recipe != "auto":
        return dict(config.augment)
    fraction = box_statistics(train_set.records)["median_box_fraction"] if hasattr(train_set, "records") else None
    proposal = augmentation_for(planned_epochs or 0.0, fraction or None)
    if accepted is not None:
        proposal = {key: value for key, value in proposal.items() if key in accepted}
    return {**proposal, **config.augment}


def add_train_transforms(dataset: Dataset, config: TrainConfig, model: nn.Module,
                         planned_epochs: float | None = None) -> None:
    """Give ``dataset`` the model's training pipeline (``model.train_transforms``: EfficientDet's
    flip, scale jitter and crop/pad to its input size; DETR's flip and random crop) with the
    augmentation of :func:`train_augmentation`."""
    factory = _pipeline_factory(model)
    dataset.transforms = factory(**train_augmentation(config, dataset, planned_epochs, _keywords(factory)))


def check_writable(out: Path, what: str = "the run's files", option: str = "--out") -> None:
    """UserError naming ``out`` when the run's folder could not be created or written (checked on it, or on
    the nearest folder above it that exists, without creating anything: a data error must leave no folder);
    ``what`` goes there, ``option`` names where to give another place."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{out}: cannot write {what} there ({existing} is not a folder); give another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{out}: cannot write {what} there (no write permission on {existing}); "
                        f"give another {option}")


def train_from_config(config: TrainConfig, train_set: Dataset | None = None, val_set: Dataset | None = None,
                      model: nn.Module | None = None) -> dict[str, Any]:
    """Open the data (unless given), seed and build the model (unless given), train with the
    training augmentation, evaluate, write ``config.out``; returns metrics.json's dict."""
    check_writable(Path(config.out))  # before minutes of data loading, not after
    if config.resume:  # a missing or unusable checkpoint, too
        load_training_checkpoint(resume_path(config.out, config.resume))
    if train_set is None:
        train_set, val_set = open_datasets(config)
    config, train_set, val_set = use_tiles(config, train_set, val_set)
    if model is None:
        model = prepare_model(config, train_set)
    add_train_transforms(train_set, config, model)

    def augment_for_plan(trainer: Trainer, plan: Any) -> None:
        add_train_transforms(train_set, config, model, trainer.planned_epochs())

    metrics = Trainer(config, model, train_set, val_set, on_plan=[augment_for_plan]).fit()
    if dist_utils.is_main():
        if val_set is not None:
            print(format_stats(metrics))
        written = ", ".join(name for name in ("weights.safetensors", "metrics.json", "curves.png", "predictions.png")
                            if (Path(config.out) / name).exists())
        unevaluated = "" if val_set is not None else "; no --val: not evaluated"
        print(f"wrote {config.out}: {written} ({metrics['steps']} steps in {metrics['wall_time_s']:.0f} s, "
              f"{metrics['bad_batches']} bad batches skipped){unevaluated}")
    dist_utils.shutdown()
    return metrics
