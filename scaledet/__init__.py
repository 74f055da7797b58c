"""scaledet: EfficientDet, DETR and RetinaNet detectors with one contract.

Every detector built by :func:`create_model` or :func:`load` follows the same call contract
(:class:`scaledet.models.base.Detector`):

* eval:  ``model(images) -> list[dict(boxes=Tensor[N,4] xyxy pixels, scores=Tensor[N], labels=Tensor[N] int64)]``
  where ``images`` is a list of float ``Tensor[3,H,W]`` RGB in ``[0, 1]`` (sizes may differ) and
  boxes are in each input image's own pixel coordinates, sorted by descending score.
* train: ``model(images, targets) -> dict[str, Tensor]`` of named losses (``"loss"`` is the total),
  with ``targets`` a list of ``dict(boxes=Tensor[M,4] xyxy pixels, labels=Tensor[M] int64)``.

``create_model(name, pretrained=...)`` builds by name; ``load(path)`` opens any weights file (ours,
another project's, ``"coco"``, an exported ``.onnx``); ``optimize(model)`` gives a faster copy.
"""

from scaledet.inference.optimize import optimize
from scaledet.loading import load
from scaledet.models.registry import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load", "optimize", "__version__"]
