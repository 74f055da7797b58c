"""COCO evaluation: our stats equal pycocotools' (and faster-coco-eval's) on the same detections."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from scaledet.cli import main as cli_main
from scaledet.data import ShapesDataset
from scaledet.evaluation import STAT_KEYS, COCOEvaluator, evaluate_detections, evaluate_model

CATEGORY_IDS = [3, 17, 88]  # non-contiguous on purpose


def _scene(seed=0, num_images=12, objects=(2, 9), size=(640, 480), category_ids=CATEGORY_IDS):
    """GT with small/medium/large boxes and a few crowd regions; detections = jittered GT,
    wrong classes, duplicates and false positives with random scores."""
    rng = np.random.default_rng(seed)
    width, height = size
    images, anns, dets = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id * 7, "width": width, "height": height, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(*objects))):
            w, h = np.exp(rng.uniform(np.log(6), np.log(300), size=2))
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.choice(category_ids))
            anns.append({"id": len(anns) + 1, "image_id": image_id * 7, "category_id": category,
                         "bbox": [x, y, w, h], "area": w * h * rng.uniform(0.6, 1.0),
                         "iscrowd": int(rng.random() < 0.05)})  # fmt: skip
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.normal(0, 0.08, size=4) * [w, h, w, h]
                det_category = category if rng.random() < 0.85 else int(rng.choice(category_ids))
                dets.append({"image_id": image_id * 7, "category_id": det_category,
                             "bbox": (np.array([x, y, w, h]) + jitter).tolist(), "score": float(rng.random())})  # fmt: skip
        for _ in range(int(rng.integers(0, 4))):
            dets.append({"image_id": image_id * 7, "category_id": int(rng.choice(category_ids)),
                         "bbox": [*rng.uniform(0, 300, 2), *rng.uniform(5, 200, 2)], "score": float(rng.random())})  # fmt: skip
    categories = [{"id": c, "name": f"class{c}"} for c in category_ids]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def _pycocotools(gt, dets, max_dets=(1, 10, 100), cat_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        evaluator.params.maxDets = list(max_dets)
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _faster(gt, dets, max_dets):
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(copy.deepcopy(gt))
        evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[:12]


@pytest.mark.parametrize("seed", [0, 1])
def test_twelve_stats_equal_pycocotools(seed):
    gt, dets = _scene(seed)
    ours = evaluate_detections(gt, dets)
    reference = _pycocotools(gt, dets)
    assert [ours[k] for k in STAT_KEYS] == pytest.approx(reference.tolist(), abs=1e-6)
    assert 0.1 < ours["AP"] < 0.9 and ours["APs"] > -1 and ours["APl"] > -1  # a non-trivial case
    faster = evaluate_detections(gt, dets, backend="faster_coco_eval")
    assert [faster[k] for k in STAT_KEYS] == pytest.approx(reference.tolist(), abs=1e-6)


def test_per_class_ap_equals_pycocotools_restricted_to_that_class():
    gt, dets = _scene(2)
    ours = evaluate_detections(gt, dets)
    for category_id in CATEGORY_IDS:
        reference = _pycocotools(gt, dets, cat_ids=[category_id])
        assert ours["per_class"][f"class{category_id}"]["AP"] == pytest.approx(reference[0], abs=1e-6)
        assert ours["per_class"][f"class{category_id}"]["AP50"] == pytest.approx(reference[1], abs=1e-6)


def test_dense_scene_with_raised_max_dets():
    # maxDets caps detections per image *and category*: one category makes the cap bite
    gt, dets = _scene(3, num_images=2, objects=(160, 161), size=(1200, 1000), category_ids=[17])
    assert all(sum(a["image_id"] == img["id"] for a in gt["annotations"]) == 160 for img in gt["images"])
    assert max(sum(d["image_id"] == img["id"] for d in dets) for img in gt["images"]) > 150
    max_dets = (1, 10, 400)
    ours = evaluate_detections(gt, dets, max_dets=max_dets)
    reference = _pycocotools(gt, dets, max_dets)
    # pycocotools' summarize() hard-codes maxDets=100 for AP@[.5:.95] and reports -1 here;
    # the other 11 stats use maxDets[-1] / maxDets[i] and must match exactly.
    assert reference[0] == -1
    assert [ours[k] for k in STAT_KEYS[1:]] == pytest.approx(reference[1:].tolist(), abs=1e-6)
    # faster-coco-eval uses maxDets[-1] for all AP stats: all 12 match it.
    assert [ours[k] for k in STAT_KEYS] == pytest.approx(_faster(gt, dets, max_dets).tolist(), abs=1e-6)
    capped = _pycocotools(gt, dets, (1, 10, 100))  # capping at 100 loses objects
    assert ours["ARl"] > capped[11] + 0.05 and ours["AP50"] > capped[1] + 0.05
    # the default caps are raised for an image of ~150 objects, as evaluate_model does (a detections file scored
    # AP 0.275 where the model's own evaluation gave 0.882), and a note says so
    default = evaluate_detections(gt, dets)
    assert default["max_dets"] == [1, 10, 400] and default["AP50"] == pytest.approx(ours["AP50"])
    assert "ground-truth objects, more than maxDets 100: AP and AR use maxDets 400" in default["notes"][0]


def test_noncontiguous_category_ids_map_back_from_labels(tmp_path):
    gt, _ = _scene(4, num_images=3)
    label_of = {cid: label for label, cid in enumerate(CATEGORY_IDS)}
    perfect, swapped = COCOEvaluator(gt), COCOEvaluator(gt)
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
        labels = torch.tensor([label_of[a["category_id"]] for a in anns])
        scores = torch.linspace(1.0, 0.5, len(anns))
        perfect.update([{"boxes": boxes, "scores": scores, "labels": labels}], [image["id"]])
        swapped.update([{"boxes": boxes, "scores": scores, "labels": (labels + 1) % 3}], [{"image_id": image["id"]}])
    stats = perfect.compute()
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert {r["category_id"] for r in perfect.results} == set(CATEGORY_IDS)
    assert swapped.compute()["AP"] == 0.0
    path = perfect.write_results(tmp_path / "results.json")
    assert evaluate_detections(gt, str(path))["AP"] == pytest.approx(1.0)
    # a model whose classes are in another order, named: its labels map to the categories by name
    names = [category["name"] for category in gt["categories"]]
    rotated = names[1:] + names[:1]  # model label k is the ground truth's label k + 1
    by_name = COCOEvaluator(gt, class_names=rotated)
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
        labels = torch.tensor([(label_of[a["category_id"]] - 1) % 3 for a in anns])
        by_name.update([{"boxes": boxes, "scores": torch.linspace(1.0, 0.5, len(anns)), "labels": labels}], [image["id"]])
    assert by_name.compute()["AP"] == pytest.approx(1.0)
    partial = COCOEvaluator(gt, class_names=[names[2], "dog"])  # a class the data lacks writes no rows
    partial.update([{"boxes": torch.tensor([[0.0, 0, 9, 9]] * 2), "scores": torch.ones(2), "labels": torch.tensor([0, 1])}],
                   [gt["images"][0]["id"]])
    assert [r["category_id"] for r in partial.results] == [CATEGORY_IDS[2]]


def test_update_maps_resized_boxes_back_with_scale():
    gt = {"images": [{"id": 1, "width": 100, "height": 50}], "categories": [{"id": 5, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 20], "area": 800}]}  # fmt: skip
    evaluator = COCOEvaluator(gt)
    prediction = {"boxes": torch.tensor([[20.0, 25.0, 100.0, 75.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    evaluator.update([prediction], [{"image_id": 1, "scale": torch.tensor([2.0, 2.5, 2.0, 2.5])}])
    assert evaluator.results[0]["bbox"] == pytest.approx([10, 10, 40, 20])
    assert evaluator.compute()["AP"] == pytest.approx(1.0)


def test_no_detections_and_classes_without_ground_truth():
    gt, _ = _scene(5, num_images=2)
    gt["categories"].append({"id": 99, "name": "never"})
    stats = COCOEvaluator(gt).compute()
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0
    assert stats["per_class"]["never"] == {"AP": -1.0, "AP50": -1.0}


def test_bad_inputs_raise():
    gt, dets = _scene(6, num_images=2)
    with pytest.raises(ValueError, match="max_dets must be 3 increasing"):
        COCOEvaluator(gt, max_dets=(10, 1, 100))
    with pytest.raises(ValueError, match="uses image ids \\{12345\\}; the ground truth has \\{7, 14\\}"):
        evaluate_detections(gt, [{**dets[0], "image_id": 12345}])
    with pytest.raises(ValueError, match="uses category ids \\{4\\}; the ground truth has \\{3, 17, 88\\}"):
        evaluate_detections(gt, [{**dets[0], "category_id": 4}])
    with pytest.raises(ValueError, match="detections\\[0\\] needs"):
        evaluate_detections(gt, [{"image_id": 7}])
    with pytest.raises(ValueError, match="labels must be in \\[0, 3\\)"):
        COCOEvaluator(gt).update([{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([3])}], [7])


def test_cli_eval_detections_file(tmp_path, capsys):
    gt, dets = _scene(7)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "stats.json"
    argv = ["eval", "--gt", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "dets.json"), "--json", str(out)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    stats = json.loads(out.read_text())
    reference = _pycocotools(gt, dets)
    assert [stats[k] for k in STAT_KEYS] == pytest.approx(reference.tolist(), abs=1e-6)
    assert f"maxDets= 100 ] = {reference[0]:0.3f}   AP" in printed and "class17" in printed
    assert set(stats["per_class"]) == {"class3", "class17", "class88"}
    assert cli_main([*argv[:5], "--max-dets", "1", "10", "300", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["max_dets"] == [1, 10, 300]
    assert cli_main(["eval", "--gt", str(tmp_path / "gt.json")]) == 2
    assert "--gt and --detections go together" in capsys.readouterr().err


class _Oracle(nn.Module):
    """Test double following the model contract: answers with the dataset's boxes, in order."""

    def __init__(self, dataset, class_names):
        super().__init__()
        self.class_names = class_names
        self.answers = [dataset.records[i] for i in range(len(dataset))]
        self.to_model = torch.tensor([class_names.index(n) for n in dataset.class_names])

    def forward(self, images):
        out = []
        for image in images:
            record = self.answers.pop(0)
            assert tuple(image.shape[-2:]) == (record.height, record.width)
            labels = self.to_model[torch.from_numpy(record.labels)]
            out.append({"boxes": torch.from_numpy(record.boxes), "scores": torch.ones(len(labels)), "labels": labels})
        return out


def test_evaluate_model_maps_model_classes_by_name(tmp_path):
    dataset = ShapesDataset(num_images=5, image_size=(40, 56), seed=2)
    model = _Oracle(dataset, ["cross", "circle", "triangle", "square"])  # different order than the data
    stats = evaluate_model(model, dataset, batch_size=2, results_path=tmp_path / "r.json")
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert len(json.loads((tmp_path / "r.json").read_text())) == sum(len(r.boxes) for r in dataset.records)


def test_numbers_written_as_strings_are_read_and_bad_rows_are_named():
    """Ground truth and detections with ids / boxes / scores as strings score as the numbers; a row with a
    NaN, three-number or negative-width box, or a null / bool score is an error naming it."""
    from scaledet.evaluation import evaluate_detections

    gt = {"images": [{"id": "7", "width": 100, "height": 80, "file_name": "a.png"}],
          "categories": [{"id": "3", "name": "cup"}],
          "annotations": [{"id": 1, "image_id": "7", "category_id": "3", "bbox": ["10", "20", "30", "40"]}]}
    rows = [{"image_id": "7", "category_id": "3", "bbox": ["10", "20", "30", "40"], "score": "0.9"}]
    assert evaluate_detections(gt, rows)["AP"] == pytest.approx(1.0)
    good = {"image_id": 7, "category_id": 3, "bbox": [10, 20, 30, 40], "score": 0.9}
    for change, message in (({"bbox": [10, 20, float("nan"), 40]}, "is not four finite numbers"),
                            ({"bbox": [10, 20, 30]}, "is not four finite numbers"),
                            ({"bbox": [10, 20, -30, 40]}, "has a negative width or height"),
                            ({"score": None}, "score None is not a finite number"),
                            ({"score": True}, "score True is not a finite number")):
        with pytest.raises(ValueError, match=rf"detections\[0\]: .*{message}"):
            evaluate_detections(gt, [{**good, **change}])


def test_a_long_evaluation_says_it_is_scoring(capsys, monkeypatch):
    import scaledet.evaluation.coco as coco

    gt, dets = _scene(0)
    evaluate_detections(gt, dets)
    assert "scoring" not in capsys.readouterr().err
    monkeypatch.setattr(coco, "LONG_EVALUATION_ROWS", 1)
    evaluate_detections(gt, dets)
    assert capsys.readouterr().err.startswith(f"scoring {len(dets):,} detections on {len(gt['images'])} images with pycocotools")


def test_a_name_two_categories_share_keeps_both_per_class_rows():
    """Categories 3 and 17 both named 'red': the per-class table was keyed by name, so one class's AP was lost."""
    gt, dets = _scene(8)
    gt["categories"] = [{"id": 3, "name": "red"}, {"id": 17, "name": "red"}, {"id": 88, "name": "blue"}]
    reference = {c: _pycocotools(gt, dets, cat_ids=[c])[0] for c in CATEGORY_IDS}
    per_class = evaluate_detections(gt, dets)["per_class"]
    assert set(per_class) == {"red (id 3)", "red (id 17)", "blue"}
    assert per_class["red (id 3)"]["AP"] == pytest.approx(reference[3], abs=1e-6)
    assert per_class["red (id 17)"]["AP"] == pytest.approx(reference[17], abs=1e-6)


def test_classes_are_not_matched_by_a_name_one_side_repeats():
    """A model's 'red', 'green', 'blue' against a dataset naming two categories 'red': green was silently matched to
    nothing and 'red' to one of the two (AP 0.26 for 0.71); now an error names the repeat. The same list on both
    sides needs no matching by name and is kept."""
    from scaledet.evaluation.results import label_mapping

    with pytest.raises(ValueError, match=r"the dataset's classes repeat the name\(s\) \[red\], so the model's classes "
                                         r"\[red, green, blue\] cannot be matched"):
        label_mapping(["red", "green", "blue"], ["red", "red", "blue"])
    with pytest.raises(ValueError, match=r"the model's classes repeat the name\(s\) \[red\]"):
        label_mapping(["red", "red", "blue"], ["blue", "red", "green"])
    assert label_mapping(["red", "red", "blue"], ["red", "red", "blue"]) == [0, 1, 2]
    # a name repeated on one side only, like 'N/A' in the COCO-91 label space of DETR's published weights: no matter
    assert label_mapping(["N/A", "person", "N/A", "car"], ["car", "person"]) == [-1, 1, -1, 0]
