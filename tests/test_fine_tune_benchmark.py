"""The fine-tuning benchmark (benchmarks/learnability/fine_tune.py) trains each set from scratch, from
the pretrained weights at the default lr and at each ``--lrs`` value, with the set's class count,
and tabulates the mean over seeds. ``scaledet train`` is replaced by a stub that records its
arguments: the real runs take minutes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("skimage")  # a dev-extra dependency, only the benchmark uses it

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.learnability import fine_tune  # noqa: E402


def test_fine_tune_runs_every_variant_with_the_sets_class_count(tmp_path, monkeypatch):
    calls = []

    def fake_train(folder, image_size, steps, seed, out, threads, extra=()):
        calls.append({"set": folder.name, "size": image_size, "steps": steps, "seed": seed, "extra": list(extra)})
        ap = 0.1 * seed + (0.5 if "--pretrained" in extra else 0.2) - (0.1 if "--lr" in extra else 0.0)
        return {"AP": ap, "AP50": ap + 0.2, "steps": steps, "wall_s": 1.0, "seed": seed, "command": "stub"}

    monkeypatch.setattr(fine_tune, "train", fake_train)
    monkeypatch.setattr(fine_tune.datasets, "prepare", lambda name: tmp_path / name)
    monkeypatch.setattr(fine_tune.datasets, "describe",
                        lambda name: {"input_size": 320, "num_classes": 4} if name == "slender" else {})
    weights = tmp_path / "pretrained.safetensors"
    out = tmp_path / "record"
    assert fine_tune.main(["--pretrained", str(weights), "--sets", "slender", "--steps", "7", "--lrs", "0.002",
                           "--seeds", "0", "1", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0

    assert len(calls) == 6 and {c["steps"] for c in calls} == {7} and {c["size"] for c in calls} == {320}
    from_weights = ["--pretrained", str(weights), "--num-classes", "4"]
    assert sorted(map(tuple, (c["extra"] for c in calls if c["seed"] == 0))) == sorted(
        [(), tuple(from_weights), (*from_weights, "--lr", "0.002")])
    summary = json.loads((tmp_path / "record.json").read_text())["sets"]["slender"]["summary"]
    assert summary["scratch"]["AP"] == pytest.approx(0.25) and summary["pretrained"]["AP"] == pytest.approx(0.55)
    assert summary["pretrained lr 0.002"]["AP_per_seed"] == [0.4, 0.5]
    assert "| slender | held-out | pretrained lr 0.002 | 0.400, 0.500 | **0.450** |" in (tmp_path / "record.md").read_text()
