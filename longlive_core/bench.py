"""The GPU benchmark: python -m longlive_core.bench --help (tools/bench.py)."""

import sys

from .tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
