"""The Detector contract: what every model family implements, and what the rest of scaledet uses.

Every family's model (EfficientDet, DETR, RetinaNet, ...) subclasses :class:`Detector`. The layers
above ``scaledet/models`` (training engine, evaluation, ``optimize``, ONNX export, bench, profile,
the CLI) call only the methods below: they never test a model's class or name. A call goes:

    images: list[Tensor[3, H, W]] float RGB in [0, 1], sizes may differ
      -> preprocess(images, training)             -> Batch (network inputs + what post-processing needs)
      -> forward_features(*batch.inputs)          -> raw outputs (tensors only; traceable, no Python
                                                      control flow on tensor values)
      -> eval:  postprocess(outputs, batch)        -> list[dict(boxes [N, 4] xyxy pixels of each input
                                                      image, scores [N], labels [N] int64)], by score
         train: loss(outputs, batch, targets)      -> dict of named losses, "loss" is the total

:meth:`Detector.forward` is that chain and is the same for every family. Families that cannot split
their forward this way (a wrapped third-party model) override ``forward`` but still implement the
pieces the export and ``optimize`` paths use.

Rules every family keeps (the contract test, ``tests/test_contract.py``, checks them):

* ``preprocess`` and ``postprocess`` read only the model's configuration (``self.variant``,
  ``self.image_size``, ...), never its parameters or buffers' values, so that an ONNX file is run
  by a model rebuilt from its stored config on the ``meta`` device (:func:`scaledet.models.registry.build_for_processing`).
* ``config`` is JSON-able and ``scaledet.create_model(config["model"], num_classes=...,
  image_size=..., **config["overrides"], class_names=..., category_ids=...)`` rebuilds the model
  (:func:`scaledet.models.registry.create_from_config`).
* ``export_module()`` returns a module of tensors in, tensors out whose outputs
  ``detections_from_export`` turns into the eval contract; eager and exported agree.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from scaledet.data.transforms import train_transforms
from scaledet.models.inputs import category_ids_for, check_images, check_targets, class_names_for

#: one detections dict of the eval contract: boxes [N, 4] xyxy input-image pixels, scores [N], labels [N] int64
Detections = dict[str, Tensor]


@dataclass
class Batch:
    """A preprocessed batch.

    Attributes:
        inputs: the positional arguments of :meth:`Detector.forward_features` (e.g. the normalised
            ``[B, 3, H, W]`` batch, plus a padding mask for DETR).
        image_sizes: ``(h, w)`` of each original input image, in pixels.
        meta: whatever else the family's post-processing or loss needs (resize scales, valid
            regions, ...); tensors or plain Python values.
    """

    inputs: tuple[Tensor, ...]
    image_sizes: list[tuple[int, int]]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportSpec:
    """What :func:`scaledet.export.export_onnx` needs from a family.

    Attributes:
        module: tensors -> tensors (network and post-processing, NMS included where the family has it).
        example_inputs: one set of inputs for tracing (batch 2).
        input_names / output_names: the ONNX graph's names, in order.
        dynamic_shapes: ``torch.export`` dynamic-shape spec, one entry per input.
        metadata: extra string metadata stored in the file (the config is always stored).
    """

    module: nn.Module
    example_inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: tuple
    metadata: dict[str, str] = field(default_factory=dict)


class Detector(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every scaledet detector (see the module docstring for the call chain).

    Attributes (set by :meth:`__init__`): ``name`` (registry name), ``num_classes`` (K, no
    background), ``class_names`` (K names), ``category_ids`` (the dataset's category id of each
    label, default 1..K), ``image_size`` (the family's input size setting, see
    :meth:`input_size`), ``overrides`` (JSON-able variant fields that differ from the registry row).
    """

    #: True when the family resizes and pads every image to a free ``(h, w)`` = ``image_size`` that a
    #: data pipeline can fill exactly (anchor detectors); the auto recipe may then fit it to the data.
    input_size_is_free: bool = True
    #: the name prefix of the pretrained feature extractor's parameters (what ``backbone_lr`` trains
    #: at its own learning rate)
    backbone_prefix: str = "backbone."

    def __init__(self, name: str, num_classes: int, image_size: Sequence[int],
                 class_names: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
                 overrides: dict | None = None, first_category_id: int = 1) -> None:
        super().__init__()
        self.name = name
        self.num_classes = int(num_classes)
        self.image_size = tuple(int(s) for s in image_size)
        self.class_names = class_names_for(class_names, self.num_classes)
        self.category_ids = category_ids_for(category_ids, self.num_classes, first=first_category_id)
        self.overrides = dict(overrides or {})

    # ----------------------------------------------------------------------------------------
    # identity
    @property
    def config(self) -> dict[str, Any]:
        """``{"model", "num_classes", "class_names", "category_ids", "image_size", "overrides"}``,
        JSON-able; rebuilds the model (:func:`scaledet.models.registry.create_from_config`)."""
        overrides = {key: _jsonable(value) for key, value in self.overrides.items()}
        return {"model": self.name, "num_classes": self.num_classes, "class_names": list(self.class_names),
                "category_ids": list(self.category_ids), "image_size": list(self.image_size),
                "overrides": overrides}

    def save(self, path: str | Path) -> Path:
        """Write the weights as safetensors with :attr:`config` inside (class names, category ids, input size,
        fitted anchors): :func:`scaledet.load` rebuilds this model from the file alone. Returns the path."""
        from scaledet.weights import save_weights

        if Path(path).suffix != ".safetensors":  # what scaledet.load recognises as ours
            raise ValueError(f"save writes safetensors: give a path ending in .safetensors, got {str(path)!r}")
        return save_weights(self.state_dict(), path, self.config)

    def input_size(self) -> tuple[int, int]:
        """The (h, w) of the network input for a typical image at inference (benchmarks, profiles,
        export examples). Default: ``image_size`` (families that resize-and-pad to a fixed size)."""
        return tuple(self.image_size)

    def input_scale(self, height: int, width: int, image_size: Sequence[int] | None = None) -> tuple[float, float]:
        """``(scale_y, scale_x)``: network-input pixels per image pixel that the eval resize gives an image
        of ``height`` x ``width`` at the size setting ``image_size`` (default ``self.image_size``), so
        that box sides can be measured as the network sees them (the dataset doctor). Default: the
        longest side fitted into ``image_size`` (h, w), aspect kept (resize-and-pad families)."""
        scale = longest_side_scale(height, width, image_size or self.image_size)
        return scale, scale

    def unresized_size(self) -> tuple[int, int]:
        """An image (h, w) that the eval resize passes through unscaled: the size the built-in shapes
        set is rendered at for ``scaledet eval`` / ``predict --data shapes:...``, so the network sees
        the images as drawn. Default: ``image_size`` (resize-and-pad families)."""
        return tuple(self.image_size)

    def describe_input(self, image_size: Sequence[int] | None = None) -> str:
        """The eval resize at ``image_size`` (default ``self.image_size``) in words, for reports."""
        size = tuple(image_size or self.image_size)
        return f"{size[0]}x{size[1]} (longest side fitted, aspect kept, padded)"

    # ----------------------------------------------------------------------------------------
    # the call chain (per family)
    @abc.abstractmethod
    def preprocess(self, images: list[Tensor], training: bool = False) -> Batch:
        """Resize, normalise and pad ``images`` (checked ``[3, H, W]`` in [0, 1]) into a :class:`Batch`.
        ``training=True`` applies the family's train-time resizing (e.g. DETR's multi-scale)."""

    @abc.abstractmethod
    def forward_features(self, *inputs: Tensor) -> Any:
        """The pure network: ``batch.inputs`` -> raw outputs (tensors, tuples / lists / dicts of them)."""

    @abc.abstractmethod
    def postprocess(self, outputs: Any, batch: Batch, fast: bool = False) -> list[Detections]:
        """Raw outputs -> one detections dict per image, boxes in that image's pixels, by score.
        ``fast=True`` may take exact shortcuts (batched top-k, chunked NMS): same detections."""

    @abc.abstractmethod
    def loss(self, outputs: Any, batch: Batch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Training losses; ``targets`` boxes are xyxy in each *input* image's pixels. ``"loss"`` is the total."""

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None):
        """Eval: ``list[Detections]``. Train (``targets`` given): dict of named losses."""
        images = check_images(images)
        if targets is None and self.training:
            raise ValueError("training mode needs targets (call model.eval() for detections)")
        if targets is not None:
            check_targets(targets, len(images), self.num_classes, [tuple(i.shape[-2:]) for i in images])
            batch = self.preprocess(images, training=True)
            try:
                return self.loss(self.forward_features(*batch.inputs), batch, list(targets))
            except ValueError as error:  # torch's words for a 1 x 1 map of one image under BatchNorm
                if "more than 1 value per channel" not in str(error):
                    raise
                size = tuple(batch.inputs[0].shape[-2:])
                raise ValueError(f"a training batch of {len(images)} image(s) at input size {size[0]}x{size[1]}: the "
                                 "smallest feature map is 1x1 there, and BatchNorm needs more than one value per "
                                 "channel; train with 2 or more images a batch (--batch-size) or a larger input "
                                 "size") from None
        batch = self.preprocess(images)
        return self.postprocess(self.forward_features(*batch.inputs), batch)

    # ----------------------------------------------------------------------------------------
    # training hooks (defaults suit most families)
    def param_groups(self, lr: float, weight_decay: float, backbone_lr: float | None = None) -> list[dict]:
        """Optimizer parameter groups: 1-D parameters (biases, norm weights) without weight decay;
        parameters under :attr:`backbone_prefix` at ``backbone_lr`` when given (:func:`default_param_groups`).
        Families with a recipe of their own (DETR: backbone at lr / 10) override this."""
        return default_param_groups(self, lr, weight_decay, backbone_lr, self.backbone_prefix)

    def train_transforms(self, *, scale_range: tuple[float, float] | None = None, hflip: float | None = None,
                         photometric: bool | None = None, fill: float | None = None, min_box_size: float | None = None):
        """The training-time data pipeline (a ``(image, target) -> (image, target)`` callable given
        to the dataset), from the recipe's augmentation keywords. Default: EfficientDet-style
        flip, scale jitter and crop/pad to :meth:`input_size` (:func:`scaledet.data.train_transforms`,
        whose defaults apply to the keywords left ``None``). The keywords are named so that the
        trainer can check a config's ``augment`` against them."""
        given = dict(scale_range=scale_range, hflip=hflip, photometric=photometric, fill=fill, min_box_size=min_box_size)
        return train_transforms(self.input_size(), **{key: value for key, value in given.items() if value is not None})

    # ----------------------------------------------------------------------------------------
    # inference and export hooks
    def prepare_for_inference(self) -> None:
        """In-place rewrites on an eval-mode copy made by :func:`scaledet.optimize`, before BatchNorm
        is folded into convolutions (e.g. unsharing conv weights shared across levels, freezing
        fusion weights). Default: nothing. Must keep the eval output equal."""

    @abc.abstractmethod
    def export_spec(self, input_size: tuple[int, int] | None = None) -> ExportSpec:
        """The ONNX graph (see :class:`ExportSpec`); ``input_size`` is the example's (h, w)."""

    @abc.abstractmethod
    def export_feeds(self, batch: Batch) -> dict[str, Tensor]:
        """The exported graph's inputs (by name) for a preprocessed batch."""

    def preprocessing_spec(self) -> dict[str, Any] | None:
        """:meth:`preprocess` + :meth:`export_feeds` (eval) and the graph's box units, written out for
        deployers without Python: the exported file keeps it in its metadata (key ``"preprocessing"``,
        JSON; format ``scaledet-preprocessing/1``, described in docs/inference.md, "Feeding the ONNX
        graph without Python"). ``None`` (the default): not described."""
        return None

    @abc.abstractmethod
    def detections_from_export(self, outputs: Sequence[Tensor], batch: Batch) -> list[Detections]:
        """The exported graph's outputs -> the eval contract (boxes in each input image's pixels)."""


def longest_side_scale(height: int, width: int, size: Sequence[int]) -> float:
    """The scale that fits a ``height`` x ``width`` image into ``size`` (h, w), aspect kept."""
    return min(size[0] / height, size[1] / width)


def default_param_groups(module: nn.Module, lr: float, weight_decay: float,
                         backbone_lr: float | None = None, backbone_prefix: str = "backbone.") -> list[dict]:
    """Optimizer parameter groups of any module: trainable 1-D parameters (biases, norm weights)
    without weight decay, parameters named ``backbone_prefix*`` at ``backbone_lr`` when it is given
    (ValueError if no trainable parameter has that prefix: the option would do nothing)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            is_backbone = backbone_lr is not None and name.startswith(backbone_prefix)
            groups.setdefault((is_backbone, parameter.ndim <= 1), []).append(parameter)
    if backbone_lr is not None and not any(is_backbone for is_backbone, _ in groups):
        raise ValueError(f"backbone_lr {backbone_lr:g}: {type(module).__name__} has no trainable parameter under "
                         f"{backbone_prefix!r}; drop --backbone-lr")
    result = []
    for (is_backbone, no_decay), params in sorted(groups.items()):
        result.append({"params": params, "lr": backbone_lr if is_backbone else lr,
                       "weight_decay": 0.0 if no_decay else weight_decay})
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
