"""YAML recipes: one file describes a whole run (data, teacher, and a chain of stages).

A recipe names a teacher, the data, and stages that each read a model and write one, so that each stage's
output folder is the next one's input and an interrupted run resumes from the last completed stage:

.. code-block:: yaml

    name: distill-sst2
    task: sequence-classification
    teacher: sentence-transformers/all-MiniLM-L6-v2
    output_dir: runs/distill-sst2
    seed: 0
    data:
      train: ../shared/data/sst2/train.tsv
      eval: ../shared/data/sst2/dev.tsv
      columns: {text: sentence, label: label}
      max_length: 64
    stages:
      - {name: teacher-ft, type: finetune, model: teacher, args: {num_train_epochs: 1}}
      - {name: student, type: init_student, model: teacher-ft, layers: every_other}
      - name: distill
        type: distill
        model: student
        teacher: teacher-ft
        args: {temperature: 2.0, alpha: 0.5, hidden_weight: 1.0}
        pruning: {target_sparsity: 0.5, end_step: 200}
      - {name: int8, type: quantize, model: distill, bits: 8}
      - {name: eval, type: evaluate, models: [teacher-ft, distill, int8]}
      - {name: export, type: export, model: distill}

A model reference is ``teacher``, the name of an earlier stage, or a Hub id / folder. Stage ``args`` are the
fields of ``TrainingArguments`` (``DistillationConfig`` for ``distill``), checked by ``HfArgumentParser``.
Unknown keys anywhere are errors with a "did you mean".

>>> recipe = Recipe.from_dict({"name": "r", "task": "causal-lm", "teacher": "gpt2", "data": {"train": "a.txt"},
...                            "stages": [{"name": "ft", "type": "finetune", "model": "teacher"}]})
>>> [s.name for s in recipe.stages]
['ft']
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_lite.tasks import TASKS, normalize_task

#: What each stage type does (see hf_lite.app.runner) and the keys it accepts beyond name/type/model.
STAGE_KEYS: dict[str, set[str]] = {
    "finetune": {"args", "peft", "quantization", "pruning", "gradient_checkpointing"},
    "init_student": {"layers"},
    "distill": {"teacher", "args", "peft", "quantization", "pruning", "gradient_checkpointing", "augment"},
    "prune": {
        "method",
        "sparsity",
        "pattern",
        "keep_ratio",
        "num_layers",
        "heads_keep_ratio",
        "calibration_samples",
    },
    "quantize": {"bits"},
    "evaluate": {"models", "latency_batch_sizes", "latency_repeats"},
    "export": {"merge_adapter", "dtype", "push"},
}
#: Stages that produce a model folder (the others produce reports or uploads).
MODEL_STAGES = {"finetune", "init_student", "distill", "prune", "quantize", "export"}
PRUNE_METHODS = ("magnitude", "wanda", "ffn", "heads", "layers")
_TOP_KEYS = {"name", "task", "teacher", "output_dir", "seed", "data", "stages", "num_labels"}
_DATA_KEYS = {
    "train",
    "eval",
    "eval_fraction",
    "columns",
    "max_length",
    "max_train_rows",
    "max_eval_rows",
    "augment",
}


def _did_you_mean(value: str, choices: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(value, sorted(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(where: str, given: Mapping[str, Any], allowed: set[str]) -> None:
    for key in given:
        if key not in allowed:
            raise ValueError(
                f"{where}: unknown key {key!r}{_did_you_mean(str(key), allowed)}. Allowed keys: {', '.join(sorted(allowed))}."
            )


@dataclass
class DataConfig:
    """Where the data comes from and how it is shaped (``hf_lite.data``)."""

    train: str
    eval: str | None = None
    eval_fraction: float = 0.1
    columns: dict[str, str] = field(default_factory=dict)
    max_length: int = 128
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    augment: dict[str, Any] | None = None


@dataclass
class StageConfig:
    """One stage: ``name`` (its folder), ``type``, the ``model`` it reads and its options."""

    name: str
    type: str
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass
class Recipe:
    """A validated recipe. Build with :meth:`from_yaml` or :meth:`from_dict`."""

    name: str
    task: str
    teacher: str
    data: DataConfig | None
    stages: list[StageConfig]
    output_dir: str = "hf-lite-runs"
    seed: int = 0
    num_labels: int | None = None
    source: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> Recipe:
        """Read a recipe file; ``overrides`` are dotted keys (``distill.learning_rate``) or top-level keys."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"recipe {str(path)!r} does not exist. Pass the path of a YAML recipe (see examples/)."
            )
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"recipe {str(path)!r} is not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(
                f"recipe {str(path)!r} must be a YAML mapping with keys like name, teacher, data, stages."
            )
        return cls.from_dict(raw, overrides)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Recipe:
        raw = apply_overrides(copy.deepcopy(dict(raw)), overrides or {})
        _check_keys("recipe", raw, _TOP_KEYS)
        for key in ("name", "task", "teacher", "stages"):
            if key not in raw:
                raise ValueError(f"recipe: missing required key {key!r}.")
        task = normalize_task(raw["task"])
        data = _parse_data(raw.get("data"))
        if not isinstance(raw["stages"], list) or not raw["stages"]:
            raise ValueError("recipe: stages must be a non-empty list of stages (each with name and type).")
        stages: list[StageConfig] = []
        seen = {"teacher"}
        for i, stage_raw in enumerate(raw["stages"]):
            stage = _parse_stage(i, stage_raw, seen)
            stages.append(stage)
            seen.add(stage.name)
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"recipe: seed={seed!r} must be an integer.")
        return cls(
            name=str(raw["name"]), task=task, teacher=str(raw["teacher"]), data=data, stages=stages,
            output_dir=str(raw.get("output_dir", f"hf-lite-runs/{raw['name']}")), seed=seed,
            num_labels=raw.get("num_labels"), source=dict(raw),
        )  # fmt: skip

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def stage_fingerprint(self, name: str) -> str:
        """Hash of everything that decides a stage's output: the recipe's shared settings and this stage and
        all stages before it (a changed earlier stage invalidates later ones)."""
        index = [s.name for s in self.stages].index(name)
        payload = {
            "task": self.task, "teacher": self.teacher, "seed": self.seed, "num_labels": self.num_labels,
            "data": dataclasses.asdict(self.data) if self.data is not None else None,
            "stages": [dataclasses.asdict(s) for s in self.stages[: index + 1]],
        }  # fmt: skip
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _parse_data(data_raw: Any) -> DataConfig | None:
    if data_raw is None:
        return None  # stages that need data (training, calibration, evaluation) say so when they run
    if isinstance(data_raw, str):
        data_raw = {"train": data_raw}
    if not isinstance(data_raw, Mapping) or "train" not in data_raw:
        raise ValueError(
            "recipe: data must be a mapping with at least 'train' (a file, folder or Hub dataset id)."
        )
    _check_keys("recipe.data", data_raw, _DATA_KEYS)
    data = DataConfig(**dict(data_raw))
    if not 0.0 < data.eval_fraction < 1.0:
        raise ValueError(f"recipe.data.eval_fraction={data.eval_fraction} must be in (0, 1).")
    return data


def _parse_stage(index: int, raw: Any, earlier: set[str]) -> StageConfig:
    if not isinstance(raw, Mapping):
        raise ValueError(f"recipe.stages[{index}] must be a mapping with name and type.")
    where = f"recipe.stages[{index}]"
    stage_type = raw.get("type")
    if stage_type not in STAGE_KEYS:
        raise ValueError(
            f"{where}: unknown stage type {stage_type!r}{_did_you_mean(str(stage_type), set(STAGE_KEYS))}. "
            f"Stage types: {', '.join(STAGE_KEYS)}."
        )
    name = raw.get("name") or stage_type
    where = f"recipe.stages[{index}] ({name})"
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(
            f"{where}: name {name!r} must be letters, digits, '-' or '_' (it names the stage's folder)."
        )
    if name in earlier:
        raise ValueError(f"{where}: the name {name!r} is already used by an earlier stage (or is 'teacher').")
    _check_keys(where, raw, {"name", "type", "model"} | STAGE_KEYS[stage_type])
    options = {k: v for k, v in raw.items() if k not in ("name", "type", "model")}
    model = raw.get("model")
    if stage_type == "evaluate":
        models = options.get("models")
        if models is not None and not isinstance(models, list):
            raise ValueError(f"{where}: models must be a list of model references.")
    elif model is None:
        model = "teacher" if index == 0 else None
        if model is None:
            raise ValueError(
                f"{where}: say which model this stage reads (model: teacher, or an earlier stage's name)."
            )
    refs = [model] if stage_type != "evaluate" else list(options.get("models") or [])
    if stage_type == "distill" and options.get("teacher"):
        refs.append(options["teacher"])
    for ref in refs:
        _check_reference(where, str(ref), earlier)
    if stage_type == "prune":
        method = options.get("method")
        if method not in PRUNE_METHODS:
            raise ValueError(
                f"{where}: method={method!r} is not a pruning method{_did_you_mean(str(method), set(PRUNE_METHODS))}. "
                f"Use one of: {', '.join(PRUNE_METHODS)}."
            )
    if stage_type == "quantize" and options.get("bits") not in (4, 8):
        raise ValueError(f"{where}: bits={options.get('bits')!r} must be 4 or 8.")
    if "args" in options and not isinstance(options["args"], Mapping):
        raise ValueError(f"{where}: args must be a mapping of TrainingArguments fields.")
    return StageConfig(name=name, type=stage_type, model=model, options=options)


def _check_reference(where: str, ref: str, earlier: set[str]) -> None:
    """A reference is 'teacher', an earlier stage, or a Hub id / path; a near-miss of a stage name is a typo."""
    import os

    if ref in earlier or os.path.exists(os.path.expanduser(ref)) or "/" in ref:
        return
    close = difflib.get_close_matches(ref, sorted(earlier), n=1, cutoff=0.7)
    if close:
        raise ValueError(
            f"{where}: model reference {ref!r} is not an earlier stage (did you mean {close[0]!r}?). Stages can only "
            "read 'teacher' or stages listed before them."
        )


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply command-line overrides to a raw recipe.

    ``seed``/``output_dir``/... set top-level keys; ``data.max_length`` a data key; ``STAGE.KEY`` sets a stage's
    training argument (``distill.learning_rate``) or option (``int8.bits``); a bare training argument name
    (``learning_rate``) applies to every training stage.

    >>> r = {"seed": 0, "stages": [{"name": "ft", "type": "finetune", "args": {}}]}
    >>> apply_overrides(r, {"learning_rate": 1e-4, "ft.max_steps": 5})["stages"][0]["args"]
    {'learning_rate': 0.0001, 'max_steps': 5}
    """
    stages = {s.get("name") or s.get("type"): s for s in raw.get("stages", []) if isinstance(s, dict)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if not rest:
            if key in _TOP_KEYS:
                raw[key] = value
                continue
            training = [s for s in stages.values() if s.get("type") in ("finetune", "distill")]
            if not training:
                raise ValueError(
                    f"override --{key}: not a recipe key, and the recipe has no training stage to pass it to."
                )
            for stage in training:
                stage.setdefault("args", {})[key] = value
        elif head == "data":
            raw.setdefault("data", {})[rest] = value
        elif head in stages:
            stage = stages[head]
            if rest in STAGE_KEYS.get(stage.get("type"), set()) or rest == "model":
                stage[rest] = value
            else:
                stage.setdefault("args", {})[rest] = value
        else:
            raise ValueError(
                f"override --{key}: {head!r} is neither 'data' nor a stage of this recipe{_did_you_mean(head, set(stages))}."
            )
    return raw


def parse_cli_overrides(tokens: list[str]) -> dict[str, Any]:
    """``["--learning_rate", "1e-4", "--distill.max_steps=5"]`` -> ``{"learning_rate": 1e-4, "distill.max_steps": 5}``
    (values are read as YAML scalars: numbers, booleans, null, strings).

    >>> parse_cli_overrides(["--seed", "3", "--data.max_length=32", "--bf16", "true"])
    {'seed': 3, 'data.max_length': 32, 'bf16': True}
    """
    import yaml

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
        out[key.replace("-", "_")] = _scalar(yaml.safe_load(value))
    return out


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; command-line users mean a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_training_args(stage: StageConfig, args_cls: type, base: Mapping[str, Any]) -> Any:
    """Build the stage's ``TrainingArguments`` (or ``DistillationConfig``) through ``HfArgumentParser``, refusing
    unknown keys with a did-you-mean."""
    from transformers import HfArgumentParser

    given = dict(stage.get("args") or {})
    fields = {f.name: f for f in dataclasses.fields(args_cls) if f.init}
    names = set(fields)
    for key, value in given.items():
        # YAML 1.1 reads 5e-5 as a string: convert where the field is numeric.
        if isinstance(value, str) and key in fields and "float" in str(fields[key].type):
            given[key] = _scalar(value)
    for key in given:
        if key not in names:
            raise ValueError(
                f"stage {stage.name!r}: args.{key} is not a {args_cls.__name__} field{_did_you_mean(key, names)}."
            )
    (args,) = HfArgumentParser(args_cls).parse_dict({**base, **given}, allow_extra_keys=False)
    return args


def task_auto_class(task: str) -> str:
    return TASKS[normalize_task(task)]
