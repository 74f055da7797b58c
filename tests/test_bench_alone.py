"""benchmarks/alone.py: one engine timed alone in its own process (the child side, run in-process here)."""

from __future__ import annotations

import pytest

from benchmarks.alone import time_one

pytest.importorskip("effdet")


def test_each_engine_times_its_calls():
    for engine in ("reference", "optimized"):
        times = time_one("efficientdet_lite0", engine, runs=2)
        assert len(times) == 2 and all(ms > 0 for ms in times)


def test_a_model_without_reference_is_a_clear_error():
    with pytest.raises(SystemExit, match="no reference engine to time"):
        time_one("retinanet_r50_fpn", "reference", runs=1)
