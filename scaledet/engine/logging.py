"""Run logs: one JSON line per record in ``OUT/log.jsonl`` plus ``OUT/steps.csv`` / ``OUT/epochs.csv``,
and optionally TensorBoard scalars (if the ``tensorboard`` package is installed)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any


class RunLogger:
    """Writer for step and epoch records (call :meth:`close` at the end).

    A new run replaces the files in ``out``; ``append=True`` (resume) continues them.
    """

    def __init__(self, out: str | Path, tensorboard: bool = False, enabled: bool = True, append: bool = False) -> None:
        self.out = Path(out)
        self.enabled = enabled
        self.append = append  # continue existing logs (resume) instead of starting new ones
        self._csv: dict[str, tuple[Any, csv.DictWriter]] = {}
        self._writer = None
        if enabled:
            self.out.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.out / "log.jsonl", "a" if append else "w", encoding="utf-8")
            if tensorboard:
                self._writer = _tensorboard_writer(self.out / "tensorboard")

    def log(self, kind: str, record: dict[str, Any]) -> None:
        """Write ``record`` (flat dict of numbers/strings) under ``kind`` ("step" or "epoch")."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"kind": kind, **record}) + "\n")
        self._jsonl.flush()
        self._csv_row(kind, record)
        if self._writer is not None:
            index = record.get("step", record.get("epoch", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._writer.add_scalar(f"{kind}/{key}", value, index)

    def _csv_row(self, kind: str, record: dict[str, Any]) -> None:
        if kind not in self._csv:
            path = self.out / f"{kind}s.csv"
            new = not (self.append and path.exists())
            handle = open(path, "w" if new else "a", newline="", encoding="utf-8")
            writer = csv.DictWriter(handle, fieldnames=list(record), extrasaction="ignore")
            if new:
                writer.writeheader()
            self._csv[kind] = (handle, writer)
        handle, writer = self._csv[kind]
        writer.writerow(record)
        handle.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        for handle, _ in self._csv.values():
            handle.close()
        if self._writer is not None:
            self._writer.close()


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("TensorBoard logging requested but the 'tensorboard' package is not installed; skipping")
        return None
    return SummaryWriter(str(folder))


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """All records of ``OUT/log.jsonl`` (empty if missing)."""
    path = Path(out) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
