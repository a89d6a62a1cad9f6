"""Replays recorded reference runs: python -m longlive_core.verify --help (tools/verify.py)."""

import sys

from .tools.verify import main

if __name__ == "__main__":
    sys.exit(main())
