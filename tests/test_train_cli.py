"""`scaledet train` end to end with a tiny EfficientDet on a tiny shapes set written as COCO JSON."""

import json

import torch
import yaml

import scaledet
from scaledet.cli import main
from scaledet.data import write_shapes_coco

TINY_EFFICIENTDET = {"backbone": "mobilenetv3_small_050", "fpn_channels": 16, "fpn_repeats": 1,
                     "head_repeats": 1, "anchor_scale": 3.0, "backbone_drop_path_rate": 0.0}


def test_train_command_writes_every_output(tmp_path, capsys):
    options = dict(num_images=8, image_size=64, max_objects=2)
    train_json = write_shapes_coco(tmp_path / "train", "train", **options)
    val_json = write_shapes_coco(tmp_path / "val", "val", **options)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": "efficientdet_d0", "image_size": 64, "epochs": 5,
                                      "model_overrides": TINY_EFFICIENTDET, "augment": {"scale_range": [0.8, 1.25]}}))
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
