"""Detector families. Use :func:`scaledet.create_model` to build one by name."""
