"""The learnability benchmark: scaledet's defaults vs an effdet 0.4.1 recipe on six COCO sets.

``datasets`` builds the sets (cached under ``data/``), ``effdet_baseline`` trains the reference
port, ``run`` runs both and writes ``benchmarks/results/learnability.{json,md}``. See README.md.
"""
