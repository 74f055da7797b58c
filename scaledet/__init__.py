"""scaledet: EfficientDet, DETR and RetinaNet detectors with one contract.

Every detector built by :func:`create_model` or :func:`load` follows the same call contract
(:class:`scaledet.models.base.Detector`):

* eval:  ``model(images) -> list[dict(boxes=Tensor[N,4] xyxy pixels, scores=Tensor[N], labels=Tensor[N] int64)]``
  where ``images`` is a list of float ``Tensor[3,H,W]`` RGB in ``[0, 1]`` (sizes may differ) and
  boxes are in each input image's own pixel coordinates, sorted by descending score.
* train: ``model(images, targets) -> dict[str, Tensor]`` of named losses (``"loss"`` is the total),
  with ``targets`` a list of ``dict(boxes=Tensor[M,4] xyxy pixels, labels=Tensor[M] int64)``.

``create_model(name, pretrained=...)`` builds by name; ``load(path)`` opens any weights file (ours,
another project's, ``"coco"``, an exported ``.onnx``); ``optimize(model)`` gives a faster copy;
``predict_tiled(model, image, tile=...)`` detects small objects in large images through tiles.
"""

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load", "optimize", "predict_tiled", "__version__"]

# Every entry point pulls in torch (about 2 s); they are imported on first use so that ``import scaledet``
# and ``scaledet --help`` stay fast and a Ctrl-C while torch loads reaches the command line's handler.
_LAZY = {"create_model": "scaledet.models.registry", "list_models": "scaledet.models.registry",
         "load": "scaledet.loading", "optimize": "scaledet.inference.optimize",
         "predict_tiled": "scaledet.inference.tiling"}


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scaledet' has no attribute {name!r}")
