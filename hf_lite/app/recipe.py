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
Unknown keys anywhere are errors with a "did you mean". The options of each stage type, their defaults and
their checks are the dataclasses of :mod:`hf_lite.app.stages`.

>>> recipe = Recipe.from_dict({"name": "r", "task": "causal-lm", "teacher": "gpt2", "data": {"train": "a.txt"},
...                            "stages": [{"name": "ft", "type": "finetune", "model": "teacher"}]})
>>> [s.name for s in recipe.stages]
['ft']
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_lite._utils import did_you_mean
from hf_lite.app.fingerprint import normalized, path_signature, settings_hash
from hf_lite.app.overrides import (  # noqa: F401 (apply_overrides, parse_cli_overrides: importable from here too)
    DATA_KEYS,
    RECIPE_KEYS,
    apply_overrides,
    parse_cli_overrides,
    unknown_field_hint,
    yaml_scalar,
)
from hf_lite.app.stages import (  # noqa: F401 (STAGE_KEYS, MODEL_STAGES, PRUNE_METHODS: importable from here too)
    COMMON_KEYS,
    MODEL_STAGES,
    PRUNE_METHODS,
    STAGE_KEYS,
    STAGE_TYPES,
    EvaluateStage,
    GenerateStage,
    StageSpec,
    TrainingStage,
    check_keys,
    stage_class,
)
from hf_lite.tasks import TASKS, normalize_task


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
    # causal LM: the format of the rows (hf_lite.data.chat: text, prompt-completion, prompt, messages; auto =
    # detected from the columns) and which tokens the loss counts
    data_format: str = "auto"
    completion_only_loss: bool = True
    assistant_only_loss: bool = True

    def tokenize_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`hf_lite.data.tokenize_data` these settings give.

        >>> DataConfig("chats.jsonl", data_format="messages").tokenize_kwargs()
        {'max_length': 128, 'data_format': 'messages', 'completion_only_loss': True, 'assistant_only_loss': True}
        """
        return {
            "max_length": self.max_length,
            "data_format": None if self.data_format == "auto" else self.data_format,
            "completion_only_loss": self.completion_only_loss,
            "assistant_only_loss": self.assistant_only_loss,
        }


@dataclass
class StageConfig:
    """One stage: ``name`` (its folder), ``type``, the ``model`` it reads, its ``options`` as the recipe wrote
    them, and ``spec``: the options typed, with their defaults (:mod:`hf_lite.app.stages`; built and checked
    from ``options`` when not given).

    >>> StageConfig("int8", "quantize", "distill", {"bits": 8}).spec
    QuantizeStage(bits=8)
    """

    name: str
    type: str
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    spec: StageSpec = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.spec is None:
            where = f"stage {self.name!r}"
            self.spec = stage_class(where, self.type).from_options(where, self.options)

    def get(self, key: str, default: Any = None) -> Any:
        """The option ``key`` as the recipe wrote it (``default`` when absent); ``spec`` has the defaults."""
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
    # content signatures of local inputs, computed once per recipe (hashing a checkpoint takes a moment)
    _signatures: dict[tuple[str, bool], str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> Recipe:
        """Read a recipe file; ``overrides`` are dotted keys (``distill.learning_rate``) or top-level keys."""
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
        check_keys("recipe", raw, RECIPE_KEYS)
        for key in ("name", "task", "teacher", "stages"):
            if key not in raw:
                raise ValueError(f"recipe: missing required key {key!r}.")
        task = normalize_task(raw["task"])
        data = _parse_data(raw.get("data"), task)
        if not isinstance(raw["stages"], list) or not raw["stages"]:
            raise ValueError("recipe: stages must be a non-empty list of stages (each with name and type).")
        stages: list[StageConfig] = []
        seen = {"teacher"}
        for i, stage_raw in enumerate(raw["stages"]):
            stage = _parse_stage(i, stage_raw, seen)
            stages.append(stage)
            seen.add(stage.name)
        _check_generations(stages, task, data)
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"recipe: seed={seed!r} must be an integer.")
        return cls(
            name=str(raw["name"]),
            task=task,
            teacher=str(raw["teacher"]),
            data=data,
            stages=stages,
            output_dir=str(raw.get("output_dir", f"hf-lite-runs/{raw['name']}")),
            seed=seed,
            num_labels=raw.get("num_labels"),
            source=dict(raw),
        )

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def _index(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)

    def stage_inputs(self, name: str) -> list[str]:
        """The model references stage ``name`` reads: its ``model``, a distillation ``teacher``, the ``models``
        an ``evaluate`` stage measures (by default the teacher and every model stage before it).

        >>> Recipe.from_dict({"name": "r", "task": "causal-lm", "teacher": "org/t", "stages": [
        ...     {"name": "s", "type": "init_student"}, {"name": "e", "type": "evaluate"}]}).stage_inputs("e")
        ['teacher', 's']
        """
        index = self._index(name)
        stage = self.stages[index]
        if isinstance(stage.spec, EvaluateStage) and stage.spec.models is None:
            return ["teacher", *[s.name for s in self.stages[:index] if s.spec.produces_model]]
        refs = [str(stage.model)] if stage.spec.reads_model and stage.model is not None else []
        data = [stage.spec.data] if isinstance(stage.spec, TrainingStage) and stage.spec.data else []
        return refs + [str(ref) for ref in stage.spec.references()] + data

    def _signature(self, ref: str, recursive: bool = False) -> str | None:
        key = (ref, recursive)
        if key not in self._signatures:
            self._signatures[key] = path_signature(ref, recursive=recursive)
        return self._signatures[key]

    def stage_settings(self, name: str) -> dict[str, Any]:
        """Everything of the recipe that decides stage ``name``'s own result, as plain JSON data: the shared
        settings (task, teacher, seed, labels, data), the stage's options with their defaults, and content
        signatures of the local files and folders it reads (data files, the teacher's folder, which also
        gives the tokenizer, and model folders given by path). A Hub id counts by its name."""
        stage = self.stages[self._index(name)]
        data = dataclasses.asdict(self.data) if self.data is not None else None
        if data is not None:
            data["content"] = {
                split: self._signature(str(data[split]), recursive=True)
                for split in ("train", "eval")
                if data[split] is not None and self._signature(str(data[split]), recursive=True)
            }
        names = {s.name for s in self.stages} | {"teacher"}
        local = [self.teacher, *[r for r in self.stage_inputs(name) if r not in names]]
        return normalized(
            {
                "task": self.task,
                "teacher": self.teacher,
                "seed": self.seed,
                "num_labels": self.num_labels,
                "data": data,
                "stage": {
                    "name": stage.name,
                    "type": stage.type,
                    "model": stage.model,
                    "options": dataclasses.asdict(stage.spec),
                },
                "content": {ref: self._signature(ref) for ref in local if self._signature(ref)},
            }
        )

    def stage_chain(self, name: str) -> list[list[str]]:
        """``[stage name, hash of its settings]`` for every stage up to and including ``name``."""
        return [
            [s.name, settings_hash(self.stage_settings(s.name))] for s in self.stages[: self._index(name) + 1]
        ]

    def stage_fingerprint(self, name: str) -> str:
        """Hash of everything that decides a stage's output: its :meth:`stage_settings` and those of every stage
        before it (a changed earlier stage invalidates the later ones)."""
        return settings_hash(self.stage_chain(name))


def _parse_data(data_raw: Any, task: str) -> DataConfig | None:
    if data_raw is None:
        return None  # stages that need data (training, calibration, evaluation) say so when they run
    if isinstance(data_raw, str):
        data_raw = {"train": data_raw}
    if not isinstance(data_raw, Mapping) or "train" not in data_raw:
        raise ValueError(
            "recipe: data must be a mapping with at least 'train' (a file, folder or Hub dataset id)."
        )
    check_keys("recipe.data", data_raw, DATA_KEYS)
    data = DataConfig(**dict(data_raw))
    if not 0.0 < data.eval_fraction < 1.0:
        raise ValueError(f"recipe.data.eval_fraction={data.eval_fraction} must be in (0, 1).")
    _check_data_format(data, task)
    return data


def _check_data_format(data: DataConfig, task: str) -> None:
    """``data_format`` is a format :func:`hf_lite.data.tokenize_data` knows (or ``auto``), for a causal LM;
    the loss options are booleans."""
    for key in ("completion_only_loss", "assistant_only_loss"):
        value = getattr(data, key)
        if not isinstance(value, bool):
            raise ValueError(
                f"recipe.data.{key}={value!r} must be true or false (true: the loss counts the "
                f"{'completion' if key.startswith('completion') else 'assistant turns'} only; false: every token)."
            )
    if data.data_format == "auto":
        return
    from hf_lite.data.chat import DATA_FORMATS  # imports datasets and torch: only when a format is named

    if data.data_format not in DATA_FORMATS:
        raise ValueError(
            f"recipe.data.data_format={data.data_format!r} is not a data format"
            f"{did_you_mean(str(data.data_format), DATA_FORMATS)}. Allowed values: auto (detected from the "
            f"columns), {', '.join(DATA_FORMATS)}."
        )
    if task != "causal-lm":
        raise ValueError(
            f"recipe.data.data_format={data.data_format!r} applies to causal-lm data; task {task!r} reads text "
            "(and label) columns. Leave data_format out (auto)."
        )


def _check_generations(stages: list[StageConfig], task: str, data: DataConfig | None) -> None:
    """A ``generate`` stage needs a causal LM and room for its completions in ``data.max_length``; a training
    stage's ``data`` names an earlier ``generate`` stage."""
    kinds = {}
    for index, stage in enumerate(stages):
        where = f"recipe.stages[{index}] ({stage.name})"
        spec = stage.spec
        if isinstance(spec, GenerateStage):
            if task != "causal-lm":
                raise ValueError(
                    f"{where}: a generate stage makes a causal LM teacher complete prompts; task is {task!r}. "
                    "Use task: causal-lm, or remove the stage."
                )
            if data is not None and spec.max_prompt_length is None and spec.max_new_tokens >= data.max_length:
                raise ValueError(
                    f"{where}: max_new_tokens={spec.max_new_tokens} leaves no room for the prompt in "
                    f"data.max_length={data.max_length}; use max_new_tokens < {data.max_length} or raise "
                    "data.max_length."
                )
        if isinstance(spec, TrainingStage) and spec.data is not None:
            if kinds.get(spec.data) != "generate":
                found = f"a {kinds[spec.data]} stage" if spec.data in kinds else "not an earlier stage"
                hint = did_you_mean(spec.data, [n for n, k in kinds.items() if k == "generate"])
                raise ValueError(
                    f"{where}: data={spec.data!r} is {found}{hint}; data names an earlier generate stage (the "
                    "teacher's completions to train on), or is left out to train on the recipe's data."
                )
            if getattr(spec, "augment", None):
                raise ValueError(
                    f"{where}: augment rewrites the recipe's text rows, but the stage trains on the completions of "
                    f"{spec.data!r}; remove augment or data."
                )
        kinds[stage.name] = stage.type


def _parse_stage(index: int, raw: Any, earlier: set[str]) -> StageConfig:
    if not isinstance(raw, Mapping):
        raise ValueError(f"recipe.stages[{index}] must be a mapping with name and type.")
    stage_type = raw.get("type")
    spec_class = stage_class(f"recipe.stages[{index}]", stage_type)
    name = raw.get("name") or stage_type
    where = f"recipe.stages[{index}] ({name})"
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(
            f"{where}: name {name!r} must be letters, digits, '-' or '_' (it names the stage's folder)."
        )
    if name in earlier:
        raise ValueError(f"{where}: the name {name!r} is already used by an earlier stage (or is 'teacher').")
    check_keys(where, raw, set(COMMON_KEYS) | spec_class.keys())
    options = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
    spec = spec_class(**options)
    model = raw.get("model")
    if spec.reads_model and model is None:
        if index > 0:
            raise ValueError(
                f"{where}: say which model this stage reads (model: teacher, or an earlier stage's name)."
            )
        model = "teacher"
    refs = [model] if spec.reads_model else []
    for ref in refs + spec.references():
        _check_reference(where, str(ref), earlier)
    spec.validate(where)
    return StageConfig(name=name, type=stage_type, model=model, options=options, spec=spec)


def _check_reference(where: str, ref: str, earlier: set[str]) -> None:
    """A reference is 'teacher', an earlier stage, or a Hub id / path; a near-miss of a stage name is a typo."""
    if ref in earlier or os.path.exists(os.path.expanduser(ref)) or "/" in ref:
        return
    # a stricter cutoff than the suggestions': here a close name turns a Hub id into an error
    hint = did_you_mean(ref, earlier, cutoff=0.7)
    if hint:
        raise ValueError(
            f"{where}: model reference {ref!r} is not an earlier stage{hint}. Stages can only "
            "read 'teacher' or stages listed before them."
        )


def check_training_args(stage: StageConfig, args_cls: type, base: Mapping[str, Any]) -> Any:
    """Build the stage's ``TrainingArguments`` (or ``DistillationConfig``) through ``HfArgumentParser``, refusing
    unknown keys with a did-you-mean."""
    from transformers import HfArgumentParser

    given = dict(stage.spec.args or {})
    fields = {f.name: f for f in dataclasses.fields(args_cls) if f.init}
    names = set(fields)
    for key, value in given.items():
        # YAML 1.1 reads 5e-5 as a string: convert where the field is numeric.
        if isinstance(value, str) and key in fields and "float" in str(fields[key].type):
            given[key] = yaml_scalar(value)
    for key in given:
        if key not in names:
            raise ValueError(
                f"stage {stage.name!r}: args.{key} is not a {args_cls.__name__} field{unknown_field_hint(key, names)}."
            )
    (args,) = HfArgumentParser(args_cls).parse_dict({**base, **given}, allow_extra_keys=False)
    return args


def task_auto_class(task: str) -> str:
    return TASKS[normalize_task(task)]
