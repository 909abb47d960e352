"""Typed recipe stages: one dataclass per stage kind (its keys, defaults and checks) and the prune methods.

In a recipe a stage is a mapping: ``name``, ``type``, ``model`` and the options of its kind. The options are
the fields of the kind's dataclass (:data:`STAGE_TYPES`), so a kind's schema, its defaults and its checks
live in one place: :mod:`hf_lite.app.recipe` parses stages through these classes and
:mod:`hf_lite.app.runner` reads their fields. The methods of a ``prune`` stage are a registry
(:data:`PRUNE_METHODS`, name -> the function that runs it).

>>> spec = PruneStage.from_options("stage 'p'", {"method": "wanda", "sparsity": 0.5})
>>> spec.pattern, spec.calibration_samples
('unstructured', 64)
>>> QuantizeStage.from_options("stage 'q'", {"bitz": 8})
Traceback (most recent call last):
...
ValueError: stage 'q': unknown key 'bitz' (did you mean 'bits'?). Allowed keys: bits, model, name, type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

# `hf_lite.pruning` imports torch: it is reached as the attribute `hf_lite.pruning` (imported on first use)
# inside the prune methods, so that validating a recipe (and `hf-lite --help`) does not import torch.
import hf_lite
from hf_lite._utils import did_you_mean

#: Keys every stage has: its ``name`` (its folder), its ``type`` (the kind) and the ``model`` it reads.
COMMON_KEYS = ("name", "type", "model")


def check_keys(where: str, given: Mapping[str, Any], allowed: set[str]) -> None:
    """Refuse a key of ``given`` that is not in ``allowed``, with a did-you-mean and the allowed keys.

    >>> check_keys("recipe.data", {"max_lenght": 3}, {"train", "max_length"})
    Traceback (most recent call last):
    ...
    ValueError: recipe.data: unknown key 'max_lenght' (did you mean 'max_length'?). Allowed keys: max_length, train.
    """
    for key in given:
        if key not in allowed:
            raise ValueError(
                f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}. Allowed keys: {', '.join(sorted(allowed))}."
            )


@dataclass
class StageSpec:
    """The options of one stage kind; subclasses list them as fields (with their defaults) and check them.

    Class attributes: ``kind`` (the ``type`` in a recipe), ``produces_model`` (the stage writes
    ``<stage>/model`` for later stages to read) and ``reads_model`` (the stage reads the one ``model``).
    """

    kind: ClassVar[str] = ""
    produces_model: ClassVar[bool] = True
    reads_model: ClassVar[bool] = True

    @classmethod
    def keys(cls) -> set[str]:
        """The options of this kind (the keys a stage may have besides ``name``, ``type`` and ``model``)."""
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_options(cls, where: str, options: Mapping[str, Any]) -> StageSpec:
        """Check the keys of ``options`` (a stage mapping, ``name``/``type``/``model`` ignored), fill the defaults
        and check the values; ``where`` names the stage in error messages."""
        check_keys(where, options, set(COMMON_KEYS) | cls.keys())
        spec = cls(**{k: v for k, v in options.items() if k not in COMMON_KEYS})
        spec.validate(where)
        return spec

    def references(self) -> list[str]:
        """The model references this stage reads besides its ``model`` (checked like ``model``)."""
        return []

    def validate(self, where: str) -> None:
        """Raise ``ValueError`` naming ``where`` when an option has a bad value."""


@dataclass
class TrainingStage(StageSpec):
    """What the training stages share: ``TrainingArguments`` fields (``args``), an adapter (``peft``), a
    quantized base (``quantization``), gradual pruning during training (``pruning``: ``PruningCallback``
    arguments), gradient checkpointing, and ``data``: the name of an earlier ``generate`` stage whose
    teacher completions the stage trains on instead of the recipe's data (sequence-level distillation)."""

    args: dict[str, Any] = field(default_factory=dict)
    peft: Any = None
    quantization: Any = None
    pruning: dict[str, Any] | None = None
    gradient_checkpointing: bool = False
    data: str | None = None

    def validate(self, where: str) -> None:
        if not isinstance(self.args, Mapping):
            raise ValueError(f"{where}: args must be a mapping of TrainingArguments fields.")
        if self.data is not None and not isinstance(self.data, str):
            raise ValueError(
                f"{where}: data={self.data!r} must be the name of an earlier generate stage (the teacher's "
                "completions to train on), or left out to train on the recipe's data."
            )

    @classmethod
    def args_class(cls) -> type:
        """The dataclass whose fields ``args`` holds (imported on first use: it imports transformers)."""
        from transformers import TrainingArguments

        return TrainingArguments

    @classmethod
    def args_fields(cls) -> set[str]:
        """The names ``args`` accepts: the init fields of :meth:`args_class`."""
        return {f.name for f in dataclasses.fields(cls.args_class()) if f.init}


@dataclass
class FinetuneStage(TrainingStage):
    """``finetune``: train ``model`` on the task with the ordinary ``Trainer``."""

    kind: ClassVar[str] = "finetune"


@dataclass
class InitStudentStage(StageSpec):
    """``init_student``: a student made of some of ``model``'s layers (``layers``: see
    :func:`hf_lite.student.select_layers`)."""

    kind: ClassVar[str] = "init_student"

    layers: Any = "every_other"


@dataclass
class DistillStage(TrainingStage):
    """``distill``: train ``model`` from ``teacher`` (a model reference) with ``DistillationTrainer``;
    ``args`` are ``DistillationConfig`` fields, ``augment`` EDA options for the train split."""

    kind: ClassVar[str] = "distill"

    teacher: str = "teacher"
    augment: dict[str, Any] | None = None

    @classmethod
    def args_class(cls) -> type:
        from trainers import DistillationConfig

        return DistillationConfig

    def references(self) -> list[str]:
        return [self.teacher] if self.teacher else []


@dataclass
class PruneStage(StageSpec):
    """``prune``: prune ``model`` one-shot with ``method`` (a name of :data:`PRUNE_METHODS`) on
    ``calibration_samples`` training rows.

    ``experts`` (MoE: drop the least-loaded experts on the calibration rows) and ``expert_ffn`` (MoE: shrink
    every expert's FFN width) take ``keep_ratio``.
    ``sparsity`` and ``pattern`` are for ``magnitude``/``wanda``/``sparsegpt`` (with ``block_size`` and
    ``dampening`` for ``sparsegpt``), ``keep_ratio`` for ``ffn``/``layers`` (and
    ``heads`` unless ``heads_keep_ratio`` is given), ``num_layers`` for ``layers``.
    """

    kind: ClassVar[str] = "prune"

    method: str | None = None
    sparsity: float | None = None
    pattern: str = "unstructured"
    keep_ratio: float | None = None
    num_layers: int | None = None
    heads_keep_ratio: float | None = None
    block_size: int = 128
    dampening: float = 0.01
    calibration_samples: int = 64

    def validate(self, where: str) -> None:
        if self.method not in PRUNE_METHODS:
            raise ValueError(
                f"{where}: method={self.method!r} is not a pruning method{did_you_mean(self.method, PRUNE_METHODS)}. "
                f"Use one of: {', '.join(PRUNE_METHODS)}."
            )
        # what each method needs, checked here so that a run does not find it after earlier stages trained
        if self.method in ONESHOT_METHODS and self.pattern == "unstructured" and self.sparsity is None:
            raise ValueError(
                f"{where}: method={self.method!r} with pattern='unstructured' needs sparsity (the fraction of "
                "weights set to zero, e.g. sparsity: 0.5), or an N:M pattern such as pattern: '2:4'."
            )
        keep = (
            self.heads_keep_ratio
            if self.method == "heads" and self.heads_keep_ratio is not None
            else self.keep_ratio
        )
        if self.method == "sparsegpt":
            if (
                isinstance(self.block_size, bool)
                or not isinstance(self.block_size, int)
                or self.block_size < 1
            ):
                raise ValueError(
                    f"{where}: block_size={self.block_size!r} must be a positive int (the columns SparseGPT "
                    "updates together; the paper's 128)."
                )
            if (
                isinstance(self.dampening, bool)
                or not isinstance(self.dampening, (int, float))
                or not (0 < self.dampening < 1)
            ):
                raise ValueError(
                    f"{where}: dampening={self.dampening!r} must be a number in (0, 1) (the fraction of the "
                    "Hessian's mean diagonal added to it; the paper's 0.01)."
                )
        if self.method in ("ffn", "heads", "experts", "expert_ffn") and keep is None:
            raise ValueError(
                f"{where}: method={self.method!r} needs keep_ratio (the fraction kept, e.g. 0.5)."
            )
        if self.method == "layers" and self.keep_ratio is None and self.num_layers is None:
            raise ValueError(
                f"{where}: method='layers' needs keep_ratio (the fraction of layers kept) or num_layers."
            )

    def prune_(self, model: Any, calibration_batches: list[dict[str, Any]]) -> None:
        """Prune ``model`` in place with this stage's method."""
        PRUNE_METHODS[self.method](model, self, calibration_batches)


@dataclass
class QuantizeStage(StageSpec):
    """``quantize``: ``model`` in ``bits``-bit (bitsandbytes, 4 or 8)."""

    kind: ClassVar[str] = "quantize"

    bits: int | None = None

    def validate(self, where: str) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"{where}: bits={self.bits!r} must be 4 or 8.")


def _is_int(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value == value


@dataclass
class GenerateStage(StageSpec):
    """``generate``: sequence-level distillation data. ``model`` (a causal LM: ``teacher`` or an earlier stage)
    completes every prompt of the recipe's train and eval splits once
    (:func:`hf_lite.teacher_cache.generate_teacher_completions`), into ``<stage>/train`` and ``<stage>/eval``:
    fingerprinted, resumable shard by shard. A training stage with ``data: <this stage>`` trains on
    prompt + teacher completion (the loss on the completion only); with ``topk`` the teacher's top-k
    log-probabilities on them are stored too (at ``kd_temperature``), and a ``distill`` stage trains from that
    cache with no teacher in memory.

    Prompts: the ``prompt`` column (prompt/completion or prompt-only data; a reference completion is dropped),
    or for ``messages`` each conversation up to its last assistant turn. Greedy unless ``do_sample``
    (``temperature``, ``top_p``, ``seed``: the recipe's seed). ``max_prompt_length`` defaults to
    ``data.max_length - max_new_tokens``, so that prompt + completion fit ``data.max_length``.
    """

    kind: ClassVar[str] = "generate"
    produces_model: ClassVar[bool] = False

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompt_length: int | None = None
    topk: int | None = None
    kd_temperature: float = 1.0
    dtype: str = "float16"
    batch_size: int = 8
    shard_size: int = 1024

    def validate(self, where: str) -> None:
        optional = ("max_prompt_length", "topk")
        for key in ("max_new_tokens", "batch_size", "shard_size", *optional):
            value = getattr(self, key)
            if not (key in optional and value is None) and not _is_int(value, 1):
                left_out = " (or left out)" if key in optional else ""
                raise ValueError(f"{where}: {key}={value!r} must be an integer >= 1{left_out}.")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"{where}: do_sample={self.do_sample!r} must be true or false (false: greedy).")
        if not _is_number(self.temperature) or not 0 < self.temperature < float("inf"):
            raise ValueError(
                f"{where}: temperature={self.temperature!r} must be a number > 0 (sampling divides the logits by "
                "it; 1.0 samples the teacher's own distribution). For greedy decoding set do_sample: false."
            )
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"{where}: top_p={self.top_p!r} must be in (0, 1] (1.0 keeps every token).")
        if not _is_number(self.kd_temperature) or not 0 < self.kd_temperature < float("inf"):
            raise ValueError(
                f"{where}: kd_temperature={self.kd_temperature!r} must be a number > 0 (the distillation "
                "temperature of the stored top-k log-probabilities: the distill stage's args.temperature)."
            )
        if self.dtype not in ("float16", "float32"):
            raise ValueError(
                f"{where}: dtype={self.dtype!r} is not a storage type of the top-k log-probabilities; use "
                "float16 or float32."
            )


@dataclass
class EvaluateStage(StageSpec):
    """``evaluate``: metric, size and latency of ``models`` (default: the teacher and every model stage before it)."""

    kind: ClassVar[str] = "evaluate"
    produces_model: ClassVar[bool] = False
    reads_model: ClassVar[bool] = False

    models: list[str] | None = None
    latency_batch_sizes: tuple[int, ...] | list[int] = (1, 32)
    latency_repeats: int = 10

    def references(self) -> list[str]:
        return list(self.models) if isinstance(self.models, list) else []

    def validate(self, where: str) -> None:
        if self.models is not None and not isinstance(self.models, list):
            raise ValueError(f"{where}: models must be a list of model references.")


@dataclass
class ExportStage(StageSpec):
    """``export``: ``model`` as an ordinary checkpoint (``hf_lite.exporting.export``), optionally pushed
    (``push``: ``push_to_hub`` arguments)."""

    kind: ClassVar[str] = "export"

    merge_adapter: bool = False
    dtype: str | None = None
    push: dict[str, Any] | None = None


#: Stage kinds: the ``type`` of a stage -> the dataclass of its options (in the order the docs list them).
STAGE_TYPES: dict[str, type[StageSpec]] = {
    cls.kind: cls
    for cls in (
        FinetuneStage,
        InitStudentStage,
        DistillStage,
        GenerateStage,
        PruneStage,
        QuantizeStage,
        EvaluateStage,
        ExportStage,
    )
}
#: The keys each stage kind accepts beyond name/type/model.
STAGE_KEYS: dict[str, set[str]] = {kind: cls.keys() for kind, cls in STAGE_TYPES.items()}
#: Stages that produce a model folder (the others produce reports or uploads).
MODEL_STAGES = {kind for kind, cls in STAGE_TYPES.items() if cls.produces_model}


def stage_class(where: str, stage_type: Any) -> type[StageSpec]:
    """The dataclass of ``stage_type``; an unknown type is a ``ValueError`` with a did-you-mean.

    >>> stage_class("stage 's'", "quantize").__name__
    'QuantizeStage'
    """
    if stage_type not in STAGE_TYPES:
        raise ValueError(
            f"{where}: unknown stage type {stage_type!r}{did_you_mean(stage_type, STAGE_TYPES)}. "
            f"Stage types: {', '.join(STAGE_TYPES)}."
        )
    return STAGE_TYPES[stage_type]


# ------------------------------------------------------------------------------------------ prune methods


def _magnitude(model: Any, stage: PruneStage, calibration_batches: list[dict[str, Any]]) -> None:
    hf_lite.pruning.magnitude_prune_(model, stage.sparsity, pattern=stage.pattern)


def _wanda(model: Any, stage: PruneStage, calibration_batches: list[dict[str, Any]]) -> None:
    hf_lite.pruning.wanda_prune_(model, calibration_batches, stage.sparsity, pattern=stage.pattern)


def _sparsegpt(model: Any, stage: PruneStage, calibration_batches: list[dict[str, Any]]) -> None:
    hf_lite.pruning.sparsegpt_prune_(
        model,
        calibration_batches,
        stage.sparsity,
        pattern=stage.pattern,
        block_size=stage.block_size,
        dampening=stage.dampening,
    )


def _ffn(model: Any, stage: PruneStage, calibration_batches: list[dict[str, Any]]) -> None:
    hf_lite.pruning.prune_ffn_(
        model, stage.keep_ratio, importance="activation", calibration_batches=calibration_batches
    )


def _experts(model: Any, stage: PruneStage, calibration_batches: list[dict[str, Any]]) -> None:
    hf_lite.pruning.prune_experts_(
        model, keep_ratio=stage.keep_ratio, calibration_batches=calibration_batches
    )


def _expert_ffn(model: Any, stage: PruneStage, calibration_batches: list[dict[str, Any]]) -> None:
    hf_lite.pruning.prune_expert_ffn_(
        model, stage.keep_ratio, importance="activation", calibration_batches=calibration_batches
    )


def _heads(model: Any, stage: PruneStage, calibration_batches: list[dict[str, Any]]) -> None:
    keep = stage.keep_ratio if stage.heads_keep_ratio is None else stage.heads_keep_ratio
    hf_lite.pruning.prune_attention_heads_(model, keep)


def _layers(model: Any, stage: PruneStage, calibration_batches: list[dict[str, Any]]) -> None:
    hf_lite.pruning.prune_layers_(
        model,
        keep_ratio=stage.keep_ratio,
        num_hidden_layers=stage.num_layers,
        calibration_batches=calibration_batches,
    )


#: The one-shot (unstructured / N:M) methods: they take ``sparsity`` and ``pattern``.
ONESHOT_METHODS = ("magnitude", "wanda", "sparsegpt")
#: A prune method: ``(model, stage, calibration_batches)`` -> prunes ``model`` in place.
PruneMethod = Callable[[Any, PruneStage, list[dict[str, Any]]], None]
#: Methods of a ``prune`` stage: name -> the function that runs it (a new method is one entry here).
PRUNE_METHODS: dict[str, PruneMethod] = {
    "magnitude": _magnitude,
    "wanda": _wanda,
    "sparsegpt": _sparsegpt,
    "ffn": _ffn,
    "heads": _heads,
    "layers": _layers,
    "experts": _experts,
    "expert_ffn": _expert_ffn,
}
