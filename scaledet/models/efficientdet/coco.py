"""COCO class names in the label order of the published EfficientDet weights.

Label ``i`` is COCO category id ``i + 1`` (ids 1..90); the ten ids COCO never annotates are
named ``"N/A"``.
"""

from scaledet.models.coco_names import COCO_NAMES_BY_ID

COCO90_CLASS_NAMES: list[str] = list(COCO_NAMES_BY_ID[1:])
assert len(COCO90_CLASS_NAMES) == 90
