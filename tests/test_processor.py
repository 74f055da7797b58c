"""The processor report (model, ISA flags, kind) and the bench results files keeping one table per
processor kind."""

import json

import pytest

from scaledet.inference.benchmark import (RESULTS_FORMAT, markdown_table, merge_json_results,
                                          merge_markdown_results)
from scaledet.inference.processor import Processor, _cpuinfo, current_processor

SAPPHIRE = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})


def test_kind_and_native_bf16_follow_flags_and_kernel_caps():
    assert Processor("x", SAPPHIRE, "AVX512").kind == "avx512-bf16-vnni-amx"
    assert Processor("x", frozenset({"avx2", "avx512f", "avx512_vnni"}), "AVX512").kind == "avx512-vnni"
    assert Processor("x", frozenset({"avx2"}), "AVX2").kind == "avx2"
    assert Processor("x", frozenset({"avx2", "avx_vnni"}), "AVX2").kind == "avx2-vnni"
    assert Processor("x", frozenset(), "DEFAULT").kind == "default"
    assert Processor("x", SAPPHIRE, "AVX512").native_bf16
    assert not Processor("x", frozenset({"avx2", "avx512f"}), "AVX512").native_bf16
    # ATEN_CPU_CAPABILITY=avx2 on an AVX-512 machine: ATen's kernels are AVX2, bf16 is emulated
    assert Processor("x", SAPPHIRE | {"avx_vnni"}, "AVX2", {"ATEN_CPU_CAPABILITY": "avx2"}).kind == "avx2"
    capped = Processor("x", SAPPHIRE, "AVX2", {"ATEN_CPU_CAPABILITY": "avx2"})
    assert capped.kind == "avx2" and not capped.native_bf16
    assert not Processor("x", SAPPHIRE, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}).native_bf16
    assert Processor("x", SAPPHIRE, "AVX512", {"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}).native_bf16
    assert "capped: ATEN_CPU_CAPABILITY=avx2" in capped.describe()
    assert capped.as_dict()["flags"]["amx_int8"] is True and capped.as_dict()["kind"] == "avx2"


def test_cpuinfo_parsing_and_this_machine():
    text = "processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: Test CPU 9000\n" \
           "flags\t\t: fpu avx2 avx512f avx512_bf16\n\n" \
           "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: Other CPU\nflags\t\t: fpu\n"
    assert _cpuinfo(text) == ("Test CPU 9000", {"fpu", "avx2", "avx512f", "avx512_bf16"}, "family 26 model 2")
    assert _cpuinfo("model name\t: Arm thing\nFeatures\t: fp asimd\n") == ("Arm thing", set(), "")
    assert "(family 26 model 2) [avx512" in Processor("AMD EPYC", frozenset({"avx2", "avx512f"}), "AVX512",
                                                      generation="family 26 model 2").describe()
    here = current_processor()
    assert here.model and here.kind and here.aten_capability
    assert json.loads(json.dumps(here.as_dict()))["kind"] == here.kind


def test_results_files_keep_one_table_per_processor_kind(tmp_path):
    path = tmp_path / "cpu.json"
    # a file written before processor kinds were recorded is kept as the "unrecorded" table
    path.write_text(json.dumps({"machine": {"cpu": "Old"}, "results": [1]}))
    merge_json_results(path, "avx2", {"results": [2]})
    merge_json_results(path, "avx512-bf16-vnni", {"results": [3]})
    merge_json_results(path, "avx2", {"results": [4]})
    payload = json.loads(path.read_text())
    assert payload["format"] == RESULTS_FORMAT
    assert {kind: table["results"] for kind, table in payload["tables"].items()} == \
        {"unrecorded": [1], "avx2": [4], "avx512-bf16-vnni": [3]}

    md = tmp_path / "cpu.md"
    md.write_text("| model |\n|---|\n| old |\n")
    row = {"model": "m", "engine": "e", "batch": 1, "median_ms": 2.0, "images_per_s": 500.0, "vs_reference": None,
           "vs_eager": 1.0}
    merge_markdown_results(md, "avx2", f"## avx2: cpu A\n\n{markdown_table([row], 'avx2')}\n")
    merge_markdown_results(md, "avx512", "## avx512: cpu B\n\nfirst\n")
    merge_markdown_results(md, "avx512", "## avx512: cpu B\n\nsecond\n")
    text = md.read_text()
    assert text.count("## ") == 3 and "| old |" in text and "second" in text and "first" not in text
    assert "| avx2 | m | e | 1 | 2.0 | 500.00 | 1.00 |" in text and "x reference" not in text  # none timed


def test_every_kernel_cap_of_the_avx2_emulation_is_recorded(monkeypatch):
    """ATen, oneDNN and MKL (PyTorch's BLAS, under the generic convolution path) each pick their
    kernels on their own, so an emulated AVX2 machine caps all three and the report names them."""
    caps = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    for name, value in caps.items():
        monkeypatch.setenv(name, value)
    current_processor.cache_clear()
    try:
        here = current_processor()
        assert here.kernel_caps == caps
        assert "MKL_ENABLE_INSTRUCTIONS=AVX2" in here.describe()
    finally:
        current_processor.cache_clear()


def test_bench_ratios_are_rounded_once():
    """A median ratio of 0.3453 reads 0.35 in the table (stored at 3 digits it was 0.345, printed 0.34)."""
    from scaledet.inference.benchmark import Engine, summarise

    reference = Engine("reference", lambda: None, reference=True)
    ours = Engine("ours-eager", lambda: None)
    reference.times[1], ours.times[1] = [0.18058], [0.06236]
    rows = summarise("m", [reference, ours], 1)
    assert abs(rows[1]["vs_reference"] - 0.06236 / 0.18058) < 1e-12
    assert "| 62.4 | 16.04 | 0.35 | 1.00 |" in markdown_table(rows, "avx512")


def test_results_files_of_another_kind_are_refused_not_rewritten(tmp_path):
    """bench --json on a COCO annotation file rewrote it as a results file, --markdown on a notes file sorted its
    sections and dropped a repeated one; both are refused, and the file is left as it was."""
    from scaledet.inference.benchmark import read_markdown_sections

    coco = tmp_path / "val.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="val.json: not a bench results JSON"):
        merge_json_results(coco, "avx2", {"results": [1]})
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\n## Setup\n\nA\n\n## Setup\n\nB\n")
    with pytest.raises(ValueError, match=r"notes.md: not a bench results markdown \(its heading '## Setup'"):
        read_markdown_sections(notes)
    assert json.loads(coco.read_text())["images"] == [] and notes.read_text().count("## Setup") == 2
