"""Weights files into models, for every family: one precedence rule and one strict load.

:func:`scaledet.models.registry.create_model` calls :func:`build_pretrained` whenever it is given
``pretrained`` (``"coco"`` or a file), so ``create_model(name, pretrained=...)``,
:func:`scaledet.load`, ``scaledet predict / eval / export`` and fine-tuning (``--pretrained``) all
load weights through here.

A family says how its weights files look with a :class:`CheckpointSpec`, the package attribute
``CHECKPOINT`` (its ``build`` only ever builds randomly initialised models). Files are:

* ours: safetensors whose stored config (:func:`scaledet.weights.read_weights_config`) names the
  model, its classes, input size and variant overrides;
* another project's checkpoint (effdet ``.pth``, official DETR ``.pth``, Hugging Face DETR
  ``.bin`` / ``.safetensors``): tensors only, renamed to our keys by ``CheckpointSpec.convert``
  (the format is detected by the family's converter module).

Precedence, for every setting of the built model: **explicit argument > the file's config > the
variant default.** ``num_classes`` falls back to the class count of the file's tensors when the
file has no config. ``class_names`` / ``category_ids`` come from the file only when the model
keeps the file's class count.

Loading is strict (:func:`load_state_strict`): every key of the model must be in the file with
its shape, and nothing else; the single exception is the class predictor. Given ``class_names``
other than the file's, its rows are matched by name (:func:`match_class_rows`: the file's rows for
the classes it has, in the model's order, fresh ones for new classes); with no name shared, or a
class count that differs from the file's without names to match, the model keeps its freshly
initialised class predictor. One log line says which. Any other difference raises
:class:`CheckpointMismatch` naming the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from scaledet.data.base import plain_name
from scaledet.errors import UserError
from scaledet.weights import compare_state_dicts, read_checkpoint

log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
COUNTER_SUFFIX = "num_batches_tracked"


class CheckpointMismatch(UserError):
    """A weights file does not fit the model (the message names the keys)."""


def _unchanged(state_dict: StateDict, model: nn.Module) -> StateDict:
    return state_dict


@dataclass(frozen=True)
class CheckpointSpec:
    """How a family's weights files map onto its models (the family package's ``CHECKPOINT``).

    Attributes:
        class_head: state-dict key prefixes of the class predictor (our names), re-initialised
            when a file's class count differs from the model's.
        class_bias: key of the class predictor's bias; its length is ``rows_per_class * K +
            background`` (``rows_per_class`` read from the model: anchors per location for
            EfficientDet and RetinaNet, 1 for DETR), which gives a file's class count ``K``.
        background: extra rows of ``class_bias`` that are no class (DETR's "no object": 1).
        convert: ``(state dict as read, the model it is for) -> state dict in our key names``
            (detects and renames other projects' layouts); ValueError when the layout is not
            recognised. The model may be on the ``meta`` device: read its config, not its values.
        coco: model name -> local path of the published COCO weights (downloaded and
            hash-checked into torch.hub's cache); ``None`` when the family publishes none.
        coco_hint: without ``coco``, where COCO weights this family loads can be found (ends the error).
    """

    class_head: tuple[str, ...]
    class_bias: str
    background: int = 0
    convert: Callable[[StateDict, nn.Module], StateDict] = _unchanged
    coco: Callable[[str], Path] | None = None
    coco_hint: str = ""

    def num_classes(self, state_dict: StateDict, model: nn.Module) -> int | None:
        """The class count of ``state_dict`` (our key names), or ``None`` without a class predictor."""
        if self.class_bias not in state_dict:
            return None
        ours = model.state_dict()[self.class_bias].shape[0]
        rows_per_class = (ours - self.background) // model.num_classes
        return (state_dict[self.class_bias].shape[0] - self.background) // rows_per_class


def weights_file(spec: CheckpointSpec, name: str, pretrained: str | Path) -> Path:
    """The local file ``pretrained`` names: ``"coco"`` -> the published weights of model
    ``name`` (downloaded if needed), anything else -> that path."""
    if str(pretrained) != "coco":
        return Path(pretrained)
    if spec.coco is None:
        raise UserError(f"{name} has no COCO weights to download here; give a weights file instead of 'coco'"
                        + (f" ({spec.coco_hint})" if spec.coco_hint else ""))
    return spec.coco(name)


def build_settings(stored: dict[str, Any] | None, num_classes: int | None, image_size: Any,
                   overrides: dict[str, Any]) -> dict[str, Any]:
    """The keywords of a family's ``build`` for a file with config ``stored`` (``None`` for
    another project's file), by the precedence rule: explicit > stored > variant default (absent).

    ``overrides`` holds the explicit variant fields and optional ``class_names`` / ``category_ids``.
    The result has ``num_classes`` (``None`` = take the class count of the file's tensors),
    ``image_size`` (``None`` = the variant's), ``class_names``, ``category_ids`` and the variant fields.
    """
    stored = stored or {}
    explicit = dict(overrides)
    class_names, category_ids = explicit.pop("class_names", None), explicit.pop("category_ids", None)
    settings = {**stored.get("overrides", {}), **explicit}
    if num_classes is None or num_classes == stored.get("num_classes"):  # the file's classes are kept
        num_classes = stored.get("num_classes")
        class_names = class_names or stored.get("class_names")
        category_ids = category_ids or stored.get("category_ids")  # absent in older files: the default
    size = image_size if image_size is not None else stored.get("image_size")
    return {**settings, "num_classes": num_classes, "image_size": tuple(size) if isinstance(size, list) else size,
            "class_names": class_names, "category_ids": category_ids}


def build_pretrained(family: ModuleType, name: str, pretrained: str | Path, num_classes: int | None = None,
                     image_size: Any = None, **overrides: Any) -> nn.Module:
    """Model ``name`` of ``family`` (a registry family package) with the weights of ``pretrained``.

    Args:
        family: the family package (``build`` and ``CHECKPOINT``).
        name: the model name.
        pretrained: ``"coco"`` or a weights file (ours, or another project's the family converts).
        num_classes / image_size / **overrides: explicit settings (see the precedence rule in
            the module docstring); ``overrides`` may hold ``class_names`` and ``category_ids``.

    Raises:
        FileNotFoundError: no such file.
        UserError (a ValueError): the file is unreadable, is no checkpoint of this family, or
            does not fit the model (:class:`CheckpointMismatch`); no published weights.
    """
    spec: CheckpointSpec = family.CHECKPOINT
    path = weights_file(spec, name, pretrained)
    state_dict, stored = read_checkpoint(path)
    other_model = stored is not None and stored.get("model") not in (None, name)
    if other_model:  # our files name their model: another name is a mistake, even where the weights would fit
        raise _other_model_error(path, stored["model"], name)  # (detr_r101 with a ResNet-18 file's options)
    settings = build_settings(stored, num_classes, image_size, overrides)
    file_classes, converted = (stored or {}).get("num_classes"), None
    if settings["num_classes"] is None:  # another project's file: count its classes on a weightless model
        with torch.device("meta"):
            probe = family.build(name, **{**settings, "class_names": None, "category_ids": None})
        converted = _convert(spec, state_dict, probe, path)
        settings["num_classes"] = file_classes = spec.num_classes(converted, probe)
        settings["class_names"] = settings["class_names"] or sidecar_class_names(path, file_classes)
    model = family.build(name, **settings)
    if converted is None:
        converted = _convert(spec, state_dict, model, path)
    if file_classes is None:
        file_classes = spec.num_classes(converted, model)
    from scaledet.evaluation.results import short_list  # (scaledet.evaluation imports the models)

    reset = file_classes is not None and file_classes != model.num_classes
    wanted = overrides.get("class_names")
    file_names = _file_class_names(family, name, stored, path, file_classes) if wanted is not None or reset else None
    if wanted is not None and file_names is not None and list(wanted) != file_names:  # rows matched by name
        converted, shared = match_class_rows(converted, model, file_names)
        reset = not shared  # no name shared: the file's rows predict other classes, whatever the count
        if shared:
            new = [class_name for class_name in model.class_names if class_name not in shared]
            reordered = not new and len(shared) == len(file_names) and [plain_name(n) for n in shared] != [
                plain_name(n) for n in file_names]
            log.warning("%s: the class predictor's rows of %s are the checkpoint's (matched by name%s)%s", path,
                        short_list(shared), ", reordered" if reordered else "",
                        f"; {short_list(new)} re-initialised" if new else "")
    load_state_strict(model, converted, path, spec.class_head, reset)
    if reset:  # said once the load succeeded, naming only the heads this model has
        heads = [prefix for prefix in spec.class_head if any(key.startswith(prefix) for key in model.state_dict())]
        log.warning("%s: checkpoint has %d classes %s, model %s has %d %s: loaded everything else and re-initialised "
                    "the class predictor (%s)", path, file_classes, short_list(file_names or []), model.name,
                    model.num_classes, short_list(model.class_names), ", ".join(heads))
    return model


def _file_class_names(family: ModuleType, name: str, stored: dict[str, Any] | None, path: Path,
                      file_classes: int | None) -> list[str] | None:
    """The class names of a weights file, when it names its classes: ours store them; another project's
    file has the family's names for its class count (COCO's for the published weights) or those of a
    Hugging Face ``config.json`` beside it. ``None`` for placeholder names (``class_0`` ...) or no count."""
    from scaledet.evaluation.results import is_placeholder_name  # (scaledet.evaluation imports the models)

    if file_classes is None:
        return None
    names = (stored or {}).get("class_names")
    if stored is None:
        names = sidecar_class_names(path, file_classes)
        if names is None:
            with torch.device("meta"):
                names = family.build(name, num_classes=file_classes).class_names
    if not isinstance(names, list) or len(names) != file_classes or all(is_placeholder_name(str(n)) for n in names):
        return None
    return [str(n) for n in names]


def class_rows(model: nn.Module) -> dict[str, int] | None:
    """``{key: R}`` for each tensor of ``model`` whose first dimension holds its classes: ``R`` rows per class,
    class fastest (row ``r * K + k``: EfficientDet's and RetinaNet's anchors, DETR's single row), then extra
    rows that are no class (DETR's "no object", RT-DETR's denoising padding). Read from the shapes of the same
    model built on the ``meta`` device for one class more; ``None`` when a size depends on the class count
    along another dimension (a layout this does not know)."""
    from scaledet.models.registry import create_from_config  # the registry imports this module

    with torch.device("meta"):
        bigger = create_from_config({**model.config, "num_classes": model.num_classes + 1, "class_names": None,
                                     "category_ids": None}).state_dict()
    rows = {}
    for key, value in model.state_dict().items():
        grown = bigger.get(key)
        if grown is None or grown.shape == value.shape:
            continue
        if grown.shape[1:] != value.shape[1:]:
            return None
        rows[key] = grown.shape[0] - value.shape[0]
    return rows


def match_class_rows(state_dict: StateDict, model: nn.Module, file_names: Sequence[str]) -> tuple[StateDict, list[str]]:
    """``state_dict`` (our key names, the file's ``file_names`` classes) with its class predictor matched to
    ``model``'s classes by name: a class the file has (once) gets the file's rows, in the model's order; any other
    keeps the model's fresh initialisation; the extra rows (DETR's "no object") are the file's. For fine-tuning
    onto the same classes in another order (a VOC folder read alphabetically), onto some of the file's classes
    (``person`` and ``car`` from COCO) or onto some new ones beside them.

    Returns ``(state dict for the model, the model's class names taken from the file)``; the state dict is
    ``state_dict`` unchanged (the caller re-initialises) when no name is shared or the layout is unknown.
    """
    rows = class_rows(model)
    names, file_keys = list(model.class_names), [plain_name(name) for name in file_names]
    index = {key: k for k, key in enumerate(file_keys) if file_keys.count(key) == 1}
    shared = [name for name in names if plain_name(name) in index]
    if rows is None or not shared:
        return state_dict, []
    fresh, num_classes, file_classes = model.state_dict(), len(names), len(file_keys)
    matched = dict(state_dict)
    for key, per_class in rows.items():
        source = state_dict.get(key)
        extra = fresh[key].shape[0] - per_class * num_classes
        if source is None or source.shape != (per_class * file_classes + extra, *fresh[key].shape[1:]):
            continue  # not laid out as the model's: the strict load names it
        target = fresh[key].clone().to(source.dtype)
        for k, name in enumerate(names):
            if plain_name(name) in index:
                file_k = index[plain_name(name)]
                target[k:per_class * num_classes:num_classes] = source[file_k:per_class * file_classes:file_classes]
        target[per_class * num_classes:] = source[per_class * file_classes:]
        matched[key] = target
    return matched, shared


def _family_of(model: str):
    """The registry family of model name ``model`` (None for a name no family has)."""
    from scaledet.models.registry import family_of  # the registry imports this module

    try:
        return family_of(model)
    except ValueError:
        return None


def _other_model_error(path: Path, stored_model: str, name: str) -> UserError:
    return UserError(f"{path} holds {stored_model} weights, which do not fit {name}: give --model {stored_model} "
                     "(model=...; or none: our files name their model)")


def _convert(spec: CheckpointSpec, state_dict: StateDict, model: nn.Module, path: Path) -> StateDict:
    try:
        return spec.convert(state_dict, model)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None


def load_state_strict(model: nn.Module, state_dict: StateDict, source: str | Path,
                      class_head: tuple[str, ...] = (), reset: bool = False) -> None:
    """Load ``state_dict`` (our key names) into ``model`` strictly, in place.

    With ``reset`` (the file predicts other classes), the keys under ``class_head`` keep the model's fresh
    initialisation and everything else is loaded. BatchNorm counters (``*.num_batches_tracked``) a file lacks
    keep the model's (some converters drop them).

    Raises:
        CheckpointMismatch: ``"SOURCE does not fit MODEL (K classes): missing (N): ...;
            unexpected (N): ...; shape mismatch (N): key: checkpoint (a,) vs model (b,)"``.
    """
    expected = model.state_dict()
    reset_keys = class_head if reset else ()
    given = {key: value for key, value in state_dict.items() if not key.startswith(reset_keys)}
    kept = {key: value for key, value in expected.items()
            if key.startswith(reset_keys) or (key.endswith(COUNTER_SUFFIX) and key not in given)}
    report = compare_state_dicts({**kept, **given}, expected)
    if report:
        raise CheckpointMismatch(f"{source} does not fit {model.name} ({model.num_classes} classes): {report}")
    model.load_state_dict({**kept, **given}, strict=True)


def sidecar_class_names(path: Path, num_classes: int) -> list[str] | None:
    """The class names of a Hugging Face file from the ``config.json`` saved beside it (its
    ``id2label``), when they are ``num_classes`` names for ids 0..K-1; else ``None``."""
    config_file = Path(path).with_name("config.json")
    try:
        labels = json.loads(config_file.read_text(encoding="utf-8")).get("id2label")
        names = [str(labels[str(index)]) for index in range(num_classes)] if isinstance(labels, dict) else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return names if names and len(labels) == num_classes else None
