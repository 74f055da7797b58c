"""Errors a user can cause get one or two lines naming the file and the fix, exit 2, no traceback;
``scaledet --debug`` shows the traceback."""

import argparse
import importlib
import json
import os
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from scaledet import hub
from scaledet.cli import main
from scaledet.engine.lock import LOCK_NAME
from scaledet.errors import UserError

TINY = {"backbone": "mobilenetv3_small_050", "fpn_channels": 16, "fpn_repeats": 1, "head_repeats": 1,
        "anchor_scale": 3.0, "backbone_drop_path_rate": 0.0}


@pytest.fixture
def tiny_config(tmp_path):
    """A run YAML: tiny EfficientDet on 4 shapes images, 2 steps."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": "efficientdet_d0", "image_size": 64, "max_steps": 2, "batch_size": 2,
                                    "model_overrides": TINY}))
    return path


def _shapes(config):
    """CLI args training on the built-in shapes set, made tiny through ``data_options``."""
    values = yaml.safe_load(config.read_text())
    values["data_options"] = {"num_images": 4, "image_size": 64, "max_objects": 2}
    config.write_text(yaml.safe_dump(values))
    return ["--config", str(config), "--train", "shapes:train", "--no-progress"]


def _error(capsys, argv):
    """Run the CLI; check it failed cleanly; return stderr's lines."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    assert lines[0].startswith(f"scaledet {argv[0]}: error: ")
    return lines


def test_coco_without_annotations(tmp_path, tiny_config, capsys):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    lines = _error(capsys, ["train", "--config", str(tiny_config), "--train", str(tmp_path / "ann.json"),
                            "--out", str(tmp_path / "run")])
    assert "ann.json: no usable boxes in 1 image" in lines[0] and "--allow-empty" in lines[1]
    assert not (tmp_path / "run").exists()  # nothing started


def test_missing_data_and_missing_config_file(tmp_path, tiny_config, capsys):
    lines = _error(capsys, ["train", "--config", str(tiny_config), "--train", str(tmp_path / "nope.json")])
    assert lines == [f"scaledet train: error: {tmp_path / 'nope.json'}: dataset path does not exist"]
    lines = _error(capsys, ["train", "--config", str(tmp_path / "none.yaml"), "--train", "shapes:train"])
    assert lines == [f"scaledet train: error: {tmp_path / 'none.yaml'}: No such file or directory"]


def test_invalid_yaml_config_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\nepochs: 2\n")
    lines = _error(capsys, ["train", "--config", str(bad), "--train", "shapes:train"])
    assert f"{bad}: not valid YAML (line 2" in lines[0]
    bad.write_text("- 1\n- 2\n")
    assert "must be a YAML mapping" in _error(capsys, ["train", "--config", str(bad), "--train", "shapes:train"])[0]


def test_empty_or_corrupt_last_checkpoint_on_resume(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    lines = _error(capsys, ["train", *_shapes(tiny_config), "--out", str(out), "--resume"])
    assert lines[0].endswith(f"error: {out / 'last.pt'} is empty or corrupt (EOFError): start without --resume (a new run replaces it), or --resume another checkpoint (e.g. OUT/best.pt)")
    torch.save({"model": {}, "step": 1}, out / "last.pt")
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:100])  # truncated
    lines = _error(capsys, ["train", *_shapes(tiny_config), "--out", str(out), "--resume"])
    assert "last.pt is empty or corrupt (RuntimeError: PytorchStreamReader" in lines[0]
    assert lines[0].endswith("start without --resume (a new run replaces it), or --resume another checkpoint (e.g. OUT/best.pt)")


class _Evil:
    pass


def test_pickled_code_is_refused_without_suggesting_unsafe_loading(tmp_path, tiny_config, capsys):
    torch.save({"w": _Evil()}, tmp_path / "evil.pth")
    lines = _error(capsys, ["train", *_shapes(tiny_config), "--pretrained", str(tmp_path / "evil.pth"),
                            "--out", str(tmp_path / "run")])
    assert f"{tmp_path / 'evil.pth'} is not a plain weights file (it contains pickled code, refused for safety)" in lines[0]
    assert "weights_only" not in "\n".join(lines)


def test_pretrained_coco_offline_names_url_and_cache_path(tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    lines = _error(capsys, ["train", *_shapes(tiny_config), "--pretrained", "coco", "--out", str(tmp_path / "run")])
    assert len(lines) == 2
    assert "could not download https://" in lines[0] and "Temporary failure in name resolution" in lines[0]
    assert f"place it at {hub.cache_dir()}/tf_efficientdet_d0" in lines[1]


def test_busy_output_folder(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    out.mkdir()
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-01-01 00:00:00"}
    (out / LOCK_NAME).write_text(json.dumps(owner))
    lines = _error(capsys, ["train", *_shapes(tiny_config), "--out", str(out)])
    assert f"{out} is in use by another training run (pid {os.getppid()}" in lines[0]
    assert str(out / LOCK_NAME) in lines[1]


def test_debug_shows_the_traceback(tmp_path, tiny_config):
    for argv in (["--debug", "train"], ["train", "--debug"]):
        with pytest.raises(UserError, match="dataset path does not exist"):
            main([*argv, "--config", str(tiny_config), "--train", str(tmp_path / "nope.json")])


def test_a_misspelt_device_or_a_missing_gpu_is_one_line(tmp_path, tiny_config, capsys):
    weights = tmp_path / "w.safetensors"  # never read: the device is checked first
    for argv in (["train", *_shapes(tiny_config), "--out", str(tmp_path / "run"), "--device", "cpux"],
                 ["eval", "--weights", str(weights), "--data", "shapes:val", "--device", "cpux"],
                 ["predict", str(tmp_path), "--weights", str(weights), "--device", "cpux"],
                 ["bench", "--models", "efficientdet_d0", "--device", "cpux"]):
        assert "device 'cpux' is not a device name: use cpu, cuda, cuda:1, ... or auto" in _error(capsys, argv)[0]
    if not torch.cuda.is_available():
        lines = _error(capsys, ["eval", "--weights", str(weights), "--data", "shapes:val", "--device", "cuda"])
        assert "device 'cuda': this machine has no usable CUDA device (use cpu or auto)" in lines[0]


def test_a_misspelt_augment_keyword_names_what_the_pipeline_takes(tmp_path, tiny_config, capsys):
    values = yaml.safe_load(tiny_config.read_text())
    tiny_config.write_text(yaml.safe_dump({**values, "augment": {"scale_rang": [0.5, 1.5]}}))
    lines = _error(capsys, ["train", *_shapes(tiny_config), "--out", str(tmp_path / "run")])
    assert "augment: efficientdet_d0 does not take ['scale_rang']; its training pipeline takes ['fill', 'hflip', " \
           "'min_box_size', 'photometric', 'scale_range']" in lines[0]


def test_warnings_print_as_one_line_naming_the_command(tmp_path, capsys, monkeypatch):
    """A data warning is ``scaledet <command>: warning: FILE: what``, not Python's file / line / source format
    (and the file is named once, not twice); ``--debug`` keeps Python's format."""
    import sys
    import warnings

    from scaledet.data import write_shapes_coco

    def shown_as_python_does(message, category, filename, lineno, file=None, line=None):  # pytest records instead
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", shown_as_python_does)

    path = write_shapes_coco(tmp_path / "data", "train", num_images=2, image_size=64, max_objects=2)
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 42
    path.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown every time, not once per place
        assert main(["doctor", str(path)]) == 0
        err = capsys.readouterr().err
        warning = [line for line in err.splitlines() if "category_id 42" in line]
        assert warning == [f"scaledet doctor: warning: {path}: annotations[0] (id 1): category_id 42 not in 'categories'"]
        assert "DataWarning" not in err and "report.skip" not in err
        assert main(["--debug", "doctor", str(path)]) == 0
        assert "DataWarning" in capsys.readouterr().err


def test_a_corrupt_onnx_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf graph")  # what a truncated download looks like to onnxruntime
    lines = _error(capsys, ["predict", str(tmp_path), "--weights", str(bad)])
    assert f"{bad} is empty or corrupt (InvalidProtobuf" in lines[0] and lines[0].endswith("download or export it again")


@pytest.mark.parametrize("values, message", [
    ({"lr": "abc"}, "lr: 'abc' is not a number"),
    ({"model_overrides": 5}, "model_overrides: 5 is not a mapping"),
    ({"image_size": "big"}, "image_size: 'big' is not an integer"),
    ({"max_steps": "zero"}, "max_steps: 'zero' is not an integer"),
    ({"log_every": 0}, "must be > 0, got 0"),
    ({"grad_accum": 0}, "must be > 0, got 0"),
    ({"max_steps": 0}, "must be >= 1, got 0"),
    ({"momentum": 5}, "must be in [0, 1], got 5"),
    ({"eval_every": -1}, "must be >= 0, got -1"),
    ({"lr": float("inf")}, "must be a finite number, got inf"),
    ({"max_minutes": float("nan")}, "must be a finite number, got nan"),
    ({"backbone_lr": -1.0}, "must be >= 0 (0 freezes the backbone's weights), got -1.0"),
    ({"eval_max_images": 0}, "must be >= 1, got 0"),
    ({"model_overrides": {"fpn_repeats": -1}}, "EfficientDet option(s) fpn_repeats=-1: counts, sizes and rates are >= 0"),
])
def test_a_config_value_of_the_wrong_type_or_range_is_one_line_naming_it(tmp_path, tiny_config, capsys, values, message):
    tiny_config.write_text(yaml.safe_dump({**yaml.safe_load(tiny_config.read_text()), **values}))
    if message.startswith("must"):  # a range: named as the file's key
        message = f"'{next(iter(values))}:' in {tiny_config} {message}"
    assert message in _error(capsys, ["train", *_shapes(tiny_config), "--out", str(tmp_path / "run")])[0]


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    (["--ema-decay", "1.5"], "--ema-decay must be in [0, 1), got 1.5"),
    (["--max-minutes", "nan"], "--max-minutes must be a finite number, got nan"),
])
def test_a_flag_out_of_range_is_named_as_the_flag(tmp_path, capsys, flags, message):
    lines = _error(capsys, ["train", "--train", "shapes:train", "--max-steps", "1", "--out", str(tmp_path), *flags])
    assert lines[0] == f"scaledet train: error: {message}"


def test_resume_true_in_a_config_is_resume(tmp_path):
    from scaledet.engine.config import TrainConfig

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"resume": True, "max_steps": 3, "lr": "0.01"}))
    config = TrainConfig.from_sources(path)
    assert config.resume == "auto" and config.lr == 0.01 and config.max_steps == 3


def test_a_run_folders_other_files_are_named_as_not_weights(tmp_path, capsys):
    for name in ("weights.json", "steps.csv"):
        (tmp_path / name).write_text("{}")
        lines = _error(capsys, ["predict", str(tmp_path), "--weights", str(tmp_path / name)])
        assert f"{tmp_path / name} is not a weights file (a {name[-5:] if name.endswith('.json') else '.csv'} file)" in lines[0]


def test_an_output_folder_that_cannot_be_written_is_named_before_the_data_loads(tmp_path, tiny_config, capsys):
    (tmp_path / "file").write_text("")  # a file where the run's folder would go
    lines = _error(capsys, ["train", *_shapes(tiny_config), "--out", str(tmp_path / "file" / "run")])
    assert lines[0].endswith(f"cannot write the run's files there ({tmp_path / 'file'} is not a folder); give another --out")
    assert "data:" not in capsys.readouterr().out


def test_bench_image_size_below_one_pixel_is_refused_at_once(capsys):
    assert main(["bench", "--models", "efficientdet_d0", "--image-size", "0", "0"]) == 2
    assert "--image-size H W must be >= 1 pixel each, got 0 0" in capsys.readouterr().err


def test_a_weights_file_that_cannot_be_opened_names_the_real_reason(tmp_path, capsys):
    """safetensors reports any failure to open as "No such file or directory" (a file without read
    permission too) or "No such device": the reason is the operating system's, with the path."""
    (tmp_path / "w.safetensors").write_bytes(b"x")
    (tmp_path / "w.safetensors").chmod(0o000)
    if os.access(tmp_path / "w.safetensors", os.R_OK):  # root reads anything: a folder of that name fails to open too
        (tmp_path / "w.safetensors").unlink()
        (tmp_path / "w.safetensors").mkdir()
        assert _read_weights_config_error(tmp_path / "w.safetensors") == f"{tmp_path / 'w.safetensors'}: Is a directory"
    else:
        lines = _error(capsys, ["predict", str(tmp_path), "--weights", str(tmp_path / "w.safetensors")])
        assert lines[0].endswith(f"{tmp_path / 'w.safetensors'}: Permission denied")


def _read_weights_config_error(path) -> str:
    from scaledet.cli import describe_error
    from scaledet.weights import read_weights_config

    with pytest.raises(OSError) as caught:
        read_weights_config(path)
    return describe_error(caught.value)


def test_a_folder_given_as_weights_names_the_file_inside(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"x")
    lines = _error(capsys, ["predict", str(tmp_path), "--weights", str(tmp_path / "hf"), "--model", "detr_r50"])
    assert lines[0].endswith(f"{tmp_path / 'hf'} is a folder: give the weights file in it ({tmp_path / 'hf' / 'model.safetensors'})")


def test_each_process_of_a_multi_process_run_names_itself_in_its_error(tmp_path, capsys, monkeypatch):
    """Under --processes / torchrun every rank reports its error: one whole line each, the other ranks
    named, so two ranks' lines neither look like one repeated message nor run together."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["predict", str(tmp_path), "--weights", str(tmp_path / "none.safetensors")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaledet predict (process 1 of 2): error: ") and err.count("\n") == 1, err
    monkeypatch.setenv("RANK", "0")
    _error(capsys, argv)  # rank 0 speaks as a single process does


def test_resume_names_a_bad_checkpoint_before_the_data_loads_and_a_weights_file_is_not_one(tmp_path, tiny_config,
                                                                                           capsys):
    out = tmp_path / "run"
    lines = _error(capsys, ["train", *_shapes(tiny_config), "--out", str(out), "--resume"])
    assert "checkpoint not found" in lines[0] and "data:" not in capsys.readouterr().out
    (tmp_path / "w.safetensors").write_bytes(b"x")
    lines = _error(capsys, ["train", *_shapes(tiny_config), "--out", str(out), "--resume", str(tmp_path / "w.safetensors")])
    assert "w.safetensors is not a scaledet training checkpoint" in lines[0] and "--pretrained PATH" in lines[0]
    assert "delete" not in lines[0]


def test_resume_with_another_model_is_one_line_and_changed_options_are_named(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    args = [*_shapes(tiny_config), "--out", str(out)]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    lines = _error(capsys, ["train", *args, "--resume", "--image-size", "96"])
    assert "last.pt is a run of efficientdet_d0 at 64x64" in lines[0] and "this command builds efficientdet_d0 at 96x96" in lines[0]
    with pytest.warns(UserWarning, match=r"resuming .* left out\): --max-steps 3 \(was 2\), --seed 1 \(was 0\); the run"):
        assert main(["train", *args, "--resume", "--max-steps", "3", "--seed", "1"]) == 0


def test_ctrl_c_in_training_says_what_resume_would_continue_from(tmp_path, tiny_config, capsys, monkeypatch):
    import scaledet.engine.run

    def interrupted(config):
        raise KeyboardInterrupt

    def interrupted_after_a_checkpoint(config):
        (Path(config.out) / "last.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(scaledet.engine.run, "train_from_config", interrupted)
    out = tmp_path / "run"
    assert main(["train", *_shapes(tiny_config), "--out", str(out)]) == 130
    assert capsys.readouterr().err == "scaledet train: interrupted; nothing was saved yet: run the same command again\n"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    os.utime(out / "last.pt", (1e9, 1e9))  # an earlier run's checkpoint is not this run's to resume
    assert main(["train", *_shapes(tiny_config), "--out", str(out)]) == 130
    assert capsys.readouterr().err.endswith("nothing was saved yet: run the same command again\n")
    monkeypatch.setattr(scaledet.engine.run, "train_from_config", interrupted_after_a_checkpoint)
    assert main(["train", *_shapes(tiny_config), "--out", str(out)]) == 130
    assert capsys.readouterr().err.endswith(f"the same command with --resume continues from {out / 'last.pt'}\n")


def test_predict_eval_export_take_threads(tmp_path, capsys):
    """--threads sets torch's threads (onnxruntime sessions follow them) in predict, eval and export too."""
    before = torch.get_num_threads()
    try:
        for command in ("predict", "eval", "export"):
            lines = _error(capsys, [command, "--threads", "0", *(["x.png"] if command == "predict" else [])])
            assert lines[0].endswith("--threads must be 1 or more, got 0")
        _error(capsys, ["predict", str(tmp_path), "--threads", "1", "--weights", str(tmp_path / "none.safetensors")])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv, message", [
    (["--score-tol", "0.1"], "--score-tol 0.1: it is a tolerance of --check: add --check or drop it"),
    (["--check", "--box-tol", "-1"], "--box-tol -1: a tolerance is >= 0"),
    (["--check", "--int8", "--box-tol", "1"], "--box-tol is the float check's: the --int8 check matches boxes by IoU"),
])
def test_export_check_tolerances_are_checked(capsys, argv, message):
    lines = _error(capsys, ["export", "--model", "efficientdet_d0", *argv])
    assert message in lines[0]


def test_eval_refuses_a_detections_file_and_a_model_together(tmp_path, capsys):
    lines = _error(capsys, ["eval", "--gt", "g.json", "--detections", "d.json", "--weights", "w.safetensors",
                            "--data", "shapes:val"])
    assert "--weights / --data: for evaluating a model, while --gt and --detections score a file" in lines[0]


def test_a_model_without_weights_is_said_to_be_random(tmp_path):
    with pytest.warns(UserWarning, match="no --weights: efficientdet_d0 has random weights"):
        main(["predict", str(tmp_path), "--model", "efficientdet_d0", "--image-size", "64", "--output", str(tmp_path / "o")])


@pytest.mark.parametrize("argv, message", [
    (["predict", "x.png", "--max-pixels", "100"], "--max-pixels 100: it limits --tile's decoding"),
    (["predict", "x.png", "--tile", "64", "--max-pixels", "-5"], "--max-pixels -5: a pixel count is >= 0"),
    (["predict", "x.png", "--split", "val"], "--split go(es) with --data DATASET"),
    (["export", "--model", "efficientdet_d0", "--calibration-images", "5"], "--calibration-images: for --int8 only"),
    (["bench", "--models", "efficientdet_d0", "--threads", "-2"], "--threads must be 1 or more, got -2"),
    (["doctor", "shapes:train", "--split", "val"], "--split is for a VOC folder or a YOLO data.yaml"),
    (["train", "--train", "shapes:train", "--processes", "0"], "--processes must be 1 or more, got 0"),
])
def test_options_that_would_be_ignored_or_crash_are_one_line(capsys, argv, message):
    assert message in _error(capsys, argv)[0]


def test_outputs_that_cannot_be_written_are_named_before_the_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    lines = _error(capsys, ["doctor", "shapes:train", "--json", str(tmp_path / "file" / "r.json")])
    assert lines[0].endswith("cannot write the report there (" + str(tmp_path / "file") + " is not a folder); give another --json")
    lines = _error(capsys, ["bench", "--models", "efficientdet_d0", "--json", str(tmp_path / "file")])
    assert f"{tmp_path / 'file'}: not a bench results JSON" in lines[0]
    assert main(["doctor", "shapes:train", "--json", str(tmp_path / "new" / "r.json")]) == 0  # folders are made


def test_paper_errors_and_eval_sizes_are_one_line(tmp_path, capsys):
    assert "--gpu-json" in _error(capsys, ["paper", "--out", str(tmp_path), "--gpu-json", str(tmp_path / "no.json")])[0]
    lines = _error(capsys, ["eval", "--model", "efficientdet_d0", "--data", "shapes:val", "--batch-size", "0"])
    assert lines[0].endswith("--batch-size must be >= 1 and --workers >= 0, got 0 and 0")
    lines = _error(capsys, ["eval", "--model", "efficientdet_d0", "--data", "shapes:val", "--tile", "64", "--workers", "2"])
    assert lines[0].endswith("--workers 2 goes with whole-image evaluation: with --tile each image's tiles are read "
                             "from its file as they are predicted (drop --workers)")


def test_eval_through_tiles_sends_tiles_as_predict_does(monkeypatch):
    """eval --tile sent its whole-image --batch-size (8) as the tiles per model call; by default it now sends
    what predict --tile does (1 on a CPU)."""
    import scaledet.commands.eval as eval_command
    from scaledet.commands.predict import tile_options

    seen = {}
    monkeypatch.setattr("scaledet.evaluation.evaluate_model",
                        lambda model, dataset, max_dets, batch_size, *rest, tile=None, **kw: seen.update(
                            batch=batch_size, tile=tile) or {"AP": 0.0})
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    args = parser.parse_args(["--model", "efficientdet_lite0", "--image-size", "64", "--data", "shapes:val",
                              "--tile", "64", "--no-progress"])
    args.debug = False
    eval_command._model_stats(args)
    assert seen["batch"] == eval_command.WHOLE_IMAGE_BATCH and seen["tile"].batch_size is None
    assert tile_options(args).batch_size is None  # predict_tiled then picks 1 on a CPU


def test_an_unwritable_optimize_cache_costs_a_warning_not_the_result(tmp_path, monkeypatch):
    optimize = importlib.import_module("scaledet.inference.optimize")  # the package exports a function of that name

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SCALEDET_CACHE", str(tmp_path / "file"))
    with pytest.warns(UserWarning, match="could not keep the measured choice in .*SCALEDET_CACHE"):
        optimize._store_choice({"k": 1}, "precision", "fp32", {}, True)


def test_paper_names_a_bad_gpu_json_and_bad_ablation_sizes_at_once(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("x")
    lines = _error(capsys, ["paper", "--out", str(tmp_path / "r"), "--gpu-json", str(tmp_path / "bad.json"),
                            "--no-latency"])
    assert lines[0].endswith("give another --gpu-json") and "bad.json: not a measurements / bench JSON file" in lines[0]
    lines = _error(capsys, ["paper", "--out", str(tmp_path / "r"), "--train-ablation", "--ablation-steps", "-1"])
    assert lines[0].endswith("--ablation-steps -1: must be > 0")
