"""The dataset doctor and anchors fitted to the training boxes (--anchors auto)."""

import json

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

import scaledet
from scaledet.data import DataReport, DetectionDataset, ImageRecord
from scaledet.engine import TrainConfig
from scaledet.engine.doctor import diagnose, format_diagnosis
from scaledet.models.efficientdet import VARIANTS
from scaledet.models.efficientdet.anchor_fit import evaluate_anchors
from scaledet.models.efficientdet.anchors import generate_anchors
from test_optimize import assert_equal_detections, randomise_efficientdet


def _small_boxes_dataset(num_images=6, size=128, seed=0, tiny=True):
    """Images of ``size`` with 3-6 boxes each: 16-22 x 8-11 px boxes (tiny=True) or 30-60 px squares."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(num_images):
        boxes = []
        for _ in range(rng.integers(3, 7)):
            if tiny:
                w, h = rng.uniform(16, 22), rng.uniform(8, 11)
            else:
                w = h = rng.uniform(30, 60)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            boxes.append([x, y, x + w, y + h])
        boxes = np.array(boxes, np.float32)
        records.append(ImageRecord(None, 100 + index, size, size, boxes, rng.integers(0, 2, len(boxes)),
                                   np.zeros(len(boxes), bool), np.zeros(len(boxes), np.float32)))
    return DetectionDataset(records, ["a", "b"], [3, 7], DataReport("synthetic"))


def test_coverage_equals_brute_force_iou_count():
    dataset = _small_boxes_dataset(tiny=True)
    variant = VARIANTS["efficientdet_d0"]
    size = (128, 128)
    boxes = torch.from_numpy(np.concatenate([r.boxes for r in dataset.records]))
    for scale in (4.0, 2.0):
        anchors = generate_anchors(size, variant.min_level, variant.max_level, variant.num_scales,
                                   variant.aspect_ratios, scale)
        brute = sum(int(box_iou(box[None], anchors).max() >= variant.match_iou) for box in boxes) / len(boxes)
        assert evaluate_anchors(boxes, variant, size, anchor_scale=scale).coverage == pytest.approx(brute)


def test_doctor_reports_and_fits_anchors_to_small_boxes():
    report = diagnose(_small_boxes_dataset(tiny=True), "efficientdet_d0", (128, 128))
    assert report["images"] == 6 and report["categories"][1]["category_id"] == 7
    published, fitted = report["anchors"]["published"], report["anchors"]["fitted"]
    assert published["coverage"] < 0.2 and fitted["coverage"] > published["coverage"] + 0.3
    assert report["anchors"]["auto_overrides"]["anchor_scale"] < 4.0
    assert any("anchors" in line for line in report["advice"])
    text = format_diagnosis(report)
    assert "1='b' (id 7" in text and "anchors: published" in text
    # boxes the published anchors suit keep them
    suited = diagnose(_small_boxes_dataset(tiny=False), "efficientdet_d0", (128, 128))
    assert suited["anchors"]["auto_overrides"] == {}


def test_auto_anchors_are_stored_with_the_weights_and_exported(tmp_path):
    from scaledet.engine.run import prepare_model
    from scaledet.export import OnnxDetector, export_onnx
    from scaledet.weights import save_weights

    dataset = _small_boxes_dataset(tiny=True)
    config = TrainConfig.for_model("efficientdet_d0", max_steps=1, out=str(tmp_path))
    model = randomise_efficientdet(prepare_model(config, dataset)).eval()  # no score ties
    assert model.variant.anchor_scale < 4.0 and tuple(model.image_size) == (128, 128)
    save_weights(model.state_dict(), tmp_path / "weights.safetensors", model.config)
    stored = json.loads((tmp_path / "weights.json").read_text())
    assert stored["overrides"]["anchor_scale"] == model.variant.anchor_scale
    reloaded = scaledet.create_model("efficientdet_d0", pretrained=tmp_path / "weights.safetensors").eval()
    assert torch.equal(reloaded.anchors_for(), model.anchors_for())
    images = [torch.rand(3, 128, 128)]
    with torch.no_grad():
        expected = model(images)
    assert torch.equal(reloaded(images)[0]["boxes"], expected[0]["boxes"])
    runner = OnnxDetector(export_onnx(reloaded, tmp_path / "auto.onnx"))
    assert_equal_detections(expected, runner(images), score_tol=1e-4, box_tol=1e-2)
    default = prepare_model(TrainConfig.for_model("efficientdet_d0", max_steps=1, anchors="default",
                                                  out=str(tmp_path)), dataset)
    assert default.variant.anchor_scale == 4.0


def test_doctor_command_prints_and_writes_json(tmp_path, capsys):
    from scaledet.cli import main
    from scaledet.data import write_shapes_coco

    data = write_shapes_coco(tmp_path / "coco", "train", num_images=6, image_size=96)
    assert main(["doctor", str(data), "--json", str(tmp_path / "report.json")]) == 0
    printed = capsys.readouterr().out
    assert "doctor: 6 images" in printed and "anchors: published" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["input_size"] == [128, 128] and 0.5 < report["anchors"]["published"]["coverage"] <= 1.0


def _one_box_dataset():
    """One 100 (h) x 200 (w) image with one 10x10 box."""
    record = ImageRecord(None, 1, 200, 100, np.array([[50, 20, 60, 30]], np.float32), np.array([0]),
                         np.zeros(1, bool), np.zeros(1, np.float32))
    return DetectionDataset([record], ["a"], [1], DataReport("synthetic"))


@pytest.mark.parametrize("name, side, aspect, words", [
    ("efficientdet_d0", 25.6, 1.0, "longest side fitted"),     # 200 -> 512: x2.56
    ("detr_r50", 66.6, 1.0, "shorter side 800"),               # shorter 100 -> 800 would make 1600 > 1333: 666x1333
    ("rtdetr_r18vd", np.sqrt(32 * 64), 0.5, "stretched"),      # 100x200 -> 640x640: x6.4 tall, x3.2 wide
])
def test_doctor_measures_boxes_with_the_model_s_own_resize(name, side, aspect, words, capsys):
    """The doctor's box sides are in the pixels each family's eval resize gives (DETR: shorter side with
    a cap, RT-DETR: stretched to a square), not EfficientDet's longest-side fit for every model."""
    from scaledet.cli import main

    detector = scaledet.create_model(name, num_classes=1)
    report = diagnose(_one_box_dataset(), name, tuple(detector.image_size), detector=detector)
    assert report["box_side_px"]["50"] == pytest.approx(side, abs=0.1)
    assert report["aspect_w_over_h"]["50"] == pytest.approx(aspect, abs=0.01)
    assert words in report["input"] and report["input_size"] == list(detector.image_size)
    assert main(["doctor", "shapes:val", "--model", name]) == 0
    assert words in capsys.readouterr().out


def test_doctor_counts_crowd_and_difficult_boxes_apart():
    """The data summary counts every box; the doctor's trained boxes leave crowd / difficult ones out and say how many."""
    record = ImageRecord(None, 1, 200, 100, np.array([[50, 20, 60, 30], [10, 10, 40, 40]], np.float32), np.array([0, 0]),
                         np.array([False, True]), np.zeros(2, np.float32))
    report = diagnose(DetectionDataset([record], ["a"], [1], DataReport("synthetic")))
    assert report["boxes"] == 1 and report["ignored_boxes"] == 1
    assert "1 boxes (+ 1 crowd / difficult, not trained)" in format_diagnosis(report)


def test_doctor_command_reports_on_tiles_as_train_tile_sees_them(tmp_path, capsys):
    """`doctor --tile 64` on 96 px images: the report counts 64 px tiles (2 x 2 per image), at a 64 px input."""
    from scaledet.cli import main
    from scaledet.data import write_shapes_coco

    data = write_shapes_coco(tmp_path / "coco", "train", num_images=3, image_size=96)
    assert main(["doctor", str(data), "--tile", "64", "--json", str(tmp_path / "report.json")]) == 0
    assert "reporting on the 64x64 crops training sees (12 tiles)" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["unit"] == "64x64 tiles" and report["images"] == 12 and report["input_size"] == [64, 64]
    assert main(["doctor", str(data), "--tile-min-visible", "0.3"]) == 2
    assert "--tile-min-visible applies only with --tile" in capsys.readouterr().err
