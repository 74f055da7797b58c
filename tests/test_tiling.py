"""Large images through tiles: the grid, merging (cut boxes, NMS, WBF), tiled == plain where the image
fits one tile, batched == one by one, windowed reading of big files and its size limit, the
training crop sampler, tiled COCO evaluation, and ``scaledet predict / eval --tile`` end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import scaledet
from scaledet.cli import main as cli_main
from scaledet.data import ShapesDataset, open_dataset, write_coco
from scaledet.data.tiles import (
    ImageTooLargeError,
    MappedImage,
    TileCropDataset,
    crop_boxes,
    open_large_image,
    sample_window,
    tile_grid,
)
from scaledet.evaluation import STAT_KEYS, evaluate_model
from scaledet.evaluation.coco import dense_max_dets
from scaledet.inference.tiling import TileOptions, merge_detections, predict_tiled
from scaledet.weights import save_weights
from tests.test_contract import EFFICIENTDET_SMALL, small_options, spread


class BrightBoxDetector:
    """Fake detector (eval contract): per image one detection, the box around its pixels brighter
    than 0.5 in the red channel (score 0.9, label 0); records the batch size of every call."""

    def __init__(self, class_names=("object",)) -> None:
        self.class_names = list(class_names)
        self.calls: list[int] = []

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.calls.append(len(images))
        outputs = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            if len(xs):
                box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
                outputs.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])})
            else:
                outputs.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                "labels": torch.zeros(0, dtype=torch.long)})
        return outputs


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def tiny_model(num_classes: int = 3, class_names=None, image_size: int = 128):
    torch.manual_seed(0)
    options = {**EFFICIENTDET_SMALL, "image_size": image_size}
    model = scaledet.create_model("efficientdet_d0", num_classes=num_classes, class_names=class_names, **options)
    return spread(model).eval()


def image_with_box(height: int, width: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    image = torch.zeros(3, height, width)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 1.0
    return image


@pytest.mark.parametrize("height, width, tile, overlap", [(200, 300, 128, 0.25), (128, 128, 128, 0.2),
                                                          (90, 1000, 128, 0.0), (517, 333, 100, 0.5)])
def test_tile_grid_covers_the_image_inside_its_edges(height, width, tile, overlap):
    windows = tile_grid(height, width, tile, overlap)
    covered = torch.zeros(height, width, dtype=torch.bool)
    for x1, y1, x2, y2 in windows.tolist():
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height  # never past the image
        assert (x2 - x1, y2 - y1) == (min(tile, width), min(tile, height))  # native-size tiles
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert windows[:, 2].max() == width and windows[:, 3].max() == height  # last column / row snapped to the edge
    step = round(tile * (1 - overlap))
    if width > tile:
        xs = sorted(set(windows[:, 0].tolist()))
        assert all(b - a == step for a, b in zip(xs[:-1], xs[1:-1]))
    assert len(tile_grid(100, 120, 128)) == 1


@pytest.mark.parametrize("merge", ["nms", "wbf"])
def test_object_straddling_two_tiles_gives_one_detection(merge):
    # tiles at x 0, 96, 172 (tile 128, overlap 0.25): the left tile sees only 8 of the object's 30 px
    # (IoU 0.27 with the whole box, so NMS alone would keep both); the middle tile sees it whole
    image = image_with_box(200, 300, (120, 20, 150, 40))
    detector = BrightBoxDetector()
    merged = predict_tiled(detector, image, tile=128, overlap=0.25, merge=merge)
    assert merged["boxes"].tolist() == [[120.0, 20.0, 150.0, 40.0]]
    assert merged["scores"].tolist() == pytest.approx([0.9]) and merged["labels"].tolist() == [0]


def test_box_at_the_image_border_is_kept():
    image = image_with_box(200, 300, (290, 150, 300, 170))  # cut by the image edge only
    merged = predict_tiled(BrightBoxDetector(), image, tile=128, overlap=0.25)
    assert merged["boxes"].tolist() == [[290.0, 150.0, 300.0, 170.0]]


def test_merge_nms_and_weighted_box_fusion():
    detections = {"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [50, 50, 60, 60]]),
                  "scores": torch.tensor([0.9, 0.6, 0.8, 0.5]), "labels": torch.tensor([0, 0, 1, 0])}
    nms = merge_detections(detections, "nms")
    assert nms["boxes"].tolist() == [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]  # class 1 not suppressed
    assert nms["labels"].tolist() == [0, 1, 0]
    wbf = merge_detections(detections, "wbf")
    assert wbf["labels"].tolist() == [0, 1, 0] and wbf["scores"].tolist() == pytest.approx([0.9, 0.8, 0.5])
    fused = (0.9 * 0 + 0.6 * 1) / 1.5  # score-weighted mean of the two class-0 boxes
    assert wbf["boxes"][0].tolist() == pytest.approx([fused, fused, fused + 10, fused + 10])
    assert wbf["boxes"][1:].tolist() == [[1, 1, 11, 11], [50, 50, 60, 60]]


def test_image_within_one_tile_equals_plain_prediction_exactly(model):
    image = torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(1))
    tiled = scaledet.predict_tiled(model, image, tile=128, overlap=0.2)
    with torch.no_grad():
        plain = model([image])[0]
    assert len(plain["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(tiled[key], plain[key])


def _canonical(detections: dict) -> torch.Tensor:
    """Rows (label, score, box) sorted by label then box: equal sets compare equal whatever the tie order."""
    rows = torch.cat([detections["labels"][:, None].float(), detections["scores"][:, None], detections["boxes"]], 1)
    order = np.lexsort(rows[:, [5, 4, 3, 2, 0]].round(decimals=2).numpy().T)
    return rows[torch.from_numpy(order)]


def test_batched_tiles_equal_tiles_one_at_a_time(model):
    image = torch.rand(3, 200, 230, generator=torch.Generator().manual_seed(2))
    batched = predict_tiled(model, image, tile=128, batch_size=4)
    single = predict_tiled(model, image, tile=128, batch_size=1)
    assert len(batched["boxes"]) == len(single["boxes"]) > 100
    torch.testing.assert_close(_canonical(batched), _canonical(single), atol=1e-4, rtol=0)
    optimized = predict_tiled(scaledet.optimize(model), image, tile=128, batch_size=3)  # any contract model
    torch.testing.assert_close(_canonical(optimized), _canonical(batched), atol=1e-3, rtol=0)
    detector = BrightBoxDetector()
    predict_tiled(detector, image_with_box(200, 300, (10, 10, 20, 20)), tile=128, overlap=0.25, batch_size=4)
    assert detector.calls == [4, 2]  # 6 tiles in two calls


@pytest.mark.parametrize("name", ["detr_r50", "deformable_detr_r50", "rtdetr_r18vd"])
def test_detr_family_through_tiles(name):
    """DETR-family models (their own resize, no anchors) tile like any contract model: one tile ==
    plain prediction, batched == one at a time, boxes in image pixels (not clipped to the image:
    the family's own post-processing does not clip, as in transformers)."""
    torch.manual_seed(0)
    options = small_options(name)
    if name.startswith("deformable"):  # its extra stride-64 level needs more than 1x1 for GroupNorm
        options["image_size"] = (128, 192)
    detr = spread(scaledet.create_model(name, num_classes=3, **options)).eval()
    image = torch.rand(3, 200, 230, generator=torch.Generator().manual_seed(3))
    inside = image[:, :100, :120]
    with torch.no_grad():
        plain = detr([inside])[0]
    tiled = predict_tiled(detr, inside, tile=128)
    assert len(plain["boxes"]) > 0 and all(torch.equal(tiled[key], plain[key]) for key in plain)
    batched = predict_tiled(detr, image, tile=128, batch_size=4)
    single = predict_tiled(detr, image, tile=128, batch_size=1)
    assert len(batched["boxes"]) == len(single["boxes"]) > 0
    torch.testing.assert_close(_canonical(batched), _canonical(single), atol=1e-4, rtol=0)
    centres = (batched["boxes"][:, :2] + batched["boxes"][:, 2:]) / 2  # image pixels: the far tiles' boxes too
    assert centres[:, 0].max() > 128 and centres[:, 1].max() > 128 and (centres >= 0).all()
    assert (centres[:, 0] <= 230).all() and (centres[:, 1] <= 200).all()


def test_onnx_detector_through_tiles(model, tmp_path):
    """An exported graph in onnxruntime tiles like the model it came from."""
    pytest.importorskip("onnxruntime")
    from scaledet.export import OnnxDetector, export_onnx

    detector = OnnxDetector(export_onnx(model, tmp_path / "tiny.onnx"))
    image = torch.rand(3, 200, 230, generator=torch.Generator().manual_seed(2))
    expected = predict_tiled(model, image, tile=128, batch_size=4)
    result = predict_tiled(detector, image, tile=128, batch_size=4)
    assert len(result["boxes"]) == len(expected["boxes"]) > 100
    torch.testing.assert_close(_canonical(result), _canonical(expected), atol=1e-3, rtol=0)


def test_full_image_pass_adds_large_objects():
    image = image_with_box(256, 384, (20, 30, 360, 220))  # larger than any tile: cut in every tile
    merged = predict_tiled(BrightBoxDetector(), image, tile=128, overlap=0.25, full_image=True)
    areas = (merged["boxes"][:, 2] - merged["boxes"][:, 0]) * (merged["boxes"][:, 3] - merged["boxes"][:, 1])
    assert merged["boxes"][areas.argmax()].tolist() == pytest.approx([20, 30, 360, 220], abs=3)  # downscaled pass
    alone = predict_tiled(BrightBoxDetector(), image, tile=128, overlap=0.25)
    assert (alone["boxes"][:, 2] - alone["boxes"][:, 0]).max() < 200  # the tiles alone see only pieces


class TruncationShyDetector(BrightBoxDetector):
    """BrightBoxDetector scoring a box that touches its input's edge (a truncated view) 0.4, others 0.9."""

    def __call__(self, images):
        outputs = super().__call__(images)
        for image, output in zip(images, outputs):
            height, width = image.shape[-2:]
            edge = ((output["boxes"][:, :2] <= 0).any(1) | (output["boxes"][:, 2] >= width)
                    | (output["boxes"][:, 3] >= height))
            output["scores"] = torch.where(edge, 0.4, output["scores"])
        return outputs


def test_full_image_pass_drops_the_pieces_of_the_object_it_sees_whole():
    """The tiles' pieces of an object larger than a tile stayed beside the full-image box (IoU too small for
    the merge); a piece, cut by an inner tile border, 80% inside a same-class full-image box scoring >= 1.5x
    as much, is dropped. A confident box inside the large one is kept."""
    image = image_with_box(256, 384, (20, 30, 360, 220))
    merged = predict_tiled(TruncationShyDetector(), image, tile=128, overlap=0.25, full_image=True)
    assert merged["boxes"].tolist() == [pytest.approx([20, 30, 360, 220], abs=3)]
    pieces = predict_tiled(TruncationShyDetector(), image, tile=128, overlap=0.25)
    assert len(pieces["boxes"]) > 1 and (pieces["scores"] == 0.4).all()
    kept = predict_tiled(BrightBoxDetector(), image, tile=128, overlap=0.25, full_image=True)  # pieces at 0.9
    assert len(kept["boxes"]) > 1


def test_crop_boxes_clips_and_drops_by_visible_area():
    boxes = torch.tensor([[10.0, 10, 20, 20], [90, 0, 110, 10], [95, 0, 115, 10], [200, 200, 210, 210]])
    clipped, kept = crop_boxes(boxes, (0, 0, 100, 100), min_visible=0.5)
    assert kept.tolist() == [True, True, False, False]  # half visible kept, a quarter dropped, outside dropped
    assert clipped.tolist() == [[10, 10, 20, 20], [90, 0, 100, 10]]
    shifted, kept = crop_boxes(boxes, (50, 0, 150, 100), min_visible=0.5)
    assert kept.tolist() == [False, True, True, False] and shifted.tolist() == [[40, 0, 60, 10], [45, 0, 65, 10]]
    assert crop_boxes(boxes, (0, 0, 100, 100), min_visible=0.2)[1].tolist() == [True, True, True, False]


def test_crop_sampler_favours_windows_with_objects():
    box = torch.tensor([[500.0, 600, 510, 610]])

    def hit_rate(fraction: float) -> float:
        hits = 0
        for _ in range(300):
            x1, y1, x2, y2 = sample_window(1000, 1200, 100, box, fraction)
            assert 0 <= x1 and x2 <= 1200 and 0 <= y1 and y2 <= 1000 and (x2 - x1, y2 - y1) == (100, 100)
            hits += x1 <= 505 < x2 and y1 <= 605 < y2
        return hits / 300

    assert 0.7 < hit_rate(0.8) < 0.9
    assert hit_rate(0.0) < 0.1
    inside = torch.tensor([[30.0, 20, 40, 30]])
    assert sample_window(60, 80, 100, inside, 1.0) == (0, 0, 80, 60)  # smaller than a tile: the whole image


def test_tile_crop_dataset_serves_native_crops():
    base = ShapesDataset(num_images=3, image_size=(200, 300), seed=3, empty_fraction=0.0)
    crops = TileCropDataset(base, tile=128, min_visible=0.5)
    assert len(crops) == 3 * 6  # 2 x 3 non-overlapping tiles cover each image
    # statistics see what training sees: each 128 px tile of the grid (the last row / column moved back
    # inside the image), its boxes cropped to it in the tile's pixels
    assert len(crops.records) == 18 and {(r.height, r.width) for r in crops.records} == {(128, 128)}
    for record in crops.records:
        assert ((record.boxes >= 0) & (record.boxes <= 128)).all() and len(record.labels) == len(record.boxes)
    kept = sum(len(record.boxes) for record in crops.records)
    assert kept >= sum(len(record.boxes) for record in base.records) // 2  # most boxes are in some tile
    for index in range(len(crops)):
        image, target = crops[index]
        assert image.shape == (3, 128, 128) and len(target["boxes"]) == len(target["labels"])
        boxes = target["boxes"]
        assert ((boxes >= 0) & (boxes <= 128)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    with pytest.raises(ValueError, match="transforms"):
        TileCropDataset(ShapesDataset(num_images=1, transforms=lambda i, t: (i, t)), tile=128)


def test_training_with_tiles_uses_crops_the_tile_input_and_tiled_validation():
    from scaledet.engine.config import TrainConfig
    from scaledet.engine.evaluate import evaluate
    from scaledet.engine.run import use_tiles
    from scaledet.evaluation import predict_dataset

    train = ShapesDataset(num_images=2, image_size=(200, 300), seed=1, empty_fraction=0.0)
    val = ShapesDataset(num_images=1, image_size=(200, 300), seed=2, empty_fraction=0.0)
    config = TrainConfig.for_model("efficientdet_d0", tile=128, tile_overlap=0.25, max_steps=1, batch_size=4)
    tiled_config, crops, tiled_val = use_tiles(config, train, val)
    assert tiled_config.image_size == 128 and isinstance(crops, TileCropDataset) and crops.tile == 128
    assert tiled_val.tile_options == TileOptions(128, 0.25, batch_size=4)
    detector = BrightBoxDetector(val.class_names)
    stats, predictions = evaluate(detector, tiled_val, torch.device("cpu"), batch_size=4, progress=False)
    assert detector.calls == [4, 2]  # the trainer's validation went through 6 tiles, 4 per call
    direct = predict_dataset(detector, val, tile=TileOptions(128, 0.25, batch_size=4), progress=False)
    assert torch.equal(predictions[0].detections["boxes"], direct[0].detections["boxes"])
    assert set(stats) >= {"AP", "AP50"} and stats["max_dets"] == [1, 10, 100]
    with pytest.raises(ValueError, match="tile_min_visible"):
        TrainConfig.for_model("efficientdet_d0", tile=128, tile_min_visible=0.0, max_steps=1)


def test_dense_images_raise_max_dets_with_a_note():
    gt = {"images": [{"id": 1}], "annotations": [{"image_id": 1, "iscrowd": 0}] * 150}
    caps, notes = dense_max_dets(gt, (1, 10, 100))
    assert caps == (1, 10, 300) and "150 ground-truth objects" in notes[0]
    assert dense_max_dets(gt, (1, 10, 200)) == ((1, 10, 200), [])


def test_model_evaluation_raises_max_dets_for_dense_images():
    from scaledet.evaluation import Prediction, score_predictions

    boxes = torch.tensor([[10.0 * (i % 15), 10.0 * (i // 15), 10.0 * (i % 15) + 8, 10.0 * (i // 15) + 8]
                          for i in range(150)])

    class DenseSet:
        label_to_category_id = [7]

        def coco_gt(self):
            annotations = [{"id": i + 1, "image_id": 1, "category_id": 7, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                           for i, (x1, y1, x2, y2) in enumerate(boxes.tolist())]
            return {"images": [{"id": 1, "width": 160, "height": 160}], "annotations": annotations,
                    "categories": [{"id": 7, "name": "dot"}]}

    detections = {"boxes": boxes, "scores": torch.linspace(0.9, 0.5, 150), "labels": torch.zeros(150, dtype=torch.long)}
    stats = score_predictions(DenseSet(), [Prediction(0, 1, detections)])
    assert stats["max_dets"] == [1, 10, 300] and "150 ground-truth objects" in stats["notes"][0]
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)  # a cap of 100 would miss 50


def _coco_set(tmp_path, image_size, num_images=2):
    dataset = ShapesDataset(num_images=num_images, image_size=image_size, seed=5, empty_fraction=0.0)
    return write_coco(dataset, tmp_path / "data"), dataset.class_names


def test_tiled_evaluation_equals_plain_when_images_fit_one_tile(tmp_path):
    annotations, names = _coco_set(tmp_path, (96, 112))
    model = tiny_model(len(names), names)
    plain = evaluate_model(model, open_dataset(annotations), batch_size=2)
    tiled = evaluate_model(model, open_dataset(annotations), batch_size=2, tile=TileOptions(128))
    assert plain["num_detections"] == tiled["num_detections"] > 0
    assert [tiled[key] for key in STAT_KEYS] == [plain[key] for key in STAT_KEYS]


def _write_weights(tmp_path, names):
    model = tiny_model(len(names), names, image_size=64)
    return save_weights(model.state_dict(), tmp_path / "tiny.safetensors", model.config)


def test_cli_predict_and_eval_through_tiles(tmp_path, capsys):
    annotations, names = _coco_set(tmp_path, (100, 150), num_images=1)
    weights = _write_weights(tmp_path, names)
    out = tmp_path / "out"
    code = cli_main(["predict", str(tmp_path / "data" / "images"), "--weights", str(weights), "--tile", "64",
                     "--overlap", "0.25", "--full-image", "--batch-size", "4", "--score-threshold", "0",
                     "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    header = json.loads((out / "detections.images.json").read_text())
    assert [(image["width"], image["height"]) for image in header["images"]] == [(150, 100)]
    results = json.loads((out / "detections.json").read_text())
    assert len(results) > 2 * 100  # merged tiles: more than one model call's 100-detection cap
    assert all(0 <= r["bbox"][0] and r["bbox"][0] + r["bbox"][2] <= 150 + 1e-3 for r in results)
    assert (out / "000000.jpg").exists()
    stats_path = tmp_path / "stats.json"
    code = cli_main(["eval", "--weights", str(weights), "--data", str(annotations), "--tile", "64",
                     "--merge", "wbf", "--json", str(stats_path)])
    assert code == 0, capsys.readouterr().err
    stats = json.loads(stats_path.read_text())
    assert all(stats[key] == -1 or 0 <= stats[key] <= 1 for key in STAT_KEYS) and stats["num_detections"] > 200


def test_oversized_image_gives_a_one_line_error(tmp_path, capsys, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 500, 3), np.uint8)).save(path)
    with pytest.raises(ImageTooLargeError, match=r"big.png: 500x300 image \(0.1 Mpx\) is over the limit of 0.0 Mpx "
                                                 r".*\(the limit given; it needs 0.4 MiB as 8-bit RGB\)"):
        open_large_image(path, max_pixels=1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # PIL's own decompression-bomb limit applies by default
    with pytest.raises(ImageTooLargeError, match="decompression-bomb guard.*--max-pixels 150000"):
        open_large_image(path)
    assert Image.MAX_IMAGE_PIXELS == 10_000  # restored after opening
    assert open_large_image(path, max_pixels=None).read((0, 0, 4, 4)).shape == (3, 4, 4)
    weights = _write_weights(tmp_path, ["a", "b", "c"])
    code = cli_main(["predict", str(path), "--weights", str(weights), "--tile", "64", "--output", str(tmp_path / "o")])
    skipped = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert code == 1 and len(skipped) == 1 and f"skipped {path}: 500x300 image (0.1 Mpx) is over" in skipped[0]


def test_uncompressed_files_are_read_window_by_window(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    for name, options in (("strips.tif", {"tiffinfo": {278: 16}}), ("plain.ppm", {})):
        Image.fromarray(array).save(tmp_path / name, **options)
        source = open_large_image(tmp_path / name)
        assert isinstance(source, MappedImage)
        window = source.read((10, 5, 60, 50))
        assert torch.equal(window, torch.from_numpy(array[5:50, 10:60]).permute(2, 0, 1).float() / 255)
        small, scale = source.downscaled(32)  # the full-image pass: reduced by 3 in bands of rows
        reduced = np.asarray(Image.fromarray(array).reduce(3))
        assert torch.equal(small, torch.from_numpy(reduced.copy()).permute(2, 0, 1).float() / 255)
        assert scale == (1 / 3, 1 / 3)  # a small pixel is 3 image pixels (24 / 70 put boxes up to 2% short)
    # a PNG of the same pixels is decoded whole, and reduced the same way in 8 bits (it went through a float copy of
    # the whole image, 12 bytes a pixel, and a bilinear resize that put its full-image boxes elsewhere than the PPM's)
    Image.fromarray(array).save(tmp_path / "same.png")
    decoded = open_large_image(tmp_path / "same.png")
    assert not isinstance(decoded, MappedImage)
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
               for a, b in zip(decoded.downscaled(32), open_large_image(tmp_path / "plain.ppm").downscaled(32)))
    # a 20000 x 20000 RGB file (sparse on disk): windows come from the file, nothing else is read
    path, size = tmp_path / "huge.ppm", 20000
    with open(path, "wb") as handle:
        header = b"P6\n%d %d\n255\n" % (size, size)
        handle.write(header)
        handle.seek(len(header) + (19000 * size + 19500) * 3)
        handle.write(bytes([255, 128, 0]))
        handle.truncate(len(header) + size * size * 3)
    source = open_large_image(path)
    assert isinstance(source, MappedImage) and (source.height, source.width) == (size, size)
    window = source.read((19490, 18990, 19522, 19022))
    assert window.shape == (3, 32, 32) and window.sum() == pytest.approx(1 + 128 / 255)
    assert window[:, 10, 10].tolist() == pytest.approx([1.0, 128 / 255, 0.0])


def test_predict_calls_the_model_with_one_image_or_tile_at_a_time_on_the_cpu():
    """Batching tiles was 0.80-0.84x the throughput of one at a time on 2 CPU cores (docs/tiling.md)."""
    from scaledet.commands.predict import batch_size_for

    assert batch_size_for(None, "cpu") == 1 and batch_size_for(None, "cuda:0") == 4 and batch_size_for(3, "cpu") == 3
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        batch_size_for(0, "cpu")


def test_anchor_doctor_on_tiles_measures_boxes_in_tile_pixels():
    """32 px boxes spread over a 1000x800 image, training on 256 px tiles: the doctor measures them in the
    tiles they fall in (before, full-image boxes against a 256 px image left ~3% inside it)."""
    import numpy as np

    from scaledet.data import DataReport, DetectionDataset, ImageRecord
    from scaledet.engine.doctor import diagnose

    corners = [(x, y) for x in range(40, 940, 150) for y in range(30, 740, 140)]
    boxes = np.array([[x, y, x + 32, y + 32] for x, y in corners], np.float32)
    record = ImageRecord(None, 1, 1000, 800, boxes, np.zeros(len(boxes), np.int64), np.zeros(len(boxes), bool),
                         np.full(len(boxes), 32 * 32, np.float32))
    tiles = TileCropDataset(DetectionDataset([record], ["a"], [1], DataReport("synthetic")), tile=256)
    report = diagnose(tiles, model="efficientdet_d0", image_size=(256, 256))
    assert report["unit"] == "256x256 tiles" and report["images"] == 16  # 4 x 4 tiles (last ones moved back inside)
    assert report["boxes"] >= len(boxes) and report["box_side_px"]["50"] == pytest.approx(32, abs=1)
    assert report["anchors"]["published"]["coverage"] > 0.9  # D0's 32 px anchors at stride 8


def test_predict_tiled_takes_one_image_and_says_so_for_a_list():
    with pytest.raises(ValueError, match="predict_tiled takes one image .* got a list of 2: call it once per image"):
        predict_tiled(BrightBoxDetector(), [torch.zeros(3, 64, 64)] * 2, tile=32)
    with pytest.raises(ValueError, match="predict_tiled takes a Tensor.*, got a ndarray"):  # was an AttributeError
        predict_tiled(BrightBoxDetector(), np.zeros((64, 64, 3), np.float32), tile=32)


def test_predict_tiled_reads_an_image_file_and_batches_as_the_command_does(tmp_path):
    """A path is opened with open_large_image (a str was an AttributeError); tiles go one per call on the CPU by
    default, as `scaledet predict` sends them (the library sent 8)."""
    array = np.zeros((64, 96, 3), np.uint8)
    array[20:40, 50:80] = 255
    Image.fromarray(array).save(tmp_path / "large.png")
    model = BrightBoxDetector()
    from_file = predict_tiled(model, str(tmp_path / "large.png"), tile=32)
    assert len(model.calls) > 1 and set(model.calls) == {1}
    model.calls.clear()
    from_tensor = predict_tiled(model, torch.from_numpy(array).permute(2, 0, 1).float() / 255, tile=32, batch_size=4)
    assert max(model.calls) == 4 and torch.equal(from_file["boxes"], from_tensor["boxes"])


def test_an_overlap_near_one_is_refused_not_run_for_hours():
    """--overlap 0.99 of a 128 px tile steps 1 px: ~200,000 tiles for a 700 x 500 image, accepted silently."""
    assert TileOptions(128, overlap=0.9).overlap == 0.9
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 0.9\]"):
        TileOptions(128, overlap=0.99)
