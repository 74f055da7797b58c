"""`scaledet export --check`: a PASS / FAIL verdict against stated tolerances, detections compared
as sets (order and near-tie swaps do not count as differences), and the exit status follows it."""

import torch

import scaledet
import scaledet.export
from scaledet.cli import main
from scaledet.export import OnnxDetector
from scaledet.inference.compare import compare_detection_sets
from scaledet.weights import save_weights
from test_optimize import randomise_efficientdet


def _detections(scores, labels, boxes):
    return {"scores": torch.tensor(scores), "labels": torch.tensor(labels), "boxes": torch.tensor(boxes)}


REFERENCE = [_detections([0.9, 0.5, 0.3, 0.3000004, 0.1], [0, 1, 2, 2, 0],
                         [[10.0, 10, 50, 50], [0, 0, 20, 30], [5, 5, 25, 25], [8, 6, 30, 24], [60, 60, 90, 80]])]


def _changed(scores=None, labels=None, boxes=None, order=None):
    ref = REFERENCE[0]
    out = {"scores": ref["scores"].clone(), "labels": ref["labels"].clone(), "boxes": ref["boxes"].clone()}
    for key, value in (("scores", scores), ("labels", labels), ("boxes", boxes)):
        if value is not None:
            out[key] = torch.tensor(value, dtype=out[key].dtype)
    return [{k: v[order] for k, v in out.items()} if order is not None else out]


def test_verdict_matches_sets_and_states_tolerances():
    same = compare_detection_sets(REFERENCE, REFERENCE)
    assert same.passed and same.matched == 5 and same.summary().endswith("PASS")
    # order does not matter, tiny differences are within the tolerances
    reordered = _changed(scores=[0.9, 0.50001, 0.3, 0.3000004, 0.1], order=torch.tensor([1, 0, 3, 2, 4]))
    assert compare_detection_sets(REFERENCE, reordered, max_tied_fraction=0).passed
    # NMS kept the other of two near-tied overlapping boxes: tolerated (a tie), and said so
    swap = _changed(scores=[0.9, 0.5, 0.3000004, 0.3, 0.1], boxes=[[10.0, 10, 50, 50], [0, 0, 20, 30], [7, 5, 27, 25],
                                                                  [8, 6, 30, 24], [60, 60, 90, 80]])
    verdict = compare_detection_sets(REFERENCE, swap, max_tied_fraction=0.5)
    assert verdict.passed and verdict.tied == 2 and "2 unmatched at near-tied scores" in verdict.summary()
    assert not compare_detection_sets(REFERENCE, swap, max_tied_fraction=0.1).passed  # but not too many of them


def test_verdict_fails_on_real_differences():
    moved = compare_detection_sets(REFERENCE, _changed(boxes=[[10.0, 10, 50, 100], *REFERENCE[0]["boxes"][1:].tolist()]))
    assert not moved.passed and moved.unexplained == 2
    summary = moved.summary()
    assert "FAIL: image 0: reference detection label 0 score 0.9000" in summary
    assert "nearest same-label box: 50 px" in summary and "box within 0.01 px" in summary
    # a box that moved a little but kept its score looks like a near-tie swap: only the cap catches it
    drift = compare_detection_sets(REFERENCE, _changed(boxes=[[10.0, 10, 50, 55], *REFERENCE[0]["boxes"][1:].tolist()]))
    assert not drift.passed and drift.tied == 2 and "2 of 10 detections are unmatched at near-tied scores (more than 5%)" in drift.summary()
    relabelled = compare_detection_sets(REFERENCE, _changed(labels=[3, 1, 2, 2, 0]))
    assert not relabelled.passed and relabelled.unexplained == 2
    rescored = compare_detection_sets(REFERENCE, _changed(scores=[0.8, 0.5, 0.3, 0.3000004, 0.1]))
    assert not rescored.passed and "scores differ by 0.1 > 0.0001" in rescored.summary()
    # the same boxes pass with a looser box tolerance
    assert compare_detection_sets(REFERENCE, _changed(boxes=[[10.0, 10, 50, 100], *REFERENCE[0]["boxes"][1:].tolist()]),
                                  box_tol=51).passed


def test_export_check_prints_the_verdict_and_exits_by_it(tmp_path, capsys, monkeypatch):
    model = randomise_efficientdet(scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=128,
                                                         category_ids=[1, 5, 90]))
    weights = save_weights(model.state_dict(), tmp_path / "l0.safetensors", model.config)
    output = tmp_path / "l0.onnx"
    assert main(["export", "--weights", str(weights), "--output", str(output), "--check"]) == 0
    printed = capsys.readouterr().out
    assert "200 of 200 reference / 200 other detections matched (same label, score within 0.0001, box within 0.01 px)" in printed
    assert printed.rstrip().endswith("PASS")
    assert OnnxDetector(output).category_ids == [1, 5, 90]
    # the same file, with onnxruntime's boxes moved away (200 px: no overlap, so no near-tie explains them): FAIL, exit 1
    monkeypatch.setattr(scaledet.export, "export_onnx", lambda model, path, opset: path)
    run = OnnxDetector.__call__
    monkeypatch.setattr(OnnxDetector, "__call__",
                        lambda self, images: [{**d, "boxes": d["boxes"] + 200.0} for d in run(self, images)])
    assert main(["export", "--weights", str(weights), "--output", str(output), "--check"]) == 1
    assert "\nFAIL: image 0: reference detection" in capsys.readouterr().out
    # neither side finds anything on the check images: not a PASS
    monkeypatch.setattr(OnnxDetector, "__call__", lambda self, images: [
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)} for _ in images])
    monkeypatch.setattr(type(model), "__call__", lambda self, images: [
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)} for _ in images])
    assert main(["export", "--weights", str(weights), "--output", str(output), "--check"]) == 1
    printed = capsys.readouterr().out
    assert "INCONCLUSIVE, neither finds anything" in printed and "give --check-images DATA" in printed


def test_export_check_on_the_users_images(tmp_path, capsys):
    """--check-images: the float check compares on real images (a folder, or a dataset) instead of noise, on
    which a trained model finds nothing; the option is refused where it would do nothing."""
    from PIL import Image

    model = randomise_efficientdet(scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=128))
    weights = save_weights(model.state_dict(), tmp_path / "l0.safetensors", model.config)
    folder = tmp_path / "photos"
    folder.mkdir()
    generator = torch.Generator().manual_seed(1)
    for index, (h, w) in enumerate([(90, 120), (140, 100), (64, 64)]):
        pixels = (torch.rand(h, w, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{index}.png")
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / "l0.onnx"
    assert main(["export", "--weights", str(weights), "--output", str(output), "--check",
                 "--check-images", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "check, onnxruntime vs eager on 3 images: " in printed and printed.rstrip().endswith("PASS")
    assert main(["export", "--weights", str(weights), "--output", str(output), "--check",
                 "--check-images", "shapes:val"]) == 0
    assert "vs eager on 8 images" in capsys.readouterr().out
    assert main(["export", "--weights", str(weights), "--output", str(output), "--check-images", str(folder)]) == 2
    assert "--check-images: for the float --check only" in capsys.readouterr().err
    assert main(["export", "--weights", str(weights), "--output", str(output), "--check",
                 "--check-images", str(tmp_path / "none")]) == 2
    assert "--check-images" in capsys.readouterr().err
