"""Reading and writing checkpoint files safely.

Our own weights are a ``.safetensors`` file whose metadata holds the model config as JSON,
with the same JSON written beside it (``name.json``) for people and other tools:
``{"format": "scaledet", "model": NAME, "num_classes": K, "class_names": [...],
"image_size": [H, W], "overrides": {...}}``.

Foreign checkpoints (``.pth``/``.pt``/``.bin``) are read with ``torch.load(weights_only=True)``:
tensors and plain containers only, never arbitrary pickled objects. A file that cannot be read
(empty, truncated, not a checkpoint) or that holds pickled code raises
:class:`~scaledet.errors.UserError` naming the file and what to do.

Damaged bytes are refused, not loaded: ``torch.load`` skips the CRC-32 every ``torch.save`` zip member
carries (a flipped bit in a tensor loads silently), so :func:`check_zip_crc` verifies them first; our
safetensors files carry a CRC-32 of their tensors in the metadata (``scaledet_crc32``, checked on load).

:func:`compare_state_dicts` is the one strict comparison of a checkpoint with a model (missing,
unexpected and mis-shaped keys), used by every loader (:mod:`scaledet.models.checkpoints`).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from scaledet.errors import UserError

FORMAT_TAG = "scaledet"
CONFIG_KEY = "scaledet_config"
#: metadata key of our safetensors files: :func:`tensors_crc32` of the tensors, as 8 hex digits
CHECKSUM_KEY = "scaledet_crc32"


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
        save_file(tensors, temp_name, metadata={CONFIG_KEY: text, CHECKSUM_KEY: tensors_crc32(tensors)})
        with open(temp_name, "rb") as handle:
            os.fsync(handle.fileno())
        readable_as_umask_allows(temp_name)
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    config_path_for(path).write_text(text + "\n")
    return path


#: what to do about a weights file that cannot be read
REDOWNLOAD_FIX = "download or export it again"


def tensors_crc32(tensors: Mapping[str, torch.Tensor]) -> str:
    """CRC-32 (8 hex digits) of a state dict: every key, dtype, shape and byte, in key order.

    Independent of how a file lays the tensors out, so the same tensors give the same value after a
    save and a load."""
    crc = 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        crc = zlib.crc32(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode(), crc)
        if tensor.numel():
            crc = zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def damaged_error(path: str | Path, where: str, fix: str) -> UserError:
    """``PATH is corrupt (WHERE fails the file's CRC-32 check ...): FIX`` for bytes that changed after writing."""
    return UserError(f"{path} is corrupt ({where} fails the file's CRC-32 check: its bytes changed after it was "
                     f"written, e.g. a disk or copy error): {fix}")


def check_zip_crc(path: str | Path, fix: str = REDOWNLOAD_FIX) -> None:
    """Verify the CRC-32 of every member of a ``torch.save`` zip file (``torch.load`` does not).

    Members saved without one (``torch.utils.serialization.config.save.compute_crc32 = False`` writes 0)
    are skipped; files that are not zips (torch's legacy format) are left to ``torch.load``.

    Raises:
        UserError: a member's bytes do not match its CRC-32 (``PATH is corrupt ('MEMBER' fails ...): FIX``).
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.CRC == 0 or member.is_dir():
                    continue
                try:
                    with archive.open(member) as stream:
                        while stream.read(1 << 24):
                            pass
                except zipfile.BadZipFile as error:
                    if "CRC" not in str(error):
                        raise
                    raise damaged_error(path, repr(member.filename), fix) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError):
        return  # a zip torch cannot read either: torch.load names the problem


def readable_as_umask_allows(path: str | Path) -> None:
    """Give ``path`` the permissions a plain ``open(path, "w")`` would (``0o666`` less the umask): a
    temporary file is created ``0o600``, and the weights moved into place from it would otherwise be
    readable by their owner only."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def corrupt_file_error(path: str | Path, error: BaseException, fix: str) -> UserError:
    """``PATH is empty or corrupt (Reason: detail): FIX`` for a file a loader choked on."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    detail = detail if len(detail) <= 100 else detail[:97] + "..."
    reason = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return UserError(f"{path} is empty or corrupt ({reason}): {fix}")


#: how a torch.save file of the legacy (non-zip) format starts: its magic number, pickled with protocol 2
_LEGACY_TORCH_HEAD = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


def _is_plain_pickle(path: str | Path) -> bool:
    """True for a file that starts as a pickle but is neither a torch.save zip nor its legacy format
    (``pickle.dump`` of a model, a ``joblib`` file): read by its first bytes, never unpickled."""
    if not Path(path).is_file():
        return False  # torch.load names a missing file or a folder itself
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_TORCH_HEAD))
    return head[:1] == b"\x80" and not head.startswith(_LEGACY_TORCH_HEAD) and not zipfile.is_zipfile(path)


def _is_refused_code(error: pickle.UnpicklingError) -> bool:
    """True when ``weights_only`` refused an object (pickled code), False for unreadable bytes."""
    text = str(error)
    return "Weights only load failed" in text and "Unsupported operand" not in text


#: file kinds a run folder or a dataset holds that are never weights (named as such instead of "corrupt")
NOT_WEIGHTS_SUFFIXES = frozenset({".json", ".jsonl", ".csv", ".txt", ".yaml", ".yml", ".png", ".jpg", ".jpeg",
                                  ".log", ".md", ".xml"})


def torch_load_weights_only(path: str | Path, fix: str = REDOWNLOAD_FIX, peek: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear error per failure.

    Args:
        path: the file.
        fix: what the user should do about an unreadable file (ends the message).
        peek: for reading a checkpoint's small entries (its config) before the real load: the tensors of a
            zip file are memory-mapped, not read, and the CRC-32 check is left to that load (D0's 60 MB
            ``last.pt``: 0.27 instead of 0.38 s, the rest is unpickling). Legacy (non-zip) files are read whole.

    Raises:
        UserError: the file is empty or corrupt (``PATH is empty or corrupt (...): FIX``), or it
            holds pickled objects other than tensors and plain containers, which are refused
            for safety (never loaded, whatever the file claims to be).
        OSError: the file cannot be opened (missing, a folder, no permission).
    """
    suffix = Path(path).suffix.lower()
    if suffix in NOT_WEIGHTS_SUFFIXES:  # a run folder's other files: not "corrupt", just not weights
        raise UserError(f"{path} is not a weights file (a {suffix} file): give a run's weights.safetensors (or its "
                        "last.pt / best.pt), another project's checkpoint, or an exported .onnx")
    if _is_plain_pickle(path):
        raise UserError(f"{path} is a plain Python pickle, not a torch.save or safetensors weights file: refused for "
                        "safety (unpickling can run code); save only the tensors, e.g. torch.save(model.state_dict(), "
                        "PATH), or use .safetensors")
    mapped = peek and zipfile.is_zipfile(path)
    if not mapped:
        check_zip_crc(path, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except OSError:
        raise
    except pickle.UnpicklingError as error:
        if _is_refused_code(error):
            raise UserError(
                f"{path} is not a plain weights file (it contains pickled code, refused for safety); "
                "save only the tensors, e.g. torch.save(model.state_dict(), PATH), or use .safetensors"
            ) from None
        raise corrupt_file_error(path, error, fix) from None
    except Exception as error:  # EOFError, RuntimeError (zip), KeyError ...: torch names none of them well
        raise corrupt_file_error(path, error, fix) from None


#: the weights file a folder given as weights may hold (a run's, a Hugging Face ``save_pretrained`` folder's)
FILES_IN_A_FOLDER = ("weights.safetensors", "model.safetensors", "pytorch_model.bin", "last.pt")


def refuse_folder(path: str | Path) -> None:
    """UserError for a folder given as a weights file, naming the file inside it to give instead."""
    path = Path(path)
    if path.is_dir():
        inside = [path / name for name in FILES_IN_A_FOLDER if (path / name).is_file()]
        raise UserError(f"{path} is a folder: give the weights file in it ({inside[0]})" if inside
                        else f"{path} is a folder, not a weights file")


def _check_readable(path: str | Path) -> None:
    """Raise Python's own ``OSError`` (``PermissionError``, ``IsADirectoryError`` ...) for a file that
    cannot be read: safetensors reports every failure to open as "No such file or directory"."""
    with open(path, "rb"):
        pass


def read_weights_config(path: str | Path) -> dict[str, Any] | None:
    """The config stored with our safetensors file, or ``None`` if it is not ours."""
    _check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except OSError:
        raise
    except Exception as error:  # safetensors raises its own SafetensorError on bad bytes
        raise corrupt_file_error(path, error, REDOWNLOAD_FIX) from None
    if CONFIG_KEY in metadata:
        return json.loads(metadata[CONFIG_KEY])
    sidecar = config_path_for(path)
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    return None


def check_safetensors_crc(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Compare the tensors loaded from a safetensors file with the CRC-32 our :func:`save_weights` stored in
    it (files without one, e.g. other projects', are not checked).

    Raises:
        UserError: they differ (``PATH is corrupt (its tensors fail ...): download or export it again``).
    """
    with safe_open(str(path), framework="pt") as handle:
        expected = (handle.metadata() or {}).get(CHECKSUM_KEY)
    if expected is not None and tensors_crc32(tensors) != expected:
        raise damaged_error(path, "its tensors' data", REDOWNLOAD_FIX)


def is_safetensors(path: str | Path) -> bool:
    """True for a ``.safetensors`` file name (ours or another project's)."""
    return Path(path).suffix == ".safetensors"


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat ``{key: tensor}`` state dict from any supported file, safely.

    * ``.safetensors`` -> loaded with safetensors.
    * anything else -> ``torch.load(weights_only=True)``; a scaledet training checkpoint (``last.pt`` /
      ``best.pt``) gives the weights it evaluates (the EMA's when it has one); if the result nests the
      state dict under ``"ema" -> "module"`` (the official RT-DETR files), ``"model"``, ``"state_dict"``
      or ``"model_state"`` (training checkpoints, the official DETR files), that entry is returned.

    Raises:
        FileNotFoundError: no such file.
        UserError (a ValueError): the file is empty or corrupt, holds pickled code, or holds no
            tensor state dict.
    """
    return read_checkpoint(path)[0]


def _nested_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor state dict inside what ``torch.load`` gave for ``path`` (see :func:`load_checkpoint`)."""
    if is_training_checkpoint(loaded):
        ema = loaded.get("ema")
        if isinstance(ema, dict):  # torch's AveragedModel: the averaged detector under "module."
            return {key[len("module."):]: value for key, value in ema.items() if key.startswith("module.")}
        return dict(loaded["model"])
    ema = loaded.get("ema") if isinstance(loaded, dict) else None
    if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
        loaded = ema["module"]  # the official RT-DETR files: the EMA weights, as evaluated
    for key in ("model", "state_dict", "model_state"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return dict(loaded)


def is_training_checkpoint(loaded: Any) -> bool:
    """Whether ``loaded`` (what ``torch.load`` gave) is a checkpoint scaledet's trainer wrote (``last.pt`` /
    ``best.pt``: the model, its EMA, the optimizer, ... and the model config)."""
    return (isinstance(loaded, dict) and isinstance(loaded.get("model"), dict) and "step" in loaded
            and isinstance(loaded.get("model_config"), dict) and "model" in loaded["model_config"])


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state dict, config)`` of a weights file: :func:`load_checkpoint`'s flat state dict and, for
    our safetensors files (:func:`read_weights_config`) and our trainer's checkpoints, the stored
    model config; ``None`` for any other file (effdet / official / Hugging Face checkpoints carry no
    config)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    refuse_folder(path)
    if is_safetensors(path):
        _check_readable(path)
        try:
            state_dict = load_file(str(path))
        except OSError:
            raise
        except Exception as error:  # SafetensorError on bad bytes
            raise corrupt_file_error(path, error, REDOWNLOAD_FIX) from None
        check_safetensors_crc(path, state_dict)
        config = read_weights_config(path)
    else:
        loaded = torch_load_weights_only(path)
        state_dict = _nested_state_dict(loaded, path)
        config = loaded["model_config"] if is_training_checkpoint(loaded) else None
    return state_dict, config if isinstance(config, dict) and "model" in config else None


#: at most this many keys are named per kind of difference in a :class:`KeyReport`
REPORT_KEYS = 20


@dataclass(frozen=True)
class KeyReport:
    """How a checkpoint's state dict differs from a model's (empty, and falsy, when it fits).

    Attributes:
        missing: keys of the model that the checkpoint lacks, sorted.
        unexpected: keys of the checkpoint that the model lacks, sorted.
        mismatched: ``"key: checkpoint (a, b) vs model (c, d)"`` for keys in both with other shapes, sorted.
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        """``missing (N): k1, k2; unexpected (N): ...; shape mismatch (N): k: checkpoint (7,) vs model (256,)``
        (at most :data:`REPORT_KEYS` keys named per kind)."""
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.mismatched)):
            if keys:
                more = f" ... ({len(keys) - REPORT_KEYS} more)" if len(keys) > REPORT_KEYS else ""
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:REPORT_KEYS])}{more}")
        return "; ".join(parts) if parts else "fits"


def compare_state_dicts(given: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                        ignore: tuple[str, ...] = (), any_shape: tuple[str, ...] = ()) -> KeyReport:
    """Compare a checkpoint's state dict ``given`` with a model's ``expected``, key by key.

    Args:
        given: the checkpoint's tensors, in the model's key names.
        expected: the model's ``state_dict()`` (only key names and shapes are read, so a model on
            the ``meta`` device will do).
        ignore: key prefixes left out on both sides (e.g. a class predictor being re-initialised).
        any_shape: key prefixes whose shapes may differ (still reported when missing or unexpected).
    """
    wanted = {key: value for key, value in expected.items() if not key.startswith(ignore)}
    found = {key: value for key, value in given.items() if not key.startswith(ignore)}
    mismatched = sorted(
        f"{key}: checkpoint {tuple(found[key].shape)} vs model {tuple(wanted[key].shape)}"
        for key in wanted.keys() & found.keys()
        if found[key].shape != wanted[key].shape and not key.startswith(any_shape)
    )
    return KeyReport(tuple(sorted(wanted.keys() - found.keys())), tuple(sorted(found.keys() - wanted.keys())),
                     tuple(mismatched))
