"""``python -m benchmarks``: run the benchmarks and rewrite RESULTS.md (see :mod:`benchmarks.harness`)."""

from __future__ import annotations

import sys

from benchmarks.harness import main

if __name__ == "__main__":
    sys.exit(main())
