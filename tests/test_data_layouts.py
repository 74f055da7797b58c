"""Layouts and encodings other tools write: Windows text encodings, VOC folders from labelling tools,
YOLO yaml variants, COCO's own folder layout. Each case loads as the user meant, or fails naming the file."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from scaledet.data import DataWarning, open_dataset
from scaledet.errors import UserError


def _image(path, w=48, h=32, exif_orientation=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((h, w, 3), 120, np.uint8))
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    return path


def _open(path, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = open_dataset(path, progress=False, **kwargs)
    return dataset, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def _voc_xml(filename, objects=(("dog", (2, 2, 20, 20)),), size=None):
    parts = [f"<annotation><filename>{filename}</filename>" if filename is not None else "<annotation>"]
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, (x1, y1, x2, y2) in objects:
        name_tag = f"<name>{name}</name>" if name is not None else ""
        parts.append(f"<object>{name_tag}<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                     f"<ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def _yolo(root, label_bytes=b"0 0.5 0.5 0.5 0.5\n", yaml_text="train: images\nval: images\nnames: [cat, dog]\n"):
    _image(root / "images" / "a.png")
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "a.txt").write_bytes(label_bytes)
    (root / "data.yaml").write_text(yaml_text, encoding="utf-8")
    return root / "data.yaml"


def test_windows_text_encodings_are_read_and_other_encodings_name_the_file(tmp_path):
    # a label file PowerShell's ">" wrote (UTF-16 with a BOM) reads as its text
    dataset, _ = _open(_yolo(tmp_path / "u16", "1 0.5 0.5 0.5 0.5\r\n".encode("utf-16")), split="train")
    assert dataset.records[0].labels.tolist() == [1]
    # a Latin-1 label file is that image's problem, named and counted, not the whole set's; the image is not
    # trained on as a background image
    root = tmp_path / "latin"
    path = _yolo(root)
    _image(root / "images" / "b.png")
    (root / "labels" / "b.txt").write_bytes("0 0.5 0.5 0.5 0.5 # \xe9t\xe9\n".encode("latin-1"))
    dataset, messages = _open(path, split="train")
    assert len(dataset) == 1 and dataset.report.counts == {"bad_annotation_file": 1}
    assert any("b.txt: not UTF-8 text" in m and "save it as UTF-8" in m for m in messages)
    # a data.yaml in Latin-1 is an error naming it
    (root / "data.yaml").write_bytes("train: images\nval: images\nnames: [caf\xe9, dog]\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"data\.yaml: not UTF-8 text .*save it as UTF-8"):
        open_dataset(root / "data.yaml", split="train")
    # a COCO JSON with a BOM (Windows editors) loads
    _image(tmp_path / "coco" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}]}
    (tmp_path / "coco" / "ann.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(coco).encode())
    assert len(open_dataset(tmp_path / "coco" / "ann.json", progress=False)) == 1


def test_voc_class_list_with_a_bom_keeps_its_first_class(tmp_path):
    root = tmp_path / "VOC"
    _image(root / "JPEGImages" / "a.jpg")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg"))
    (root / "classes.txt").write_bytes(b"\xef\xbb\xbfdog\ncat\n")
    dataset, _ = _open(root)
    assert dataset.class_names == ["dog", "cat"] and dataset.records[0].labels.tolist() == [0]
    assert dataset.report.counts == {}


def test_voc_folders_from_labelling_tools(tmp_path):
    root = tmp_path / "VOC"
    annotations = root / "Annotations"
    annotations.mkdir(parents=True)
    for stem in ("upper", "stale", "nosuffix", "other", "b1", "sized", "unnamed"):
        _image(root / "JPEGImages" / f"{stem}.jpg")
    _image(root / "JPEGImages" / "background.jpg")  # no XML: counted, not dropped silently
    (annotations / "upper.XML").write_text(_voc_xml("upper.jpg", objects=[("gadget", (2, 2, 20, 20))]))  # upper-case suffix
    (annotations / "._upper.xml").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork: ignored
    (annotations / "stale.xml").write_text(_voc_xml("renamed_since.jpg"))
    (annotations / "nosuffix.xml").write_text(_voc_xml("nosuffix"))
    (annotations / "other.xml").write_text(_voc_xml("b1.jpg", objects=[("widget", (1, 1, 9, 9))]))  # copied XML
    (annotations / "b1.xml").write_text(_voc_xml("b1.jpg"))
    (annotations / "sized.xml").write_text(_voc_xml("sized.jpg", size=(96, 64)))
    (annotations / "unnamed.xml").write_text(_voc_xml("unnamed.jpg", objects=[(None, (2, 2, 9, 9)), ("gadget", (3, 3, 9, 9))]))
    dataset, messages = _open(root)
    paths = {record.path.name for record in dataset.records}
    assert paths == {"upper.jpg", "stale.jpg", "nosuffix.jpg", "other.jpg", "b1.jpg", "sized.jpg", "unnamed.jpg"}
    assert "" not in dataset.class_names
    assert dataset.report.counts == {"missing_annotation": 1, "unknown_category": 1, "size_mismatch": 1}
    assert any("background.jpg: no Annotations/background.xml" in m for m in messages)
    assert any("unnamed.xml: object[0] has no <name>" in m for m in messages)
    assert "annotated 96x64, file is 48x32" in dataset.report.examples["size_mismatch"][0]


def test_voc_written_0_based_is_read_unshifted(tmp_path):
    """VOC corners are 1-based (1 is the first pixel): a box at 0 only 0-based writers (CVAT, ...) produce, and
    shifting their boxes by -1 would move every box a pixel and clip those at the edge."""
    one_based = tmp_path / "devkit"
    _image(one_based / "JPEGImages" / "a.jpg")
    (one_based / "Annotations").mkdir()
    (one_based / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg", objects=[("dog", (1, 5, 20, 20))]))
    dataset, _ = _open(one_based)
    assert dataset.records[0].boxes.tolist() == [[0.0, 4.0, 20.0, 20.0]] and dataset.report.counts == {}

    zero_based = tmp_path / "cvat"
    for stem in ("a", "b"):
        _image(zero_based / "JPEGImages" / f"{stem}.jpg")
    (zero_based / "Annotations").mkdir()
    (zero_based / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg", objects=[("dog", (3.5, 5, 20, 20))]))
    (zero_based / "Annotations" / "b.xml").write_text(_voc_xml("b.jpg", objects=[("dog", (0, 2, 9, 31))]))
    dataset, messages = _open(zero_based)
    assert [record.boxes.tolist() for record in dataset.records] == [[[3.5, 5.0, 20.0, 20.0]], [[0.0, 2.0, 9.0, 31.0]]]
    assert dataset.report.counts == {"zero_based_voc": 1} and not messages  # a note, kept: no warning
    assert dataset.report.examples["zero_based_voc"] == [
        "1 box(es) start below 1 (first: Annotations/b.xml: object[0] at (0, 2)), which VOC's 1-based corners "
        "cannot: every box of this folder is read as 0-based, unshifted"]


def test_voc_size_turned_by_exif_is_named(tmp_path):
    root = tmp_path / "VOC"
    _image(root / "JPEGImages" / "phone.jpg", w=64, h=48, exif_orientation=6)  # displayed 48x64
    (root / "Annotations").mkdir()
    (root / "Annotations" / "phone.xml").write_text(_voc_xml("phone.jpg", objects=[("dog", (5, 5, 40, 30))], size=(64, 48)))
    dataset, _ = _open(root)
    (message,) = dataset.report.examples["size_mismatch"]
    assert "annotated 64x48, file is 48x64" in message and "EXIF rotation" in message


def test_yolo_yaml_names_as_string_keys_and_nc_as_a_string(tmp_path):
    path = _yolo(tmp_path / "a", yaml_text='train: images\nval: images\nnc: "2"\nnames: {"1": dog, "0": cat}\n')
    dataset, _ = _open(path, split="train")
    assert dataset.class_names == ["cat", "dog"]
    path = _yolo(tmp_path / "b", yaml_text="train: images\nval: images\nnames: [cat, null]\n")
    with pytest.raises(UserError, match=r"data\.yaml: 'names' has no name for class 1"):
        open_dataset(path, split="train")
    path = _yolo(tmp_path / "c", yaml_text="train: images\nval: images\nnames: {0: cat, 2: dog}\n")
    with pytest.raises(UserError, match=r"'names' keys must be the class indices 0\.\.1, got \[0, 2\]"):
        open_dataset(path, split="train")


def test_coco_layout_annotations_folder_beside_the_image_folders(tmp_path):
    """COCO's own layout: annotations/instances_val2017.json, images in val2017/ beside annotations/."""
    _image(tmp_path / "val2017" / "000000000001.jpg")
    (tmp_path / "annotations").mkdir()
    coco = {"images": [{"id": 1, "file_name": "000000000001.jpg"}], "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    dataset, messages = _open(tmp_path / "annotations" / "instances_val2017.json")
    assert [r.path for r in dataset.records] == [tmp_path / "val2017" / "000000000001.jpg"] and not messages


def test_train_and_val_images_in_separate_folders(tmp_path, monkeypatch):
    from scaledet.engine import TrainConfig
    from scaledet.engine import run

    seen = []
    monkeypatch.setattr(run, "open_dataset", lambda path, images, split, **options: seen.append((split, images)))
    config = TrainConfig.for_model("efficientdet_d0", train="t.json", val="v.json", images="train_imgs", epochs=1,
                                   progress=False)
    run.open_datasets(config)
    config.val_images = "val_imgs"
    run.open_datasets(config)
    assert seen == [("train", "train_imgs"), ("val", "train_imgs"), ("train", "train_imgs"), ("val", "val_imgs")]


def test_evaluation_ground_truth_without_a_bbox_names_the_file(tmp_path):
    from scaledet.evaluation.coco import evaluate_detections

    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 48, "height": 32}], "categories": [{"id": 1, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9]]}]}  # odd: no polygon
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(ValueError, match=r"gt\.json: annotations\[0\] needs image_id, category_id and bbox \(it has no bbox"):
        evaluate_detections(str(tmp_path / "gt.json"), [])


def test_coco_annotations_with_only_a_segmentation_get_the_box_it_spans(tmp_path):
    """Mask tools export COCO without bbox: polygons and RLE (compressed and not) give their extent, in
    training and in evaluation alike (they were skipped as malformed boxes, or refused by eval)."""
    from pycocotools import mask as coco_mask

    from scaledet.data.coco import box_from_segmentation
    from scaledet.evaluation.coco import evaluate_detections

    _image(tmp_path / "a.png", w=48, h=32)
    pixels = np.zeros((32, 48), np.uint8, order="F")
    pixels[4:10, 30:40] = 1  # rows 4-9, columns 30-39: box [30, 4, 10, 6]
    compressed = coco_mask.encode(pixels)
    compressed["counts"] = compressed["counts"].decode()
    runs, flat, value, length = [], pixels.flatten(order="F"), 0, 0  # uncompressed RLE: run lengths, 0s first
    for pixel in flat:
        if pixel != value:
            runs.append(length)
            value, length = pixel, 0
        length += 1
    runs.append(length)
    gt = {"images": [{"id": 7, "file_name": "a.png", "width": 48, "height": 32}],
          "categories": [{"id": 3, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": [[2, 3, 12, 3, 12, 20], [5, 25, 6, 26]]},
                          {"id": 2, "image_id": 7, "category_id": 3, "segmentation": compressed},
                          {"id": 3, "image_id": 7, "category_id": 3, "segmentation": {"size": [32, 48], "counts": runs}},
                          {"id": 4, "image_id": 7, "category_id": 3, "segmentation": []}]}  # nothing: skipped
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert box_from_segmentation(gt["annotations"][0]["segmentation"]) == [2, 3, 10, 23]
    assert box_from_segmentation(compressed) == box_from_segmentation(gt["annotations"][2]["segmentation"]) == [30, 4, 10, 6]
    assert box_from_segmentation([[1, "x"]]) is None and box_from_segmentation({"counts": "x"}) is None
    dataset, messages = _open(tmp_path / "gt.json")
    assert sorted(dataset.records[0].boxes.tolist()) == [[2, 3, 12, 26], [30, 4, 40, 10], [30, 4, 40, 10]]
    assert dataset.report.counts["box_from_segmentation"] == 3 and dataset.report.counts["malformed_box"] == 1
    assert not [m for m in messages if "spans" in m]  # a note (kept), not a warning
    detections = [{"image_id": 7, "category_id": 3, "bbox": box, "score": 0.9}
                  for box in ([2, 3, 10, 23], [30, 4, 10, 6], [30, 4, 10, 6])]
    gt["annotations"] = gt["annotations"][:3]  # evaluation refuses ground truth it cannot score (the empty one)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert evaluate_detections(str(tmp_path / "gt.json"), detections)["AP"] == pytest.approx(1.0)


def test_voc_folders_without_split_files_train_and_validate(tmp_path, capsys):
    """Labelling tools export VOC without ImageSets/Main/train.txt (or with CVAT's default.txt): two such
    folders train and validate on every annotated image; one folder as both is refused (validating on the
    training images), as is a missing split the user named."""
    from scaledet.engine import TrainConfig
    from scaledet.engine.run import open_datasets

    for name in ("train_voc", "val_voc"):
        _image(tmp_path / name / "JPEGImages" / "a.jpg")
        (tmp_path / name / "Annotations").mkdir()
        (tmp_path / name / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg"))
    (tmp_path / "val_voc" / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "val_voc" / "ImageSets" / "Main" / "default.txt").write_text("a\n")
    config = TrainConfig.for_model("efficientdet_d0", train=str(tmp_path / "train_voc"), val=str(tmp_path / "val_voc"),
                                   epochs=1, progress=False)
    train, val = open_datasets(config)
    assert len(train) == 1 and len(val) == 1
    assert "train_voc has no ImageSets/Main/train.txt: every annotated image is used" in capsys.readouterr().out
    config.val = config.train
    with pytest.raises(UserError, match="same VOC folder .* would validate on the training images"):
        open_datasets(config)
    with pytest.raises(UserError, match="split 'train' not found"):
        open_dataset(tmp_path / "train_voc", split="train")
    # a split file listing names with their image suffix (or folder), as some export scripts write: the same image
    (tmp_path / "val_voc" / "ImageSets" / "Main" / "val.txt").write_text("JPEGImages/a.JPG\nb.jpg\n")
    with pytest.warns(DataWarning, match=r"'b.jpg' has no Annotations/b.jpg.xml"):
        listed = open_dataset(tmp_path / "val_voc", split="val")
    assert len(listed) == 1 and listed.report.counts == {"missing_annotation": 1}


def test_validating_on_the_training_images_is_warned_about(tmp_path, capsys):
    """The same COCO JSON as --train and --val (or a data.yaml whose val: is its train:) was taken without a word,
    where the same VOC folder is refused: now a warning with the count, since it may be meant."""
    from scaledet.engine import TrainConfig
    from scaledet.engine.run import open_datasets

    images = []
    for k in range(3):
        _image(tmp_path / "images" / f"{k}.png")
        images.append({"id": k + 1, "file_name": f"{k}.png", "width": 48, "height": 32})
    annotations = [{"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400,
                    "iscrowd": 0} for k in range(3)]
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "all.json").write_text(json.dumps(gt))
    (tmp_path / "last.json").write_text(json.dumps({**gt, "images": images[2:], "annotations": annotations[2:]}))
    (tmp_path / "first.json").write_text(json.dumps({**gt, "images": images[:2], "annotations": annotations[:2]}))
    config = TrainConfig.for_model("efficientdet_d0", train=str(tmp_path / "all.json"), val=str(tmp_path / "all.json"),
                                   epochs=1, progress=False)
    with pytest.warns(DataWarning, match=r"3 of 3 validation images are training images too \(e.g. .*0.png\): the "
                                         r"validation AP will measure what the model memorised"):
        open_datasets(config)
    config.val = str(tmp_path / "last.json")
    with pytest.warns(DataWarning, match="1 of 1 validation images are training images too"):
        open_datasets(config)
    config.train = str(tmp_path / "first.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_datasets(config)


def test_yolo_pose_labels_roboflow_paths_and_windows_lists(tmp_path):
    # a pose set: class cx cy w h then kpt_shape's numbers; read as a polygon they gave another box
    path = _yolo(tmp_path / "pose", b"0 0.5 0.5 0.5 0.5 0.1 0.1 2 0.9 0.9 2\n0 0.5 0.5 0.5 0.5 0.1\n",
                 "train: images\nval: images\nkpt_shape: [2, 3]\nnames: [person]\n")
    dataset, messages = _open(path, split="train")
    assert dataset.records[0].boxes.tolist() == [[12.0, 8.0, 36.0, 24.0]]
    assert dataset.report.counts == {"bad_yolo_line": 1} and any("expected 11" in m for m in messages)
    # Roboflow writes "../train/images" with the yaml beside train/
    root = tmp_path / "roboflow"
    _image(root / "train" / "images" / "a.png")
    (root / "train" / "labels").mkdir()
    (root / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../train/images\nnc: 1\nnames: ['a']\n")
    assert len(open_dataset(root / "data.yaml", split="train", progress=False)) == 1
    # an image list written on Windows
    (root / "train.txt").write_text("train\\images\\a.png\r\n")
    (root / "data.yaml").write_text("train: train.txt\nval: train.txt\nnames: ['a']\n")
    assert len(open_dataset(root / "data.yaml", split="train", progress=False)) == 1


def test_paths_that_are_almost_datasets_say_what_to_give(tmp_path):
    for year in ("VOC2007", "VOC2012"):
        _image(tmp_path / "VOCdevkit" / year / "JPEGImages" / "a.jpg")
        (tmp_path / "VOCdevkit" / year / "Annotations").mkdir()
    with pytest.raises(UserError, match=r"VOCdevkit: holds 2 Pascal VOC folders \(VOC2007, VOC2012\); give one"):
        open_dataset(tmp_path / "VOCdevkit")
    with pytest.raises(UserError, match=r"Annotations: give the VOC folder that holds Annotations/ and JPEGImages/"):
        open_dataset(tmp_path / "VOCdevkit" / "VOC2007" / "Annotations")
    (tmp_path / "detections.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2],
                                                           "score": 0.9}]))
    with pytest.raises(UserError, match=r"a detections \(results\) file; score it .* scaledet eval --gt GT.json"):
        open_dataset(tmp_path / "detections.json")
