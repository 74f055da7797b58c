"""Dataset ids survive predict -> eval: category ids 1, 5, 90 and image ids from 107, through the
weights' config, scaledet's results format, and clear errors (exit 2) instead of a silent AP 0."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import scaledet.commands.predict as predict_command
from scaledet import create_model
from scaledet.cli import main
from scaledet.data import DataWarning, open_dataset
from scaledet.engine.config import TrainConfig
from scaledet.engine.run import build_model
from scaledet.evaluation.results import categories_of, detection_rows, write_detections
from scaledet.weights import read_weights_config, save_weights

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 90, "name": "fox"}]
SIZES = {107: (40, 56), 108: (48, 64), 109: (52, 44)}  # image id -> (h, w); distinct so the stub knows each image


@pytest.fixture
def coco_set(tmp_path):
    """``val.json`` (ids 107..109, categories 1/5/90) with its PNGs in ``images/``."""
    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for image_id, (h, w) in SIZES.items():
        name = f"{image_id:06d}.png"
        pixels = np.random.default_rng(image_id).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for k, category in enumerate(CATEGORIES[: 1 + image_id % 3]):
            box = [2.0 + 9 * k, 3.0 + 5 * k, 12.0, 14.0]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category["id"],
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


class GroundTruthStub:
    """A detector whose output is the ground truth (found by image size), labels 0..2 as a model's."""

    class_names = [c["name"] for c in CATEGORIES]
    category_ids = [c["id"] for c in CATEGORIES]
    image_size = (64, 64)

    def __init__(self, gt_json):
        dataset = open_dataset(gt_json)
        self.by_size = {(r.height, r.width): r for r in dataset.records}

    def __call__(self, images):
        out = []
        for image in images:
            record = self.by_size[tuple(image.shape[1:])]
            out.append({"boxes": torch.from_numpy(record.boxes), "scores": torch.linspace(0.9, 0.8, len(record.boxes)),
                        "labels": torch.from_numpy(record.labels)})
        return out


def _eval(gt, detections, tmp_path, *extra):
    stats = tmp_path / "stats.json"
    code = main(["eval", "--gt", str(gt), "--detections", str(detections), "--json", str(stats), *extra])
    return code, (json.loads(stats.read_text()) if code == 0 else None)


def test_predict_then_eval_keeps_dataset_ids(coco_set, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict_command, "load_detector", lambda args: GroundTruthStub(coco_set))
    # a dataset: its own image ids
    assert main(["predict", "--data", str(coco_set), "--output", str(tmp_path / "a"), "--score-threshold", "0"]) == 0
    rows = json.loads((tmp_path / "a" / "detections.json").read_text())
    header = json.loads((tmp_path / "a" / "detections.images.json").read_text())
    assert {r["category_id"] for r in rows} == {1, 5, 90} and {r["image_id"] for r in rows} == {107, 108, 109}
    assert header["image_ids"] == "dataset" and header["categories"] == CATEGORIES
    code, stats = _eval(coco_set, tmp_path / "a" / "detections.json", tmp_path)
    assert code == 0 and stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    # loose files: ids 1..3 in input order, matched to 107..109 by file name
    assert main(["predict", str(tmp_path / "images"), "--output", str(tmp_path / "b"), "--score-threshold", "0"]) == 0
    rows = json.loads((tmp_path / "b" / "detections.json").read_text())
    assert {r["image_id"] for r in rows} == {1, 2, 3}
    code, stats = _eval(coco_set, tmp_path / "b" / "detections.json", tmp_path)
    assert code == 0 and stats["AP"] == pytest.approx(1.0)
    # one image predicted only: the others are misses, and eval says so
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "images" / "000108.png"), "--output", str(tmp_path / "c"),
                 "--score-threshold", "0"]) == 0
    code, stats = _eval(coco_set, tmp_path / "c" / "detections.json", tmp_path)
    assert code == 0 and stats["AP"] < 1.0
    assert "2 of the 3 images of val.json were not predicted (they count as misses): ids {107, 109}" in (
        capsys.readouterr().err)


def test_predict_data_writes_the_datasets_ids_as_eval_does(coco_set, tmp_path, monkeypatch):
    """Weights trained on another format's copy of the data (ids 1..K) and with a class the dataset lacks:
    ``predict --data`` writes the dataset's category ids, matched by class name, as ``eval --results`` does."""

    class OtherIds(GroundTruthStub):
        class_names = [c["name"] for c in CATEGORIES] + ["owl"]
        category_ids = [1, 2, 3, 4]

    monkeypatch.setattr(predict_command, "load_detector", lambda args: OtherIds(coco_set))
    assert main(["predict", "--data", str(coco_set), "--output", str(tmp_path / "a"), "--score-threshold", "0"]) == 0
    rows = json.loads((tmp_path / "a" / "detections.json").read_text())
    assert {r["category_id"] for r in rows} == {1, 5, 90}
    assert json.loads((tmp_path / "a" / "detections.images.json").read_text())["categories"] == CATEGORIES
    code, stats = _eval(coco_set, tmp_path / "a" / "detections.json", tmp_path)
    assert code == 0 and stats["AP"] == pytest.approx(1.0)


def test_trained_weights_carry_the_category_ids(coco_set, tmp_path):
    train = open_dataset(coco_set)
    assert train.label_to_category_id == [1, 5, 90] and [r.image_id for r in train.records] == [107, 108, 109]
    model = build_model(TrainConfig(model="efficientdet_d0", image_size=64), train.class_names, train.label_to_category_id)
    weights = save_weights(model.state_dict(), tmp_path / "w.safetensors", model.config)  # as the trainer does
    config = read_weights_config(weights)
    assert config["category_ids"] == [1, 5, 90] and config["class_names"] == ["cat", "dog", "fox"]
    assert json.loads(weights.with_suffix(".json").read_text())["category_ids"] == [1, 5, 90]
    assert create_model("efficientdet_d0", pretrained=weights).category_ids == [1, 5, 90]
    # a real (random) model through the command line: the dataset's ids, and eval accepts them
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(weights), "--data", str(coco_set), "--output", str(out),
                 "--score-threshold", "0"]) == 0
    rows = json.loads((out / "detections.json").read_text())
    assert rows and {r["category_id"] for r in rows} <= {1, 5, 90} and {r["image_id"] for r in rows} == {107, 108, 109}
    assert _eval(coco_set, out / "detections.json", tmp_path)[0] == 0
    # weights written before category_ids were stored still load, with 1..K
    old = {k: v for k, v in config.items() if k not in ("category_ids", "format")}
    old_weights = save_weights(model.state_dict(), tmp_path / "old.safetensors", old)
    assert create_model("efficientdet_d0", pretrained=old_weights).category_ids == [1, 2, 3]


def test_mismatched_ids_are_an_error_naming_both_files(coco_set, tmp_path, capsys):
    gt = open_dataset(coco_set)
    labels_as_ids = tmp_path / "labels.json"  # what predict wrote before: the 0-based labels, ids 1..N
    rows = [row for index, record in enumerate(gt.records)
            for row in detection_rows(index + 1, {"boxes": torch.from_numpy(record.boxes), "scores": torch.ones(len(record.boxes)),
                                                  "labels": torch.from_numpy(record.labels)}, [0, 1, 2])]
    labels_as_ids.write_text(json.dumps(rows))
    assert _eval(coco_set, labels_as_ids, tmp_path)[0] == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "labels.json uses category ids {0, 1, 2}; val.json has {1, 5, 90} ({0, 2} not in val.json)" in err
    # right categories, input-order image ids without the images file: nothing to match them by
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps([{**row, "category_id": [1, 5, 90][row["category_id"]]} for row in rows]))
    assert _eval(coco_set, shifted, tmp_path)[0] == 2
    assert "shifted.json uses image ids {1, 2, 3}; val.json has {107, 108, 109}" in capsys.readouterr().err
    # ids that happen to exist in the ground truth but name other classes: an error, not AP 0
    swapped = tmp_path / "swapped.json"
    fixed = [{**row, "image_id": 106 + row["image_id"], "category_id": 1} for row in rows]
    write_detections(swapped, fixed, [{"id": i} for i in SIZES], [{"id": 1, "name": "dog"}])
    assert _eval(coco_set, swapped, tmp_path)[0] == 2
    assert "id 1 is 'dog' in swapped.images.json but 'cat' in val.json" in capsys.readouterr().err
    # ... which --match-categories name resolves
    remapped = [{**row, "image_id": 106 + row["image_id"], "category_id": row["category_id"] + 100} for row in rows]
    write_detections(swapped, remapped, [{"id": i} for i in SIZES],
                     categories_of([100, 101, 102], ["cat", "dog", "fox"]))
    assert _eval(coco_set, swapped, tmp_path)[0] == 2  # ids 100..102 are not val.json's
    code, stats = _eval(coco_set, swapped, tmp_path, "--match-categories", "name")
    assert code == 0 and stats["AP"] == pytest.approx(1.0)
    # names matched as everywhere (case and surrounding spaces aside): 'Cat ' is val.json's 'cat'
    write_detections(swapped, remapped, [{"id": i} for i in SIZES],
                     categories_of([100, 101, 102], ["Cat ", "DOG", "Fox"]))
    code, stats = _eval(coco_set, swapped, tmp_path, "--match-categories", "name")
    assert code == 0 and stats["AP"] == pytest.approx(1.0)


def test_the_python_trainer_gives_a_model_without_ids_the_datasets(coco_set, tmp_path):
    """``Trainer(config, create_model(..., class_names=train.class_names), train)`` as docs/training.md shows it:
    the weights carry the dataset's ids 1 / 5 / 90 (as ``scaledet train`` writes them), not 1 / 2 / 3."""
    from scaledet.engine import Trainer

    train = open_dataset(coco_set)
    tiny = {"backbone": "mobilenetv3_small_050", "fpn_channels": 16, "fpn_repeats": 1, "head_repeats": 1}
    model = create_model("efficientdet_d0", num_classes=3, image_size=64, class_names=train.class_names, **tiny)
    assert model.category_ids == [1, 2, 3]
    config = TrainConfig.for_model("efficientdet_d0", max_steps=1, batch_size=3, out=str(tmp_path / "run"),
                                   progress=False, eval_every=0, threads=1)
    Trainer(config, model, train).fit()
    assert read_weights_config(tmp_path / "run" / "weights.safetensors")["category_ids"] == [1, 5, 90]
    other = create_model("efficientdet_d0", num_classes=3, image_size=64, class_names=["x", "y", "z"], **tiny)
    Trainer(config, other, train)  # other class names: the model's own ids stay
    assert other.category_ids == [1, 2, 3]


def test_a_validation_set_whose_classes_cannot_be_matched_fails_before_training(coco_set, tmp_path):
    """A validation set naming two of its classes alike stopped the run at its first evaluation, after the training
    time was spent (and scored 'red' detections as one of the two): now the Trainer refuses it when built."""
    from scaledet.engine import Trainer

    train = open_dataset(coco_set)
    gt = json.loads(coco_set.read_text())
    gt["categories"] = [{**category, "name": train.class_names[0]} for category in gt["categories"]]
    (tmp_path / "repeated.json").write_text(json.dumps(gt))
    with pytest.warns(DataWarning, match=r"'cat' \(3 classes\)"):
        val = open_dataset(tmp_path / "repeated.json")
    model = create_model("efficientdet_d0", num_classes=3, image_size=64, class_names=train.class_names,
                         backbone="mobilenetv3_small_050", fpn_channels=16, fpn_repeats=1, head_repeats=1)
    config = TrainConfig.for_model("efficientdet_d0", max_steps=1, batch_size=3, out=str(tmp_path / "run"),
                                   progress=False, threads=1)
    with pytest.raises(ValueError, match=r"the dataset's classes repeat the name\(s\) \[cat\]"):
        Trainer(config, model, train, val)
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_file_names_match_across_windows_and_posix_separators():
    from collections import defaultdict

    from scaledet.evaluation.results import _name_parts, _same_file

    by_base = defaultdict(list)
    for image in ({"id": 7, "file_name": "train\\a.png"}, {"id": 8, "file_name": "val/a.png"}):
        by_base[_name_parts(image["file_name"])[-1]].append(image)
    assert _same_file({"id": 0, "file_name": "coco/images/train/a.png"}, by_base)[0]["id"] == 7
    assert _same_file({"id": 0, "file_name": "C:\\data\\val\\a.png"}, by_base)[0]["id"] == 8
    assert _same_file({"id": 0, "file_name": "a.png"}, by_base) == (None, by_base["a.png"])  # which of the two?


def test_two_predicted_files_matching_one_ground_truth_image_are_an_error(tmp_path):
    """a/img.png and b/img.png predicted, the ground truth has one img.png: both sets of detections were scored on
    it (AP 0.65 for 0.875), silently."""
    from scaledet.evaluation import evaluate_detections

    gt = {"images": [{"id": 5, "file_name": "img.png", "width": 64, "height": 64}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [8, 8, 20, 20], "area": 400, "iscrowd": 0}]}
    images = [{"id": 1, "file_name": "a/img.png", "width": 64, "height": 64, "frame": None},
              {"id": 2, "file_name": "b/img.png", "width": 64, "height": 64, "frame": None}]
    rows = [{"image_id": i, "category_id": 1, "bbox": [8.0, 8.0, 20.0, 20.0], "score": 0.9} for i in (1, 2)]
    path = write_detections(tmp_path / "detections.json", rows, images, [{"id": 1, "name": "a"}], image_ids="inputs")
    with pytest.raises(ValueError, match=r"a/img.png and b/img.png both match img.png of the ground truth by file name"):
        evaluate_detections(gt, str(path))
    one = write_detections(tmp_path / "one.json", rows[:1], images[:1], [{"id": 1, "name": "a"}], image_ids="inputs")
    assert evaluate_detections(gt, str(one))["AP"] == pytest.approx(1.0)


def test_a_bare_file_name_matching_two_ground_truth_images_is_called_ambiguous(tmp_path):
    """img.png predicted from inside a/, the ground truth has a/img.png and b/img.png: the error said the image is
    not in the ground truth, when it is there twice."""
    from scaledet.evaluation import evaluate_detections

    gt = {"images": [{"id": 5, "file_name": "a/img.png", "width": 64, "height": 64},
                     {"id": 6, "file_name": "b/img.png", "width": 64, "height": 64}],
          "categories": [{"id": 1, "name": "a"}], "annotations": []}
    images = [{"id": 1, "file_name": "img.png", "width": 64, "height": 64, "frame": None}]
    rows = [{"image_id": 1, "category_id": 1, "bbox": [8.0, 8.0, 20.0, 20.0], "score": 0.9}]
    path = write_detections(tmp_path / "detections.json", rows, images, [{"id": 1, "name": "a"}], image_ids="inputs")
    with pytest.raises(ValueError, match=r"detections.json: img.png matches 2 images of the ground truth by file name "
                                         r"\(a/img.png, b/img.png\), so it cannot be told which"):
        evaluate_detections(gt, str(path))
