"""INT8: onnxruntime static quantization of the exported graph (scaledet.inference.quantize), through
scaledet.optimize(precision="int8") and scaledet export --int8."""

import gc
import json
import warnings

import pytest
import torch

import scaledet
from benchmarks.reference import spread_random_weights
from scaledet.cli import main
from scaledet.export import OnnxDetector, export_onnx
from scaledet.export.onnx import CHECKSUM_KEY, graph_crc32
from scaledet.inference.quantize import (INT8_KEY, QuantizedDetector, Tolerance, _kept_rule, calibration_ap,
                                         check_calibration, detection_agreement, quantize_onnx)
from scaledet.inference.quantize_graph import FLOAT_RULES, float_rules, network_nodes, spatial_means_as_global_pools
from scaledet.inference.quantize_ranges import calibrate

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

#: INT8 vs float on the tiny random-weight model: the detections that matter (score >= 0.5) found again
#: (same label, IoU >= 0.5, score within 0.15), at least 80% of them
TINY_TOLERANCE = Tolerance(min_score=0.5, iou=0.5, score_tol=0.15, min_matched=0.8, max_extra=0.2)


def tiny_model():
    torch.manual_seed(0)
    model = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=64)
    net = model.network
    spread_random_weights(net, net.class_net.predict.pointwise, net.box_net.predict.pointwise, model.image_size)
    return model.eval()


def tiny_images(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 64, 64, generator=generator) for _ in range(count)]


@pytest.fixture(scope="module")
def float_file(tmp_path_factory):
    model = tiny_model()
    return model, export_onnx(model, tmp_path_factory.mktemp("int8") / "float.onnx")


@pytest.mark.slow
def test_int8_file_runs_in_onnxruntime_and_agrees_with_float(float_file, tmp_path):
    model, path = float_file
    calibration = tiny_images(8)
    output = tmp_path / "int8.onnx"
    report = quantize_onnx(path, output, calibration, rules=["none", "non-conv"], threads=1, choose="fastest",
                           timing_runs=2)
    assert [t["rule"] for t in report.tried] == ["none", "non-conv"] and report.float_ms > 0
    assert all(t["median_ms"] > 0 for t in report.tried if t["passed"])
    proto = onnx.load(str(output))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    assert "NonMaxSuppression" in ops and report.quantized_nodes > 50
    assert report.float_rule in [name for name, _ in FLOAT_RULES] and report.tried[0]["rule"] == "none"
    stored = json.loads({p.key: p.value for p in proto.metadata_props}[INT8_KEY])
    assert stored["float_rule"] == report.float_rule and stored["calibration_images"] == 8
    if report.float_nodes:  # the report names the float-kept layers by module path
        assert report.float_modules and all(m.startswith("network") for m in report.float_modules)
    int8 = QuantizedDetector(output, threads=1)
    assert int8.report["float_rule"] == report.float_rule and int8.precision == "int8"
    images = tiny_images(3, seed=1)  # not the calibration images
    reference, result = OnnxDetector(path, threads=1)(images), int8(images)
    with torch.no_grad():
        eager = model(images)
    for detections in result:
        assert detections["boxes"].shape[1] == 4 and detections["labels"].dtype == torch.int64
    for against in (reference, eager):
        agreement = detection_agreement(against, result, TINY_TOLERANCE)
        assert agreement.reference >= 3 and agreement.passes(TINY_TOLERANCE), agreement.summary()


def test_float_rules_on_a_small_graph():
    """conv1 -> swish -> conv2 -> add(+ conv1 out) -> mul(constant) -> conv3 (head) -> topk (post-processing)."""
    from onnx import TensorProto, helper

    def conv(name, x, y, w):
        return helper.make_node("Conv", [x, w], [y], name=name)

    nodes = [conv("conv1", "x", "a", "w1"), helper.make_node("Sigmoid", ["a"], ["s"], name="sigmoid"),
             helper.make_node("Mul", ["a", "s"], ["b"], name="swish"),
             conv("conv2", "b", "c", "w2"), helper.make_node("Add", ["c", "a"], ["d"], name="merge"),
             helper.make_node("Mul", ["d", "k"], ["e"], name="weight"), conv("conv3", "e", "f", "w3"),
             helper.make_node("Flatten", ["f"], ["g"], name="flatten"),
             helper.make_node("TopK", ["g", "n"], ["v", "i"], name="topk")]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [1, 1, 1, 1], [1.0]) for n in ("w1", "w2", "w3", "k")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)], inits)
    assert network_nodes(graph) == {"conv1", "sigmoid", "swish", "conv2", "merge", "weight", "conv3"}
    rules = dict(float_rules(graph))
    assert rules["none"] == set() and rules["first-conv+last-convs"] == {"conv1", "conv3"}
    assert rules["gates"] == {"sigmoid", "swish"} and rules["gates+merges"] == {"sigmoid", "swish", "merge", "weight"}
    assert rules["non-conv"] == {"sigmoid", "swish", "merge", "weight"}
    assert rules["non-conv+first-conv+last-convs"] == rules["non-conv"] | {"conv1", "conv3"}


class Means(torch.nn.Module):
    """Squeeze-excitation's spatial means (two) and a mean over channels."""

    def forward(self, x):
        return x * x.mean((2, 3), keepdim=True) + x.mean(1, keepdim=True) + x.mean((-2, -1), keepdim=True).sigmoid()


def test_pre_process_falls_back_to_onnx_shape_inference(tmp_path, monkeypatch):
    """onnxruntime 1.30's symbolic shape inference asserted on torch 2.11's export of D0: the INT8
    preparation then uses ONNX's shape inference alone, says so, and still finds the spatial means."""
    from onnxruntime.quantization import shape_inference

    from scaledet.inference.quantize import _pre_process

    real, calls = shape_inference.quant_pre_process, []

    def failing_symbolic(*args, **kwargs):
        calls.append(kwargs.get("skip_symbolic_shape", False))
        if not kwargs.get("skip_symbolic_shape"):
            raise AssertionError
        return real(*args, **kwargs)

    monkeypatch.setattr(shape_inference, "quant_pre_process", failing_symbolic)
    torch.onnx.export(Means().eval(), (torch.randn(1, 3, 8, 8),), tmp_path / "means.onnx", dynamo=True)
    lines, prepared = [], tmp_path / "prepared.onnx"
    _pre_process(tmp_path / "means.onnx", prepared, lines.append)
    assert calls == [False, True] and "symbolic shape inference failed (AssertionError" in lines[-1]
    assert spatial_means_as_global_pools(onnx.load(str(prepared)).graph) == 2


def test_spatial_means_become_global_pools_with_the_same_values(tmp_path):
    """Squeeze-excitation's mean over (H, W) keeping them becomes GlobalAveragePool (int8 in onnxruntime);
    a mean over channels stays a ReduceMean, and the graph's output is unchanged."""
    import numpy
    import onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.onnx.export(Means().eval(), (torch.randn(1, 3, 8, 8),), tmp_path / "means.onnx", dynamo=True)
    quant_pre_process(str(tmp_path / "means.onnx"), str(tmp_path / "pools.onnx"))
    model = onnx.load(str(tmp_path / "pools.onnx"))
    assert spatial_means_as_global_pools(model.graph) == 2
    onnx.save(model, str(tmp_path / "pools.onnx"))
    graph = onnx.load(str(tmp_path / "pools.onnx")).graph
    assert [n.op_type for n in graph.node].count("GlobalAveragePool") == 2
    assert [n.op_type for n in graph.node].count("ReduceMean") == 1
    x = numpy.random.default_rng(0).standard_normal((1, 3, 8, 8), dtype=numpy.float32)
    before, after = (onnxruntime.InferenceSession(str(tmp_path / f)).run(None, {"x": x})[0]
                     for f in ("means.onnx", "pools.onnx"))
    numpy.testing.assert_allclose(before, after, atol=1e-6)


class WeightedFusion(torch.nn.Module):
    """BiFPN-like: constant positive weights on two feature maps, summed; a negative weight on a third."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.out = (torch.nn.Conv2d(3, 4, 3, padding=1) for _ in range(4))
        self.out = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.out(0.25 * self.a(x) + 0.75 * self.b(x) + self.c(x) * -0.5)


def test_constant_weights_fold_into_the_scales_with_the_same_outputs(tmp_path):
    """``DQ(x_q; s) * w`` becomes ``DQ(x_q; s*w)`` for the two positive weights (the negative one stays a
    Mul); onnxruntime's outputs are unchanged: the product's calibrated range is w times x's, so the
    requantization removed was the identity."""
    import numpy
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from scaledet.inference.quantize_graph import constant_scales_folded

    torch.manual_seed(0)
    torch.onnx.export(WeightedFusion().eval(), (torch.randn(1, 3, 8, 8),), tmp_path / "float.onnx", dynamo=True)
    rng = numpy.random.default_rng(0)
    inputs = [{"x": rng.standard_normal((1, 3, 8, 8), dtype=numpy.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(inputs)

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(tmp_path / "int8.onnx"))
    muls = [n.op_type for n in model.graph.node].count("Mul")
    assert muls == 3
    assert constant_scales_folded(model.graph) == 2
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("Mul") == 1
    onnx.save(model, str(tmp_path / "folded.onnx"))
    before, after = (onnxruntime.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"])
                     for f in ("int8.onnx", "folded.onnx"))
    for feed in inputs + [{"x": rng.standard_normal((1, 3, 8, 8), dtype=numpy.float32)}]:
        numpy.testing.assert_array_equal(before.run(None, feed)[0], after.run(None, feed)[0])


def test_percentile_ranges_cut_an_outlier_and_keep_the_max_pool_padding_unbounded(tmp_path):
    """x -> conv -> a; a -> pad(-inf) -> maxpool: with a 99th percentile, a rare outlier of x no longer sets
    its range (min / max does); the -inf padding stays an unbounded (always float) tensor either way."""
    import numpy
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv"),
             helper.make_node("Pad", ["a", "pads", "minus_inf"], ["padded"], name="pad"),
             helper.make_node("MaxPool", ["padded"], ["y"], name="pool", kernel_shape=[3, 3], strides=[1, 1])]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0]),
             helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1]),
             helper.make_tensor("minus_inf", TensorProto.FLOAT, [], [float("-inf")])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])], inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    rng = numpy.random.default_rng(0)
    feeds = [{"x": rng.uniform(0, 1, (1, 1, 16, 16)).astype(numpy.float32)} for _ in range(20)]
    feeds[3]["x"][0, 0, 5, 5] = 1000.0  # one value in 5120
    feeds.insert(0, {"x": numpy.full((1, 1, 16, 16), 1e-6, numpy.float32)})  # a near-empty first image, later
    # ones 1e6 times wider (onnxruntime's histogram calibrator re-bins at the first image's width: 'Too many bins')
    ranges = {}
    for percentile in (None, 99.0):
        cache = tmp_path / f"ranges_{percentile}.json"
        unbounded = calibrate(path, feeds, cache, tmp_path, percentile)
        assert unbounded == {"padded"}
        ranges[percentile] = json.loads(cache.read_text())["data"]
    high = {p: numpy.ravel(r["x"]["highest"]["data"])[0] for p, r in ranges.items()}
    assert high[None] == 1000.0 and 0.95 < high[99.0] < 1.1  # the uniform values' top, within a bin or two


def test_agreement_counts_matches_misses_and_extras():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]])
    reference = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.1]), "labels": torch.tensor([0, 1, 0])}]
    other = [{"boxes": boxes + 0.2, "scores": torch.tensor([0.85, 0.2, 0.7]), "labels": torch.tensor([0, 1, 0])}]
    agreement = detection_agreement(reference, other, Tolerance(min_score=0.3, iou=0.8, score_tol=0.1))
    assert (agreement.reference, agreement.matched, agreement.extra) == (2, 1, 1)
    assert agreement.max_score_diff == pytest.approx(0.05, abs=1e-6)
    assert not agreement.passes(Tolerance()) and detection_agreement(reference, reference).passes(Tolerance())


def test_kept_rule_first_or_fastest_agreeing_else_the_last():
    tried = [{"rule": "a", "passed": False, "median_ms": None}, {"rule": "b", "passed": True, "median_ms": 9.0},
             {"rule": "c", "passed": True, "median_ms": 5.0}]
    assert _kept_rule(tried, "first")["rule"] == "b" and _kept_rule(tried, "fastest")["rule"] == "c"
    assert _kept_rule([dict(t, passed=False) for t in tried], "fastest")["rule"] == "c"
    # judged by AP and none passed: the most accurate (the more float one on a tie)
    by_ap = [dict(t, passed=False, AP=ap) for t, ap in zip(tried, (0.70, 0.75, 0.75))]
    assert _kept_rule(by_ap, "first")["rule"] == "c" and _kept_rule(by_ap[:2], "fastest")["rule"] == "b"


def test_int8_needs_calibration(capsys):
    model = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=64).eval()
    with pytest.raises(ValueError, match="needs calibration images"):
        scaledet.optimize(model, precision="int8")
    with pytest.raises(ValueError, match="calibration images are for precision='int8'"):
        scaledet.optimize(model, calibration=tiny_images(1))
    assert main(["export", "--model", "efficientdet_lite0", "--int8"]) == 2
    assert "--int8 needs --calibration DATA" in capsys.readouterr().err


@pytest.mark.slow
def test_optimize_int8_keeps_the_detector_contract():
    model = tiny_model()
    fast = scaledet.optimize(model, precision="int8", calibration=tiny_images(8))
    assert isinstance(fast, QuantizedDetector) and fast.report["float_rule"] in [n for n, _ in FLOAT_RULES]
    images = [torch.rand(3, 64, 48), torch.rand(3, 40, 64)]
    result = fast(images)
    assert len(result) == 2 and all(set(d) == {"boxes", "scores", "labels"} for d in result)
    with torch.no_grad():
        eager = model(images)
    for det, ref in zip(result, eager):
        assert det["boxes"].shape[1] == 4 and (det["boxes"] <= 64.5).all()  # input-image pixels, like eager
        assert det["labels"].dtype == ref["labels"].dtype == torch.int64
    folder = fast.path.parent  # the temporary float and INT8 files go with the detector, quietly
    assert folder.name.startswith("scaledet-int8-") and (folder / "float.onnx").is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del fast
        gc.collect()
    assert not folder.exists() and not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.slow
def test_export_int8_command_reports_float_layers(tmp_path, capsys):
    output = tmp_path / "lite0.int8.onnx"
    code = main(["export", "--model", "efficientdet_lite0", "--image-size", "64", "--int8", "--calibration",
                 "shapes:val", "--calibration-images", "4", "--calibration-percentile", "99.99", "--output", str(output),
                 "--check", "--score-tol", "0.123"])
    out = capsys.readouterr().out
    assert code in (0, 1) and output.exists() and "score_tol=0.123" in out  # the check uses the given tolerance
    assert "network nodes quantized; kept float:" in out and "rule none" in out
    assert "(99.99th-percentile ranges)" in out
    report = QuantizedDetector(output).report
    assert report["calibration_images"] == 4 and report["percentile"] == 99.99


def test_calibration_images_from_a_folder_or_a_dataset(tmp_path):
    from PIL import Image

    from scaledet.commands.export import calibration_images

    for index in range(4):
        Image.new("RGB", (40 + index, 30), (index * 60, 0, 0)).save(tmp_path / f"{index}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = calibration_images(str(tmp_path), 2)
    assert [tuple(image.shape) for image in images] == [(3, 30, 40), (3, 30, 42)]  # evenly spread
    assert all(isinstance(image, torch.Tensor) for image in calibration_images("shapes:val", 3))  # no class names
    # a dataset of the model's classes, in another order: (image, target) pairs, labels in the model's order
    dataset = scaledet.data.open_dataset("shapes:val", progress=False)
    names = list(reversed(dataset.class_names))
    pairs = calibration_images("shapes:val", 3, names)
    step = len(dataset) // 3
    assert len(pairs) == 3
    for (image, target), (expected_image, expected) in zip(pairs, (dataset[i * step] for i in range(3))):
        assert torch.equal(image, expected_image) and torch.equal(target["boxes"], expected["boxes"])
        assert [names[k] for k in target["labels"]] == [dataset.class_names[k] for k in expected["labels"]]
    assert all(isinstance(item, torch.Tensor) for item in calibration_images("shapes:val", 3, ["cat", "dog"]))
    with pytest.raises(ValueError, match="no images found"):
        calibration_images(str(tmp_path / "missing"), 2)


def test_calibration_images_of_a_coco_file_beside_its_images_folder_and_unreadable_files(tmp_path):
    """A COCO JSON whose images are in another folder needs --images (export had no such option: 'dataset has no
    usable images'); an unreadable file's place goes to another image (it shortened the check)."""
    import json

    from PIL import Image

    from scaledet.commands.export import calibration_images

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for index in range(3):
        Image.new("RGB", (40, 30), (index * 60, 0, 0)).save(pictures / f"{index}.png")
    coco = {"images": [{"id": i + 1, "file_name": f"{i}.png", "width": 40, "height": 30} for i in range(3)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 10, 10]}
                            for i in range(3)],
            "categories": [{"id": 1, "name": "Cup"}]}
    (tmp_path / "val.json").write_text(json.dumps(coco))
    pairs = calibration_images(str(tmp_path / "val.json"), 2, ["cup"], images=str(pictures))  # names as matched
    assert len(pairs) == 2 and all(isinstance(item, tuple) for item in pairs)
    with pytest.raises(ValueError, match="--images / --split go with a dataset"):
        calibration_images(str(pictures), 2, images=str(pictures))
    (pictures / "0.png").write_bytes(b"not a png")
    images = calibration_images(str(pictures), 3)
    assert len(images) == 2  # the two readable ones
    assert len(calibration_images(str(pictures), 1)) == 1  # 0.png's place taken by 1.png


def test_calibration_ap_is_coco_ap_on_the_given_ground_truth():
    images = [torch.zeros(3, 50, 60), torch.zeros(3, 40, 40)]
    targets = [{"boxes": torch.tensor([[0.0, 0, 20, 20], [30, 10, 55, 40]]), "labels": torch.tensor([0, 1])},
               {"boxes": torch.tensor([[5.0, 5, 30, 30]]), "labels": torch.tensor([1])}]
    perfect = [dict(t, scores=torch.ones(len(t["labels"]))) for t in targets]
    assert calibration_ap(perfect, targets, images, 2) == pytest.approx(1.0)
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    assert calibration_ap(empty, targets, images, 2) == 0.0
    half = [perfect[0], empty[0]]  # image 1's class-1 object missed: class 0 AP 1, class 1 AP 0.5
    assert calibration_ap(half, targets, images, 2) == pytest.approx(0.75, abs=0.01)
    # check_calibration: bare images, or (image, target) pairs; a bad target is a clear error
    assert check_calibration(images)[1] is None
    assert len(check_calibration(list(zip(images, targets)))[1]) == 2
    with pytest.raises(ValueError, match="calibration item 0: the target must be a dict"):
        check_calibration([(images[0], {"boxes": torch.zeros(0, 4)})])


@pytest.mark.slow
def test_float_kept_rule_is_judged_by_ap_with_labelled_calibration_images(float_file, tmp_path):
    """Ground truth = the float graph's own confident detections, so the float AP is high; a rule passes
    when its AP is within max_ap_drop of it (impossible with a negative bound: the most float rule is kept)."""
    model, path = float_file
    images = tiny_images(8)
    with torch.no_grad():
        confident = [{k: v[d["scores"] >= 0.5] for k, v in d.items()} for d in OnnxDetector(path, threads=1)(images)]
    assert sum(len(d["labels"]) for d in confident) >= 3
    pairs = list(zip(images, confident))
    loose = quantize_onnx(path, tmp_path / "a.onnx", pairs, rules=["none", "non-conv"], threads=1, max_ap_drop=1.0)
    assert loose.float_ap > 0.5 and loose.max_ap_drop == 1.0 and loose.passed and loose.float_rule == "none"
    assert [t["rule"] for t in loose.tried] == ["none"] and 0 <= loose.tried[0]["AP"] <= 1
    strict = quantize_onnx(path, tmp_path / "b.onnx", pairs, rules=["none", "non-conv"], threads=1, max_ap_drop=-1.0)
    assert not strict.passed and len(strict.tried) == 2  # none passed: the more accurate of the two is kept
    assert strict.float_rule == max(reversed(strict.tried), key=lambda t: t["AP"])["rule"]
    assert "judged by AP on the labelled calibration images" in strict.summary()
    assert QuantizedDetector(tmp_path / "b.onnx").report["float_ap"] == strict.float_ap


def test_an_int8_file_made_with_vnni_warns_on_a_processor_without(float_file, tmp_path, monkeypatch):
    """reduce_range (7-bit weights) is decided where the file is made; a file made with 8-bit weights
    (VNNI) run where u8 x s8 saturates says so."""
    from scaledet.inference import quantize
    _, path = float_file
    monkeypatch.setattr(quantize, "has_vnni", lambda: True)
    report = quantize_onnx(path, tmp_path / "vnni.onnx", tiny_images(2), rules=["none"], threads=1)
    assert report.reduce_range is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same kind of processor: no warning
        QuantizedDetector(tmp_path / "vnni.onnx")
    monkeypatch.setattr(quantize, "has_vnni", lambda: False)
    with pytest.warns(UserWarning, match="quantized on a processor with VNNI"):
        QuantizedDetector(tmp_path / "vnni.onnx")


def test_percentile_100_means_min_max_and_a_percentile_outside_50_100_is_refused(float_file, tmp_path):
    _, path = float_file
    report = quantize_onnx(path, tmp_path / "minmax.onnx", tiny_images(2), rules=["none"], threads=1, percentile=100)
    assert report.percentile is None and "min / max ranges" in report.summary()
    with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\], got 40"):
        quantize_onnx(path, tmp_path / "x.onnx", tiny_images(2), percentile=40)


def test_onnx_int8_agrees_with_a_pytorch_int8_model_of_the_same_weights(float_file, tmp_path):
    """scaledet's ONNX INT8 (onnxruntime) and an independent PyTorch INT8 model (benchmarks/int8_pt2e.py:
    PT2E with torchao's x86 quantizer, reference representation), calibrated on the same images, find the
    same detections on other images; a quantizer with a wrong scale or a saturating kernel would not."""
    pytest.importorskip("torchao")
    from benchmarks.int8_pt2e import pt2e_int8

    model, path = float_file
    calibration = tiny_images(8)
    quantize_onnx(path, tmp_path / "int8.onnx", calibration, rules=["none"], threads=1)
    onnx_int8, torch_int8 = QuantizedDetector(tmp_path / "int8.onnx", threads=1), pt2e_int8(model, calibration)
    images = tiny_images(3, seed=1)  # not the calibration images
    reference, result = torch_int8(images), onnx_int8(images)
    assert all(d["boxes"].shape[1] == 4 and d["labels"].dtype == torch.int64 for d in reference)
    agreement = detection_agreement(reference, result, TINY_TOLERANCE)
    assert agreement.reference >= 3 and agreement.passes(TINY_TOLERANCE), agreement.summary()


def test_pt2e_folds_the_batchnorm_of_every_call_of_a_shared_convolution():
    """EfficientDet's heads run one convolution on every level, each call with its own BatchNorm. torchao's
    PT2E folds only the first call's BatchNorm into a shared weight tensor; benchmarks/int8_pt2e.py unties
    the tensors first, so the PyTorch INT8 model it compares against computes every level right."""
    pytest.importorskip("torchao")
    from benchmarks.int8_pt2e import quantize_network

    class SharedHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.norms = torch.nn.ModuleList(torch.nn.BatchNorm2d(8) for _ in range(2))

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.norms[0](self.conv(a)), self.norms[1](self.conv(b))

    torch.manual_seed(0)
    head = SharedHead().eval()
    for shift, norm in zip((-2.0, 3.0), head.norms):  # two very different sets of statistics
        norm.running_mean.uniform_(shift - 0.5, shift + 0.5)
        norm.running_var.uniform_(0.5, 4.0)
        norm.bias.data.uniform_(-1.0, 1.0)
    calibration = [(torch.rand(1, 8, 6, 6), torch.rand(1, 8, 6, 6)) for _ in range(8)]
    quantized = quantize_network(head, calibration)
    inputs = (torch.rand(1, 8, 6, 6), torch.rand(1, 8, 6, 6))
    with torch.no_grad():
        for expected, got in zip(head(*inputs), quantized(*inputs)):
            error = (expected - got).abs().max().item()
            assert error < 0.1 * expected.abs().max().item(), error


def test_an_int8_file_loads_as_int8_whatever_the_case_of_its_suffix(float_file, tmp_path):
    """scaledet.load (predict / eval --weights) of an INT8 file gives the INT8 runner: its precision, its
    report and the VNNI check, not a float OnnxDetector; ``.ONNX`` is an ONNX file too."""
    _, path = float_file
    quantize_onnx(path, tmp_path / "M.ONNX", tiny_images(2), rules=["none"], threads=1)
    loaded = scaledet.load(tmp_path / "M.ONNX")  # its checksum is the INT8 graph's, not the float file's
    stored = {p.key: p.value for p in onnx.load(str(tmp_path / "M.ONNX")).metadata_props}
    assert stored[CHECKSUM_KEY] == graph_crc32(onnx.load(str(tmp_path / "M.ONNX")))
    assert stored[CHECKSUM_KEY] != {p.key: p.value for p in onnx.load(str(path)).metadata_props}[CHECKSUM_KEY]
    assert isinstance(loaded, QuantizedDetector) and loaded.precision == "int8" and loaded.report["float_rule"] == "none"
    assert not isinstance(scaledet.load(path), QuantizedDetector)


def test_export_int8_check_with_nothing_to_compare_is_inconclusive_not_pass(tmp_path, capsys, monkeypatch):
    from scaledet.inference import quantize

    monkeypatch.setattr(quantize, "detection_agreement", lambda *args: quantize.Agreement())  # the float finds nothing
    code = main(["export", "--model", "efficientdet_lite0", "--image-size", "64", "--int8", "--calibration",
                 "shapes:val", "--calibration-images", "2", "--output", str(tmp_path / "x.onnx"), "--check"])
    out = capsys.readouterr().out
    assert code == 1 and "INCONCLUSIVE: the float model finds nothing" in out and "PASS" not in out


def test_an_unreadable_calibration_image_is_skipped_with_a_line(tmp_path, capsys):
    from PIL import Image

    from scaledet.commands.export import calibration_images

    Image.new("RGB", (40, 30), (90, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    images = calibration_images(str(tmp_path), 2)
    assert len(images) == 1 and f"--calibration: skipped {tmp_path / 'b.jpg'}: cannot read image" in capsys.readouterr().out
    (tmp_path / "a.png").unlink()
    with pytest.raises(ValueError, match="none of its images could be read"):
        calibration_images(str(tmp_path), 2)


def test_int8_profile_benchmark_groups_kernel_time_by_part(tmp_path):
    """benchmarks/int8_profile.py --smoke: both graphs profiled, every kernel counted in one part."""
    from benchmarks.int8_profile import PARTS, main as profile_main, part_of

    assert part_of("QLinearConv", {"group": 32, "kernel": (3, 3)}, []) == "conv depthwise"
    assert part_of("Conv", {"group": 1, "kernel": (1, 1)}, []) == "conv 1x1"
    assert part_of("QLinearMul", {}, [[1, 8, 8, 32], [], [], [1, 8, 8, 32], [], [], [], []]) == "SiLU"
    assert part_of("QLinearMul", {}, [[1, 8, 8, 32], [], [], [1, 1, 1, 32], [], [], [], []]).startswith("gates")
    assert part_of("Sigmoid", {}, [[1, 32, 1, 1]]).startswith("gates") and part_of("QuickGelu", {}, []) == "SiLU"
    assert profile_main(["--smoke", "--out", str(tmp_path / "profile")]) == 0
    record = json.loads((tmp_path / "profile.json").read_text())
    for graph in ("float", "int8"):
        assert set(record[graph]["parts_ms"]) == set(PARTS) and record[graph]["kernel_ms"] > 0
        assert abs(sum(record[graph]["parts_ms"].values()) - record[graph]["kernel_ms"]) < 0.05
    assert record["int8"]["top_ops_ms"].get("QLinearConv", 0) > 0 and "Conv" not in record["int8"]["top_ops_ms"]
    assert "| **all kernels** |" in (tmp_path / "profile.md").read_text()


def test_calibration_images_of_a_yolo_data_yaml_are_its_training_images(tmp_path):
    from PIL import Image

    from scaledet.commands.export import calibration_images

    for split, count, width in (("train", 3, 40), ("val", 1, 50)):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (width, 30), (index * 60, 0, 0)).save(tmp_path / "images" / split / f"{index}.png")
            (tmp_path / "labels" / split / f"{index}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: square}\n")
    images = calibration_images(str(tmp_path / "data.yaml"), 8)  # no --split: the data.yaml's training images
    assert [tuple(image.shape) for image in images] == [(3, 30, 40)] * 3
    assert [tuple(image.shape) for image in calibration_images(str(tmp_path / "data.yaml"), 8, split="val")] == [
        (3, 30, 50)]
