"""Reading and writing checkpoint files safely.

Our own weights are a ``.safetensors`` file whose metadata holds the model config as JSON,
with the same JSON written beside it (``name.json``) for people and other tools:
``{"format": "scaledet", "model": NAME, "num_classes": K, "class_names": [...],
"image_size": [H, W], "overrides": {...}}``.

Foreign checkpoints (``.pth``/``.pt``/``.bin``) are read with ``torch.load(weights_only=True)``:
tensors and plain containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_TAG = "scaledet"
CONFIG_KEY = "scaledet_config"


def config_path_for(weights_path: str | Path) -> Path:
    """The sidecar JSON path of a safetensors weights file."""
    return Path(weights_path).with_suffix(".json")


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path, config: dict[str, Any]) -> Path:
    """Write ``state_dict`` as safetensors (atomically) plus the sidecar JSON ``config``.

    ``config`` must contain at least ``model`` (a name from :func:`scaledet.list_models`).
    """
    path = Path(path)
    if "model" not in config:
        raise ValueError("config must name the model (key 'model')")
    config = {"format": FORMAT_TAG, **config}
    text = json.dumps(config, indent=2, sort_keys=True)
    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        temp_name = handle.name
    try:
        save_file(tensors, temp_name, metadata={CONFIG_KEY: text})
        with open(temp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    config_path_for(path).write_text(text + "\n")
    return path


def read_weights_config(path: str | Path) -> dict[str, Any] | None:
    """The config stored with our safetensors file, or ``None`` if it is not ours."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if CONFIG_KEY in metadata:
        return json.loads(metadata[CONFIG_KEY])
    sidecar = config_path_for(path)
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    return None


def is_safetensors(path: str | Path) -> bool:
    return Path(path).suffix == ".safetensors"


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat ``{key: tensor}`` state dict from any supported file, safely.

    * ``.safetensors`` -> loaded with safetensors.
    * anything else -> ``torch.load(weights_only=True)``; if the result nests the state dict
      under ``"model"``, ``"state_dict"`` or ``"model_state"`` (training checkpoints, the official
      DETR files), that entry is returned.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no tensor state dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if is_safetensors(path):
        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_state"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(loaded)
