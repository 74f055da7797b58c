"""scaledet bench (tiny) writes a table and JSON with medians and equality checks; the benchmarks
script adds the reference port's engine with the same weights."""

import importlib
import json

import pytest

from benchmarks import bench_reference
from scaledet.cli import main
from scaledet.inference.processor import current_processor


def this_processor_table(path):
    """The table this machine's processor kind wrote into a bench results file."""
    return json.loads(path.read_text())["tables"][current_processor().kind]


def test_bench_cli_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    code = main(["bench", "--models", "efficientdet_lite0", "--image-size", "64", "64", "--batch-sizes", "1", "2",
                 "--runs", "2", "--warmup", "1", "--no-onnx", "--precision", "fp32",
                 "--json", str(out), "--markdown", str(md)])
    assert code == 0
    payload = this_processor_table(out)
    rows = payload["results"][0]["rows"]
    assert [(r["engine"], r["batch"]) for r in rows] == [("ours-eager", 1), ("ours-opt-fp32", 1),
                                                          ("ours-eager", 2), ("ours-opt-fp32", 2)]
    assert all(r["runs"] == 2 and r["median_ms"] > 0 for r in rows)
    assert rows[0]["vs_eager"] == 1.0 and rows[0]["vs_reference"] is None
    # --image-size sets the test images; the record says what the network ran on (lite0 resizes to 320)
    assert payload["results"][0]["input_hw"] == [64, 64] and payload["results"][0]["network_input_hw"] == [320, 320]
    equal = payload["results"][0]["vs_eager_detections"]["ours-opt-fp32@b2"]
    assert equal["count_diff"] == 0 and equal["max_score_diff"] < 1e-4 and equal["equal_as_sets"] is True
    share = payload["results"][0]["postprocess_batch1"]
    assert 0 < share["postprocess_ms"] < share["total_ms"]
    assert payload["machine"]["cores"] >= 1 and "Machine:" in md.read_text()
    assert f"| {current_processor().kind} | efficientdet_lite0 | ours-opt-fp32 | 2 |" in capsys.readouterr().out


def test_bench_times_a_weights_file_and_names_its_model(tmp_path, capsys):
    import scaledet

    weights = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=64).save(tmp_path / "w.safetensors")
    out = tmp_path / "bench.json"
    assert main(["bench", "--weights", str(weights), "--batch-sizes", "1", "--runs", "1", "--warmup", "0",
                 "--no-onnx", "--precision", "fp32", "--json", str(out)]) == 0
    result = this_processor_table(out)["results"][0]
    assert result["model"] == "efficientdet_lite0" and result["weights"] == str(weights)
    assert result["network_input_hw"] == [64, 64]  # the file's image size, not the registry's 320
    assert main(["bench", "--models", "efficientdet_d0", "detr_r50", "--weights", str(weights)]) == 2
    assert "--weights gives 1 file(s) for 2 --models" in capsys.readouterr().err
    assert main(["bench", "--weights", str(tmp_path / "w.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_tied_random_scores_are_called_untestable_not_unequal():
    import torch

    from scaledet.commands.bench import _untestable
    from scaledet.inference.compare import compare_detection_sets

    def detections(boxes):
        return [{"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.full((len(boxes),), 0.01),
                 "labels": torch.zeros(len(boxes), dtype=torch.int64)}]

    # every score alike (random weights): the engines kept different boxes of the same score
    tied = compare_detection_sets(detections([[0, 0, 10, 10], [20, 20, 30, 30]]),
                                  detections([[0, 0, 10, 10], [40, 40, 50, 50]]))
    assert not tied.passed and _untestable(tied)
    moved = compare_detection_sets(detections([[0, 0, 10, 10]]),  # one box that moved: a real difference
                                   [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.5]),
                                     "labels": torch.zeros(1, dtype=torch.int64)}])
    assert not moved.passed and not _untestable(moved)


def test_bench_rejects_fp16_on_cpu(capsys):
    assert main(["bench", "--precision", "fp16"]) == 2
    assert "fp16 needs --device cuda" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_int8_engine_is_timed_beside_the_others(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    code = main(["bench", "--models", "efficientdet_lite0", "--image-size", "64", "64", "--batch-sizes", "1",
                 "--runs", "1", "--warmup", "0", "--no-onnx", "--precision", "fp32", "int8", "--json", str(out)])
    assert code == 0
    result = this_processor_table(out)["results"][0]
    assert [r["engine"] for r in result["rows"]] == ["ours-eager", "ours-opt-fp32", "ours-int8"]
    assert result["rows"][2]["median_ms"] > 0 and "ours-int8@b1" in result["vs_eager_detections"]
    assert "float-kept rule" in result["rows"][2]["note"]


def test_bench_int8_is_cpu_only(capsys):
    assert main(["bench", "--precision", "int8", "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err
    assert "this machine has no usable CUDA device" in err or "int8 runs in onnxruntime on the CPU" in err


def test_bench_reference_adds_effdet_with_the_same_weights(tmp_path, capsys):
    pytest.importorskip("effdet")
    out = tmp_path / "bench.json"
    code = bench_reference.main(["--models", "efficientdet_lite0", "--image-size", "64", "64", "--batch-sizes", "1",
                                 "--runs", "1", "--warmup", "0", "--no-onnx", "--precision", "fp32",
                                 "--json", str(out)])
    assert code == 0
    payload = this_processor_table(out)
    rows = payload["results"][0]["rows"]
    assert [r["engine"] for r in rows] == ["effdet", "ours-eager", "ours-opt-fp32"]
    assert rows[0]["vs_reference"] == 1.0 and rows[1]["vs_reference"] > 0
    assert payload["command"].startswith("python -m benchmarks.bench_reference --models efficientdet_lite0")
    assert "| efficientdet_lite0 | effdet | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--no-reference"])  # the installed command has no reference engines


def test_a_bf16_row_on_a_processor_without_bf16_is_not_labelled_bf16(tmp_path, monkeypatch):
    """optimize(precision='bf16') runs fp32 where bf16 is not native; the bench printed that run as
    ours-opt-bf16. With fp32 in the table it is left out; alone, it is labelled with what ran."""
    from scaledet.inference import benchmark

    optimize_module = importlib.import_module("scaledet.inference.optimize")
    monkeypatch.setattr(optimize_module, "supported_precision", lambda precision, device, force=False: "fp32")
    engines, _ = benchmark.build_engines("efficientdet_lite0", "cpu", ["fp32", "bf16"], False, False, tmp_path)
    assert [e.name for e in engines] == ["ours-eager", "ours-opt-fp32"]
    engines, _ = benchmark.build_engines("efficientdet_lite0", "cpu", ["bf16"], False, False, tmp_path)
    assert [e.name for e in engines] == ["ours-eager", "ours-opt-fp32"]
    assert engines[1].note == "bf16 asked: not native on this processor, ran fp32"
