"""The learnability benchmark's data generators (benchmarks/learnability/datasets.py) write valid
COCO sets: loadable by ``open_dataset`` with no bad-data note, the right classes, boxes inside the
images, awkward ids (category ids not 0..K-1, image ids not starting at 0 or 1) and disjoint
train / val image ids. Tiny sizes; the real sets are built by the benchmark itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("skimage")  # a dev-extra dependency, only the benchmark uses it

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.learnability import datasets  # noqa: E402

from scaledet.data import open_dataset  # noqa: E402


def test_roles_cover_every_set():
    assert set(datasets.TUNE_SETS) == {"cells", "scenes"}
    assert set(datasets.HELD_OUT_SETS) == {"fewshot", "dense", "wide", "slender"}
    assert set(datasets.SET_NAMES) == set(datasets.SPECS)
    assert "shapes" not in datasets.SPECS


@pytest.mark.parametrize("name", datasets.SET_NAMES)
def test_generator_writes_valid_coco(name, tmp_path):
    spec = datasets.spec(name)
    folder = datasets.prepare(name, root=tmp_path, num_train=4, num_val=3, verbose=False)
    assert (folder / "meta.json").exists()
    ids = {}
    for split, count in (("train", 4), ("val", 3)):
        coco = json.loads((folder / f"{split}.json").read_text())
        category_ids = sorted(c["id"] for c in coco["categories"])
        assert len(category_ids) == len(spec.classes)
        assert category_ids != list(range(len(spec.classes))) and category_ids != list(range(1, len(spec.classes) + 1))
        ids[split] = [image["id"] for image in coco["images"]]
        assert min(ids[split]) > 1
        sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
        assert set(sizes.values()) == {(spec.width, spec.height)}
        assert coco["annotations"], f"{name} {split}: no objects in {count} images"
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert ann["category_id"] in category_ids
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width + 1e-6 and y + h <= height + 1e-6, ann

        dataset = open_dataset(folder / f"{split}.json", check_images="full")
        assert len(dataset) == count
        assert dataset.num_classes == len(spec.classes) and list(dataset.class_names) == list(spec.classes)
        assert list(dataset.label_to_category_id) == category_ids
        assert not dataset.report.counts, dataset.report.counts  # nothing skipped, clipped or mismatched
        image, target = dataset[0]
        assert tuple(image.shape) == (3, spec.height, spec.width)
        boxes = target["boxes"]
        if len(boxes):
            assert float(boxes[:, 0].min()) >= 0 and float(boxes[:, 2].max()) <= spec.width
            assert float(boxes[:, 1].min()) >= 0 and float(boxes[:, 3].max()) <= spec.height
    assert not set(ids["train"]) & set(ids["val"])


def test_generation_is_deterministic_and_cached(tmp_path):
    first = datasets.prepare("fewshot", root=tmp_path / "a", num_train=2, num_val=1, verbose=False)
    second = datasets.prepare("fewshot", root=tmp_path / "b", num_train=2, num_val=1, verbose=False)
    assert (first / "train.json").read_text() == (second / "train.json").read_text()
    stamp = (first / "train.json").stat().st_mtime_ns
    assert datasets.prepare("fewshot", root=tmp_path / "a", num_train=2, num_val=1, verbose=False) == first
    assert (first / "train.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    info = datasets.describe("fewshot", root=tmp_path / "a")
    assert info["num_train"] == 2 and info["num_val"] == 1 and info["role"] == "held-out" and info["num_classes"] == 4


def test_slender_boxes_are_elongated_in_both_orientations():
    """The set exists to test aspect ratios beyond the published anchors' 1:2-2:1."""
    ratios = []
    for index in range(12):
        _, objects = datasets.render("slender", "train", index)
        ratios += [(box[2] - box[0]) / (box[3] - box[1]) for box, _ in objects]
    long_to_short = sorted(max(r, 1 / r) for r in ratios)
    assert long_to_short[len(long_to_short) // 2] > 2.5, long_to_short
    assert any(r > 2.5 for r in ratios) and any(r < 1 / 2.5 for r in ratios), ratios


def test_effdet_baseline_maps_classes_and_scale_back(tmp_path):
    """Ground truth written as effdet detections (input pixels, classes 1..K) scores AP 1 through the
    baseline's conversion and scaledet's evaluator: class ids and the resize are mapped back."""
    import torch

    from benchmarks.learnability.effdet_baseline import effdet_predictions, effdet_targets

    from scaledet.data import eval_transforms
    from scaledet.evaluation import COCOEvaluator

    folder = datasets.prepare("wide", root=tmp_path, num_train=1, num_val=3, verbose=False)
    val = open_dataset(folder / "val.json", transforms=eval_transforms(320))  # non-square, resized
    evaluator = COCOEvaluator(val)
    for index in range(len(val)):
        _, target = val[index]
        rows = torch.zeros(1, 100, 6)
        count = len(target["labels"])
        rows[0, :count, :4] = torch.as_tensor(target["boxes"], dtype=torch.float32)
        rows[0, :count, 4] = 1.0
        rows[0, :count, 5] = target["labels"].float() + 1
        evaluator.update(effdet_predictions(rows), [target])
    stats = evaluator.compute()
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    converted = effdet_targets([target])
    assert converted["cls"].min() >= 1 and torch.equal(converted["bbox"][0, :, [1, 0, 3, 2]], target["boxes"].float())
