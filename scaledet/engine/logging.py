"""Run logs: one JSON line per record in ``OUT/log.jsonl`` plus ``OUT/steps.csv`` / ``OUT/epochs.csv``,
and optionally TensorBoard scalars (if the ``tensorboard`` package is installed).

The logger also owns the output folder for the run: it holds ``OUT/run.lock``
(:class:`~scaledet.engine.lock.RunLock`) from creation to :meth:`RunLogger.close`, so a second
run into the same folder fails at once instead of interleaving the logs.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any

from scaledet.engine.lock import RunLock

#: the record files, rewritten by :meth:`RunLogger.truncate_after`
CSV_KINDS = ("step", "epoch")


class RunLogger:
    """Writer for step and epoch records (call :meth:`close` at the end).

    A new run replaces the files in ``out``; ``append=True`` (resume) continues them, and
    :meth:`truncate_after` drops the records a resumed run is about to write again.

    Raises:
        UserError: another live run holds ``out`` (see :mod:`scaledet.engine.lock`).
    """

    def __init__(self, out: str | Path, tensorboard: bool = False, enabled: bool = True, append: bool = False) -> None:
        self.out = Path(out)
        self.enabled = enabled
        self.append = append  # continue existing logs (resume) instead of starting new ones
        self._csv: dict[str, tuple[Any, csv.DictWriter]] = {}
        self._writer = None
        self._lock = RunLock(self.out)
        if enabled:
            self._lock.acquire()  # before any file of the folder is touched
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
            header = _csv_header(path) if self.append else None
            handle = open(path, "w" if header is None else "a", newline="", encoding="utf-8")
            # appending: keep the file's columns, so resumed rows line up with the earlier ones
            writer = csv.DictWriter(handle, fieldnames=header or list(record), extrasaction="ignore")
            if header is None:
                writer.writeheader()
            self._csv[kind] = (handle, writer)
        handle, writer = self._csv[kind]
        new = [key for key in record if key not in writer.fieldnames]
        if new:  # e.g. the first evaluated epoch after unevaluated ones: its AP columns must not be dropped
            handle, writer = self._widen(kind, [*writer.fieldnames, *new])
        writer.writerow(record)
        handle.flush()

    def _widen(self, kind: str, fieldnames: list[str]) -> tuple[Any, csv.DictWriter]:
        """Rewrite ``OUT/<kind>s.csv`` with the columns ``fieldnames`` (earlier rows get empty cells for the
        new ones) and return its handle and writer, appending."""
        handle, _ = self._csv.pop(kind)
        handle.close()
        path = self.out / f"{kind}s.csv"
        with open(path, newline="", encoding="utf-8") as old:
            rows = list(csv.DictReader(old))
        with open(path, "w", newline="", encoding="utf-8") as rewritten:
            writer = csv.DictWriter(rewritten, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        handle = open(path, "a", newline="", encoding="utf-8")
        self._csv[kind] = (handle, csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore"))
        return self._csv[kind]

    def truncate_after(self, step: int) -> None:
        """Drop every record of a step after ``step`` from ``log.jsonl``, ``steps.csv`` and ``epochs.csv``.

        A run resumed from a checkpoint of step ``step`` trains (and logs) the later steps again;
        without this, steps logged after that checkpoint by the interrupted run appear twice. A
        ``final`` record goes too: the resumed run ends with its own (a finished run resumed would
        otherwise have two).
        """
        if not self.enabled:
            return
        self._jsonl.close()
        for handle, _ in self._csv.values():
            handle.close()
        self._csv.clear()
        path = self.out / "log.jsonl"
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            _rewrite(path, [line for line in lines if _kept_on_resume(line, step)])
        for kind in CSV_KINDS:
            path = self.out / f"{kind}s.csv"
            if path.exists():
                with open(path, newline="", encoding="utf-8") as handle:
                    rows = list(csv.reader(handle))
                column = rows[0].index("step") if rows and "step" in rows[0] else None
                final = rows[0].index("final") if rows and "final" in rows[0] else None
                complete = [row for row in rows[1:] if len(row) == len(rows[0])]  # not a row cut by a kill
                kept = rows[:1] + [row for row in complete if (column is None or _number(row[column]) <= step)
                                   and (final is None or row[final] not in ("1", "1.0"))]
                _rewrite(path, kept, as_csv=True)
        self._jsonl = open(self.out / "log.jsonl", "a", encoding="utf-8")

    def close(self) -> None:
        """Close the files and release the folder's lock."""
        if not self.enabled:
            return
        self._jsonl.close()
        for handle, _ in self._csv.values():
            handle.close()
        if self._writer is not None:
            self._writer.close()
        self._lock.release()


def _csv_header(path: Path) -> list[str] | None:
    """The column names of an existing CSV file, or ``None`` if it is missing or empty."""
    if not path.exists():
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), None) or None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("-inf")  # not a step number: keep the row


def _kept_on_resume(line: str, step: int) -> bool:
    """Whether one JSON log line stays when a run resumes from step ``step``: lines without a ``step``
    stay; lines of later steps, ``final`` records and lines that are not a JSON object (cut short by a
    killed process) go."""
    try:
        record = json.loads(line)
        logged = record.get("step")
    except (ValueError, AttributeError):
        return False
    return not record.get("final") and (not isinstance(logged, (int, float)) or logged <= step)


def _rewrite(path: Path, lines: list, as_csv: bool = False) -> None:
    """Replace ``path`` by ``lines`` (text lines, or CSV rows) through a temporary file."""
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", newline="" if as_csv else None, encoding="utf-8") as handle:
        if as_csv:
            csv.writer(handle).writerows(lines)
        else:
            handle.writelines(lines)
    os.replace(temp, path)


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
