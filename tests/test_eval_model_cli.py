"""`scaledet eval --model NAME --weights FILE --data DATA` with a real (tiny, random) EfficientDet."""

import json

import pytest
import torch

from scaledet import create_model
from scaledet.cli import main as cli_main
from scaledet.data import ShapesDataset, open_dataset, write_coco
from scaledet.evaluation import STAT_KEYS, evaluate_detections
from scaledet.weights import save_weights


def test_cli_eval_model_on_dataset_matches_detections_path(tmp_path, capsys):
    torch.manual_seed(0)
    dataset = ShapesDataset(num_images=3, image_size=(48, 64), seed=5)
    annotations = write_coco(dataset, tmp_path / "data")
    model = create_model("efficientdet_d0", num_classes=4, image_size=64, class_names=dataset.class_names)
    weights = save_weights(model.state_dict(), tmp_path / "d0.safetensors", model.config)
    stats_path, results_path = tmp_path / "stats.json", tmp_path / "results.json"
    argv = ["eval", "--model", "efficientdet_d0", "--weights", str(weights), "--data", str(annotations),
            "--batch-size", "2", "--no-progress", "--json", str(stats_path), "--results", str(results_path)]  # fmt: skip
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in printed and "triangle" in printed
    stats = json.loads(stats_path.read_text())
    results = json.loads(results_path.read_text())
    assert len(results) > 0 and {r["category_id"] for r in results} <= {1, 2, 3, 4}
    assert {r["image_id"] for r in results} == {0, 1, 2}
    # scoring the written detections through the file path gives the same 12 numbers
    again = evaluate_detections(annotations, results_path)
    assert [stats[k] for k in STAT_KEYS] == pytest.approx([again[k] for k in STAT_KEYS], abs=1e-9)
    assert all(stats[k] == -1 or 0 <= stats[k] <= 1 for k in STAT_KEYS)
    import scaledet.evaluation.coco as coco  # --backend reaches the model's evaluation (it was ignored there)

    used = []
    original = coco.COCOEvaluator.__init__
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(coco.COCOEvaluator, "__init__", lambda self, *a, **k: used.append(k.get("backend")) or original(self, *a, **k))
        assert cli_main([*argv[:-4], "--backend", "faster_coco_eval"]) == 0
    assert used == ["faster_coco_eval"]
    # the detections are the model's own outputs on the original-size images, mapped to category ids
    model.eval()
    with torch.no_grad():
        first = model([open_dataset(annotations)[0][0]])[0]  # the PNG the command read
    mine = [r for r in results if r["image_id"] == 0]
    assert len(mine) == len(first["boxes"])
    x1, y1, x2, y2 = first["boxes"][0].tolist()
    assert mine[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
    assert mine[0]["category_id"] == int(first["labels"][0]) + 1


def test_cli_eval_renders_shapes_at_the_model_size(tmp_path, capsys, monkeypatch):
    import scaledet.data.shapes as shapes

    monkeypatch.setitem(shapes.SHAPES_SPLITS, "val", {"num_images": 2, "seed": 1})  # keep the test tiny
    model = create_model("efficientdet_d0", num_classes=4, image_size=(48, 64), class_names=list(shapes.SHAPE_CLASSES))
    weights = save_weights(model.state_dict(), tmp_path / "d0.safetensors", model.config)
    argv = ["eval", "--model", "efficientdet_d0", "--weights", str(weights), "--data", "shapes:val",
            "--results", str(tmp_path / "r.json")]  # fmt: skip
    assert cli_main(argv) == 0
    assert "shapes(seed=1, n=2, size=48x64): 2 images" in capsys.readouterr().out


def test_cli_eval_renders_shapes_for_detr_unscaled_whatever_the_size_flag(tmp_path, capsys, monkeypatch):
    """DETR's ``image_size`` is (shorter side, longer-side cap): shapes are drawn as the square at the
    shorter side, so ``--image-size 48`` (cap 80) on weights trained at (48, 48) scores the same images."""
    import scaledet.data.shapes as shapes

    monkeypatch.setitem(shapes.SHAPES_SPLITS, "val", {"num_images": 2, "seed": 1})
    torch.manual_seed(0)
    tiny = dict(backbone="resnet18", hidden_dim=32, num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=1,
                num_queries=5, class_names=list(shapes.SHAPE_CLASSES))
    model = create_model("detr_r50", num_classes=4, image_size=(48, 48), **tiny)
    weights = save_weights(model.state_dict(), tmp_path / "detr.safetensors", model.config)
    stats = []
    for extra in ([], ["--image-size", "48"]):
        out = tmp_path / f"stats{len(extra)}.json"
        assert cli_main(["eval", "--weights", str(weights), "--data", "shapes:val", "--json", str(out), *extra]) == 0
        assert "shapes(seed=1, n=2, size=48x48): 2 images" in capsys.readouterr().out
        stats.append(json.loads(out.read_text()))
    assert [stats[0][k] for k in STAT_KEYS] == [stats[1][k] for k in STAT_KEYS]


def test_label_mapping_by_name_and_what_it_refuses():
    from scaledet.evaluation.results import label_mapping

    assert label_mapping(["a", "b"], ["a", "b"]) == [0, 1]
    with pytest.warns(UserWarning, match=r"the model has no class \[a\] of the dataset \(1 of 2\): they score AP 0"):
        assert label_mapping(["b", "x"], ["a", "b"]) == [1, -1]
    with pytest.warns(UserWarning, match="assuming the same class order"):  # a model built without names
        assert label_mapping(["class_0", "class_1"], ["cat", "dog"]) == [0, 1]
    with pytest.raises(ValueError, match=r"the model's classes \[circle, square\] share no name with the dataset's "
                                         r"\[cup, horse\]: the weights were trained on other classes"):
        label_mapping(["circle", "square"], ["cup", "horse"])


def test_label_mapping_matches_names_as_fine_tuning_does():
    """Case and surrounding spaces aside, as a checkpoint's class rows are matched: a model fine-tuned on 'Square'
    from a 'square' checkpoint scored 'Square' AP 0 against its own data's 'square' (only a warning said so)."""
    from scaledet.evaluation.results import label_mapping

    assert label_mapping(["circle", "square"], ["Square", " Circle "]) == [1, 0]
    with pytest.warns(UserWarning, match=r"the model has no class \[Cross\]"):
        assert label_mapping(["Square", "circle"], ["square", "Circle", "Cross"]) == [0, 1]
    with pytest.raises(ValueError, match=r"the dataset's classes repeat the name\(s\) \[Cup, cup\] \(case and spaces "
                                         r"aside\)"):
        label_mapping(["cup", "horse"], ["Cup", "cup", "horse"])
    # a model built for another class count, without names: the message says so, not "other classes"
    with pytest.raises(ValueError, match=r"the model's 5 classes have no names \[class_0, class_1, class_2, class_3, "
                                         r"class_4\], the dataset has 2 \[square, circle\]: give the model the "
                                         r"dataset's classes \(create_model\(..., num_classes=2"):
        label_mapping([f"class_{k}" for k in range(5)], ["square", "circle"])


def test_cli_eval_of_weights_trained_on_other_classes_is_an_error(tmp_path, capsys):
    """Named classes of the model that share no name with the dataset's: exit 2 with a line, not an AP."""
    dataset = ShapesDataset(num_images=2, image_size=(48, 64), seed=5)
    annotations = write_coco(dataset, tmp_path / "data")
    model = create_model("efficientdet_d0", num_classes=4, image_size=64, class_names=["cup", "horse", "clock", "wheel"])
    weights = save_weights(model.state_dict(), tmp_path / "d0.safetensors", model.config)
    assert cli_main(["eval", "--weights", str(weights), "--data", str(annotations)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("scaledet eval: error: the model's classes [cup, horse, clock, wheel]")
    assert "share no name with the dataset's [circle, square, triangle, cross]" in errors[0]


def test_eval_and_predict_read_a_voc_folders_val_split_by_default(tmp_path):
    """As ``train --val`` does: ImageSets/Main/val.txt when it exists (not train + val together), else every XML."""
    from PIL import Image

    from scaledet.commands.eval import open_eval_dataset

    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for stem in ("000001", "000002", "000003"):
        Image.new("RGB", (40, 30)).save(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
            "<xmax>20</xmax><ymax>25</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("000001\n000002\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("000003\n")
    val = open_eval_dataset(str(root), None, None, detector=None)
    assert len(val) == 1 and val.report.source.endswith("[val]")
    assert len(open_eval_dataset(str(root), None, "train", detector=None)) == 2
    (root / "ImageSets" / "Main" / "val.txt").unlink()
    assert len(open_eval_dataset(str(root), None, None, detector=None)) == 3  # no val split: every XML
    with pytest.raises(ValueError, match="--split is for a VOC folder or a YOLO data.yaml; x.json is one split already"):
        open_eval_dataset("x.json", None, "val", detector=None)
