"""benchmarks/alone.py: one engine timed alone in its own process (the child side, run in-process here)."""

from __future__ import annotations

import pytest

from benchmarks.alone import time_one

pytest.importorskip("effdet")


def test_each_engine_times_its_calls():
    for engine, expected in (("reference", "reference"), ("optimized", "torch")):
        times, used = time_one("efficientdet_lite0", engine, runs=2)
        assert len(times) == 2 and all(ms > 0 for ms in times) and used == expected


def test_ours_can_run_in_onnxruntime():
    pytest.importorskip("onnxruntime")
    times, used = time_one("efficientdet_lite0", "optimized", runs=1, optimize_engine="onnxruntime")
    assert len(times) == 1 and used == "onnxruntime"


def test_a_model_without_reference_is_a_clear_error():
    with pytest.raises(SystemExit, match="no reference engine to time"):
        time_one("retinanet_r50_fpn", "reference", runs=1)
