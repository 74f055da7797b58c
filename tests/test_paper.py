"""``scaledet paper``: Tables 4/5 numbers, measurement helpers, GPU import, ablation cache, report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scaledet.inference.processor import current_processor
from scaledet.paper import ablation, measure, tables
from scaledet.paper.reference import FEATURE_NETWORKS


def test_table4_reproduced_within_10_percent():
    rows = {r["model"]: r for r in tables.table4()}
    assert all(r["within_10pct"] for r in rows.values())
    assert rows["retinanet_r50_fpn"]["params"] == 34_047_374  # = torchvision retinanet_resnet50_fpn, 90 classes
    assert rows["efficientdet_d3"]["params"] == 12_032_296  # reference port's D3
    assert abs(rows["retinanet_r50_fpn"]["macs"] / 1e9 - 97) < 1
    assert 0.9 < rows["retinanet_effb3_fpn"]["macs_vs_paper"] < 1.0


def test_table5_feature_network_sizes_by_hand():
    rows = {r["key"]: r for r in tables.table5(model="efficientdet_d0")}
    # repeated FPN in D0 (64 ch, 3 layers, B0's C3-C5 = 40/112/320 ch), by hand:
    node = 64 * 9 + 64 * 64 + 64 + 2 * 64  # separable conv (dw, pw + bias) + BN
    lateral = lambda c: c * 64 + 64 + 2 * 64  # noqa: E731  1x1 conv + BN where channels differ
    extra = lateral(320)  # P6 from C5 (P7 is a max-pool)
    expected = 3 * 4 * node + lateral(320) + lateral(112) + lateral(40) + extra
    assert rows["fpn"]["fn_params"] == expected == 109_824
    # weighted and unweighted BiFPN: same MACs, params differ by the fusion scalars (19 inputs x 3 layers)
    assert rows["bifpn_fast"]["fn_macs"] == rows["bifpn_sum"]["fn_macs"]
    assert rows["bifpn_fast"]["fn_params"] - rows["bifpn_sum"]["fn_params"] == 57
    assert rows["bifpn_softmax"]["params"] == rows["bifpn_fast"]["params"]
    assert rows["fpn"]["params_ratio"] == 1.0 and rows["panet"]["fn_params_ratio"] > 1.5
    # backbone + heads are shared: total - feature network is the same for every row
    assert len({r["params"] - r["fn_params"] for r in rows.values()}) == 1


def test_table1_marks_the_published_departures():
    rows = tables.table1()
    assert [r["matches"] for r in rows] == [True, True, False, True, False, False, False, False, None]
    assert rows[2]["channels"] == 112 and rows[2]["channels_eq"] == 120
    assert "112 (eq. 120)" in tables.table1_markdown(rows)


def test_measure_size_of_a_submodule_and_latency():
    model = measure.build_meta("efficientdet_d0", image_size=128, feature_network="fpn", fusion="sum")
    size = measure.measure_size(model, (128, 128), part="network.fpn")
    full = measure.measure_size(model, (128, 128))
    assert size.macs == full.macs and 0 < size.part_macs < size.macs and size.part_params == 109_824
    with pytest.raises(ValueError, match="no submodule"):
        measure.measure_size(model, (128, 128), part="network.nothing")
    ms = measure.model_latency_ms("efficientdet_d0", "cpu", runs=2, image_size=64)
    assert 0 < ms < 60_000
    calls = []
    times = measure.time_forward(lambda: calls.append(1), torch.device("cpu"), runs=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5
    with pytest.raises(ValueError, match="runs"):
        measure.time_forward(lambda: None, torch.device("cpu"), runs=0)


def test_read_gpu_measurements_formats(tmp_path):
    from scaledet.paper.report import read_gpu_measurements

    ours = {"table2": [{"model": "efficientdet_d0", "latency_ms": 8.5, "latency_device": "cuda"},
                       {"model": "efficientdet_d1", "latency_ms": 99.0, "latency_device": "cpu"}],
            "table6": [{"model": "efficientdet_d0", "device": "cuda", "speedup": 1.2}]}
    bench = [{"model": "efficientdet_d0", "median_ms": 7.0}, {"model": "efficientdet_d1", "mean_ms": 9.0}]
    cases = [(ours, {"efficientdet_d0": 8.5}, 1), (bench, {"efficientdet_d0": 7.0, "efficientdet_d1": 9.0}, 0),
             ({"results": bench}, {"efficientdet_d0": 7.0, "efficientdet_d1": 9.0}, 0), ({"efficientdet_d2": 3}, {"efficientdet_d2": 3.0}, 0)]
    for i, (data, latency, fusion_rows) in enumerate(cases):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(data))
        got_latency, got_fusion = read_gpu_measurements(path)
        assert got_latency == latency and len(got_fusion) == fusion_rows
    # a scaledet bench --json file (what the help names) was read as a {model: ms} mapping: nothing, silently
    rows = [{"engine": "ours-eager", "batch": 1, "median_ms": 6.5}, {"engine": "ours-eager", "batch": 8, "median_ms": 30.0},
            {"engine": "ours-opt-fp16", "batch": 1, "median_ms": 4.0}]
    bench_file = {"format": "scaledet-bench/2", "tables": {"avx512": {"results": [{"model": "efficientdet_d0", "rows": rows}]}}}
    (tmp_path / "bench.json").write_text(json.dumps(bench_file))
    assert read_gpu_measurements(tmp_path / "bench.json") == ({"efficientdet_d0": 6.5}, [])
    for bad in ([{"name": "x"}], {"format": "other", "note": "x"}):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="no GPU latency"):
            read_gpu_measurements(tmp_path / "bad.json")


def test_ablation_cache_resumes_and_summarises(tmp_path, monkeypatch):
    calls = []

    def fake_train(row, seed, budget, device, out):  # the training itself is tested below
        calls.append((row.key, seed))
        return {"AP": 0.1 * (seed + 1) + (0.3 if row.key == "bifpn_fast" else 0.0), "AP50": 0.5, "steps": 3, "wall_time_s": 1.0}

    monkeypatch.setattr(ablation, "train_one", fake_train)
    cache = tmp_path / "cache.json"
    rows = [r for r in FEATURE_NETWORKS if r.key in ("fpn", "bifpn_fast")]
    budget = ablation.AblationBudget(max_steps=3, seeds=(0, 1))
    summary = ablation.run_ablation(cache, budget, rows=rows, progress=False)
    assert calls == [("fpn", 0), ("fpn", 1), ("bifpn_fast", 0), ("bifpn_fast", 1)]
    assert [r["aps"] for r in summary] == [pytest.approx([10.0, 20.0]), pytest.approx([40.0, 50.0])]
    assert summary[0]["ap_mean"] == pytest.approx(15.0) and summary[0]["ap_std"] == pytest.approx(math.sqrt(50))
    ablation.run_ablation(cache, budget, rows=rows, progress=False)  # everything cached: no training
    assert len(calls) == 4
    data = json.loads(cache.read_text())
    del data["runs"]["bifpn_fast/1"]
    cache.write_text(json.dumps(data))
    ablation.run_ablation(cache, budget, rows=rows, progress=False)  # resumes the missing run only
    assert calls[4:] == [("bifpn_fast", 1)]
    with pytest.raises(ValueError, match="another budget"):
        ablation.run_ablation(cache, ablation.AblationBudget(max_steps=4, seeds=(0, 1)), rows=rows, progress=False)
    sentence = ablation.ranking_sentence(summary)
    assert sentence.startswith("The paper's ranking holds exactly") and "within seed noise" not in sentence


def test_ablation_trains_one_step_for_real(tmp_path):
    budget = ablation.AblationBudget(image_size=64, train_images=4, val_images=2, batch_size=2, epochs=1, max_steps=1)
    row = next(r for r in FEATURE_NETWORKS if r.key == "nasfpn")
    result = ablation.train_one(row, 0, budget, "cpu", tmp_path / "run")
    assert result["steps"] == 1 and 0.0 <= result["AP"] <= 1.0
    config = json.loads((tmp_path / "run" / "weights.json").read_text()) if (tmp_path / "run" / "weights.json").exists() else None
    if config is not None:
        assert config["overrides"]["feature_network"] == "nasfpn"


def test_paper_command_writes_the_report(tmp_path, monkeypatch, capsys):
    from scaledet.cli import main

    monkeypatch.setattr(tables, "EFFICIENTDET_MODELS", ("efficientdet_d0", "efficientdet_d1"))
    monkeypatch.setattr(tables, "TABLE5_MODEL", "efficientdet_d0")
    cache = {"budget": ablation.AblationBudget().key(),
             "runs": {f"{r.key}/{s}": {"AP": 0.01 * (i + s), "AP50": 0.1, "steps": 5, "wall_time_s": 1.0}
                      for i, r in enumerate(FEATURE_NETWORKS) for s in (0, 1)}}
    (tmp_path / "ablation_cache.json").write_text(json.dumps(cache))
    assert main(["paper", "--out", str(tmp_path), "--no-latency", "--no-progress", "--seeds", "0", "1",
                 "--note", "a busy machine"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert current_processor().describe() in report  # the processor, not just "x86_64"
    printed = capsys.readouterr().out
    for heading in ("Table 1", "Table 2", "Table 4", "Table 5", "Table 6", "Figures", "training ablation"):
        assert heading in report and heading in printed
    assert "| ResNet50 + FPN | `retinanet_r50_fpn` | 640 | 34.05M | 34M |" in report
    assert (tmp_path / "figure_size.png").stat().st_size > 10_000 and (tmp_path / "figure_ablation.png").exists()
    assert "| BiFPN (softmax) | 6.00, 7.00 | 6.50 +- 0.71 |" in report  # from the cache, nothing trained
    measured = json.loads((tmp_path / "measurements.json").read_text())
    assert [r["model"] for r in measured["table2"]] == ["efficientdet_d0", "efficientdet_d1"]
    assert main(["paper", "--out", str(tmp_path), "--no-latency", "--seeds", "0"]) == 2
    # --reuse re-renders from measurements.json without measuring
    monkeypatch.setattr(tables, "table4", lambda: pytest.fail("--reuse must not measure"))
    assert main(["paper", "--out", str(tmp_path), "--reuse", "--no-progress"]) == 0
    assert "| ResNet50 + FPN | `retinanet_r50_fpn` | 640 | 34.05M | 34M |" in (tmp_path / "report.md").read_text()
    assert "Note on this run: a busy machine" in (tmp_path / "report.md").read_text()  # --reuse dropped it
    assert main(["paper", "--out", str(tmp_path / "empty"), "--reuse"]) == 2
