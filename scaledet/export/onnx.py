"""ONNX export of any :class:`~scaledet.models.base.Detector`, and an onnxruntime runner with the
detector contract.

The graph is the family's :meth:`~scaledet.models.base.Detector.export_spec` module (network and
post-processing, NMS included where the family has it; batch dimension dynamic, opset >= 18): its
inputs are what :meth:`~scaledet.models.base.Detector.export_feeds` makes of a preprocessed batch, its
outputs what :meth:`~scaledet.models.base.Detector.detections_from_export` turns into detections.
The file's metadata holds the family's preprocessing written out for deployers without Python
(key ``"preprocessing"``, :mod:`scaledet.models.preprocessing`) and the model's ``config`` (key
``"config"``, JSON), so
:class:`OnnxDetector` needs only the file: it rebuilds the model on the ``meta`` device (no weights)
for the pre- and post-processing around the graph. Key ``"scaledet.crc32"`` holds a CRC-32 of the graph
(every node, attribute and weight) and of the other metadata: onnxruntime loads a file whose weight bytes
changed on disk or in a copy without a word, :class:`OnnxDetector` refuses it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import tempfile
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from scaledet.models.base import Detections, Detector
from scaledet.models.registry import build_for_processing
from scaledet.models.inputs import check_images
from scaledet.models.ops import ONNX_TRANSLATIONS

#: torch's exporter writes opset 18 and later; for 17 it "converts" and, failing (Pad), keeps 18
MIN_OPSET = 18
CONFIG_KEY = "config"
#: metadata key of :meth:`~scaledet.models.base.Detector.preprocessing_spec` (JSON)
PREPROCESSING_KEY = "preprocessing"
#: metadata key of :func:`graph_crc32` (files written before it, or by others, have none: not checked)
CHECKSUM_KEY = "scaledet.crc32"
T = TypeVar("T")


def export_onnx(model: Detector, path: str | Path, opset: int = 18, input_size: tuple[int, int] | None = None,
                verbose: bool = False) -> Path:
    """Export ``model`` to ``path`` (see the module docstring).

    Args:
        model: a scaledet detector (:func:`scaledet.create_model`); put in eval mode.
        opset: ONNX opset, from 18 to the installed onnx package's newest.
        input_size: the example image's (h, w) for families whose graph takes a free input size;
            default the model's :meth:`~scaledet.models.base.Detector.input_size`. Families that
            resize and pad every image to one size accept only that size.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be from {MIN_OPSET} to {newest} (the installed onnx's newest), got {opset}")
    if not isinstance(model, Detector):
        raise ValueError(f"ONNX export needs a scaledet Detector (scaledet.create_model), got {type(model).__name__}")
    was_training = model.training  # the caller's model is put back as it was
    model.eval()
    try:
        program = _export_program(model, input_size, opset, verbose)
    finally:
        model.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_with_metadata(program.model_proto, path, {})  # the bytes program.save writes, with their checksum
    return path


def graph_crc32(proto) -> str:
    """CRC-32 (8 hex digits) of an ``onnx.ModelProto``'s graph (its deterministic serialisation: every
    node, attribute and weight held in the file) and of its metadata other than :data:`CHECKSUM_KEY`."""
    crc = zlib.crc32(proto.graph.SerializeToString(deterministic=True))
    for prop in sorted(proto.metadata_props, key=lambda prop: prop.key):
        if prop.key != CHECKSUM_KEY:
            crc = zlib.crc32(f"{prop.key}={prop.value}\n".encode(), crc)
    return f"{crc:08x}"


def save_with_metadata(proto, path: str | Path, values: dict[str, str]) -> None:
    """Write ``proto`` (an ``onnx.ModelProto``, changed in place) to ``path`` with its metadata keys
    ``values`` replaced and :data:`CHECKSUM_KEY` set to :func:`graph_crc32` of the result."""
    import onnx

    kept = [prop for prop in proto.metadata_props if prop.key not in values and prop.key != CHECKSUM_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
    proto.metadata_props.add(key=CHECKSUM_KEY, value=graph_crc32(proto))
    onnx.save(proto, str(path))


def check_graph_crc(path: str | Path) -> None:
    """Compare ``path``'s graph with the :data:`CHECKSUM_KEY` stored in it. Files without one are not
    checked, nor any where the ``onnx`` package is missing (onnxruntime alone cannot serialise a graph);
    one that does not parse is left to onnxruntime, whose error :class:`OnnxDetector` reports.

    Raises:
        UserError: they differ (``PATH is corrupt (its graph fails the file's CRC-32 check ...): FIX``).
    """
    try:
        import onnx
    except ImportError:
        return
    from scaledet.weights import REDOWNLOAD_FIX, damaged_error

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and others: onnxruntime names the problem next
        return
    expected = next((prop.value for prop in proto.metadata_props if prop.key == CHECKSUM_KEY), None)
    if expected is not None and graph_crc32(proto) != expected:
        raise damaged_error(path, "its graph", REDOWNLOAD_FIX)


def _export_program(model: Detector, input_size: tuple[int, int] | None, opset: int, verbose: bool):
    """torch's ONNX program of ``model`` (in eval mode) with our metadata, at ``opset``."""
    spec = model.export_spec(input_size)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_logger("onnxscript.optimizer._constant_folding"):
        # every input shares the batch axis, which torch notes each time as a name it will not use; the
        # optimiser notes each multi-output op it leaves unfolded (DETR: dozens of "Skipping ... Split" lines)
        warnings.filterwarnings("ignore", message=r".*The axis name: .* will not be used")
        program = torch.onnx.export(spec.module.eval(), spec.example_inputs, dynamo=True, opset_version=opset,
                                    input_names=spec.input_names, output_names=spec.output_names,
                                    dynamic_shapes=spec.dynamic_shapes, custom_translation_table=ONNX_TRANSLATIONS,
                                    verbose=verbose, external_data=False)
    written = program.model.opset_imports.get("", opset)
    if written != opset:  # the exporter fell back to another version: the file would not be what was asked
        raise ValueError(f"torch's ONNX exporter wrote opset {written}, not {opset}: give --opset {written}")
    preprocessing = model.preprocessing_spec()  # for deployers without Python (docs/inference.md)
    program.model.metadata_props.update({**spec.metadata, CONFIG_KEY: json.dumps(model.config),
                                         **({PREPROCESSING_KEY: json.dumps(preprocessing)} if preprocessing else {})})
    return program


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Logger ``name`` shows errors only inside the block (its notes are not the user's concern)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def session_options(threads: int | None = None):
    """onnxruntime ``SessionOptions`` for scaledet's sessions: ``threads`` intra-op threads (``None``:
    torch's count, so that ``torch.set_num_threads`` / ``--threads`` / ``OMP_NUM_THREADS`` govern both
    engines; both default to the physical cores) and only errors logged (its graph optimiser's notes, such as
    the hundreds of "Removing initializer ..." lines an INT8 graph gives once its quantize / dequantize pairs
    are fused, are not the user's concern)."""
    import onnxruntime as ort  # optional dependency

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors and fatal only
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return options


class OnnxDetector:
    """Runs an exported file with onnxruntime behind the detector contract (its checksum verified first,
    :func:`check_graph_crc`):
    ``detector(list of float Tensor[3, H, W] in [0, 1]) -> list[dict(boxes [N, 4] xyxy input-image
    pixels, scores [N], labels [N] int64)]``, on the CPU.

    ``preprocess -> export_feeds -> onnxruntime -> detections_from_export`` of the model rebuilt from
    the stored config (:func:`~scaledet.models.registry.build_for_processing`). Attributes: ``model``
    (that weightless model), ``path``, ``config``, ``class_names``, ``category_ids``, ``num_classes``,
    ``image_size``, ``session``, and, as for ``scaledet.optimize``'s results, ``engine`` and
    ``precision`` (an INT8 file: :class:`~scaledet.inference.quantize.QuantizedDetector`).
    """

    engine = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 session: Any = None) -> None:
        """``session``: an ``onnxruntime.InferenceSession`` of ``path`` already made (not made again)."""
        import onnxruntime as ort  # optional dependency

        from scaledet.weights import REDOWNLOAD_FIX, corrupt_file_error

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        if session is None:
            check_graph_crc(path)
        try:
            self.session = session or ort.InferenceSession(str(path), session_options(threads),
                                                           providers=providers or ["CPUExecutionProvider"])
        except (ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as error:  # truncated, or not an ONNX graph
            raise corrupt_file_error(path, error, REDOWNLOAD_FIX) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in meta:
            raise ValueError(f"{path} is not a scaledet ONNX export (no {CONFIG_KEY!r} metadata)")
        self.path = Path(path)
        self.config = json.loads(meta[CONFIG_KEY])
        self.model = build_for_processing(self.config)
        self.class_names, self.category_ids = self.model.class_names, self.model.category_ids
        self.num_classes, self.image_size = self.model.num_classes, self.model.image_size

    def __call__(self, images: list[Tensor] | Tensor) -> list[Detections]:
        images = [image.float().cpu() for image in check_images(images)]
        batch = self.model.preprocess(images)
        feeds = {name: value.cpu().numpy() for name, value in self.model.export_feeds(batch).items()}
        outputs = [torch.from_numpy(x) for x in self.session.run(None, feeds)]
        return self.model.detections_from_export(outputs, batch)

    def unresized_size(self) -> tuple[int, int]:
        return self.model.unresized_size()

    def input_scale(self, height: int, width: int, image_size: Any = None) -> tuple[float, float]:
        return self.model.input_scale(height, width, image_size)


def onnxruntime_detector(model: Detector, threads: int | None = None) -> OnnxDetector:
    """``model`` exported (a CPU copy; ``model`` is left untouched) to a temporary file that lives as
    long as the returned :class:`OnnxDetector`, which runs it with ``threads`` onnxruntime threads
    (default ``torch.get_num_threads()``). What ``scaledet.optimize(model, engine="onnxruntime")`` gives."""
    threads = threads or torch.get_num_threads()
    return with_temporary_folder("scaledet-onnx-", lambda folder: OnnxDetector(
        export_onnx(copy.deepcopy(model).cpu().eval(), folder / "model.onnx"), threads=threads))


def with_temporary_folder(prefix: str, build: Callable[[Path], T]) -> T:
    """``build(folder)`` given a new temporary folder that lives as long as the object it returns:
    removed when that object is garbage-collected or the interpreter exits (quietly: a
    ``TemporaryDirectory`` kept on the object warns ``ResourceWarning: Implicitly cleaning up``),
    and at once when ``build`` fails."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        owner = build(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(owner, shutil.rmtree, folder, ignore_errors=True)
    return owner
