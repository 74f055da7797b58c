"""A family's preprocessing written out as data, for whoever feeds an exported graph without Python.

:meth:`~scaledet.models.base.Detector.preprocessing_spec` builds it from these pieces and
:func:`scaledet.export.export_onnx` stores it in the file's metadata (key ``"preprocessing"``,
JSON). The format (``scaledet-preprocessing/1``), in order of use:

* ``input``: what one image is before any step (RGB float32 in [0, 1], ``[3, h, w]``).
* ``constants``: numbers of this model (input size, mean, std, ...).
* ``let``: ``[name, expression]`` pairs computed per image, in order. Expressions are Python over
  ``h``, ``w`` (the image's height and width), the constants and earlier names, with ``min``,
  ``max``, ``round`` (half to even, as Python's), ``int`` (truncation), ``floor``, ``ceil``.
* ``steps``: applied per image in order. ``resize`` to the ``size`` expression (``(height, width)``),
  ``interpolation`` bilinear with ``align_corners`` false (half-pixel centres), ``antialias``
  (an expression or a boolean: a triangle filter widened by the shrink factor, as PIL's and
  ``torch.nn.functional.interpolate(antialias=True)``), skipped when the size is the image's own;
  ``normalize``: ``(x - mean[c]) / std[c]`` per channel; ``pad``: bottom and right with ``value``
  to ``to`` (an expression, or ``"largest in batch"``: the batch's largest height and width,
  with a mask true on the padding).
* ``feeds``: the graph's inputs by name: ``"batch"`` (the stacked images), ``"padding mask"``, or
  an expression per image (rows of a ``[B, k]`` float32 tensor).
* ``boxes``: the units of the graph's boxes and how to bring them to the image's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FORMAT = "scaledet-preprocessing/1"
INPUT = "RGB float32 in [0, 1], [3, h, w] per image (h, w: its height and width)"
LARGEST_IN_BATCH = "largest in batch"
BATCH, PADDING_MASK = "batch", "padding mask"


def spec(constants: dict[str, Any], let: Sequence[tuple[str, str]], steps: Sequence[dict[str, Any]],
         feeds: dict[str, str], boxes: str, notes: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON-able description (see the module docstring)."""
    out = {"format": FORMAT, "input": INPUT, "constants": constants, "let": [list(pair) for pair in let],
           "steps": list(steps), "feeds": feeds, "boxes": boxes}
    if notes:
        out["notes"] = list(notes)
    return out


def resize(size: str, antialias: str | bool) -> dict[str, Any]:
    """Bilinear resize to the ``size`` expression, half-pixel centres, skipped at the image's own size."""
    return {"op": "resize", "size": size, "interpolation": "bilinear", "align_corners": False, "antialias": antialias}


def normalize(mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """``(x - mean[c]) / std[c]`` per channel."""
    return {"op": "normalize", "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def pad(to: str, value: float = 0.0) -> dict[str, Any]:
    """Pad bottom and right with ``value`` to the ``to`` expression or :data:`LARGEST_IN_BATCH`."""
    return {"op": "pad", "to": to, "where": "bottom, right", "value": value}
