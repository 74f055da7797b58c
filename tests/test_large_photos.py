"""Training on photos far larger than the input: files decoded shrunk to what the resize uses, boxes
following; the resize before the flip and colour jitter (a 12-megapixel photo's hue jitter took seconds)."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from scaledet import create_model
from scaledet.data import eval_transforms, load_image, open_dataset, train_transforms
from scaledet.data.images import shrink_factor
from scaledet.data.transforms import largest_resize, largest_scale
from scaledet.evaluation import predict_dataset
from scaledet.evaluation.runner import _decoded_for
from scaledet.inference import predict as predict_module
from scaledet.inference.predict import detect_in_batches, open_frame
from scaledet.models.detr.transforms import ShorterSideResize, StretchResize
from scaledet.models.detr.transforms import train_transforms as detr_train_transforms

_EXIF_ORIENTATION = 0x0112


def _photo(height: int, width: int) -> np.ndarray:
    """A smooth RGB image (a gradient plus a few flat blocks) that survives JPEG compression."""
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) * 127 // (width + height)], -1)
    image[height // 4: height // 2, width // 4: width // 2] = (250, 30, 30)
    image[height // 2: height * 3 // 4, width // 2: width * 7 // 8] = (20, 200, 40)
    return image.astype(np.uint8)


def _write_coco(folder, sizes, suffix=".jpg"):
    """A COCO set of photos of ``sizes`` (height, width), each with the two flat blocks as boxes."""
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for index, (height, width) in enumerate(sizes):
        name = f"{index}{suffix}"
        Image.fromarray(_photo(height, width)).save(folder / "images" / name, quality=95)
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        for x, y, w, h in ((width // 4, height // 4, width // 4, height // 4),
                           (width // 2, height // 2, width * 3 // 8, height // 4)):
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    path = folder / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "block"}]}))
    return path


def test_shrink_factor_is_the_largest_power_of_two_the_resize_still_shrinks():
    assert shrink_factor(min(768 / 3024, 1024 / 4032)) == 2  # 1512x2016 covers 768x1024, 756x1008 would not
    assert shrink_factor(min(384 / 3024, 512 / 4032)) == 4
    assert shrink_factor(1.0) == shrink_factor(0.6) == shrink_factor(2.0) == 1  # less than 2x: as is
    assert shrink_factor(0.5) == 2 and shrink_factor(0.01) == 64


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_load_image_decodes_shrunk(tmp_path, suffix):
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(_photo(1200, 1600)).save(path, quality=95)
    full = load_image(path)
    shrunk = load_image(path, shrink=4)
    assert full.shape == (3, 1200, 1600) and shrunk.shape == (3, 300, 400)
    reference = torch.nn.functional.avg_pool2d(full[None], 4)[0]  # the same picture, averaged 4 x 4
    assert (shrunk - reference).abs().mean() < 0.02
    assert load_image(path, shrink=16).shape == (3, 75, 100)  # JPEG: 1/8 in the decoder, then 2 x 2 blocks


def test_load_image_shrinks_an_exif_rotated_photo_as_displayed(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = 6  # stored 1600 wide, 1200 high; displayed turned: 1200 wide, 1600 high
    Image.fromarray(_photo(1200, 1600)).save(path, quality=95, exif=exif)
    assert load_image(path).shape == (3, 1600, 1200)
    assert load_image(path, shrink=2).shape == (3, 800, 600)


def test_16_bit_and_palette_images_shrink_with_their_values(tmp_path):
    gray = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    full, shrunk = load_image(tmp_path / "gray16.png"), load_image(tmp_path / "gray16.png", shrink=4)
    assert shrunk.shape == (3, 16, 16)
    assert torch.allclose(shrunk, torch.nn.functional.avg_pool2d(full[None], 4)[0], atol=1 / 65535)
    Image.fromarray((gray // 256).astype(np.uint8)).convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png", shrink=2).shape == (3, 32, 32)


def test_a_shrunk_decode_trains_on_the_samples_the_full_one_gives(tmp_path):
    path = _write_coco(tmp_path, [(1200, 1600), (1600, 1200)])
    full, shrunk = open_dataset(path), open_dataset(path)
    for dataset in (full, shrunk):
        dataset.transforms = train_transforms((96, 128), scale_range=(0.8, 1.2), photometric=True)
    shrunk.decode_shrunk()
    for index in range(2):
        torch.manual_seed(index)
        image, target = full[index]
        torch.manual_seed(index)
        small_image, small_target = shrunk[index]
        assert small_image.shape == image.shape == (3, 96, 128)
        assert torch.allclose(small_target["boxes"], target["boxes"], atol=1.0)  # within a pixel of the input
        assert torch.equal(small_target["labels"], target["labels"])
        assert (small_image - image).abs().mean() < 0.02  # the same picture, resampled from another size
    assert shrunk.load_image(0).shape == (3, 150, 200)  # what was decoded: 1/8, still covering 96x128 x 1.2
    shrunk.decode_shrunk(None)
    assert shrunk.load_image(0).shape == (3, 1200, 1600)


def test_a_shrunk_decode_maps_evaluation_boxes_back_to_the_files_pixels(tmp_path):
    path = _write_coco(tmp_path, [(1200, 1600)], suffix=".png")
    dataset = open_dataset(path)
    dataset.transforms = eval_transforms((96, 128))
    dataset.decode_shrunk()
    image, target = dataset[0]
    assert image.shape == (3, 96, 128) and target["orig_size"] == (1200, 1600)
    assert torch.allclose(target["boxes"] / target["scale"], torch.from_numpy(dataset.records[0].boxes), atol=0.5)


def test_evaluation_decodes_for_the_models_resize_and_scores_in_the_files_pixels(tmp_path):
    path = _write_coco(tmp_path, [(1200, 1600), (1600, 1200)])
    dataset = open_dataset(path)
    model = _ReportsItsInputs()
    predictions = predict_dataset(model, dataset, progress=False)
    assert model.seen == [(150, 200), (100, 75)]  # 1/8 and 1/16: the model's 96x128 resize still shrinks both
    for prediction, record in zip(predictions, dataset.records):  # its boxes (the ground truth) in file pixels
        assert torch.allclose(prediction.detections["boxes"], torch.from_numpy(record.boxes), atol=0.5)
    assert dataset.decode_scale is None  # as it was
    with _decoded_for(model, dataset):  # the rule travels to DataLoader workers started by spawn / forkserver
        copy = pickle.loads(pickle.dumps(dataset))
    assert copy.load_image(1).shape == (3, 100, 75)


class _ReportsItsInputs(torch.nn.Module):
    """A stand-in detector that resizes to fit 96x128 and 'detects' the two blocks of :func:`_photo` exactly."""

    class_names = ["block"]

    def __init__(self):
        super().__init__()
        self.seen = []

    def input_scale(self, height, width, image_size=None):
        scale = min(96 / height, 128 / width)
        return scale, scale

    def forward(self, images):
        outputs = []
        for image in images:
            height, width = image.shape[-2:]
            self.seen.append((height, width))
            boxes = torch.tensor([[width / 4, height / 4, width / 2, height / 2],
                                  [width / 2, height / 2, width * 7 / 8, height * 3 / 4]], dtype=torch.float32)
            outputs.append({"boxes": boxes, "scores": torch.ones(2), "labels": torch.zeros(2, dtype=torch.long)})
        return outputs


def test_predict_decodes_a_large_photo_for_the_model_and_keeps_boxes_in_the_files_pixels(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    Image.fromarray(_photo(1200, 1600)).save(path, quality=95)
    model = _ReportsItsInputs()
    assert open_frame(path, model).image.shape == (3, 1200, 1600)  # drawn at >= 1000 px: 1600 is under 2x that
    monkeypatch.setattr(predict_module, "MIN_DRAWN_SIDE", 100)
    frame = open_frame(path, model)
    assert frame.image.shape == (3, 150, 200) and frame.size == (1200, 1600)  # 1/8: still covers 96x128
    detect_in_batches(model, [frame], batch_size=1, device="cpu")
    blocks = torch.tensor([[400.0, 300.0, 800.0, 600.0], [800.0, 600.0, 1400.0, 900.0]])  # _photo's, in file pixels
    assert torch.allclose(frame.detections["boxes"], blocks, atol=0.5)
    assert frame.drawn(model.class_names, 0.5).shape == (3, 150, 200)  # drawn on what was decoded
    assert open_frame(path).image.shape == (3, 1200, 1600)  # no model: the whole file


def test_predict_command_on_large_photos_and_a_dataset_of_them(tmp_path, monkeypatch):
    from scaledet.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_photo(3000, 4000)).save(folder / "phone.jpg", quality=90)
    args = ["--model", "efficientdet_lite0", "--image-size", "128", "--score-threshold", "0", "--no-progress"]
    assert main(["predict", str(folder), "--output", str(tmp_path / "out"), *args]) == 0
    with Image.open(tmp_path / "out" / "phone.jpg") as drawn:
        assert drawn.size == (1000, 750)  # decoded at 1/4 for the drawing's 1000 px (the model's 128 allowed 1/16)
    image = json.loads((tmp_path / "out" / "detections.images.json").read_text())["images"][0]
    assert (image["width"], image["height"]) == (4000, 3000)
    boxes = np.array([row["bbox"] for row in json.loads((tmp_path / "out" / "detections.json").read_text())])
    assert len(boxes) == 100 and (boxes[:, 0] + boxes[:, 2]).max() > 1000  # in the file's pixels, not the drawing's
    assert (boxes[:, 0] + boxes[:, 2]).max() <= 4000 + 1e-3 and (boxes[:, 1] + boxes[:, 3]).max() <= 3000 + 1e-3

    monkeypatch.setattr(predict_module, "MIN_DRAWN_SIDE", 100)
    data = _write_coco(tmp_path / "set", [(1200, 1600)])
    weights = create_model("efficientdet_lite0", num_classes=1, image_size=128, class_names=["block"]).save(
        tmp_path / "block.safetensors")  # random, but of the dataset's class
    assert main(["predict", "--data", str(data), "--weights", str(weights), "--output", str(tmp_path / "set_out"),
                 "--score-threshold", "0", "--no-progress"]) == 0
    with Image.open(tmp_path / "set_out" / "0.jpg") as drawn:
        assert drawn.size == (200, 150)  # --data: the dataset's files decoded as shrunk as loose ones
    image = json.loads((tmp_path / "set_out" / "detections.images.json").read_text())["images"][0]
    assert (image["id"], image["width"], image["height"]) == (1, 1600, 1200)


def test_colour_jitter_comes_after_the_resize_and_leaves_the_padding_alone():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.rand(3, 60, 100))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 5.0, 30.0, 25.0]]), format="XYXY", canvas_size=(60, 100))
    pipeline = train_transforms((120, 120), scale_range=(0.5, 0.5), hflip=0.0, photometric=True)
    for _ in range(5):  # 60x100 fits 60x60 as 36x60: the rest is padding, still exactly 0 after the jitter
        out, _ = pipeline(image, {"boxes": boxes, "labels": torch.tensor([0])})
        assert out[:, 36:].abs().sum() == 0 and out[:, :, 60:].abs().sum() == 0
    assert out[:, :36, :60].abs().sum() > 0


def test_largest_resize_reads_the_pipelines():
    assert largest_resize(train_transforms((384, 512), scale_range=(0.1, 2.0))) == (768, 1024)
    assert largest_resize(eval_transforms((384, 512))) == (384, 512)
    assert largest_resize(None) is None
    assert largest_resize(detr_train_transforms()) is None  # DETR's model resizes: its pipeline says how far
    assert largest_scale(train_transforms((384, 512), scale_range=(0.1, 2.0)), 3024, 4032) == 1024 / 4032
    assert largest_scale(None, 3024, 4032) is None and largest_scale(detr_train_transforms(), 3024, 4032) is None


def test_the_detr_familys_pipelines_say_how_far_their_model_resizes():
    detr = detr_train_transforms(model_resize=ShorterSideResize(800, 1333))
    # the smallest crop keeps 384 of 600 px of the shorter side (0.64 x 3024 = 1935 px), resized to 800
    assert detr.largest_scale(3024, 4032) == pytest.approx(800 / 1935.36, rel=1e-3)
    uncropped = detr_train_transforms(crop=0.0, model_resize=ShorterSideResize(800, 1333))
    assert uncropped.largest_scale(3024, 4032) == pytest.approx(800 / 3024, rel=1e-3)
    assert detr_train_transforms(model_resize=StretchResize(640, 640)).largest_scale(3024, 4032) == \
        pytest.approx(640 / 1935.36, rel=1e-3)
    rtdetr = create_model("rtdetr_r18vd", num_classes=1).train_transforms()
    assert rtdetr.largest_scale(3024, 4032) == pytest.approx(640 / 1935.36, rel=1e-3)
    assert pickle.loads(pickle.dumps(rtdetr)).largest_scale(3024, 4032) == rtdetr.largest_scale(3024, 4032)


def test_a_detr_training_set_decodes_shrunk_with_boxes_following(tmp_path):
    path = _write_coco(tmp_path, [(1200, 1600)])
    full, shrunk = open_dataset(path), open_dataset(path)
    for dataset in (full, shrunk):  # the model resizes to a shorter side of 100: 1/4 still covers the smallest crop
        dataset.transforms = detr_train_transforms(model_resize=ShorterSideResize(100, 200))
    shrunk.decode_shrunk()
    assert shrunk.load_image(0).shape == (3, 300, 400)
    for seed in range(4):  # flips and crops drawn alike: the same region, a quarter the pixels
        torch.manual_seed(seed)
        image, target = full[0]
        torch.manual_seed(seed)
        small_image, small_target = shrunk[0]
        assert abs(image.shape[1] / 4 - small_image.shape[1]) <= 1 and abs(image.shape[2] / 4 - small_image.shape[2]) <= 1
        assert torch.allclose(small_target["boxes"] * 4, target["boxes"], atol=4.0)


def test_the_large_photos_benchmark_runs_and_writes_its_record(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "large_photos"
    subprocess.run([sys.executable, "benchmarks/large_photos.py", "--photos", "2", "--photo-size", "600", "800",
                    "--input", "128", "128", "--out", str(out)], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["decoded_for_training"] == [150, 200]  # 1/4: still covers 128 x 1.1 = 141 px
    assert len(record["median_ms"]) == 6 and all(value > 0 for value in record["median_ms"].values())
