"""The ``hf-lite`` application: YAML recipes, typed stages, the stage runner, ``plan``, the demo and the CLI.

The only part of ``hf_lite`` that imports ``trainers``: everything below it is a toolkit that knows
nothing of the command line. ``recipe`` parses and checks a run, ``stages`` holds one dataclass per stage
type (options, defaults, checks) and the prune-method registry, ``runner`` runs the stages.
"""
