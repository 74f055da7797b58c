"""Damaged bytes in a weights file or a training checkpoint are refused with one line, not loaded.

``torch.load`` does not check the CRC-32 each ``torch.save`` zip member carries, and safetensors has no
checksum at all: a bit flipped on disk or in a copy loads as a silently different model. Each test
first shows the damage goes unnoticed by the library alone, then that scaledet refuses it.
"""

import json
import struct
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from scaledet.cli import main
from scaledet.engine.checkpoint import atomic_torch_save, load_training_checkpoint
from scaledet.errors import UserError
from scaledet.weights import (CHECKSUM_KEY, read_checkpoint, save_weights, tensors_crc32,
                              torch_load_weights_only)


def _flip_byte_in_zip_member(path, suffix: str, at: int = 17) -> str:
    """Invert one byte of the zip member whose name ends with ``suffix`` (stored uncompressed, as torch.save
    writes them); returns the member's name."""
    with zipfile.ZipFile(path) as archive:
        member = next(info for info in archive.infolist() if info.filename.endswith(suffix))
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length
    data[start + at] ^= 0xFF
    path.write_bytes(bytes(data))
    return member.filename


def _flip_byte_in_safetensors_data(path, at: int = 9) -> None:
    data = bytearray(path.read_bytes())
    header_length = struct.unpack("<Q", data[:8])[0]
    data[8 + header_length + at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_torch_save_file_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"weight": torch.arange(64, dtype=torch.float32)}, path)
    member = _flip_byte_in_zip_member(path, "data/0")
    assert not torch.equal(torch.load(path, weights_only=True)["weight"], torch.arange(64, dtype=torch.float32))
    with pytest.raises(UserError) as caught:
        torch_load_weights_only(path)
    assert str(caught.value) == (f"{path} is corrupt ('{member}' fails the file's CRC-32 check: its bytes changed "
                                 "after it was written, e.g. a disk or copy error): download or export it again")


def test_a_file_saved_without_crc32_still_loads(tmp_path):
    from torch.utils.serialization import config

    path = tmp_path / "w.pth"
    before = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save({"weight": torch.ones(4)}, path)
    finally:
        config.save.compute_crc32 = before
    with zipfile.ZipFile(path) as archive:
        assert all(info.CRC == 0 for info in archive.infolist())  # nothing to check against
    assert torch.equal(torch_load_weights_only(path)["weight"], torch.ones(4))


def test_a_damaged_training_checkpoint_names_the_resume_fix(tmp_path):
    path = atomic_torch_save({"model": {"w": torch.zeros(32)}, "step": 3}, tmp_path / "last.pt")
    assert load_training_checkpoint(path)["step"] == 3
    _flip_byte_in_zip_member(path, "data/0")
    with pytest.raises(UserError, match=r"last\.pt is corrupt \('[^']*/data/0' fails the file's CRC-32 check.*"
                                        r"start without --resume"):
        load_training_checkpoint(path)


def test_load_names_the_model_of_a_damaged_checkpoint_and_still_refuses_it(tmp_path):
    """``scaledet.load(last.pt)`` peeks at the file's config (tensors mapped, CRC-32 unchecked) to name the model,
    then reads it for real: the damage is caught there, before a single weight is used."""
    import scaledet
    from scaledet import create_model

    model = create_model("efficientdet_d0", num_classes=2, image_size=64, backbone="mobilenetv3_small_050",
                         fpn_channels=16, fpn_repeats=1, head_repeats=1)
    path = atomic_torch_save({"model": model.state_dict(), "step": 5, "model_config": model.config},
                             tmp_path / "last.pt")
    assert torch_load_weights_only(path, peek=True)["model_config"] == model.config
    loaded = scaledet.load(path).state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())
    _flip_byte_in_zip_member(path, "data/0")
    assert torch_load_weights_only(path, peek=True)["step"] == 5  # the peek does not check
    with pytest.raises(UserError, match=r"last\.pt is corrupt \('[^']*/data/0' fails the file's CRC-32 check"):
        scaledet.load(path)


def test_our_safetensors_carry_a_checksum_that_is_checked(tmp_path):
    state = {"b.weight": torch.randn(5, 3), "a.count": torch.tensor(7), "flags": torch.tensor([True, False]),
             "half": torch.randn(4, dtype=torch.bfloat16), "empty": torch.zeros(0, 2)}
    path = save_weights(state, tmp_path / "weights.safetensors", {"model": "efficientdet_d0", "num_classes": 1})
    loaded, config = read_checkpoint(path)
    assert config["num_classes"] == 1 and all(torch.equal(loaded[key], state[key]) for key in state)
    _flip_byte_in_safetensors_data(path)
    assert not all(torch.equal(value, state[key]) for key, value in load_file(str(path)).items())  # unnoticed
    with pytest.raises(UserError, match=r"weights\.safetensors is corrupt \(its tensors' data fails the file's "
                                        r"CRC-32 check.*download or export it again"):
        read_checkpoint(path)


def test_the_checksum_covers_names_shapes_and_values():
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor(1)}
    same = tensors_crc32(state)
    assert same == tensors_crc32({"b": torch.tensor(1), "a": torch.arange(6.0).reshape(2, 3)})  # order-free
    assert len(same) == 8 and int(same, 16) >= 0
    assert tensors_crc32({**state, "a": torch.arange(6.0).reshape(3, 2)}) != same
    assert tensors_crc32({"c": state["a"], "b": state["b"]}) != same
    assert tensors_crc32({**state, "b": torch.tensor(2)}) != same


def test_other_projects_safetensors_without_a_checksum_still_load(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(3)}, str(path), metadata={"format": "pt"})
    _flip_byte_in_safetensors_data(path, at=0)  # nothing to check it against: loads as it is
    assert read_checkpoint(path)[0]["w"].shape == (3,)


def test_cli_refuses_damaged_weights_in_one_line(tmp_path, capsys):
    from scaledet import create_model

    model = create_model("efficientdet_d0", num_classes=2, image_size=64, backbone="mobilenetv3_small_050",
                         fpn_channels=16, fpn_repeats=1, head_repeats=1)
    model.save(tmp_path / "weights.safetensors")
    assert CHECKSUM_KEY in json.loads(
        (tmp_path / "weights.safetensors").read_bytes()[8:8 + struct.unpack(
            "<Q", (tmp_path / "weights.safetensors").read_bytes()[:8])[0]])["__metadata__"]
    _flip_byte_in_safetensors_data(tmp_path / "weights.safetensors", at=1000)
    code = main(["predict", "--weights", str(tmp_path / "weights.safetensors"), "--output", str(tmp_path / "out"),
                 str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "weights.safetensors is corrupt (its tensors' data fails the file's CRC-32 check" in err


def _small_export(tmp_path):
    from scaledet import create_model
    from scaledet.export import export_onnx

    model = create_model("efficientdet_d0", num_classes=2, image_size=64, backbone="mobilenetv3_small_050",
                         fpn_channels=16, fpn_repeats=1, head_repeats=1).eval()
    return export_onnx(model, tmp_path / "model.onnx")


def _flip_byte_in_largest_onnx_weight(path) -> None:
    import onnx

    largest = max(onnx.load(str(path)).graph.initializer, key=lambda init: len(init.raw_data))
    data = bytearray(path.read_bytes())
    start = data.find(largest.raw_data)
    assert start > 0 and data.find(largest.raw_data, start + 1) < 0
    data[start + 3] ^= 0x40  # the exponent byte of its first float
    path.write_bytes(bytes(data))


def test_a_damaged_onnx_export_is_refused(tmp_path, capsys):
    import onnxruntime

    from scaledet.export import OnnxDetector

    path = _small_export(tmp_path)
    OnnxDetector(path)  # as written: checks out
    _flip_byte_in_largest_onnx_weight(path)
    onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # unnoticed by onnxruntime
    with pytest.raises(UserError, match=r"model\.onnx is corrupt \(its graph fails the file's CRC-32 check.*"
                                        r"download or export it again"):
        OnnxDetector(path)
    code = main(["predict", "--weights", str(path), "--output", str(tmp_path / "out"), str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "model.onnx is corrupt (its graph fails the file's CRC-32 check" in err


def test_onnx_checksum_covers_the_metadata_and_files_without_one_still_load(tmp_path):
    import onnx

    from scaledet.export import OnnxDetector
    from scaledet.export.onnx import CHECKSUM_KEY, CONFIG_KEY, graph_crc32

    path = _small_export(tmp_path)
    proto = onnx.load(str(path))
    stored = {prop.key: prop.value for prop in proto.metadata_props}
    assert stored[CHECKSUM_KEY] == graph_crc32(proto)
    config = next(prop for prop in proto.metadata_props if prop.key == CONFIG_KEY)
    config.value = config.value.replace('"class_1"', '"person"')
    assert graph_crc32(proto) != stored[CHECKSUM_KEY]  # the config is covered too
    onnx.save(proto, str(path))
    with pytest.raises(UserError, match="fails the file's CRC-32 check"):
        OnnxDetector(path)
    older = onnx.load(str(path))  # as files exported before the checksum (or by others): not checked
    kept = [prop for prop in older.metadata_props if prop.key != CHECKSUM_KEY]
    del older.metadata_props[:]
    older.metadata_props.extend(kept)
    onnx.save(older, str(path))
    assert OnnxDetector(path).class_names == ["class_0", "person"]
