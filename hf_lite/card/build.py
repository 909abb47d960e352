"""Model cards for compressed checkpoints: what was done, the measured compression report, how to load it.

:func:`build_model_card` returns a ``huggingface_hub.ModelCard`` whose metadata (``base_model``, library,
tags, datasets, metrics and ``model-index`` evaluation results) passes the Hub's validation, and whose text
states the distillation teacher, the pruning method and sparsity, the quantization, the adapter, the
compression report (parameters, bytes, measured latency, task metrics, teacher vs student) and how to load
the checkpoint. :func:`push_to_hub <hf_lite.hub.push_to_hub>` uses it, and so can a ``Trainer``'s push.

Cards never name local paths (a base model, teacher or dataset given as a folder is left out of the
metadata and described as "a local checkpoint"), and hold no timestamps, so the same inputs give the same
card, byte for byte, and pushing it again uploads nothing.

>>> from hf_lite.card.build import build_model_card
>>> card = build_model_card({"teacher": "org/teacher", "student": {"parameters": 1000}}, repo_id="me/tiny")
>>> card.data.tags
['hf-lite', 'distillation']
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lite._utils import PICKLE_SUFFIXES, is_hub_id

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from hf_lite.exporting.writer import ExportReport

__all__ = ["ModelFigures", "CompressionSummary", "CheckpointInfo", "inspect_checkpoint", "build_model_card"]

# bitsandbytes stores these beside a quantized weight; they are not parameters of their own.
_BNB_AUX_SUFFIXES = (
    ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4",
    ".quant_state.bitsandbytes__fp4", ".SCB", ".weight_format",
)  # fmt: skip
_ARCH_SUFFIXES = (  # architecture class suffix -> (pipeline tag, Auto class)
    ("ForCausalLM", "text-generation", "AutoModelForCausalLM"),
    ("LMHeadModel", "text-generation", "AutoModelForCausalLM"),
    ("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "token-classification", "AutoModelForTokenClassification"),
    ("ForConditionalGeneration", "text2text-generation", "AutoModelForSeq2SeqLM"),
    ("ForQuestionAnswering", "question-answering", "AutoModelForQuestionAnswering"),
    ("ForMaskedLM", "fill-mask", "AutoModelForMaskedLM"),
    ("Model", "feature-extraction", "AutoModel"),
)
_PEFT_TASKS = {  # PEFT task type -> (pipeline tag, AutoPeftModel class)
    "CAUSAL_LM": ("text-generation", "AutoPeftModelForCausalLM"),
    "SEQ_CLS": ("text-classification", "AutoPeftModelForSequenceClassification"),
    "TOKEN_CLS": ("token-classification", "AutoPeftModelForTokenClassification"),
    "SEQ_2_SEQ_LM": ("text2text-generation", "AutoPeftModelForSeq2SeqLM"),
    "QUESTION_ANS": ("question-answering", "AutoPeftModelForQuestionAnswering"),
    "FEATURE_EXTRACTION": ("feature-extraction", "AutoPeftModelForFeatureExtraction"),
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "tokenizer.model")


# --------------------------------------------------------------------------------------------------
# inputs


def _check_optional(name: str, value: Any, types: type | tuple[type, ...], what: str) -> None:
    allowed = types if isinstance(types, tuple) else (types,)
    if value is None:
        return
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise TypeError(f"{name} must be {what} or None; got {type(value).__name__} {value!r}.")


@dataclasses.dataclass
class ModelFigures:
    """Measured figures of one model (the student, or the teacher it is compared with).

    Args:
        parameters: parameter count.
        bytes: checkpoint size in bytes (or memory footprint; say which in ``CompressionSummary.notes``).
        latency_ms: measured latency per batch in milliseconds (describe the setup in ``latency_setup``).
        metrics: task metrics, ``{"accuracy": 0.91, ...}``.

    >>> ModelFigures(parameters=10, metrics={"accuracy": 0.5}).metrics
    {'accuracy': 0.5}
    """

    parameters: int | None = None
    bytes: int | None = None
    latency_ms: float | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_optional("parameters", self.parameters, int, "an int")
        _check_optional("bytes", self.bytes, int, "an int")
        _check_optional("latency_ms", self.latency_ms, (int, float), "a number")
        for name in ("parameters", "bytes", "latency_ms"):
            value = getattr(self, name)
            if value is not None and (value < 0 or not math.isfinite(value)):
                raise ValueError(f"{name}={value!r} must be a finite, non-negative number.")
        if not isinstance(self.metrics, Mapping):
            raise TypeError(f"metrics must be a dict of {{name: number}}; got {type(self.metrics).__name__}.")
        for key, value in self.metrics.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"metric names must be non-empty strings; got {key!r}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"metrics[{key!r}]={value!r} must be a finite number.")
        self.metrics = dict(self.metrics)

    @classmethod
    def from_dict(cls, data: ModelFigures | Mapping[str, Any]) -> ModelFigures:
        """Build from a dict with the field names as keys (unknown keys raise ``ValueError``).

        >>> ModelFigures.from_dict({"parameters": 5}).parameters
        5
        """
        if isinstance(data, ModelFigures):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"model figures must be a dict or ModelFigures; got {type(data).__name__}.")
        _check_keys("model figures", data, cls)
        return cls(**dict(data))


@dataclasses.dataclass
class CompressionSummary:
    """What was done to a model and what it gave, as the model card states it. All fields are optional.

    Args:
        teacher: Hub id of the distillation teacher (a local path is described, never printed).
        distillation: how it was distilled, e.g. ``"logit KL, T=2, alpha=0.5"``.
        pruning: the pruning method, e.g. ``"Wanda 2:4"`` or ``"structural: FFN 50%"``.
        sparsity: counted fraction of zero weights in the pruned layers (0-1).
        quantization: e.g. ``"bnb-4bit (nf4, double quant)"``.
        adapter: e.g. ``"LORA r=16 on q_proj, v_proj"``.
        adapter_merged: whether the adapter was merged into the weights.
        task: pipeline tag of the evaluation task (``"text-classification"``...); the card's ``model-index``
            needs it (or a checkpoint whose architecture implies it) and ``dataset``.
        dataset: Hub id of the evaluation / training dataset.
        dataset_name, dataset_config, dataset_split: its display name, config and split.
        student: figures of the compressed model (a :class:`ModelFigures` or a dict).
        teacher_figures: figures of the model it is compared with.
        latency_setup: how latency was measured (device, batch, sequence length, repeats).
        notes: free text appended to the card (do not put paths or secrets in it).

    >>> s = CompressionSummary.from_dict({"pruning": "magnitude", "sparsity": 0.5, "student": {"parameters": 9}})
    >>> s.student.parameters, s.sparsity
    (9, 0.5)
    """

    teacher: str | None = None
    distillation: str | None = None
    pruning: str | None = None
    sparsity: float | None = None
    quantization: str | None = None
    adapter: str | None = None
    adapter_merged: bool | None = None
    task: str | None = None
    dataset: str | None = None
    dataset_name: str | None = None
    dataset_config: str | None = None
    dataset_split: str | None = None
    student: ModelFigures = dataclasses.field(default_factory=ModelFigures)
    teacher_figures: ModelFigures | None = None
    latency_setup: str | None = None
    notes: str | None = None

    def __post_init__(self) -> None:
        for name in ("teacher", "distillation", "pruning", "quantization", "adapter", "task", "dataset",
                     "dataset_name", "dataset_config", "dataset_split", "latency_setup", "notes"):  # fmt: skip
            _check_optional(name, getattr(self, name), str, "a string")
        _check_optional("adapter_merged", self.adapter_merged, bool, "True/False")
        _check_optional("sparsity", self.sparsity, (int, float), "a number")
        if self.sparsity is not None and not 0 <= self.sparsity <= 1:
            raise ValueError(f"sparsity={self.sparsity!r} must be a fraction between 0 and 1 (0.5 for 50%).")
        self.student = ModelFigures.from_dict(self.student)
        if self.teacher_figures is not None:
            self.teacher_figures = ModelFigures.from_dict(self.teacher_figures)

    @classmethod
    def from_dict(cls, data: CompressionSummary | Mapping[str, Any]) -> CompressionSummary:
        """Build from a dict with the field names as keys; ``student``/``teacher_figures`` may be dicts.

        >>> CompressionSummary.from_dict({"teacher": "org/big"}).teacher
        'org/big'
        """
        if isinstance(data, CompressionSummary):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(
                f"report must be a CompressionSummary, a dict with its field names, or None; got {type(data).__name__}."
            )
        _check_keys("report", data, cls)
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (the inverse of :meth:`from_dict`).

        >>> CompressionSummary(pruning="magnitude").to_dict()["pruning"]
        'magnitude'
        """
        return dataclasses.asdict(self)


def _check_keys(what: str, data: Mapping[str, Any], cls: type) -> None:
    import difflib

    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{what} has unknown key(s) {unknown}{hint}. Known keys: {', '.join(known)}.")


# --------------------------------------------------------------------------------------------------
# what a checkpoint folder holds


@dataclasses.dataclass
class CheckpointInfo:
    """Facts read from a checkpoint folder's files (nothing is loaded into a model).

    Args:
        kind: ``"model"`` or ``"adapter"``.
        files: all files, relative paths, sorted.
        weight_files: the ``*.safetensors`` files.
        bytes_on_disk: their total size.
        parameters: logical parameter count (bitsandbytes 4-bit weights count all their entries).
        dtype: the weights' floating dtype (``config.json``'s, or the most common one in an adapter).
        model_type, architecture: from ``config.json``.
        quantization: ``"bnb-4bit (nf4, double quant)"``, ``"bnb-8bit (LLM.int8)"`` or ``None``.
        adapter: ``"LORA r=8 on q_proj, v_proj"`` for an adapter folder.
        adapter_task_type: PEFT task type of an adapter (``"CAUSAL_LM"``...).
        base_model: the adapter's base model when it is a Hub id.
        base_model_is_local: the adapter's ``base_model_name_or_path`` is a local path.
        has_tokenizer: tokenizer files are present.

    >>> CheckpointInfo("model", [], [], 0, None, None).kind
    'model'
    """

    kind: str
    files: list[str]
    weight_files: list[str]
    bytes_on_disk: int
    parameters: int | None
    dtype: str | None
    model_type: str | None = None
    architecture: str | None = None
    quantization: str | None = None
    adapter: str | None = None
    adapter_task_type: str | None = None
    base_model: str | None = None
    base_model_is_local: bool = False
    has_tokenizer: bool = False


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path.name} is not a valid safetensors file (header of {length} bytes).")
        return json.loads(f.read(length)), 8 + length


def _count_parameters(paths: list[Path]) -> tuple[int, dict[str, int]]:
    """Logical parameter count and {dtype: count} from safetensors headers (no tensor is loaded)."""
    total = 0
    dtypes: dict[str, int] = {}
    for path in paths:
        header, start = _safetensors_header(path)
        header.pop("__metadata__", None)
        for key, entry in header.items():
            if key.endswith(_BNB_AUX_SUFFIXES):
                continue
            count = math.prod(entry["shape"])
            for kind in ("nf4", "fp4"):
                state = header.get(f"{key}.quant_state.bitsandbytes__{kind}")
                if state is not None:  # packed 4-bit: the logical shape is in the JSON quant state
                    begin, end = state["data_offsets"]
                    with path.open("rb") as f:
                        f.seek(start + begin)
                        count = math.prod(json.loads(f.read(end - begin))["shape"])
            total += count
            dtype = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(entry["dtype"])
            if dtype is not None:
                dtypes[dtype] = dtypes.get(dtype, 0) + count
    return total, dtypes


def _describe_quantization(config: Mapping[str, Any]) -> str | None:
    from types import SimpleNamespace

    from hf_lite.summary import describe_quantization

    qc = config.get("quantization_config")
    if not qc:
        return None
    return describe_quantization(SimpleNamespace(config=SimpleNamespace(quantization_config=dict(qc))))


def inspect_checkpoint(folder: str | os.PathLike, *, refuse_pickles: bool = True) -> CheckpointInfo:
    """Read what a checkpoint folder holds, and refuse folders that are not loadable safetensors checkpoints.

    Args:
        folder: a folder written by ``save_pretrained`` (a model: ``config.json`` + ``*.safetensors``; an
            adapter: ``adapter_config.json`` + ``adapter_model.safetensors``).
        refuse_pickles: raise on pickle files (``*.bin``, ``*.pt``...). ``False`` to describe a folder that
            holds some beside its safetensors weights (a ``Trainer`` output dir has ``training_args.bin``).

    Returns:
        A :class:`CheckpointInfo`.

    Raises:
        ValueError: the folder does not exist, lacks the config or the weights, or holds pickle files.

    >>> info = inspect_checkpoint("out/model")  # doctest: +SKIP
    >>> info.kind, info.parameters  # doctest: +SKIP
    ('model', 1234567)
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path (str or os.PathLike); got {type(folder).__name__}.")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"folder={os.fspath(folder)!r} is not an existing folder.")
    files = sorted(
        rel
        for rel in (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        # hidden files and folders (.git/, .cache/, editor files) are not part of a checkpoint
        if rel == ".gitattributes" or not any(part.startswith(".") for part in rel.split("/"))
    )
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles and refuse_pickles:
        raise ValueError(
            f"folder={os.fspath(folder)!r} holds pickle files {pickles}: hf-lite only publishes safetensors "
            "checkpoints (pickles run code when loaded). Re-save with save_pretrained (safetensors is the "
            "default) and delete them."
        )
    is_adapter = (root / "adapter_config.json").is_file()
    if not is_adapter and not (root / "config.json").is_file():
        raise ValueError(
            f"folder={os.fspath(folder)!r} has no config.json (nor adapter_config.json): it is not a checkpoint "
            "saved with save_pretrained. Point at the folder that holds config.json and the *.safetensors files."
        )
    if is_adapter:
        weights = [
            f for f in files if f.split("/")[-1].startswith("adapter_model") and f.endswith(".safetensors")
        ]
    else:
        weights = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    if not weights:
        expected = (
            "adapter_model.safetensors" if is_adapter else "model.safetensors (or sharded *.safetensors)"
        )
        raise ValueError(
            f"folder={os.fspath(folder)!r} has a config but no weights: {expected} is missing. Save the model "
            "with save_pretrained into this folder (or export it with hf_lite.export)."
        )
    weight_paths = [root / f for f in weights]
    parameters, dtypes = _count_parameters(weight_paths)
    info = CheckpointInfo(
        kind="adapter" if is_adapter else "model",
        files=files,
        weight_files=weights,
        bytes_on_disk=sum(p.stat().st_size for p in weight_paths),
        parameters=parameters,
        dtype=max(dtypes, key=dtypes.get) if dtypes else None,
        has_tokenizer=any(f in files for f in _TOKENIZER_FILES),
    )
    if is_adapter:
        config = json.loads((root / "adapter_config.json").read_text())
        peft_type = config.get("peft_type") or "adapter"
        desc = str(peft_type)
        if config.get("r") is not None:
            desc += f" r={config['r']}"
        targets = config.get("target_modules")
        if isinstance(targets, list) and targets:  # leaf names: PEFT may store full module paths
            desc += f" on {', '.join(sorted({str(t).rsplit('.', 1)[-1] for t in targets}))}"
        elif isinstance(targets, str):
            desc += f" on {targets}"
        info.adapter = desc
        info.adapter_task_type = config.get("task_type")
        base = config.get("base_model_name_or_path")
        info.base_model = base if is_hub_id(base) else None
        info.base_model_is_local = bool(base) and info.base_model is None
    if (root / "config.json").is_file():
        config = json.loads((root / "config.json").read_text())
        info.model_type = config.get("model_type")
        archs = config.get("architectures") or []
        info.architecture = archs[0] if archs else None
        info.quantization = _describe_quantization(config)
        config_dtype = config.get("dtype") or config.get("torch_dtype")
        if isinstance(config_dtype, str) and not is_adapter:
            info.dtype = config_dtype
    return info


# --------------------------------------------------------------------------------------------------
# the card


def _fmt_int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _fmt_num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _ratio(student: float | None, teacher: float | None) -> str:
    if student is None or teacher is None or teacher == 0:
        return "–"
    return f"{student / teacher:.2f}×"


def _arch_facts(info: CheckpointInfo | None) -> tuple[str | None, str]:
    """(pipeline tag, loader class name) for a checkpoint."""
    if info is None:
        return None, "AutoModel"
    if info.kind == "adapter":
        tag, auto = _PEFT_TASKS.get(str(info.adapter_task_type), (None, "AutoPeftModel"))
        return tag, auto
    arch = info.architecture or ""
    auto_name = _auto_class_name(info.model_type, arch)
    for suffix, tag, auto in _ARCH_SUFFIXES:
        if arch.endswith(suffix):
            return tag, auto_name or auto
    return None, auto_name or "AutoModel"


def _auto_class_name(model_type: str | None, arch: str) -> str | None:
    """The transformers Auto class whose mapping sends ``model_type`` to ``arch``, by name (no model import)."""
    if not model_type or not arch:
        return None
    from transformers.models.auto import modeling_auto as ma

    for auto, mapping in (
        ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
        ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
        ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
        ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
        ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
        ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
        ("AutoModel", "MODEL_MAPPING_NAMES"),
    ):
        names = getattr(ma, mapping, {}).get(model_type)
        if names == arch or (isinstance(names, (tuple, list)) and arch in names):
            return auto
    return None


def _public(value: str | None, what: str) -> str:
    """Markdown for a reference that may be a Hub id (linked) or a local path (described, never printed)."""
    if value is None:
        return f"an unnamed {what}"
    if is_hub_id(value):
        return f"[`{value}`](https://huggingface.co/{value})"
    return f"a local {what} (not on the Hub)"


def _dedup(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def build_model_card(
    report: CompressionSummary | Mapping[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    checkpoint: CheckpointInfo | str | os.PathLike | None = None,
    export_report: ExportReport | None = None,
    base_model: str | None = None,
    license: str | None = None,  # noqa: A002 - the Hub's metadata key
    language: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    tags: list[str] | None = None,
    pipeline_tag: str | None = None,
) -> ModelCard:
    """Build the model card of a compressed checkpoint (metadata + Markdown), ready for ``card.push_to_hub``
    or to be written as ``README.md``.

    The metadata holds ``base_model`` (a Hub id only), ``library_name`` (``peft`` for an adapter, else
    ``transformers``), ``pipeline_tag``, ``tags`` (``hf-lite`` plus ``distillation``, ``pruning``,
    ``bitsandbytes``/``4-bit``/``8-bit``, ``lora``/``peft`` as they apply), ``datasets`` and, when the report
    names a task and a Hub dataset, the student's metrics as ``model-index`` results. The text states what
    was done, the compression report (teacher vs student: parameters, bytes, measured latency, metrics), the
    uploaded checkpoint's own counted figures and export check, and how to load it.

    Args:
        report: a :class:`CompressionSummary` or a dict with its field names (the trainers' report, or
            figures you measured). ``None`` for a card from the checkpoint facts alone.
        repo_id: the repo the card is for (its name becomes the model name; used in the loading example).
        checkpoint: the folder being published (a ``Trainer`` output dir will do), or its
            :class:`CheckpointInfo` (counted parameters and bytes, quantization, adapter, architecture).
        export_report: the :class:`~hf_lite.exporting.writer.ExportReport` of the export (merge, dequantization,
            pruning made permanent, check difference).
        base_model: Hub id of the model this one derives from; default: the export report's or the
            adapter's base when it is a Hub id. Local paths are refused (``ValueError``).
        license, language, datasets, tags, pipeline_tag: card metadata (``datasets`` are Hub dataset ids;
            local paths are left out).

    Returns:
        A ``huggingface_hub.ModelCard``.

    Example:

    >>> card = build_model_card(
    ...     {"teacher": "org/bert-base", "pruning": "magnitude", "sparsity": 0.5, "task": "text-classification",
    ...      "dataset": "stanfordnlp/sst2", "student": {"parameters": 1000, "metrics": {"accuracy": 0.9}}},
    ...     repo_id="me/tiny-bert")
    >>> card.data.eval_results[0].metric_value
    0.9
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    summary = CompressionSummary.from_dict(report) if report is not None else CompressionSummary()
    if repo_id is not None and not isinstance(repo_id, str):
        raise TypeError(f"repo_id must be a string or None; got {type(repo_id).__name__}.")
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = inspect_checkpoint(checkpoint, refuse_pickles=False)  # describing is not publishing
    elif checkpoint is not None and not isinstance(checkpoint, CheckpointInfo):
        raise TypeError(
            f"checkpoint must be a folder path, a CheckpointInfo or None; got {type(checkpoint).__name__}."
        )
    if base_model is not None:
        if not isinstance(base_model, str):
            raise TypeError(
                f"base_model must be a Hub repo id string or None; got {type(base_model).__name__}."
            )
        if not is_hub_id(base_model):
            raise ValueError(
                f"base_model={base_model!r} is not a Hub repo id ('org/name'). Model cards only name models on "
                "the Hub: pass the base model's Hub id, or None to leave it out."
            )
    else:
        base_model = (export_report.base_model if export_report is not None else None) or (
            checkpoint.base_model if checkpoint is not None else None
        )
    for name, value in (("tags", tags), ("datasets", datasets), ("language", language)):
        if value is not None and not isinstance(value, (str, list, tuple)):
            raise TypeError(
                f"{name} must be a string, a list of strings or None; got {type(value).__name__}."
            )
    for name, value in (("license", license), ("pipeline_tag", pipeline_tag)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None; got {type(value).__name__}.")

    kind = checkpoint.kind if checkpoint is not None else (export_report.kind if export_report else "model")
    arch_tag, loader = _arch_facts(checkpoint)
    pipeline = pipeline_tag or arch_tag or summary.task
    eval_task = summary.task or pipeline
    saved_quant = checkpoint.quantization if checkpoint is not None else None
    if saved_quant is None and export_report is not None:
        saved_quant = export_report.quantization
    adapter = (
        summary.adapter
        or (export_report.adapter if export_report else None)
        or (checkpoint.adapter if checkpoint is not None else None)
    )
    merged = summary.adapter_merged
    if merged is None and export_report is not None and export_report.adapter is not None:
        merged = export_report.adapter_merged
    if merged is None and kind == "adapter":
        merged = False
    dequantized_from = export_report.dequantized_from if export_report is not None else None
    quantization = summary.quantization or saved_quant or dequantized_from
    sparsity = summary.sparsity
    if sparsity is None and export_report is not None:
        sparsity = export_report.sparsity
    pruned = summary.pruning is not None or bool(export_report and export_report.pruning_made_permanent)
    distilled = summary.teacher is not None or summary.distillation is not None
    name = repo_id.split("/")[-1] if repo_id else "hf-lite compressed model"
    shown_id = repo_id or "your-org/your-model"

    # ---- metadata
    all_tags = ["hf-lite"]
    if distilled:
        all_tags.append("distillation")
    if pruned:
        all_tags.append("pruning")
    if saved_quant:
        all_tags += [
            "bitsandbytes",
            "4-bit" if "4bit" in saved_quant else "8-bit" if "8bit" in saved_quant else "",
        ]
    if adapter:
        all_tags += ["peft", "lora" if adapter.upper().startswith("LORA") else ""]
    all_tags = _dedup(all_tags + ([tags] if isinstance(tags, str) else list(tags or [])))
    dataset_ids = [datasets] if isinstance(datasets, str) else list(datasets or [])
    if summary.dataset is not None:
        dataset_ids.append(summary.dataset)
    dataset_ids = _dedup([d for d in dataset_ids if is_hub_id(d)])
    metrics = summary.student.metrics
    eval_results = None
    if metrics and eval_task and summary.dataset is not None and is_hub_id(summary.dataset):
        eval_results = [
            EvalResult(
                task_type=eval_task,
                dataset_type=summary.dataset,
                dataset_name=summary.dataset_name or summary.dataset,
                dataset_config=summary.dataset_config,
                dataset_split=summary.dataset_split,
                metric_type=metric,
                metric_value=float(value),
            )
            for metric, value in metrics.items()
        ]
    extra: dict[str, Any] = {}
    if base_model is not None:
        extra["base_model_relation"] = (
            "adapter" if kind == "adapter" else "quantized" if saved_quant and not distilled and not pruned
            else "finetune"
        )  # fmt: skip
    data = ModelCardData(
        base_model=base_model,
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag=pipeline,
        tags=all_tags,
        datasets=dataset_ids or None,
        metrics=sorted(metrics) or None,
        eval_results=eval_results,
        model_name=name if eval_results else None,
        license=license,
        language=language,
        **extra,
    )

    # ---- text
    lines = [f"# {name}", ""]
    made = []
    if distilled:
        made.append("distilled")
    if pruned:
        made.append("pruned")
    if saved_quant or dequantized_from:
        made.append("quantized")
    if adapter:
        made.append("adapted")
    origin = f" from {_public(base_model, 'model')}" if base_model else ""
    adjectives = (
        ", ".join(made[:-1]) + " and " + made[-1] if len(made) > 1 else (made[0] if made else "compressed")
    )
    article = "An" if adjectives[0] in "aeiou" else "A"
    lines += [
        f"{article} {adjectives} checkpoint{origin}, made with "
        "[hf-lite](https://github.com/hf-lite/hf-lite). It is an ordinary "
        f"{'PEFT adapter' if kind == 'adapter' else 'transformers checkpoint'}: stock "
        f"`{'peft' if kind == 'adapter' else 'transformers'}` loads it, no hf-lite and no remote code needed.",
        "",
        "## What was done",
        "",
    ]
    if distilled:
        line = f"- **Distillation**: distilled from {_public(summary.teacher, 'teacher checkpoint')}"
        lines.append(line + (f" ({summary.distillation})." if summary.distillation else "."))
    if pruned:
        line = f"- **Pruning**: {summary.pruning or 'pruned'}"
        if sparsity is not None:
            line += f"; {sparsity:.2%} of the pruned layers' weights are zero (counted)"
        if export_report is not None and export_report.pruning_made_permanent:
            line += (
                f"; made permanent ({len(export_report.pruning_made_permanent)} pruning re-parametrizations "
                "replaced by plain weights)"
            )
        lines.append(line + ".")
        if summary.pruning is None or "struct" not in summary.pruning.lower():
            lines.append(
                "  Zeros left in dense weights neither shrink the checkpoint nor speed up dense kernels; only "
                "structural pruning (smaller layers, recorded in `config.json`) does."
            )
    if saved_quant:
        lines.append(
            f"- **Quantization**: bitsandbytes {_quant_text(saved_quant)}. The checkpoint stores the quantized weights and "
            "their quantization config; loading it needs `bitsandbytes` (`pip install bitsandbytes`)."
        )
    elif dequantized_from:
        dtype = export_report.dtype if export_report is not None else None
        lines.append(
            f"- **Quantization**: trained on a bitsandbytes {_quant_text(dequantized_from)} base; dequantized"
            f"{f' to {dtype}' if dtype else ''} for this checkpoint (no bitsandbytes needed to load it)."
        )
    elif quantization:
        lines.append(f"- **Quantization**: {quantization}.")
    if adapter:
        if merged:
            how = "merged into the weights (a plain checkpoint, no PEFT needed)"
        elif kind == "adapter":
            how = f"kept separate: this repo holds the adapter only; its base model is {_public(base_model, 'model')}"
        else:
            how = "trained"
        lines.append(f"- **Adapter**: {adapter}, {how}.")
    if not (distilled or pruned or quantization or adapter):
        lines.append("- No compression step was recorded for this checkpoint.")
    lines.append("")

    # ---- compression report
    student, teacher = summary.student, summary.teacher_figures
    has_figures = (
        any(v is not None for v in (student.parameters, student.bytes, student.latency_ms))
        or bool(student.metrics)
        or teacher is not None
    )
    if has_figures:
        lines += ["## Compression report", ""]
        if teacher is not None:
            lines += ["| | teacher | student | student / teacher |", "|---|---:|---:|---:|"]
            rows = [
                ("parameters", _fmt_int(teacher.parameters), _fmt_int(student.parameters),
                 _ratio(student.parameters, teacher.parameters)),
                ("size", _fmt_bytes(teacher.bytes), _fmt_bytes(student.bytes), _ratio(student.bytes, teacher.bytes)),
                ("latency (ms)", _fmt_num(teacher.latency_ms), _fmt_num(student.latency_ms),
                 _ratio(student.latency_ms, teacher.latency_ms)),
            ]  # fmt: skip
            for metric in _dedup([*teacher.metrics, *student.metrics]):
                t, s = teacher.metrics.get(metric), student.metrics.get(metric)
                delta = "–" if t is None or s is None else f"{s - t:+.4g}"
                rows.append((metric, _fmt_num(t), _fmt_num(s), delta))
            lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        else:
            lines += ["| | student |", "|---|---:|"]
            rows2 = [("parameters", _fmt_int(student.parameters)), ("size", _fmt_bytes(student.bytes)),
                     ("latency (ms)", _fmt_num(student.latency_ms))]  # fmt: skip
            rows2 += [(m, _fmt_num(v)) for m, v in student.metrics.items()]
            lines += [f"| {a} | {b} |" for a, b in rows2]
        lines.append("")
        if summary.latency_setup:
            lines += [f"Latency measured: {summary.latency_setup}.", ""]
        if summary.dataset or summary.dataset_name:
            where = summary.dataset_name or (
                summary.dataset if is_hub_id(summary.dataset) else "a local dataset"
            )
            split = f", split `{summary.dataset_split}`" if summary.dataset_split else ""
            lines += [f"Metrics on {where}{split}.", ""]
        if teacher is not None and teacher.metrics and student.metrics:
            lines += ["Metric differences are student minus teacher.", ""]

    # ---- the files themselves
    if checkpoint is not None or export_report is not None:
        lines += ["## This checkpoint", ""]
        if checkpoint is not None:
            lines.append(
                f"- {_fmt_int(checkpoint.parameters)} parameters, {_fmt_bytes(checkpoint.bytes_on_disk)} of "
                f"safetensors weights in {len(checkpoint.weight_files)} file(s) (counted from the files)"
                + (f", {checkpoint.dtype}" if checkpoint.dtype else "")
                + (
                    " for the tensors that are not quantized"
                    if checkpoint.dtype and checkpoint.quantization
                    else ""
                )
                + "."
            )
        if export_report is not None and export_report.max_abs_diff is not None:
            shape = "×".join(map(str, export_report.check_inputs_shape or ())) or "a few"
            lines.append(
                f"- Export check: reloaded with stock {'PEFT' if kind == 'adapter' else 'transformers'}, these "
                f"files reproduce the {export_report.check_output or 'outputs'} of the model they were exported "
                f"from to within {export_report.max_abs_diff:.3g} (largest absolute difference, {shape} token ids)."
            )
        lines.append("")

    # ---- how to load
    tok = checkpoint is None or checkpoint.has_tokenizer
    tok_import = ["from transformers import AutoTokenizer"] if tok else []
    lines += ["## How to load", "", "```python"]
    if kind == "adapter" and base_model is not None:
        lines += [f"from peft import {loader}", *tok_import, "",
                  f'model = {loader}.from_pretrained("{shown_id}")  # also downloads the base model']  # fmt: skip
    elif kind == "adapter":
        lines += ["from peft import PeftModel", *tok_import, "",
                  "base = ...  # the base model this adapter was trained on, loaded with from_pretrained",
                  f'model = PeftModel.from_pretrained(base, "{shown_id}")']  # fmt: skip
    else:
        imports = loader + (", AutoTokenizer" if tok else "")
        lines += [
            f"from transformers import {imports}",
            "",
            f'model = {loader}.from_pretrained("{shown_id}")',
        ]
    if tok:
        lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{shown_id}")')
    lines += ["```", ""]
    if saved_quant:
        lines += [
            "The stored quantization config is applied on load; `bitsandbytes` must be installed.",
            "",
        ]
    if kind == "adapter" and quantization:
        lines += [
            f"The adapter was trained on a {_quant_text(quantization)} base: load the base the same way (pass a "
            "`BitsAndBytesConfig`) to reproduce its outputs exactly.",
            "",
        ]
    if summary.notes:
        lines += ["## Notes", "", summary.notes.strip(), ""]

    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines).rstrip() + "\n"
    return ModelCard(content)


def _quant_text(description: str) -> str:
    """``'bnb-4bit (nf4, double quant)'`` -> ``'4-bit (nf4, double quant)'`` (the text says bitsandbytes already)."""
    return description.replace("bnb-4bit", "4-bit").replace("bnb-8bit", "8-bit")


def _fmt_bytes(n: int | None) -> str:
    from hf_lite.summary import format_bytes

    return "–" if n is None else format_bytes(n)
