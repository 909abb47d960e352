"""Command-line overrides of a recipe: ``--seed 1``, ``--data.max_length 64``, ``--distill.learning_rate 3e-5``.

:func:`parse_cli_overrides` reads the ``--key value`` pairs that follow a command's own options;
:func:`apply_overrides` applies them to a raw recipe (a mapping, before it is parsed) and refuses, with a
did-you-mean, any override that would not take effect: an unknown recipe or data key, a stage that does not
exist, an option or training argument the stage does not have.

>>> parse_cli_overrides(["--teacher-ft.learning_rate", "3e-5"])
{'teacher-ft.learning_rate': 3e-05}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from hf_lite._utils import did_you_mean
from hf_lite.app.stages import STAGE_TYPES, TrainingStage

#: The top-level keys of a recipe.
RECIPE_KEYS = {"name", "task", "teacher", "output_dir", "seed", "data", "stages", "num_labels"}
#: The keys of a recipe's ``data``.
DATA_KEYS = {
    "train",
    "eval",
    "eval_fraction",
    "columns",
    "max_length",
    "max_train_rows",
    "max_eval_rows",
    "augment",
    "data_format",
    "completion_only_loss",
    "assistant_only_loss",
}


#: ``TrainingArguments`` fields that transformers 5 removed, with what replaces them.
REMOVED_TRAINING_ARGS = {
    "warmup_ratio": "warmup_steps (a float below 1 is a fraction of the training steps)",
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "include_inputs_for_metrics": "include_for_metrics",
}


def unknown_field_hint(key: str, names: set[str]) -> str:
    """What to append to "``key`` is not a field": the replacement of a field transformers 5 removed, else a
    did-you-mean among ``names``.

    >>> unknown_field_hint("warmup_ratio", {"warmup_steps"})
    ': transformers 5 removed it; use warmup_steps (a float below 1 is a fraction of the training steps)'
    >>> unknown_field_hint("learning_rat", {"learning_rate", "seed"})
    " (did you mean 'learning_rate'?)"
    """
    replacement = REMOVED_TRAINING_ARGS.get(key)
    if replacement and replacement.split()[0] in names:
        return f": transformers 5 removed it; use {replacement}"
    return did_you_mean(key, names)


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply command-line overrides to a raw recipe, refusing any that would not take effect.

    ``seed``/``output_dir``/... set top-level keys; ``data.max_length`` a data key; ``STAGE.KEY`` sets a stage's
    option (``int8.bits``), an entry of a mapping option (``distill.pruning.target_sparsity``) or a field of its
    training arguments (``distill.learning_rate``, also written ``distill.args.learning_rate``); ``STAGE`` may
    be written with ``_`` for ``-``. A bare training argument (``learning_rate``) applies to every training stage
    whose arguments have that field. Checking training arguments imports transformers (only when an override
    needs it).

    >>> r = {"seed": 0, "stages": [{"name": "ft", "type": "finetune", "args": {}}]}
    >>> apply_overrides(r, {"learning_rate": 1e-4, "ft.max_steps": 5})["stages"][0]["args"]
    {'learning_rate': 0.0001, 'max_steps': 5}
    >>> apply_overrides(r, {"sed": 1})
    Traceback (most recent call last):
    ...
    ValueError: override --sed: not a recipe key nor a training argument of any stage (did you mean 'seed'?).
    """
    stages = {s.get("name") or s.get("type"): s for s in raw.get("stages", []) if isinstance(s, dict)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if not rest:
            if key in RECIPE_KEYS:
                raw[key] = value
            else:
                _override_training_arg(stages, key, value)
        elif head == "data":
            if rest not in DATA_KEYS:
                raise ValueError(
                    f"override --{key}: {rest!r} is not a data key{did_you_mean(rest, DATA_KEYS)}. "
                    f"Data keys: {', '.join(sorted(DATA_KEYS))}."
                )
            data = raw.get("data")
            raw["data"] = {"train": data} if isinstance(data, str) else dict(data or {})
            raw["data"][rest] = value
        else:
            name = _override_stage_name(key, head, stages)
            _override_stage_key(key, name, stages[name], rest, value)
    return raw


def _training_kind(stage: Mapping[str, Any]) -> type[TrainingStage] | None:
    cls = STAGE_TYPES.get(stage.get("type"))  # type: ignore[arg-type]
    return cls if cls is not None and issubclass(cls, TrainingStage) else None


def _override_training_arg(stages: dict[str, dict[str, Any]], key: str, value: Any) -> None:
    training = {name: (stage, kind) for name, stage in stages.items() if (kind := _training_kind(stage))}
    if not training:
        raise ValueError(
            f"override --{key}: not a recipe key{did_you_mean(key, RECIPE_KEYS)}, and the recipe has no training "
            f"stage to pass it to. Recipe keys: {', '.join(sorted(RECIPE_KEYS))}."
        )
    fields = {name: kind.args_fields() for name, (_, kind) in training.items()}
    takers = [name for name in training if key in fields[name]]
    if not takers:
        names = set(RECIPE_KEYS).union(*fields.values())
        raise ValueError(
            f"override --{key}: not a recipe key nor a training argument of any stage{unknown_field_hint(key, names)}."
        )
    for name in takers:
        stage = training[name][0]
        stage["args"] = {**(stage.get("args") or {}), key: value}


def _override_stage_name(key: str, head: str, stages: dict[str, Any]) -> str:
    """The stage ``head`` names: exactly, or with ``-`` and ``_`` taken as the same character."""
    if head in stages:
        return head
    same = [name for name in stages if str(name).replace("-", "_") == head.replace("-", "_")]
    if len(same) == 1:
        return same[0]
    raise ValueError(
        f"override --{key}: {head!r} is neither 'data' nor a stage of this recipe{did_you_mean(head, stages)}. "
        f"Stages: {', '.join(map(str, stages))}."
    )


def _override_stage_key(key: str, name: str, stage: dict[str, Any], rest: str, value: Any) -> None:
    cls = STAGE_TYPES.get(stage.get("type"))  # type: ignore[arg-type]
    if cls is None:  # an unknown type: parsing the stage says so, with a did-you-mean
        stage.setdefault("args", {})[rest] = value
        return
    option, _, sub = rest.partition(".")
    if option == "args" and sub and issubclass(cls, TrainingStage):
        option, sub = sub, ""
    elif option in cls.keys() | {"model"}:
        if not sub:
            stage[option] = value
            return
        current = stage.get(option)
        if current is not None and not isinstance(current, Mapping):
            raise ValueError(
                f"override --{key}: option {option!r} of stage {name!r} is {current!r}, not a mapping; "
                f"set it whole with --{name}.{option} VALUE."
            )
        stage[option] = {**(current or {}), sub: value}
        return
    options = cls.keys() | {"model"}
    if not issubclass(cls, TrainingStage):
        raise ValueError(
            f"override --{key}: {rest!r} is not an option of {cls.kind} stage {name!r}{did_you_mean(rest, options)}. "
            f"Options: {', '.join(sorted(options))}."
        )
    fields = cls.args_fields()
    if sub or option not in fields:
        raise ValueError(
            f"override --{key}: {rest!r} is neither an option of {cls.kind} stage {name!r} nor a "
            f"{cls.args_class().__name__} field{unknown_field_hint(rest, fields | options)}."
        )
    stage["args"] = {**(stage.get("args") or {}), option: value}


def parse_cli_overrides(tokens: list[str]) -> dict[str, Any]:
    """``["--learning_rate", "1e-4", "--distill.max_steps=5"]`` -> ``{"learning_rate": 1e-4, "distill.max_steps": 5}``
    (values are read as YAML scalars: numbers, booleans, null, strings). ``-`` in a key is read as ``_``, except
    in a stage name (``--teacher-ft.learning-rate`` -> ``teacher-ft.learning_rate``).

    >>> parse_cli_overrides(["--seed", "3", "--data.max_length=32", "--bf16", "true", "--teacher-ft.max-steps", "5"])
    {'seed': 3, 'data.max_length': 32, 'bf16': True, 'teacher-ft.max_steps': 5}
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"override {token!r} must look like --key value or --key=value.")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ValueError(f"override --{key} has no value: write --{key} VALUE.")
            value = tokens[i + 1]
            i += 2
        head, dot, rest = key.partition(".")
        key = f"{head}.{rest.replace('-', '_')}" if dot else key.replace("-", "_")
        out[key] = yaml_scalar(yaml.safe_load(value))
    return out


def yaml_scalar(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; command-line users mean a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
