"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and containers (no pickled objects), so loading it can
never execute code: ``model``/``ema``/``optimizer``/``scheduler`` state dicts, ``epoch``,
``step``, ``step_in_epoch``, ``rng`` (every generator's state as a tensor) and ``extra``.

Writes go to a temporary file in the same folder, are flushed and ``fsync``-ed, then renamed over
the target (``os.replace`` is atomic on POSIX): a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaledet.errors import UserError
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


#: what to do about a checkpoint that cannot be resumed from
RESUME_FIX = "delete it or start without --resume"


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_torch_save` (tensors and containers only).

    Raises:
        FileNotFoundError: no such file.
        UserError (a ValueError): empty or corrupt (``PATH is empty or corrupt (...): delete it or
            start without --resume``), pickled code, or not a training checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (start without --resume, or give --resume PATH)")
    state = torch_load_weights_only(path, fix=RESUME_FIX)
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"{path} is not a scaledet training checkpoint (no 'model'/'step' entries): {RESUME_FIX}")
    return state


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
