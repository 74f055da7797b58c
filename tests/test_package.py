"""The package skeleton: CLI, registry errors, weight files."""

import subprocess
import sys

import pytest
import torch

import scaledet
from scaledet import hub, weights
from scaledet.cli import main


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "scaledet" in capsys.readouterr().out


def test_import_and_help_load_no_torch():
    """``import scaledet`` and building every command's parser stay light: ``scaledet --help`` answers at
    once, and a Ctrl-C while torch loads (inside a command's ``run``) reaches the command line's handler."""
    probe = ("import sys, scaledet, scaledet.cli; scaledet.cli.build_parser(); "
             "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'onnxruntime') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_export_help_states_the_quantizer_default():
    from scaledet.commands.export import HELP_PERCENTILE
    from scaledet.inference.quantize import DEFAULT_PERCENTILE

    assert HELP_PERCENTILE == DEFAULT_PERCENTILE


def test_unknown_model_names_choices():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        scaledet.create_model("nope")


@pytest.mark.parametrize("arguments, message", [
    ({"num_classes": 2.5}, "num_classes must be an int >= 1, got 2.5"),  # was truncated to 2
    ({"num_classes": "3"}, "num_classes must be an int >= 1, got '3'"),
    ({"num_classes": 3, "class_names": "cat"}, "class_names must be a list .* got the string 'cat'"),  # was c, a, t
    ({"image_size": 128.0}, r"image_size must be an int or \(height, width\)"),
    ({"image_size": (128, 0)}, r"image_size must be an int or \(height, width\)"),
    ({"pretrained": True}, "pretrained must be None, 'coco' or a weights file path, got True"),
])
def test_create_model_names_an_argument_of_the_wrong_kind(arguments, message):
    with pytest.raises(ValueError, match=message):
        scaledet.create_model("efficientdet_d0", **arguments)


def test_save_writes_what_load_reads_and_dir_lists_the_entry_points(tmp_path):
    model = scaledet.create_model("efficientdet_lite0", num_classes=2, image_size=64)
    with pytest.raises(ValueError, match=r"save writes safetensors: give a path ending in .safetensors, got '.*w.pt'"):
        model.save(tmp_path / "w.pt")  # load took such a file for an empty or corrupt .pt
    assert scaledet.load(model.save(tmp_path / "w.safetensors")).config == model.config
    assert {"create_model", "load", "optimize", "predict_tiled"} <= set(dir(scaledet))


def test_create_model_takes_numpy_integers():
    import numpy as np

    model = scaledet.create_model("efficientdet_d0", num_classes=np.int64(3), image_size=np.int64(128))
    assert model.num_classes == 3 and model.image_size == (128, 128) and type(model.config["image_size"][0]) is int


def test_weights_round_trip_with_config(tmp_path):
    state = {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5)}
    path = weights.save_weights(state, tmp_path / "w.safetensors", {"model": "efficientdet_d0", "num_classes": 3})
    assert weights.config_path_for(path).exists()
    assert weights.read_weights_config(path)["num_classes"] == 3
    loaded = weights.load_checkpoint(path)
    assert torch.equal(loaded["a.weight"], state["a.weight"]) and torch.equal(loaded["b.bias"], state["b.bias"])


class _Evil:
    pass


def test_load_checkpoint_unwraps_and_refuses_pickled_objects(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "ckpt.pth")
    assert torch.equal(weights.load_checkpoint(tmp_path / "ckpt.pth")["w"], torch.ones(2))
    # the official RT-DETR layout: EMA weights under ema/module, preferred to the raw model
    torch.save({"ema": {"module": {"w": torch.full((2,), 3.0)}, "updates": 7}, "model": {"w": torch.ones(2)}},
               tmp_path / "rtdetr.pth")
    assert torch.equal(weights.load_checkpoint(tmp_path / "rtdetr.pth")["w"], torch.full((2,), 3.0))

    # An arbitrary object (here a module-level class) must never be unpickled.
    torch.save({"w": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth is not a plain weights file \(it contains pickled code") as info:
        weights.load_checkpoint(tmp_path / "evil.pth")
    assert "weights_only" not in str(info.value)  # never suggests loading it unsafely
    with pytest.raises(FileNotFoundError):
        weights.load_checkpoint(tmp_path / "missing.pth")
    # a plain pickle (pickle.dump of a model, joblib) is named as one, from its first bytes, never unpickled
    import pickle

    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"w": _Evil()}, protocol=4))
    with pytest.raises(ValueError, match=r"plain\.pt is a plain Python pickle, not a torch\.save .* refused for safety"):
        weights.load_checkpoint(tmp_path / "plain.pt")
    # torch.save's legacy (non-zip) format still loads
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(weights.load_checkpoint(tmp_path / "legacy.pth")["w"], torch.ones(2))


def test_download_checks_hash_and_reports_offline(tmp_path):
    source = tmp_path / "published.pth"
    torch.save({"w": torch.ones(2)}, source)
    digest = hub.sha256_of(source)
    path = hub.download_checkpoint(source.as_uri(), sha256_prefix=digest[:8], filename="x-123.pth")
    assert path.parent == hub.cache_dir() and path.read_bytes() == source.read_bytes()
    with pytest.raises(RuntimeError, match="does not match the published hash"):
        hub.download_checkpoint(source.as_uri(), sha256_prefix="00000000", filename="x-123.pth")
    with pytest.raises(RuntimeError, match="place it at"):
        hub.download_checkpoint((tmp_path / "absent.pth").as_uri(), filename="absent.pth")
