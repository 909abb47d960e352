"""hf-lite's benchmarks: measured comparisons on real data, and the harness that runs them.

Run ``python -m benchmarks --help``; see ``benchmarks/README.md`` for what is measured and how, and
:mod:`benchmarks.harness` for the registry (a module here with ``run(ctx) -> dict`` is a benchmark).
This package is not installed with hf-lite (it lives beside the source, like ``examples/``).
"""
