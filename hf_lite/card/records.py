"""The records a model card is built from: what was done to a model, and its measured figures.

:class:`CompressionSummary` says what was done (teacher, pruning, quantization, adapter, dataset) and holds
the figures of the student and of the model it is compared with as :class:`ModelFigures`; both check their
values on construction and build from dicts with their field names.

>>> summary = CompressionSummary.from_dict({"pruning": "Wanda 2:4", "student": {"parameters": 1000}})
>>> summary.student.parameters
1000
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hf_lite._utils import did_you_mean

if TYPE_CHECKING:
    from hf_lite.report import CompressionReport, ReportRow

__all__ = ["ModelFigures", "CompressionSummary"]

#: The free-text fields of :class:`CompressionSummary`.
_TEXT_FIELDS = (
    "teacher",
    "distillation",
    "pruning",
    "quantization",
    "adapter",
    "task",
    "dataset",
    "dataset_name",
    "dataset_config",
    "dataset_split",
    "latency_setup",
    "notes",
)


def _check_optional(name: str, value: Any, types: type | tuple[type, ...], what: str) -> None:
    """Raise ``TypeError`` unless ``value`` is ``None`` or of ``types`` (a bool is not a number here)."""
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
    def from_row(cls, row: ReportRow | Mapping[str, Any]) -> ModelFigures:
        """The figures of one model from its row of the compression report (the record ``hf-lite`` prints),
        so that a pushed card states exactly what the report measured.

        ``bytes`` is the checkpoint on disk when it was measured, else the loaded model's memory;
        ``latency_ms`` is the batch-size-1 latency.

        >>> from hf_lite.report import ReportRow
        >>> row = ReportRow("student", "distill", parameters=9, bytes_on_disk=36, latency_b1_ms=2.0)
        >>> ModelFigures.from_row(row)
        ModelFigures(parameters=9, bytes=36, latency_ms=2.0, metrics={})
        """
        data = row.to_dict() if hasattr(row, "to_dict") else row
        if not isinstance(data, Mapping):
            raise TypeError(f"row must be a ReportRow or its to_dict(); got {type(row).__name__}.")
        size = data.get("bytes_on_disk")
        return cls(
            parameters=data.get("parameters"),
            bytes=size if size is not None else data.get("bytes_in_memory"),
            latency_ms=data.get("latency_b1_ms"),
            metrics={k: float(v) for k, v in (data.get("metrics") or {}).items()},
        )

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
        for name in _TEXT_FIELDS:
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

    @classmethod
    def from_report(
        cls, report: CompressionReport, student: str, teacher: str | None = None, **fields: Any
    ) -> CompressionSummary:
        """A summary whose figures are the rows of a compression report: ``student`` names the row of the
        compressed model, ``teacher`` the reference row (default: the report's teacher row); ``fields`` are
        the other :class:`CompressionSummary` fields (``pruning=...``).

        >>> from hf_lite.report import CompressionReport, ReportRow
        >>> report = CompressionReport(task="causal-lm", rows=[
        ...     ReportRow("teacher", "teacher", parameters=40, metrics={"perplexity": 10.0}),
        ...     ReportRow("distill", "distill", parameters=20, metrics={"perplexity": 11.0})])
        >>> s = CompressionSummary.from_report(report, "distill", pruning="FFN 50%")
        >>> s.student.parameters, s.teacher_figures.parameters, s.pruning
        (20, 40, 'FFN 50%')
        """
        rows = {row.name: row for row in report.rows}
        if student not in rows:
            raise ValueError(f"student={student!r} is not a row of the report; its rows are {sorted(rows)}.")
        if teacher is not None and teacher not in rows:
            raise ValueError(f"teacher={teacher!r} is not a row of the report; its rows are {sorted(rows)}.")
        reference = rows[teacher] if teacher is not None else report.teacher_row()
        setup = ", ".join(f"{k}={v}" for k, v in sorted(report.latency_setup.items()))
        values: dict[str, Any] = {
            "student": ModelFigures.from_row(rows[student]),
            "teacher_figures": ModelFigures.from_row(reference) if reference is not rows[student] else None,
            "latency_setup": f"batch size 1, {setup}" if setup else None,
        }
        return cls.from_dict({**values, **fields})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (the inverse of :meth:`from_dict`).

        >>> CompressionSummary(pruning="magnitude").to_dict()["pruning"]
        'magnitude'
        """
        return dataclasses.asdict(self)


def _check_keys(what: str, data: Mapping[str, Any], cls: type) -> None:
    """Refuse keys of ``data`` that are not fields of the dataclass ``cls``, suggesting the closest one."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in known]
    if unknown:
        hint = did_you_mean(unknown[0], known)
        raise ValueError(f"{what} has unknown key(s) {unknown}{hint}. Known keys: {', '.join(known)}.")
