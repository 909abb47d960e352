"""The ``hf-lite`` application: YAML recipes, the stage runner, ``plan``, the demo and the command line.

The only part of ``hf_lite`` that imports ``trainers``: everything below it is a toolkit that knows
nothing of the command line.
"""
