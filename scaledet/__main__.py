"""`python -m scaledet ...` (used by `torchrun -m scaledet train ...`)."""

from scaledet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
