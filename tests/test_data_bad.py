"""Every bad-data case of issue 3 item 8 and issue 10: a clear error naming the file, or a counted skip."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scaledet.data import CocoDataset, DataWarning, YOLODataset, open_dataset, print_report
from scaledet.errors import UserError


def _save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path.name


def _rgb(h=32, w=48, value=(200, 30, 30)):
    return np.tile(np.array(value, np.uint8), (h, w, 1))


def _coco(tmp_path, images, annotations, categories=({"id": 1, "name": "a"},)):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return path


def _image(image_id, name, w=48, h=32):
    return {"id": image_id, "file_name": name, "width": w, "height": h}


def _box(image_id, bbox, category_id=1, ann_id=None):
    return {"id": ann_id or image_id * 100, "image_id": image_id, "category_id": category_id, "bbox": bbox}


def _open(path, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = CocoDataset(path, **kwargs)
    return dataset, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


@pytest.fixture
def ok_image(tmp_path):
    return _save(tmp_path / "ok.png", _rgb())


def test_missing_image_file_is_skipped_with_warning(tmp_path, ok_image):
    path = _coco(tmp_path, [_image(1, ok_image), _image(2, "missing.jpg")], [_box(1, [1, 1, 10, 10]), _box(2, [1, 1, 5, 5])])
    dataset, messages = _open(path)
    assert [r.image_id for r in dataset.records] == [1]
    assert dataset.report.counts["missing_image"] == 1
    assert any("missing.jpg" in m and "not found" in m for m in messages)


def test_truncated_jpeg_is_skipped_at_load(tmp_path, ok_image):
    _save(tmp_path / "full.jpg", _rgb(64, 64), quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    dataset, messages = _open(_coco(tmp_path, [_image(1, ok_image), _image(2, "cut.jpg", 64, 64)], []), allow_empty=True)
    assert [r.image_id for r in dataset.records] == [1]
    assert dataset.report.counts["unreadable_image"] == 1
    assert any("cut.jpg" in m and "truncated" in m for m in messages)


def test_image_broken_after_load_is_replaced_not_fatal(tmp_path):
    names = [_save(tmp_path / f"{i}.png", _rgb(value=(10 * i, 0, 0))) for i in range(3)]
    dataset, _ = _open(_coco(tmp_path, [_image(i, n) for i, n in enumerate(names)], []), allow_empty=True)
    (tmp_path / names[1]).write_bytes(b"not an image any more")
    with pytest.warns(DataWarning, match="1.png"):
        image, target = dataset[1]
    assert target["image_id"] == 2  # the next readable record
    assert image[0, 0, 0].item() == pytest.approx(20 / 255)
    assert dataset.report.counts["unreadable_image"] == 1


def test_grayscale_rgba_and_16bit_are_converted(tmp_path):
    gray = _save(tmp_path / "gray.png", np.full((32, 48), 100, np.uint8))
    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 7
    rgba_name = _save(tmp_path / "rgba.png", rgba)
    wide = (np.arange(32 * 48).reshape(32, 48) * 40).astype(np.uint16)
    wide_name = _save(tmp_path / "wide.png", wide)
    images = [_image(1, gray), _image(2, rgba_name), _image(3, wide_name)]
    dataset, messages = _open(_coco(tmp_path, images, []), allow_empty=True)
    assert dataset.report.counts["converted_image"] == 3 and not messages
    image = dataset[0][0]
    assert image.shape == (3, 32, 48) and torch.allclose(image, torch.full_like(image, 100 / 255))
    image = dataset[1][0]
    assert image.shape == (3, 32, 48)
    assert image[:, 5, 5].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    image = dataset[2][0]
    expected = torch.from_numpy(wide.astype(np.float32) / 65535)
    assert image.dtype == torch.float32 and image.shape == (3, 32, 48)
    assert torch.allclose(image[0], expected) and torch.equal(image[0], image[2])
    assert image.max().item() > 0.9  # not clipped to 8 bits


@pytest.mark.parametrize("name", ["rot.jpg", "rot.png", "rot.tif"])
def test_exif_rotated_jpeg_is_transposed_and_boxes_use_displayed_frame(tmp_path, name):
    """The header check finds a PNG's eXIf chunk without decoding the image (it used PIL's getexif,
    which decodes every PNG), and agrees with the decoded, transposed image. Pillow reports a rotated
    TIFF's displayed size itself: the check turned it a second time (boxes dropped as outside)."""
    raw = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide x 20 high: left red, right blue
    raw[:, :20] = (255, 0, 0)
    raw[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    options = {".jpg": {"quality": 95, "exif": exif}, ".png": {"exif": exif}, ".tif": {"tiffinfo": {0x0112: 6}}}
    Image.fromarray(raw).save(tmp_path / name, **options[name[-4:]])
    ann = [_box(1, [2, 2, 10, 30])]  # in the displayed (20 wide x 40 high) frame
    dataset, _ = _open(_coco(tmp_path, [_image(1, name, w=40, h=20)], ann))
    image, target = dataset[0]
    assert image.shape == (3, 40, 20)
    assert image[0, 5, 10] > 0.8 and image[2, 5, 10] < 0.2  # red on top
    assert image[2, 35, 10] > 0.8 and image[0, 35, 10] < 0.2  # blue below
    assert target["boxes"].tolist() == [[2.0, 2.0, 12.0, 32.0]]
    assert target["orig_size"] == (40, 20)
    assert dataset.report.counts["exif_rotated"] == 1 and dataset.report.counts["size_mismatch"] == 1


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [
        ([5, 5, 0, 10], "zero_area_box"),
        ([5, 5, 10, 0], "zero_area_box"),
        ([20, 5, -4, 10], "negative_box"),
        ([60, 40, 10, 10], "out_of_image_box"),
        ([-30, 2, 10, 10], "out_of_image_box"),
        ([float("nan"), 2, 10, 10], "nan_box"),
        ([None, 2, 10, 10], "nan_box"),
        ([1, 2, 3], "malformed_box"),
        (["a", 2, 3, 4], "malformed_box"),
        ([1, 2, True, 4], "malformed_box"),
    ],
)
def test_bad_boxes_are_dropped_and_counted(tmp_path, ok_image, bbox, reason):
    anns = [_box(1, [1, 1, 10, 10], ann_id=1), _box(1, bbox, ann_id=2)]
    dataset, messages = _open(_coco(tmp_path, [_image(1, ok_image)], anns))
    assert dataset.report.counts == {reason: 1}
    assert any("annotations[1] (id 2)" in m for m in messages)
    assert dataset[0][1]["boxes"].tolist() == [[1.0, 1.0, 11.0, 11.0]]


def test_box_partly_outside_is_clipped_and_kept(tmp_path, ok_image):
    dataset, messages = _open(_coco(tmp_path, [_image(1, ok_image)], [_box(1, [-5, 20, 20, 30])]))
    assert dataset[0][1]["boxes"].tolist() == [[0.0, 20.0, 15.0, 32.0]]
    assert dataset.report.counts == {"clipped_box": 1} and not messages


def test_unknown_category_and_unknown_image_id_are_skipped(tmp_path, ok_image):
    anns = [_box(1, [1, 1, 5, 5], category_id=9, ann_id=1), _box(7, [1, 1, 5, 5], ann_id=2), _box(1, [2, 2, 5, 5], ann_id=3)]
    dataset, messages = _open(_coco(tmp_path, [_image(1, ok_image)], anns))
    assert dataset.report.counts == {"unknown_category": 1, "unknown_image_id": 1}
    assert any("category_id 9" in m for m in messages) and any("image_id 7" in m for m in messages)
    assert dataset[0][1]["labels"].tolist() == [0]


def test_float_tiffs_outside_0_1_are_stretched_with_a_warning_not_clipped(tmp_path, monkeypatch):
    from scaledet.data import images as image_io
    from scaledet.data.tiles import open_large_image

    monkeypatch.setattr(image_io, "_warned_stretched", False)
    unit = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    elevation = (100 + 900 * unit).astype(np.float32)  # metres: all of it above 1
    elevation[10, 10] = np.nan
    expected = unit.copy()
    expected[10, 10] = 0.0  # NaN -> 0
    Image.fromarray(elevation, mode="F").save(tmp_path / "elevation.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = image_io.load_image(tmp_path / "unit.tif")
        assert not caught  # already in [0, 1]: as it is
        stretched = image_io.load_image(tmp_path / "elevation.tif")
        image_io.load_image(tmp_path / "elevation.tif")
    assert torch.allclose(kept[0], torch.from_numpy(unit)) and torch.equal(kept[0], kept[2])
    assert torch.allclose(stretched[0], torch.from_numpy(expected), atol=1e-5)  # the old code: all 1.0
    assert len(caught) == 1 and caught[0].category is DataWarning  # once per process
    assert str(caught[0].message).startswith(f"{tmp_path / 'elevation.tif'}: mode F values span [100, 1000], "
                                             "outside [0, 1]: it and every such image are stretched")
    window = open_large_image(tmp_path / "elevation.tif").read((0, 0, 48, 32))  # the tiling reader agrees
    assert torch.allclose(window, stretched)


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,, "file_name": "x.png"}]}')
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON at line 2 column 12"):
        open_dataset(path)


def test_coco_structure_errors_name_the_record(tmp_path):
    path = _coco(tmp_path, [_image(1, "a.png"), _image(1, "b.png")], [])
    with pytest.raises(ValueError, match=r"ann\.json: images\[1\] repeats image id 1"):
        CocoDataset(path)
    path = _coco(tmp_path, [], [], categories=[{"name": "no id"}])
    with pytest.raises(ValueError, match=r"categories\[0\] needs an integer 'id'"):
        CocoDataset(path)
    (tmp_path / "nocat.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"nocat\.json: the COCO field 'categories' is missing"):
        CocoDataset(tmp_path / "nocat.json")
    (tmp_path / "nocat.json").write_text(json.dumps({"images": [], "categories": None}))
    with pytest.raises(ValueError, match=r"nocat\.json: COCO field 'categories' must be a list, got NoneType"):
        CocoDataset(tmp_path / "nocat.json")


def _yolo(tmp_path, lines):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _save(tmp_path / "images" / "a.png", _rgb(40, 80))
    (tmp_path / "labels" / "a.txt").write_text("\n".join(lines))
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a, b]\n")
    return tmp_path / "data.yaml"


def test_yolo_line_with_wrong_field_count_is_skipped(tmp_path):
    path = _yolo(tmp_path, ["0 0.5 0.5 0.25 0.5", "1 0.5 0.5 0.25", "1 0.5 0.5 0.2 0.2 0.9", "x 0.5 0.5 0.1 0.1", "5 0.5 0.5 0.1 0.1"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = YOLODataset(path, split="train")
    messages = [str(w.message) for w in caught]
    assert dataset.report.counts == {"bad_yolo_line": 3, "unknown_category": 1}
    assert any("a.txt:2: 4 fields" in m for m in messages) and any("a.txt:3: 6 fields" in m for m in messages)
    assert dataset[0][1]["boxes"].tolist() == [[30.0, 10.0, 50.0, 30.0]]


def test_yolo_label_files_without_an_image_are_counted(tmp_path):
    """labels/b.txt whose image was saved as .heic (not a suffix Pillow reads) was dropped without a word; now a
    skip with a count. A split given as a .txt list is not checked (lists may share one folder)."""
    path = _yolo(tmp_path, ["0 0.5 0.5 0.25 0.5"])
    (tmp_path / "images" / "b.heic").write_bytes(b"not read")
    (tmp_path / "labels" / "b.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "classes.txt").write_text("a\nb\n")
    with pytest.warns(DataWarning, match=r"labels/b.txt: no image of the split has this name \(an image saved with a "
                                         r"suffix Pillow cannot read, e.g. .heic, or in another folder\?\)"):
        dataset = YOLODataset(path, split="train")
    assert len(dataset) == 1 and dataset.report.counts == {"label_without_image": 1}
    (tmp_path / "train.txt").write_text("images/a.png\n")
    path.write_text("path: .\ntrain: train.txt\nnames: [a, b]\n")
    assert YOLODataset(path, split="train").report.counts == {}


def test_empty_datasets_raise_naming_the_source(tmp_path):
    with pytest.raises(ValueError, match=r"ann\.json: dataset has no usable images"):
        CocoDataset(_coco(tmp_path, [], []))
    with pytest.raises(ValueError, match=r"no usable images \(1 records skipped"), pytest.warns(DataWarning):
        CocoDataset(_coco(tmp_path, [_image(1, "gone.png")], []))
    (tmp_path / "y" / "images").mkdir(parents=True)
    (tmp_path / "y" / "data.yaml").write_text("train: images\nval: images\nnames: [a]\n")
    with pytest.raises(ValueError, match=r"data\.yaml \[val\]: dataset has no usable images"):
        open_dataset(tmp_path / "y" / "data.yaml", split="val")
    (tmp_path / "voc" / "Annotations").mkdir(parents=True)
    with pytest.raises(ValueError, match="voc: dataset has no usable images"):
        open_dataset(tmp_path / "voc")


def test_bad_voc_xml_is_skipped(tmp_path):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    _save(root / "JPEGImages" / "good.jpg", _rgb())
    (root / "Annotations" / "good.xml").write_text(
        "<annotation><filename>good.jpg</filename><object><name>dog</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    (root / "Annotations" / "bad.xml").write_text("<annotation><object>")
    with pytest.warns(DataWarning, match="bad.xml: invalid XML"):
        dataset = open_dataset(root)
    assert len(dataset) == 1 and dataset.report.counts == {"bad_annotation_file": 1}


def test_summary_lists_every_reason_with_counts(tmp_path, ok_image, capsys):
    anns = [_box(1, [5, 5, 0, 1], ann_id=1), _box(1, [5, 5, 0, 1], ann_id=2), _box(1, [1, 1, 4, 4], category_id=3, ann_id=3)]
    dataset, _ = _open(_coco(tmp_path, [_image(1, ok_image), _image(2, "nope.png")], anns), allow_empty=True)
    print_report(dataset)
    out = capsys.readouterr().out
    assert "1 images, 0 boxes; 4 records skipped" in out
    assert "skip      2 x zero_area_box" in out and "skip      1 x missing_image" in out
    assert "skip      1 x unknown_category" in out
    assert dataset.report.as_dict() == {"missing_image": 1, "unknown_category": 1, "zero_area_box": 2}


# --- sets that would train on nothing (issue 10): a clear error before training ----------------


def test_coco_without_annotations_is_an_error_unless_allowed(tmp_path, ok_image):
    path = _coco(tmp_path, [_image(1, ok_image)], [])
    with pytest.raises(UserError, match=r"ann\.json: no usable boxes in 1 image: the annotations hold no boxes") as info:
        open_dataset(path)
    assert "--allow-empty" in str(info.value) and len(str(info.value).splitlines()) == 2
    assert len(open_dataset(path, allow_empty=True)) == 1  # background-only, deliberately


def test_every_box_dropped_names_the_cause(tmp_path, ok_image):
    path = _coco(tmp_path, [_image(1, ok_image)], [_box(1, [1, 1, 5, 5], category_id=7)])
    with pytest.raises(UserError, match=r"1 x unknown_category, e\.g\. .*category_id 7"), pytest.warns(DataWarning):
        CocoDataset(path)


def test_coco_without_categories_is_an_error(tmp_path, ok_image):
    path = _coco(tmp_path, [_image(1, ok_image)], [_box(1, [1, 1, 5, 5])], categories=[])
    with pytest.raises(UserError, match=r"ann\.json: 'categories' is empty"):
        open_dataset(path, allow_empty=True)


@pytest.mark.parametrize(
    ("iscrowd", "crowd"),
    [("0", False), ("1", True), ("true", True), ("False", False), (0, False), (1, True), (True, True), (None, False),
     ("maybe", None)],
)
def test_iscrowd_strings_are_parsed_not_truthy(tmp_path, ok_image, iscrowd, crowd):
    anns = [_box(1, [1, 1, 10, 10], ann_id=1), {**_box(1, [2, 2, 8, 8], ann_id=2), "iscrowd": iscrowd}]
    dataset, messages = _open(_coco(tmp_path, [_image(1, ok_image)], anns))
    if crowd is None:  # not a flag: that annotation is skipped and named
        assert dataset.report.counts == {"bad_iscrowd": 1} and any("iscrowd 'maybe'" in m for m in messages)
        assert dataset.records[0].iscrowd.tolist() == [False]
    else:
        assert dataset.records[0].iscrowd.tolist() == [False, crowd]
        assert len(dataset[0][1]["boxes"]) == (1 if crowd else 2)  # crowd boxes are not trained on


def test_numeric_strings_in_coco_are_numbers(tmp_path, ok_image):
    images = [{"id": "3", "file_name": ok_image, "width": "48", "height": "32"}]
    anns = [{"id": 1, "image_id": "3", "category_id": "5", "bbox": ["1", "2", "10.5", " 4 "], "area": "30", "iscrowd": "0"}]
    dataset, messages = _open(_coco(tmp_path, images, anns, categories=[{"id": "5", "name": "a"}]))
    assert not messages and dataset.report.counts == {}
    assert dataset.label_to_category_id == [5] and dataset.records[0].image_id == 3
    assert dataset[0][1]["boxes"].tolist() == [[1.0, 2.0, 11.5, 6.0]] and dataset.records[0].areas.tolist() == [30.0]


def test_only_crowd_boxes_is_an_error(tmp_path, ok_image):
    anns = [{**_box(1, [1, 1, 10, 10]), "iscrowd": "1"}]
    with pytest.raises(UserError, match="all 1 boxes are crowd / difficult boxes"):
        CocoDataset(_coco(tmp_path, [_image(1, ok_image)], anns))


def test_yolo_labels_in_a_misnamed_folder_are_an_error(tmp_path):
    path = _yolo(tmp_path, ["0 0.5 0.5 0.25 0.5"])
    (tmp_path / "labels").rename(tmp_path / "label")  # the tester's case: labels/ misnamed
    with pytest.raises(UserError, match=r"no usable boxes in 1 image: 1 x missing_label, e\.g\. .*labels.a\.txt") as info:
        open_dataset(path, split="train")
    assert "'labels' folder beside 'images'" in str(info.value)
    dataset = open_dataset(path, split="train", allow_empty=True)
    assert dataset.report.counts == {"missing_label": 1} and "kept      1 x missing_label" in dataset.summary()


def test_yolo_yaml_without_path_resolves_from_its_own_folder(tmp_path, monkeypatch):
    (tmp_path / "dir").mkdir()
    _yolo(tmp_path / "dir", ["0 0.5 0.5 0.25 0.5"])
    (tmp_path / "dir" / "data.yaml").write_text("train: images\nval: images\nnames: [a, b]\n")  # no 'path:'
    monkeypatch.chdir(tmp_path)  # given as dir/data.yaml from the folder above
    dataset = open_dataset("dir/data.yaml", split="train")
    assert [r.path for r in dataset.records] == [Path("dir/images/a.png")] and len(dataset.records[0].boxes) == 1
    (tmp_path / "dir" / "data.yaml").write_text("path: .\ntrain: imgs\nnames: [a]\n")
    with pytest.raises(UserError, match=r"dir.data\.yaml: train: 'imgs' -> dir.imgs is neither an image folder"):
        open_dataset("dir/data.yaml", split="train")


def test_voc_with_an_empty_class_list_is_an_error(tmp_path):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    _save(root / "JPEGImages" / "a.jpg", _rgb())
    (root / "Annotations" / "a.xml").write_text("<annotation><filename>a.jpg</filename></annotation>")
    (root / "classes.txt").write_text("\n")
    with pytest.raises(UserError, match="VOC: no classes defined"):
        open_dataset(root)


def test_unknown_data_options_are_named(tmp_path, ok_image):
    path = _coco(tmp_path, [_image(1, ok_image)], [_box(1, [1, 1, 5, 5])])
    with pytest.raises(UserError, match=r"unknown data option\(s\) num_images for CocoDataset; it takes transforms"):
        open_dataset(path, num_images=3)


def test_progress_false_hides_the_image_check_bar(tmp_path, monkeypatch):
    from scaledet.data import base

    calls = []

    def fake_tqdm(items, **kwargs):
        calls.append(kwargs["disable"])
        return items

    monkeypatch.setattr(base, "tqdm", fake_tqdm)
    paths = [tmp_path / f"{i}.png" for i in range(250)]  # missing: counted, fast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base.probe_records(paths, "x", base.DataReport(), progress=True)
        base.probe_records(paths, "x", base.DataReport(), progress=False)
    assert calls == [False, True]


def test_training_config_passes_no_progress_and_allow_empty_to_the_loaders(tmp_path, ok_image, monkeypatch):
    from scaledet.data import coco
    from scaledet.engine import TrainConfig
    from scaledet.engine.run import open_datasets

    seen = []
    real = coco.probe_records
    monkeypatch.setattr(coco, "probe_records", lambda *args: seen.append(args[-1]) or real(*args))
    path = _coco(tmp_path, [_image(1, ok_image)], [])
    config = TrainConfig.for_model("efficientdet_d0", train=str(path), epochs=1, progress=False)
    with pytest.raises(UserError, match="--allow-empty"):
        open_datasets(config)
    config.allow_empty = True
    train, val = open_datasets(config)
    assert len(train) == 1 and val is None and seen == [False, False]


def test_a_box_past_the_edge_by_rounding_only_is_clipped_without_a_note(tmp_path, ok_image):
    dataset, _ = _open(_coco(tmp_path, [_image(1, ok_image)], [_box(1, [0, -0.0001, 10, 12.00005])]))
    assert dataset.report.counts == {} and dataset.records[0].boxes[0].tolist() == pytest.approx([0, 0, 10, 12.0], abs=1e-3)
    dataset, _ = _open(_coco(tmp_path, [_image(1, ok_image)], [_box(1, [0, -0.5, 10, 12])]))
    assert dataset.report.counts == {"clipped_box": 1}


def test_bbox_written_as_corners_is_named_with_the_fix(tmp_path, ok_image):
    """[x1, y1, x2, y2] in COCO's [x, y, w, h] field: most boxes pass the right / bottom edge, and all of
    those fit read as corners: a warning says so (the image is 48x32)."""
    corners = [[20, 10, 40, 30], [30, 5, 46, 20], [2, 2, 10, 8], [25, 12, 44, 31], [14, 3, 30, 16], [6, 9, 22, 28],
               [33, 1, 47, 9]]
    dataset, warned = _open(_coco(tmp_path, [_image(1, ok_image)], [_box(1, b, ann_id=k + 1) for k, b in enumerate(corners)]))
    hint = [w for w in warned if "looks like [x1, y1, x2, y2]" in w]
    assert len(hint) == 1 and "5 of 7 boxes pass their image's right or bottom edge, and 5 of them would fit" in hint[0]
    xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in corners]  # the same boxes written right: no hint
    _, warned = _open(_coco(tmp_path, [_image(1, ok_image)], [_box(1, b, ann_id=k + 1) for k, b in enumerate(xywh)]))
    assert not any("looks like" in w for w in warned)


def test_yolo_nc_that_disagrees_with_names_is_an_error(tmp_path):
    from scaledet.data.yolo import read_data_yaml

    (tmp_path / "data.yaml").write_text("train: images/train\nnc: 5\nnames: [a, b, c, d]\n")
    with pytest.raises(UserError, match="'nc' is 5 but 'names' lists 4 classes; make them agree"):
        read_data_yaml(tmp_path / "data.yaml")
    (tmp_path / "data.yaml").write_text("train: images/train\nnc: 4\nnames: [a, b, c, d]\n")
    assert read_data_yaml(tmp_path / "data.yaml")["names"] == ["a", "b", "c", "d"]


def test_class_names_differing_only_in_case_are_named(tmp_path, ok_image):
    categories = ({"id": 1, "name": "cup"}, {"id": 2, "name": "Cup"}, {"id": 3, "name": "horse"})
    _, warned = _open(_coco(tmp_path, [_image(1, ok_image)], [_box(1, [1, 1, 10, 10])], categories))
    assert any("class names that repeat or differ only in case or spaces are separate classes: 'cup' / 'Cup'" in w
               for w in warned)


def test_yolo_bom_float_class_and_pixel_coordinates(tmp_path):
    """A BOM and a class written "1.0" read as class 1; a fractional class and pixel coordinates are
    skipped, the latter named as pixels (they were "non-numeric" / "entirely outside the image")."""
    path = _yolo(tmp_path, ["\ufeff0 0.5 0.5 0.25 0.5", "1.0 0.25 0.5 0.1 0.1", "0.5 0.5 0.5 0.1 0.1", "0 40 20 20 40"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = YOLODataset(path, split="train")
    assert dataset.report.counts == {"bad_yolo_line": 1, "yolo_pixel_coordinates": 1}
    assert any("class 0.5 is not a whole number" in str(w.message) for w in caught)
    assert any("fractions of the image" in str(w.message) for w in caught)
    assert dataset[0][1]["labels"].tolist() == [0, 1]


def test_images_in_a_linked_folder_are_found_and_hidden_files_are_not(tmp_path):
    """YOLO image folders and predict's folder walk follow symbolic links to folders (Path.rglob on
    Python < 3.13 does not) and skip hidden files such as macOS's ._a.png."""
    from scaledet.inference.predict import collect_inputs

    path = _yolo(tmp_path, ["0 0.5 0.5 0.25 0.5"])
    (tmp_path / "elsewhere").mkdir()
    _save(tmp_path / "elsewhere" / "b.png", _rgb(40, 80))
    (tmp_path / "images" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "images" / "loop").symlink_to(tmp_path / "images", target_is_directory=True)  # a cycle ends
    (tmp_path / "images" / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble, not an image
    (tmp_path / "labels" / "linked").mkdir()
    (tmp_path / "labels" / "linked" / "b.txt").write_text("1 0.5 0.5 0.5 0.5")
    dataset = YOLODataset(path, split="train", progress=False)
    assert [r.path.name for r in dataset.records] == ["a.png", "b.png"]
    assert dataset.report.counts == {}
    paths, problems = collect_inputs([str(tmp_path / "images")])
    assert [p.name for p in paths] == ["a.png", "b.png"] and not problems


def test_voc_split_names_without_xml_are_counted_and_difficult_true_is_difficult(tmp_path):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    _save(root / "JPEGImages" / "good.jpg", _rgb())
    (root / "Annotations" / "good.xml").write_text(
        "<annotation><filename>good.jpg</filename><object><name>dog</name><difficult>true</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object><object><name>dog</name>"
        "<bndbox><xmin>11</xmin><ymin>11</ymin><xmax>19</xmax><ymax>19</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("good\ngone\n")
    with pytest.warns(DataWarning, match="'gone' has no Annotations/gone.xml"):
        dataset = open_dataset(root, split="train")
    assert len(dataset) == 1 and dataset.report.counts == {"missing_annotation": 1}
    assert dataset.records[0].iscrowd.tolist() == [True, False]


def test_coco_file_names_with_windows_separators_are_found(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    _save(tmp_path / "images" / "train" / "a.png", _rgb())
    path = _coco(tmp_path, [_image(1, "images\\train\\a.png"), _image(2, "train\\a.png")], [_box(1, [2, 2, 10, 10])])
    dataset = CocoDataset(path, progress=False)
    assert [r.path for r in dataset.records] == [tmp_path / "images" / "train" / "a.png"] * 2
    assert dataset.report.counts == {}


def test_a_missing_coco_image_names_every_place_looked(tmp_path, ok_image):
    path = _coco(tmp_path, [_image(1, ok_image), _image(2, "gone.png")], [_box(1, [2, 2, 10, 10]), _box(2, [2, 2, 9, 9])])
    with pytest.warns(DataWarning, match=r"gone.png: image file not found at .*gone.png or .*images.gone.png "
                                         r"\(--images FOLDER"):
        dataset = CocoDataset(path, progress=False)
    assert dataset.report.counts == {"missing_image": 1}  # its annotation goes with it, not as an unknown id


def test_a_png_exif_chunk_after_the_pixels_is_found_by_the_header_check(tmp_path):
    """PNG allows eXIf after the image data, where PIL's header does not see it: the chunk scan finds it,
    so the probed size agrees with the transposed decode."""
    import struct
    import zlib

    from scaledet.data.images import load_image, probe_image

    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "plain.png")
    data = (tmp_path / "plain.png").read_bytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    payload = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif\x00\x00") else exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    end = data.rindex(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(data[:end] + chunk + data[end:])
    assert "exif" not in Image.open(tmp_path / "late.png").info
    info = probe_image(tmp_path / "late.png")
    assert (info.orientation, info.width, info.height) == (6, 20, 40)
    assert load_image(tmp_path / "late.png").shape == (3, 40, 20)
    assert probe_image(tmp_path / "plain.png").orientation == 1
