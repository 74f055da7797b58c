"""optimize(engine=...): onnxruntime as an fp32 engine, and the measured, cached automatic choice."""

import gc
import importlib
import json
import time
import warnings

import pytest
import torch

import scaledet
from tests.test_optimize import assert_equal_detections, randomise_efficientdet

optimize_module = importlib.import_module("scaledet.inference.optimize")


def test_onnxruntime_engine_gives_the_optimised_detections():
    pytest.importorskip("onnxruntime")
    from scaledet.export import OnnxDetector

    model = randomise_efficientdet(scaledet.create_model("efficientdet_lite0", num_classes=5, image_size=128))
    fast = scaledet.optimize(model, engine="onnxruntime")
    assert isinstance(fast, OnnxDetector) and (fast.engine, fast.precision) == ("onnxruntime", "fp32")
    assert fast.class_names == model.class_names
    images = [torch.rand(3, 128, 100), torch.rand(3, 90, 128)]
    with torch.no_grad():
        reference = model(images)
    assert_equal_detections(reference, fast(images), score_tol=1e-4, box_tol=1e-2)
    torch_engine = scaledet.optimize(model, engine="torch")
    assert (torch_engine.engine, torch_engine.precision) == ("torch", "fp32")
    # its temporary ONNX file lives as long as the engine, and goes quietly (no ResourceWarning: Implicitly ...)
    folder = fast.path.parent
    assert fast.path.is_file() and folder.name.startswith("scaledet-onnx-")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del fast
        gc.collect()
    assert not folder.exists()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


class FakeTorch:
    """Stands in for OptimizedDetector: 20 ms per call, two fixed detections."""

    built = 0

    def __init__(self, model, precision="fp32", compile=False):
        FakeTorch.built += 1

    def __call__(self, images):
        time.sleep(0.02)
        return detections(0.0)


class FakeOnnx:
    """Stands in for the onnxruntime detector: no wait, scores moved by ``score_shift``."""

    score_shift = 0.0
    built = 0

    def __init__(self, model, threads=None):
        FakeOnnx.built += 1

    def __call__(self, images):
        return detections(self.score_shift)


def detections(score_shift):
    return [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]),
             "scores": torch.tensor([0.9, 0.5]) + score_shift, "labels": torch.tensor([0, 1])}]


def test_auto_engine_measures_caches_and_keeps_torch_when_it_must(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SCALEDET_CACHE", str(tmp_path))
    monkeypatch.delenv("SCALEDET_OPTIMIZE_CACHE", raising=False)
    monkeypatch.setattr(optimize_module, "OptimizedDetector", FakeTorch)
    monkeypatch.setattr("scaledet.export.onnxruntime_detector", FakeOnnx)
    model = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=64).eval()
    # nothing to choose: other precisions, compile, no onnxruntime -> torch, nothing measured or cached
    assert optimize_module.choose_engine(model, "bf16") == "torch"
    assert optimize_module.choose_engine(model, "fp32", compile=True) == "torch"
    with monkeypatch.context() as patch:
        patch.setattr(optimize_module, "onnxruntime_available", lambda: False)
        assert optimize_module.choose_engine(model) == "torch"
    assert FakeTorch.built == FakeOnnx.built == 0 and not list(tmp_path.rglob("*.json"))
    # faster and agreeing -> onnxruntime, measured once, cached with the threads in the key
    assert optimize_module.choose_engine(model, runs=2) == "onnxruntime"
    files = list((tmp_path / "optimize").glob("engine-*.json"))
    assert len(files) == 1 and FakeOnnx.built == 1
    record = json.loads(files[0].read_text())
    assert record["engine"] == "onnxruntime" and record["key"]["threads"] == torch.get_num_threads()
    assert record["measured"]["onnxruntime"]["agrees"]
    assert record["measured"]["onnxruntime"]["median_ms"] < record["measured"]["torch"]["median_ms"]
    assert optimize_module.choose_engine(model) == "onnxruntime" and FakeOnnx.built == 1  # from the cache
    assert isinstance(scaledet.optimize(model, engine="auto"), FakeOnnx) and FakeOnnx.built == 2
    files[0].unlink()  # measured again: optimize returns the detector it measured (no second export)
    assert isinstance(scaledet.optimize(model, engine="auto"), FakeOnnx) and FakeOnnx.built == 3
    # faster but outside the score tolerance -> torch; cache off: nothing read or written
    monkeypatch.setenv("SCALEDET_OPTIMIZE_CACHE", "0")
    monkeypatch.setattr(FakeOnnx, "score_shift", 2 * optimize_module.AUTO_SCORE_TOL)
    files[0].unlink()
    assert optimize_module.choose_engine(model, runs=1) == "torch" and not files[0].exists()


def test_engine_argument_errors():
    model = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=64).eval()
    with pytest.raises(ValueError, match="engine must be one of"):
        scaledet.optimize(model, engine="tensorrt")
    with pytest.raises(ValueError, match="int8' runs in onnxruntime"):
        scaledet.optimize(model, precision="int8", engine="torch")
    with pytest.raises(ValueError, match="engine='onnxruntime' runs fp32 on the CPU"):
        scaledet.optimize(model, precision="bf16", engine="onnxruntime", force=True)


def test_predict_says_which_engine_auto_picked(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from scaledet.cli import main

    monkeypatch.setenv("SCALEDET_CACHE", str(tmp_path / "cache"))
    model = scaledet.create_model("efficientdet_lite0", num_classes=2, image_size=64).eval()
    model.save(tmp_path / "weights.safetensors")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 48), (90, 120, 30)).save(tmp_path / "images" / "a.png")
    assert main(["predict", str(tmp_path / "images"), "--weights", str(tmp_path / "weights.safetensors"),
                 "--output", str(tmp_path / "out"), "--optimize", "--engine", "auto", "--no-progress"]) == 0
    picked = [line for line in capsys.readouterr().out.splitlines() if line.startswith("engine: ")]
    record = json.loads(next((tmp_path / "cache" / "optimize").glob("engine-*.json")).read_text())
    assert picked == [f"engine: {record['engine']} (--engine auto: the faster of torch and onnxruntime on this "
                      "processor)"]
