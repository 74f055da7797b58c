"""`scaledet train` end to end with a tiny EfficientDet on a tiny shapes set written as COCO JSON."""

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

import scaledet
from scaledet.cli import main
from scaledet.data import write_shapes_coco

TINY_EFFICIENTDET = {"backbone": "mobilenetv3_small_050", "fpn_channels": 16, "fpn_repeats": 1,
                     "head_repeats": 1, "anchor_scale": 3.0, "backbone_drop_path_rate": 0.0}


def write_tiny_run(folder: Path, settings: dict) -> tuple[Path, Path, Path]:
    """A tiny shapes train and val set (8 images of 64 px each, COCO JSON) and a run YAML holding
    ``settings``, all in ``folder``: ``(config, train_json, val_json)``."""
    options = dict(num_images=8, image_size=64, max_objects=2)
    train_json = write_shapes_coco(folder / "train", "train", **options)
    val_json = write_shapes_coco(folder / "val", "val", **options)
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    return config, train_json, val_json


def test_train_command_writes_every_output(tmp_path, capsys):
    config, train_json, val_json = write_tiny_run(tmp_path, {
        "model": "efficientdet_d0", "image_size": 64, "epochs": 5, "model_overrides": TINY_EFFICIENTDET,
        "augment": {"scale_range": [0.8, 1.25]}})
    out = tmp_path / "run"
    code = main(["train", "--config", str(config), "--train", str(train_json), "--val", str(val_json),
                 "--batch-size", "4", "--epochs", "2", "--out", str(out), "--no-progress", "--lr", "0.01"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "no problems found" in printed and "Average Precision" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(scaledet.evaluation.STAT_KEYS) <= set(metrics)
    assert all(-1.0 <= metrics[key] <= 1.0 for key in scaledet.evaluation.STAT_KEYS)
    assert metrics["steps"] == 4 and metrics["epochs"] == 2 and metrics["wall_time_s"] > 0  # 8 images / 4 x 2
    assert metrics["max_dets"] == [1, 10, 100]  # the caps the stats were scored with (raised for dense images)
    for name in ("curves.png", "predictions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"last.pt", "best.pt", "log.jsonl", "steps.csv", "epochs.csv", "weights.json"} <= {p.name for p in out.iterdir()}

    # the exported weights rebuild the trained (EMA) model exactly
    model = scaledet.create_model("efficientdet_d0", pretrained=out / "weights.safetensors").eval()
    assert model.class_names == ["circle", "square", "triangle", "cross"] and model.image_size == (64, 64)
    state = torch.load(out / "last.pt", weights_only=True)
    ema = {key.removeprefix("module."): value for key, value in state["ema"].items() if key != "n_averaged"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[key]), key
    # so does the training checkpoint itself, with its config (no --model needed: predict / eval / export)
    from_checkpoint = scaledet.load(out / "last.pt")
    assert from_checkpoint.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, from_checkpoint.state_dict()[key]), key

    # --resume continues from last.pt: two more epochs = four more steps
    code = main(["train", "--config", str(config), "--train", str(train_json), "--val", str(val_json),
                 "--batch-size", "4", "--epochs", "4", "--out", str(out), "--no-progress", "--lr", "0.01", "--resume"])
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 8


def test_fine_tune_from_a_local_file_with_new_classes(tmp_path):
    from scaledet.engine import TrainConfig
    from scaledet.engine.run import build_model
    from scaledet.weights import save_weights

    source = scaledet.create_model("efficientdet_d0", num_classes=3, image_size=64, **TINY_EFFICIENTDET)
    path = save_weights(source.state_dict(), tmp_path / "source.safetensors", source.config)
    config = TrainConfig.for_model("efficientdet_d0", epochs=1, pretrained=str(path), num_classes=4,
                                   image_size=64, model_overrides=TINY_EFFICIENTDET)
    model = build_model(config, ["circle", "square", "triangle", "cross"])
    assert model.num_classes == 4 and model.config["class_names"][3] == "cross"
    before, after = source.state_dict(), model.state_dict()
    head = "network.class_net.predict"  # the class predictor is re-initialised, everything else kept
    assert after[f"{head}.pointwise.weight"].shape[0] == 4 * 9 != before[f"{head}.pointwise.weight"].shape[0]
    shared = [key for key in before if not key.startswith(head)]
    assert len(shared) > 100 and all(torch.equal(before[key], after[key]) for key in shared)

    config.num_classes = 5
    try:
        build_model(config, ["circle", "square", "triangle", "cross"])
    except ValueError as error:
        assert "--num-classes 5 but the training data has 4 classes" in str(error)
    else:
        raise AssertionError("a class-count mismatch must be a ValueError")


def test_fine_tuning_fits_the_input_size_to_the_data_not_to_the_checkpoint(tmp_path):
    """Weights trained at 64 px, fine-tuned on 128 px images: the auto recipe trains at 128 (the
    data's size, under D0's published 512), as from scratch; an explicit --image-size still wins."""
    from scaledet.data import open_dataset
    from scaledet.engine import TrainConfig
    from scaledet.engine.run import fit_input_size
    from scaledet.weights import save_weights

    source = scaledet.create_model("efficientdet_d0", num_classes=4, image_size=64, **TINY_EFFICIENTDET)
    path = save_weights(source.state_dict(), tmp_path / "source.safetensors", source.config)
    train = open_dataset(write_shapes_coco(tmp_path / "train", "train", num_images=4, image_size=128), progress=False)
    config = TrainConfig.for_model("efficientdet_d0", epochs=1, pretrained=str(path), num_classes=4)
    model = scaledet.create_model("efficientdet_d0", num_classes=4, pretrained=path)
    assert model.image_size == (64, 64)  # the checkpoint's size
    assert fit_input_size(config, model, train) == (128, 128)
    config = TrainConfig.for_model("efficientdet_d0", epochs=1, num_classes=4, image_size=64)  # scratch at 64
    assert fit_input_size(config, model, train) is None  # --image-size given: kept


def test_fine_tuning_says_once_that_the_class_predictor_was_re_initialised(tmp_path, caplog):
    """The model is built twice when the data changes the input size or anchors; the checkpoint's
    note (3 classes in the file, 4 in the data) is logged by the first build only."""
    from scaledet.data import open_dataset
    from scaledet.engine import TrainConfig
    from scaledet.engine.run import prepare_model
    from scaledet.weights import save_weights

    source = scaledet.create_model("efficientdet_d0", num_classes=3, image_size=64, **TINY_EFFICIENTDET)
    path = save_weights(source.state_dict(), tmp_path / "source.safetensors", source.config)
    train = open_dataset(write_shapes_coco(tmp_path / "train", "train", num_images=4, image_size=128), progress=False)
    config = TrainConfig.for_model("efficientdet_d0", epochs=1, pretrained=str(path), num_classes=4)
    with caplog.at_level("WARNING", logger="scaledet.models.checkpoints"):
        model = prepare_model(config, train)
    assert model.image_size == (128, 128) and model.num_classes == 4  # rebuilt at the data's size
    notes = [r for r in caplog.records if "re-initialised the class predictor" in r.getMessage()]
    assert len(notes) == 1
    assert not logging.getLogger("scaledet.models.checkpoints").disabled  # restored after the rebuild


def test_fine_tuning_keeps_anchors_that_suit_the_data_and_re_initialises_classes_named_otherwise(tmp_path, capsys,
                                                                                                caplog):
    """--pretrained with --anchors auto re-fitted anchors whenever they beat the *published* ones, even where the
    checkpoint's were as good (demo weights on shapes: AP 0.864 -> 0.412 at the first step, the box head trained
    for other anchors); a checkpoint of 4 other-named classes had its rows relabelled with the data's names (a
    cross called "triangle"). Now anchors are re-fitted only when that covers the boxes better than the
    checkpoint's, and the class predictor is re-initialised unless the names are the data's (in another order its
    rows are reordered, tests/test_class_order.py)."""
    caplog.set_level(logging.WARNING, logger="scaledet.models.checkpoints")
    from scaledet.data import open_dataset
    from scaledet.engine import TrainConfig
    from scaledet.engine.run import prepare_model
    from scaledet.models.registry import family_of

    train = open_dataset(write_shapes_coco(tmp_path / "train", "train", num_images=8, image_size=128), progress=False)
    heads = tuple(family_of("efficientdet_d0").CHECKPOINT.class_head)

    def fine_tune(names, anchors="auto", **anchor_settings):
        torch.manual_seed(123)  # not the state a seeded build leaves: the re-initialised rows must differ
        source = scaledet.create_model("efficientdet_d0", num_classes=4, image_size=128, class_names=names,
                                       **{**TINY_EFFICIENTDET, **anchor_settings})
        path = source.save(tmp_path / "source.safetensors")
        config = TrainConfig.for_model("efficientdet_d0", epochs=1, pretrained=str(path), anchors=anchors)
        model = prepare_model(config, train)
        same = [torch.equal(value, source.state_dict()[key]) for key, value in model.state_dict().items()
                if key.startswith(heads)]
        return model, same

    model, _ = fine_tune(list(train.class_names), anchor_scale=6.0)  # anchors far too large for 20-51 px shapes
    suited = {key: model.overrides[key] for key in ("anchor_scale", "aspect_ratios") if key in model.overrides}
    assert suited["anchor_scale"] != 6.0 and "the checkpoint's (scale 6) cover" in capsys.readouterr().out
    model, same = fine_tune(list(train.class_names), **suited)  # the checkpoint's suit the data: kept
    assert {key: model.overrides[key] for key in suited} == suited and same and all(same)
    model, same = fine_tune(["a", "b", "c", "d"], **suited)
    assert model.class_names == train.class_names and not all(same)  # weights drawn again (the bias is the prior)
    assert "loaded everything else and re-initialised the class predictor" in caplog.text
    caplog.clear()
    model, same = fine_tune(list(reversed(train.class_names)), **suited)  # the same classes: rows reordered
    assert model.class_names == train.class_names and not all(same)
    assert "are the checkpoint's (matched by name, reordered)" in caplog.text
    model, _ = fine_tune(list(train.class_names), anchors="default", anchor_scale=6.0)
    assert model.overrides["anchor_scale"] == 6.0  # default: the checkpoint's as built


class _FirstTrainingBatchSeen(Exception):
    """Raised by the patched network to end the run once the first training batch reached it."""


def test_detr_train_command_without_yaml_feeds_detr_its_own_resize_and_padding_mask(tmp_path, monkeypatch):
    """``scaledet train --model detr_r50 --train D --val D --max-steps 2`` with no YAML: the images
    reach DETR's preprocess at their own size (flip / crop only: no EfficientDet scale jitter, no
    padding to 800x1333), the network gets one multi-scale shorter side (480..800, longer side at
    most 1333) for the whole batch, and the mask is False ("real") exactly on each resized image."""
    import dataclasses

    from PIL import Image

    from scaledet.models.detr import VARIANTS
    from scaledet.models.detr.model import DETR
    from scaledet.models.detr.preprocess import resized_size
    from scaledet.models.detr.variants import DETR_TRAIN_SCALES

    sizes = [(64, 96), (90, 60), (70, 70), (50, 100)]  # (h, w): landscape, portrait, square
    images, annotations = [], []
    for index, (height, width) in enumerate(sizes):
        Image.new("RGB", (width, height), (200, 40, 40)).save(tmp_path / f"{index}.png")
        images.append({"id": index + 1, "file_name": f"{index}.png", "height": height, "width": width})
        annotations.append({"id": index + 1, "image_id": index + 1, "category_id": 1, "bbox": [8, 8, 30, 30],
                            "area": 900, "iscrowd": 0})
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    # detr_r50 as the CLI builds it (eval resize 800 / 1333, its training sizes), with a tiny network
    monkeypatch.setitem(VARIANTS, "detr_r50", dataclasses.replace(
        VARIANTS["detr_r50"], backbone="resnet18", hidden_dim=32, num_heads=2, ffn_dim=64, enc_layers=1,
        dec_layers=1, num_queries=5))
    seen = []
    preprocess = DETR.preprocess

    def recording_preprocess(self, batch_images, training=False):
        batch = preprocess(self, batch_images, training)
        seen.append(([tuple(image.shape[-2:]) for image in batch_images], batch, training))
        return batch

    def stop(self, *inputs, **training_extras):  # from scratch the accelerators pass the denoising queries too
        raise _FirstTrainingBatchSeen

    monkeypatch.setattr(DETR, "preprocess", recording_preprocess)
    monkeypatch.setattr(DETR, "forward_features", stop)
    with pytest.raises(_FirstTrainingBatchSeen):
        main(["train", "--model", "detr_r50", "--train", str(data), "--val", str(data), "--max-steps", "2",
              "--batch-size", "4", "--workers", "0", "--out", str(tmp_path / "run"), "--no-progress"])
    (input_sizes, batch, training), = seen
    assert training and len(input_sizes) == 4
    for height, width in input_sizes:  # its own size or DETR's crop of it (sides >= 384 / 600 of its shorter side)
        assert any(384 / 600 * min(h, w) - 1 <= height <= h and 384 / 600 * min(h, w) - 1 <= width <= w
                   for h, w in sizes), (height, width)
    pixels, mask = batch.inputs
    shorter_sides = [side for side in DETR_TRAIN_SCALES
                     if all(resized_size(h, w, side, 1333)[0] <= pixels.shape[2] for h, w in input_sizes)]
    expected = {side: [resized_size(h, w, side, 1333) for h, w in input_sizes] for side in shorter_sides}
    side = next(side for side, resized in expected.items()
                if (max(h for h, _ in resized), max(w for _, w in resized)) == tuple(pixels.shape[2:]))
    assert max(pixels.shape[2:]) <= 1333 and pixels.shape[:2] == (4, 3)
    for image_mask, image_pixels, (height, width) in zip(mask, pixels, expected[side]):
        real = torch.zeros_like(image_mask)
        real[:height, :width] = True
        assert torch.equal(~image_mask, real)  # mask True on padding only
        assert not image_pixels[:, ~real].any()  # padding is zeros after normalisation


def test_training_without_val_says_so_and_lists_only_what_it_wrote(tmp_path, capsys):
    config, train_json, _ = write_tiny_run(tmp_path, {"model": "efficientdet_d0", "image_size": 64,
                                                      "model_overrides": TINY_EFFICIENTDET})
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--train", str(train_json), "--max-steps", "2", "--batch-size", "4",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "no evaluation (no --val)" in printed and "evaluation every" not in printed
    wrote = next(line for line in printed.splitlines() if line.startswith("wrote "))
    assert "predictions.png" not in wrote and "weights.safetensors" in wrote and "no --val: not evaluated" in wrote
    assert not (out / "predictions.png").exists()


def test_a_second_run_into_the_same_folder_says_it_replaces_the_first(tmp_path):
    config, train_json, _ = write_tiny_run(tmp_path, {"model": "efficientdet_d0", "image_size": 64,
                                                      "model_overrides": TINY_EFFICIENTDET})
    argv = ["train", "--config", str(config), "--train", str(train_json), "--max-steps", "1", "--batch-size", "4",
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    with pytest.warns(UserWarning, match=r"run holds an earlier run of 1 steps \(weights.safetensors, last.pt\): "
                                         "this run replaces it; --resume continues it instead"):
        assert main(argv) == 0
