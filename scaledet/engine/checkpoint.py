"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and containers (no pickled objects), so loading it can
never execute code: ``model``/``ema``/``optimizer``/``scheduler`` state dicts, ``epoch``,
``step``, ``step_in_epoch``, ``rng`` (every generator's state as a tensor) and ``extra``.

Writes go to a temporary file in the same folder, are flushed and ``fsync``-ed, then renamed over
the target (``os.replace`` is atomic on POSIX): a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaledet.errors import UserError
from scaledet.evaluation.results import short_list
from scaledet.weights import readable_as_umask_allows, torch_load_weights_only


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` so that ``path`` is always either old or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        readable_as_umask_allows(handle.name)
        os.replace(handle.name, path)
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: checkpoints whose half-written temporary files (``.NAME.*.tmp``, from a save that was killed) a run removes
CHECKPOINT_NAMES = ("last.pt", "best.pt")


def remove_stale_temporaries(out: str | Path) -> None:
    """Remove what killed checkpoint saves left in ``out`` (each up to a checkpoint's size). Called by the
    run that holds ``out``'s lock, so no save of another run can be under way."""
    for name in CHECKPOINT_NAMES:
        for temporary in Path(out).glob(f".{name}.*.tmp"):
            temporary.unlink(missing_ok=True)


#: what to do about a checkpoint that cannot be resumed from
RESUME_FIX = "start without --resume (a new run replaces it), or --resume another checkpoint (e.g. OUT/best.pt)"

#: ``TrainConfig`` fields whose model-building meaning a resumed run must share with its checkpoint
#: (compared through the built model's config: name, classes, input size, anchors)
MODEL_KEYS = ("model", "num_classes", "image_size", "overrides")

#: ``TrainConfig`` fields that change how a resumed run continues (named in a warning when they differ)
PLAN_KEYS = ("train", "val", "epochs", "max_steps", "max_minutes", "batch_size", "grad_accum", "optimizer", "lr",
             "schedule", "recipe", "weight_decay", "warmup_epochs", "ema_decay", "bn_momentum", "augment", "seed")


def resume_path(out: str | Path, resume: str | None) -> Path:
    """The checkpoint ``--resume`` means: ``OUT/last.pt`` for ``"auto"`` (plain ``--resume``), ``DIR/last.pt``
    for a run's folder, else the path given."""
    path = Path(out) / "last.pt" if resume == "auto" else Path(str(resume))
    return path / "last.pt" if path.is_dir() else path


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_torch_save` (tensors and containers only).

    Raises:
        FileNotFoundError: no such file.
        UserError (a ValueError): empty or corrupt (``PATH is empty or corrupt (...): start without
            --resume ...``), pickled code, or not a training checkpoint (weights: use them with --pretrained).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (start without --resume, or give --resume PATH)")
    not_checkpoint = (f"{path} is not a scaledet training checkpoint (a run's last.pt / best.pt): --resume continues "
                      "the run that wrote one; to start a new run from a file's weights give it as --pretrained PATH")
    if path.suffix.lower() == ".safetensors":
        raise UserError(not_checkpoint)
    state = torch_load_weights_only(path, fix=RESUME_FIX)
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(not_checkpoint)
    return state


def check_resume(path: str | Path, state: dict[str, Any], config: dict[str, Any],
                 model_config: dict[str, Any], world_size: int = 1) -> list[str]:
    """Compare a checkpoint with the run about to continue it.

    Args:
        path: the checkpoint (for messages).
        state: :func:`load_training_checkpoint`'s dict (its ``config`` and ``model_config``).
        config: the resumed run's ``TrainConfig.to_dict()``.
        model_config: the config of the model the resumed run built (``model.config``; ``{}`` if none).
        world_size: the resumed run's number of processes.

    Returns:
        the options that differ in how the run continues, as ``--name NEW (was OLD)`` (empty: the same run).

    Raises:
        UserError: the model differs (name, classes, input size, anchors): its weights would not fit,
            or would load onto other anchors; the class names differ; the number of processes differs
            (steps, epochs and the image order depend on it).
    """
    trained_as = state.get("world_size")  # absent in checkpoints written before 2026-12-07
    if trained_as is not None and trained_as != world_size:
        raise UserError(f"{path} was trained as {trained_as} process(es) and this run has {world_size}: its step and "
                        f"epoch counts and the order of its images depend on that; resume with --processes {trained_as}, "
                        "or start a new run (--pretrained PATH takes its weights)")
    stored_model = state.get("model_config") or {}
    if stored_model and model_config:
        was = {key: stored_model.get(key) for key in MODEL_KEYS}
        now = {key: _plain(model_config.get(key)) for key in MODEL_KEYS}
        if was != now:
            raise UserError(f"{path} is a run of {_describe_model(was)}; this command builds {_describe_model(now)}: "
                            "resume with the options and data the run started with (--model, --image-size, "
                            "--anchors, --tile), or start a new run with another --out")
        if stored_model.get("class_names") and stored_model["class_names"] != _plain(model_config.get("class_names")):
            raise UserError(f"{path} was trained on the classes {short_list(stored_model['class_names'])}; the data now "
                            f"gives {short_list(model_config.get('class_names') or [])}: its class head would be read "
                            "as other classes; resume with the data the run started with, or start a new run "
                            "(--pretrained PATH fine-tunes from its weights)")
    stored = state.get("config") or {}
    current = _plain(config)
    return [f"--{key.replace('_', '-')} {_show(current.get(key))} (was {_show(stored.get(key))})"
            for key in PLAN_KEYS if key in stored and stored.get(key) != current.get(key)]


def _plain(value: Any) -> Any:
    """``value`` as it reads back from a checkpoint (tuples become lists)."""
    return json.loads(json.dumps(value))


def _show(value: Any) -> str:
    return "not given" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _describe_model(config: dict[str, Any]) -> str:
    size = config.get("image_size")
    anchors = {k: v for k, v in (config.get("overrides") or {}).items() if k in ("anchor_scale", "aspect_ratios")}
    return (f"{config.get('model')}" + (f" at {size[0]}x{size[1]}" if isinstance(size, list) and len(size) == 2 else "")
            + f", {config.get('num_classes')} classes" + (f", anchors {anchors}" if anchors else ""))


# --- random number generators --------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG's state (torch CPU/CUDA, numpy, python) as tensors, safe for weights_only."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "python_version": int(py_version),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
         state["numpy_has_gauss"], state["numpy_gauss"])
    )
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
