"""EfficientDet D0-D7x and Lite0-4 (placeholder until the family lands)."""

VARIANTS: dict = {}


def build(name, num_classes=None, pretrained=None, image_size=None, **overrides):
    raise NotImplementedError("EfficientDet is not implemented yet")
