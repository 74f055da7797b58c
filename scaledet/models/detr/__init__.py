"""DETR R50/R101/DC5 (placeholder until the family lands)."""

VARIANTS: dict = {}


def build(name, num_classes=None, pretrained=None, image_size=None, **overrides):
    raise NotImplementedError("DETR is not implemented yet")
