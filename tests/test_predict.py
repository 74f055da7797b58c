"""scaledet predict on a folder with a good RGB image, a grayscale PNG, a corrupt file and a tiny video."""

import json
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from scaledet.cli import main
from scaledet.evaluation.results import detection_rows
from scaledet.inference.predict import collect_inputs


def _write_video(path, frames=5, size=(48, 64)):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            array = np.full((*size, 3), 40 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_predict_folder_with_bad_file_and_video(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(inputs / "rgb.jpg")
    gray = np.random.default_rng(1).integers(0, 255, (50, 40), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(inputs / "gray.png")
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    _write_video(inputs / "clip.mp4")
    out = tmp_path / "out"
    code = main(["predict", str(inputs), "--model", "efficientdet_lite0", "--image-size", "128", "--output", str(out),
                 "--score-threshold", "0", "--batch-size", "2", "--save-json"])
    err = capsys.readouterr().err
    assert code == 0
    assert f"skipped {inputs / 'corrupt.jpg'}: unreadable image" in err
    assert (out / "rgb.jpg").exists() and (out / "gray.jpg").exists() and (out / "rgb.json").exists()
    assert not (out / "corrupt.jpg").exists()
    with av.open(str(out / "clip.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5
    clip = json.loads((out / "clip.json").read_text())  # --save-json: one file per video, its frames
    assert [f["frame"] for f in clip["frames"]] == list(range(5)) and len(clip["frames"][0]["detections"]) == 100
    header = json.loads((out / "detections.images.json").read_text())
    assert header["image_ids"] == "inputs" and header["categories"][:2] == [{"id": 1, "name": "person"},
                                                                            {"id": 2, "name": "bicycle"}]
    images = header["images"]
    assert sorted((Path(i["file_name"]).name, i["frame"]) for i in images) == sorted(
        [("gray.png", None), ("rgb.jpg", None)] + [("clip.mp4", f) for f in range(5)])
    gray = next(i for i in images if i["file_name"].endswith("gray.png"))
    assert (gray["width"], gray["height"]) == (40, 50)
    assert gray["output"] == "gray.jpg" and {i["output"] for i in images if i["frame"] is not None} == {"clip.mp4"}
    results = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in results} == {i["id"] for i in images}  # threshold 0: 100 per image
    assert len(results) == 100 * len(images)
    for row in results:
        x, y, w, h = row["bbox"]
        image = next(i for i in images if i["id"] == row["image_id"])
        assert w >= 0 and h >= 0 and x >= 0 and y >= 0
        assert x + w <= image["width"] + 1e-3 and y + h <= image["height"] + 1e-3


def test_predict_reports_missing_inputs_and_bad_arguments(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nothing*.jpg"), "--model", "efficientdet_lite0", "--image-size", "64",
                 "--output", str(tmp_path / "o")]) == 1  # nothing was predicted: not a success
    assert "no such file, folder or matching glob" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "give the model name (--model NAME" in capsys.readouterr().err


def test_collect_inputs_and_coco_rows(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "y.jpg").write_bytes(b"")
    paths, problems = collect_inputs([str(tmp_path / "a"), str(tmp_path / "*.jpg"), str(tmp_path / "y.jpg")])
    assert [p.name for p in paths] == ["x.png", "y.jpg"] and problems == []
    # a folder's labels and data.yaml are left out with a note, not skipped as unreadable images one by one
    (tmp_path / "a" / "x.txt").write_text("0 0.5 0.5 0.1 0.1")
    (tmp_path / "a" / "data.yaml").write_text("names: [a]")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    notes = []
    paths, problems = collect_inputs([str(tmp_path / "a"), str(tmp_path / "empty")], notes)
    assert [p.name for p in paths] == ["x.png"]
    assert notes == [f"{tmp_path / 'a'}: left out 2 file(s) that are not images or videos (data.yaml, x.txt)"]
    assert problems == [f"{tmp_path / 'empty'}: no images or videos in this folder (1 other file(s), e.g. notes.txt)"]
    # every suffix PIL opens is an image (.pnm, .jfif, .tga, .dib ... were left out as not images)
    for name in ("a.pnm", "b.jfif", "c.TGA", "d.dib", "e.jpe", "f.Tif"):
        (tmp_path / "a" / name).write_bytes(b"")
    paths, _ = collect_inputs([str(tmp_path / "a")])
    assert sorted(p.name for p in paths) == ["a.pnm", "b.jfif", "c.TGA", "d.dib", "e.jpe", "f.Tif", "x.png"]
    rows = detection_rows(7, {"boxes": torch.tensor([[1.0, 2.0, 4.0, 8.0], [0, 0, 1, 1]]),
                              "scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([3, 1])},
                          category_ids=[1, 5, 90, 91], threshold=0.5)
    assert rows == [{"image_id": 7, "category_id": 91, "bbox": [1.0, 2.0, 3.0, 6.0], "score": rows[0]["score"]}]
    assert abs(rows[0]["score"] - 0.9) < 1e-6


def test_predict_refuses_options_that_would_do_nothing(tmp_path, capsys):
    base = ["predict", str(tmp_path), "--model", "efficientdet_lite0", "--image-size", "64", "--output", str(tmp_path / "o")]
    for extra, message in ((["--overlap", "0.3"], "--overlap go(es) with --tile SIZE"),
                           (["--full-image", "--merge", "wbf"], "--full-image, --merge go(es) with --tile SIZE"),
                           (["--score-threshold", "1.5"], "--score-threshold must be in [0, 1]"),
                           (["--max-frames", "0"], "--max-frames must be >= 1")):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err


def test_an_input_named_like_the_results_file_keeps_its_own_json(tmp_path):
    """An input detections.png wrote its --save-json file to OUT/detections.json, which the run's results then
    overwrote (and detections.images.png the header)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("detections.png", "detections.images.png"):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(inputs / name)
    out = tmp_path / "out"
    assert main(["predict", str(inputs), "--model", "efficientdet_lite0", "--image-size", "64", "--output", str(out),
                 "--score-threshold", "0", "--save-json", "--no-progress"]) == 0
    assert isinstance(json.loads((out / "detections.json").read_text()), list)  # the run's results
    assert json.loads((out / "detections.images.json").read_text())["image_ids"] == "inputs"
    assert json.loads((out / "detections_2.json").read_text())["file_name"].endswith("detections.png")
    assert json.loads((out / "detections.images_2.json").read_text())["file_name"].endswith("detections.images.png")


def test_predict_refuses_an_output_folder_holding_its_inputs(tmp_path, capsys):
    """`predict photos --output photos` wrote the drawn a.jpg over the input a.jpg (and a second run drew on
    the drawings); the dataset's images under --data alike."""
    photos = tmp_path / "my photos"
    photos.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photos / "a.jpg")
    before = (photos / "a.jpg").read_bytes()
    for inputs in ([str(photos)], [str(photos / "a.jpg")], [str(photos / "*.jpg")]):
        assert main(["predict", *inputs, "--model", "efficientdet_lite0", "--image-size", "64",
                     "--output", str(photos), "--no-progress"]) == 2
        assert f"--output {photos} holds the input {photos / 'a.jpg'}" in capsys.readouterr().err
    assert (photos / "a.jpg").read_bytes() == before and sorted(p.name for p in photos.iterdir()) == ["a.jpg"]
    # another folder is fine; a second run into it says that it replaces the first's results
    for run in range(2):
        assert main(["predict", str(photos), "--model", "efficientdet_lite0", "--image-size", "64",
                     "--output", str(tmp_path / "out"), "--no-progress"]) == 0
        assert ("holds an earlier run's outputs: its detections.json is replaced" in capsys.readouterr().err) == (run == 1)
