"""Optimised fp32 with and without Winograd 3x3 convolutions, interleaved, per model: the
``winograd`` step of ``benchmarks/optimize_steps.py`` (see there).

    OMP_NUM_THREADS=1 python benchmarks/winograd.py --threads 1 --json OUT.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.optimize_steps import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--step", "winograd", *sys.argv[1:]], prog="python benchmarks/winograd.py"))
