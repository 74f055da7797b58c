"""COCO / VOC / YOLO / shapes all load into the same sample format."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scaledet.data import CocoDataset, ShapesDataset, VOCDataset, YOLODataset, open_dataset, write_coco

# one 80x40 image, two objects, in pixels xyxy
BOXES = [[8.0, 4.0, 40.0, 20.0], [50.0, 10.0, 70.0, 38.0]]
NAMES = ["cat", "dog"]


def _image(path):
    array = np.zeros((40, 80, 3), np.uint8)
    array[:, :, 1] = np.arange(80, dtype=np.uint8)[None] * 3
    Image.fromarray(array).save(path)
    return array


def _check_sample(dataset, labels):
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 40, 80)
    assert image[1, 0, 10].item() == pytest.approx(30 / 255)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert torch.allclose(target["boxes"], torch.tensor(BOXES))
    assert target["labels"].tolist() == labels
    assert target["orig_size"] == (40, 80)


def test_coco_noncontiguous_ids_images_folder_and_crowd(tmp_path):
    (tmp_path / "images").mkdir()
    _image(tmp_path / "images" / "a.png")
    anns = [
        {"id": 1, "image_id": 5, "category_id": 42, "bbox": [8, 4, 32, 16], "area": 300.0},
        {"id": 2, "image_id": 5, "category_id": 7, "bbox": [50, 10, 20, 28]},
        {"id": 3, "image_id": 5, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 1},
    ]
    cats = [{"id": 42, "name": "dog"}, {"id": 7, "name": "cat"}, {"id": 90, "name": "zebra"}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [{"id": 5, "file_name": "a.png"}], "annotations": anns, "categories": cats}))
    dataset = open_dataset(path)
    assert isinstance(dataset, CocoDataset)
    assert dataset.class_names == ["cat", "dog", "zebra"] and dataset.label_to_category_id == [7, 42, 90]
    _check_sample(dataset, [1, 0])  # crowd box not in the training target
    assert dataset[0][1]["image_id"] == 5
    gt = dataset.coco_gt()
    assert [(a["category_id"], a["iscrowd"]) for a in gt["annotations"]] == [(42, 0), (7, 0), (7, 1)]
    assert gt["annotations"][0]["area"] == 300.0 and gt["annotations"][1]["area"] == 20 * 28
    explicit = open_dataset(path, images=tmp_path / "images")
    assert explicit.records[0].path == tmp_path / "images" / "a.png"


def test_voc_folder_split_and_one_based_corners(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for stem in ("000001", "000002"):
        _image(root / "JPEGImages" / f"{stem}.png")
        objects = "".join(
            f"<object><name>{name}</name><difficult>{int(stem == '000002')}</difficult><bndbox><xmin>{x1 + 1:g}</xmin>"
            f"<ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>"
            for name, (x1, y1, x2, y2) in zip(NAMES, BOXES)
        )
        (root / "Annotations" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.png</filename>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    (root / "ImageSets" / "Main" / "train.txt").write_text("000001\n")
    train = open_dataset(tmp_path / "VOCdevkit", split="train")
    assert isinstance(train, VOCDataset) and len(train) == 1
    assert train.class_names[:3] == ["aeroplane", "bicycle", "bird"] and len(train.class_names) == 20
    _check_sample(train, [7, 11])  # cat, dog in VOC order
    with pytest.raises(ValueError, match="all 2 boxes are crowd / difficult boxes"):
        open_dataset(root, split="val")  # nothing to train on or score against
    val = open_dataset(root, split="val", allow_empty=True)
    assert val.records[0].iscrowd.tolist() == [True, True]  # difficult: ignored, not trained
    assert val[0][1]["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="split 'test' not found"):
        VOCDataset(root, split="test")


def test_yolo_yaml_splits_names_dict_and_polygons(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        _image(tmp_path / "images" / split / "a.png")
    lines = [
        f"{label} {(x1 + x2) / 160} {(y1 + y2) / 80} {(x2 - x1) / 80} {(y2 - y1) / 40}"
        for label, (x1, y1, x2, y2) in zip((0, 1), BOXES)
    ]
    (tmp_path / "labels" / "train" / "a.txt").write_text("\n".join(lines))
    x1, y1, x2, y2 = (v / s for v, s in zip(BOXES[0], (80, 40, 80, 40)))
    polygon = f"1 {x1} {y1} {x2} {(y1 + y2) / 2} {x1} {y2}"  # triangle spanning box 0
    (tmp_path / "labels" / "val" / "a.txt").write_text(polygon)
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n")
    train = open_dataset(tmp_path / "data.yaml", split="train")
    assert isinstance(train, YOLODataset) and train.class_names == NAMES and train.label_to_category_id == [1, 2]
    _check_sample(train, [0, 1])
    val = open_dataset(tmp_path / "data.yaml", split="val")
    assert torch.allclose(val[0][1]["boxes"], torch.tensor([BOXES[0]]), atol=1e-4)
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val'\] \(got None\)"):
        open_dataset(tmp_path / "data.yaml")
    (tmp_path / "train_only.yaml").write_text("train: images/train\nnames: {0: cat, 1: dog}\n")
    with pytest.raises(ValueError, match=r"train_only.yaml has no 'val' entry \(it lists train\): add a line "
                                         r"'val: images/val'"):
        open_dataset(tmp_path / "train_only.yaml", split="val")


def test_open_dataset_rejects_unknown_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        open_dataset(tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="not a COCO .json, a YOLO data.yaml or a Pascal VOC folder"):
        open_dataset(tmp_path)


def test_shapes_is_deterministic_and_varied():
    a = ShapesDataset(num_images=40, image_size=(96, 128), seed=3)
    b = ShapesDataset(num_images=40, image_size=(96, 128), seed=3)
    c = ShapesDataset(num_images=40, image_size=(96, 128), seed=4)
    image_a, target_a = a[7]
    image_b, target_b = b[7]
    assert torch.equal(image_a, image_b) and torch.equal(target_a["boxes"], target_b["boxes"])
    assert image_a.shape == (3, 96, 128) and 0 <= image_a.min() and image_a.max() <= 1
    assert not torch.equal(image_a, c[7][0])
    counts = [len(r.boxes) for r in a.records]
    assert 0 in counts and max(counts) >= 3  # some empty images, some crowded
    boxes = np.concatenate([r.boxes for r in a.records])
    labels = np.concatenate([r.labels for r in a.records])
    assert set(labels.tolist()) == {0, 1, 2, 3} and a.class_names == ["circle", "square", "triangle", "cross"]
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 96
    assert sides.min() > 0.11 and sides.max() < 0.45  # objects 16-40% of the image (triangles: a bit less)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()


def test_shapes_pixels_inside_boxes_have_the_class_colour():
    dataset = ShapesDataset(num_images=30, image_size=64, seed=0, max_overlap=0.0)
    hue_channel = {0: 0, 1: 1, 2: 2}  # circle red, square green, triangle blue dominate
    checked = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        for box, label in zip(target["boxes"], target["labels"].tolist()):
            if label in hue_channel:
                cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
                pixel = image[:, cy, cx]
                assert pixel.argmax().item() == hue_channel[label], (index, label, pixel)
                checked += 1
    assert checked > 20


def test_open_dataset_shapes_splits_and_write_coco_round_trip(tmp_path):
    val = open_dataset("shapes:val", num_images=6, image_size=48)
    assert len(val) == 6 and val.image_size == (48, 48) and val.seed == 1
    assert open_dataset("shapes", num_images=2).seed == 0
    path = write_coco(val, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir())[0] == "000000.png"
    back = open_dataset(path)
    assert back.class_names == val.class_names and back.label_to_category_id == [1, 2, 3, 4]
    for index in range(6):
        (image, target), (image2, target2) = val[index], back[index]
        assert torch.allclose(target["boxes"], target2["boxes"]) and torch.equal(target["labels"], target2["labels"])
        assert (image - image2).abs().max().item() <= 0.5 / 255 + 1e-6
