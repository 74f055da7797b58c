"""``scaledet.load``: one call from any weights file to a ready detector.

Used by ``scaledet predict``, ``scaledet eval`` and ``scaledet export``; fine-tuning
(``scaledet train --pretrained``) reaches the same code through ``create_model(name,
pretrained=...)`` (:func:`scaledet.models.checkpoints.build_pretrained`: one precedence rule,
one strict load for every family).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from scaledet.errors import UserError
from scaledet.export import OnnxDetector
from scaledet.models.registry import create_model
from scaledet.weights import is_training_checkpoint, read_weights_config, refuse_folder, torch_load_weights_only


def load(path: str | Path | None, *, model: str | None = None, num_classes: int | None = None,
         image_size: int | tuple[int, int] | None = None, device: str = "cpu",
         **overrides: Any) -> nn.Module | OnnxDetector:
    """A detector with the weights of ``path``, in eval mode on ``device``.

    Args:
        path: one of
            * our ``.safetensors`` (its stored config names the model and rebuilds it:
              :func:`~scaledet.models.registry.create_from_config`'s fields), or a training
              checkpoint of ours (``last.pt`` / ``best.pt``: its config and the weights it evaluates,
              the EMA's when it has one);
            * another project's checkpoint - effdet / official EfficientDet ``.pth``, official
              DETR ``.pth``, Hugging Face DETR ``.bin`` / ``.safetensors`` - detected and converted
              by the family's converter; these carry no config, so ``model`` is required;
            * ``"coco"``: the published COCO weights of ``model`` (downloaded, hash-checked);
            * an exported ``.onnx`` file (any case of the suffix): an :class:`~scaledet.export.OnnxDetector`
              (onnxruntime, CPU), which takes no other argument; an INT8 file (``scaledet export --int8``) a
              :class:`~scaledet.inference.quantize.QuantizedDetector` (``precision="int8"``, its report);
            * ``None``: a randomly initialised ``model``.
        model: model name (:func:`scaledet.list_models`); default the file's.
        num_classes: default the file's; a different count re-initialises the class predictor.
        image_size: input size override (``int`` or ``(h, w)``; DETR: ``(shorter side, cap)``).
        device: where the model's weights go.
        **overrides: variant fields (e.g. ``score_thresh``), ``class_names``, ``category_ids``.
            Explicit arguments win over the file's config, which wins over the variant's defaults.

    Returns:
        a model with the detector contract (``model(images) -> list of dict(boxes [N, 4] xyxy
        pixels of each input image, scores [N], labels [N] int64)``), or an ``OnnxDetector``
        with the same call.

    Raises:
        FileNotFoundError: no such file.
        UserError (a ValueError): the file is unreadable, names no model and ``model`` is not
            given, or does not fit the model (the message names the missing, unexpected and
            mis-shaped keys); arguments an ONNX file cannot take.
    """
    if path is not None and Path(path).suffix.lower() == ".onnx":
        return _load_onnx(Path(path), model, num_classes, image_size, overrides)
    if model is None:
        model = _stored_model_name(path)
    detector = create_model(model, num_classes=num_classes, pretrained=path, image_size=image_size, **overrides)
    return detector.to(device).eval()


def _stored_model_name(path: str | Path | None) -> str:
    """The model name in the config of our weights file ``path``."""
    if path is None or str(path) == "coco":
        raise UserError("give the model name (--model NAME / model=NAME) for random or 'coco' weights")
    if not Path(path).exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    refuse_folder(path)
    if Path(path).suffix == ".safetensors":
        config = read_weights_config(path)
    else:  # a training checkpoint of ours (last.pt / best.pt) names its model; other projects' files do not
        loaded = torch_load_weights_only(path, peek=True)  # create_model reads and checks the file
        config = loaded["model_config"] if is_training_checkpoint(loaded) else None
    if not config or "model" not in config:
        raise UserError(f"{path} does not name its model (not a scaledet weights file): give the model name "
                        "(--model NAME / model=NAME)")
    return config["model"]


def _load_onnx(path: Path, model: str | None, num_classes: int | None, image_size: Any,
               overrides: dict[str, Any]) -> OnnxDetector:
    """The ONNX runner of ``path``; its graph is fixed, so only a matching ``model`` name is accepted."""
    given = [name for name, value in (("num_classes", num_classes), ("image_size", image_size), *overrides.items())
             if value is not None]
    if given:
        raise UserError(f"{path} is an exported graph: {', '.join(given)} cannot change it (export it again)")
    from scaledet.inference.quantize import INT8_KEY, QuantizedDetector

    detector = OnnxDetector(path)
    if INT8_KEY in detector.session.get_modelmeta().custom_metadata_map:  # precision "int8", its report, VNNI check
        detector = QuantizedDetector(path, session=detector.session)
    if model is not None and model != detector.config["model"]:
        raise UserError(f"{path} holds {detector.config['model']}, not {model}")
    return detector
