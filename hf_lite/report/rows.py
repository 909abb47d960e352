"""One model's row of a compression report (:class:`ReportRow`), and the check that keeps reports shareable.

Every string of a report is checked by :func:`check_public`: a local absolute path or an access token is
refused (``ValueError``), so a report can go into a model card, an issue or a benchmark.

>>> ReportRow("student", "distill", parameters=100, nonzero_parameters=40).sparsity
0.6
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hf_lite.evaluation import EvaluationResult

#: Metrics where smaller is better: "% of teacher" is teacher / model for these (100% = as good, < 100% worse).
LOWER_IS_BETTER = frozenset({"perplexity", "loss", "eval_loss"})

#: Printed under a report whose bitsandbytes-quantized rows were timed on CPU, because "int8 is slower than fp32"
#: reads like a bug.
LOW_BIT_CPU_NOTE = (
    "bitsandbytes 8-bit and 4-bit layers are slower than fp32 on CPU, most at small batch sizes: they are built "
    "for CUDA GPUs, and on CPU every forward pass converts activations and dequantizes or rescales the stored "
    "weights around the matrix multiply, without the fused low-bit kernels a GPU uses. On CPU they save memory "
    "and disk, not time; for CPU speed use structural pruning or distillation (fewer, smaller layers), and "
    "time quantized models on the GPU they are meant for."
)

_ABS_PATH = re.compile(r"(?<![\w.:/-])/[\w.~@+-]+/|(?<![\w])~[/\\]|\b[A-Za-z]:[\\/]|file://")
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b|(?i:\bbearer\s+[\w.~+/-]{16,})")


def check_public(value: Any, where: str) -> None:
    """Refuse strings that leak local paths or credentials into a shared report (recursing into containers).

    ``where`` names the value in the error message.

    >>> check_public({"cpu": "Intel Xeon", "notes": ["fine"]}, "machine")
    >>> check_public("/home/me/model", "name")
    Traceback (most recent call last):
    ...
    ValueError: name='/home/me/model' contains a local absolute path; a report is shared, so name models by stage (e.g. 'student-pruned') or Hub id ('org/model').
    """
    if isinstance(value, str):
        if _TOKEN.search(value):
            raise ValueError(
                f"{where} contains what looks like an access token; a report is shared, so remove it (the value is "
                "not repeated here)."
            )
        if _ABS_PATH.search(value):
            raise ValueError(
                f"{where}={value!r} contains a local absolute path; a report is shared, so name models by stage "
                "(e.g. 'student-pruned') or Hub id ('org/model')."
            )
    elif isinstance(value, Mapping):
        for k, v in value.items():
            check_public(k, f"{where} key")
            check_public(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_public(v, f"{where}[{i}]")


def _encode_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no inf/nan: "inf", "-inf", "nan"


def _decode_float(value: Any) -> float:
    return float(value)


@dataclasses.dataclass
class ReportRow:
    """One model of a compression run (the teacher, or the output of a stage).

    Args:
        name: how the model is named in the report: a stage label or a Hub id, never a local path.
        stage: the pipeline stage that produced it (``"teacher"``, ``"prune"``, ``"distill"``, ``"quantize"``...).
        parameters: logical parameter count.
        nonzero_parameters: parameters that are not exactly zero (pruning).
        bytes_on_disk: size of the saved weight files.
        bytes_in_memory: bytes of the loaded parameters and buffers.
        latency_b1_ms: median forward latency at batch size 1, in milliseconds.
        latency_b32_ms: median forward latency at batch size 32, in milliseconds.
        latency_b1_iqr_ms / latency_b32_iqr_ms: the interquartile range of those timed passes (third minus first
            quartile), in milliseconds: the spread to read the median against; ``None`` when not recorded.
        throughput_samples_s: samples per second at the largest batch size measured.
        throughput_tokens_s: tokens per second at the largest batch size measured.
        metrics: task metrics, e.g. ``{"accuracy": 0.86, "f1": 0.87}`` or ``{"perplexity": 12.3}``.
        quantization: e.g. ``"bnb-4bit (nf4)"``; ``None`` for full precision.
        adapter: e.g. ``"LORA r=8 on q_proj, v_proj"``; ``None`` without adapter.
        notes: free text.

    >>> row = ReportRow("student", "distill", parameters=100, nonzero_parameters=40, metrics={"accuracy": 0.8})
    >>> row.sparsity
    0.6
    """

    name: str
    stage: str
    parameters: int | None = None
    nonzero_parameters: int | None = None
    bytes_on_disk: int | None = None
    bytes_in_memory: int | None = None
    latency_b1_ms: float | None = None
    latency_b32_ms: float | None = None
    throughput_samples_s: float | None = None
    throughput_tokens_s: float | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    quantization: str | None = None
    adapter: str | None = None
    notes: str = ""
    latency_b1_iqr_ms: float | None = None
    latency_b32_iqr_ms: float | None = None

    def __post_init__(self) -> None:
        for f in ("name", "stage"):
            value = getattr(self, f)
            if not isinstance(value, str) or not value.strip():
                raise TypeError(f"{f} must be a non-empty string; got {type(value).__name__} {value!r}.")
        for f in ("quantization", "adapter"):
            if getattr(self, f) is not None and not isinstance(getattr(self, f), str):
                raise TypeError(f"{f} must be a string or None; got {type(getattr(self, f)).__name__}.")
        if not isinstance(self.notes, str):
            raise TypeError(f"notes must be a string; got {type(self.notes).__name__}.")
        for f in ("parameters", "nonzero_parameters", "bytes_on_disk", "bytes_in_memory"):
            value = getattr(self, f)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{f}={value!r} must be a non-negative integer or None.")
        for f in ("latency_b1_ms", "latency_b32_ms", "throughput_samples_s", "throughput_tokens_s"):
            value = getattr(self, f)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            ):
                raise ValueError(
                    f"{f}={value!r} must be a positive number (a measured time or rate) or None."
                )
        for f in ("latency_b1_iqr_ms", "latency_b32_iqr_ms"):
            value = getattr(self, f)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
            ):
                raise ValueError(f"{f}={value!r} must be a non-negative number (a measured spread) or None.")
        if not isinstance(self.metrics, Mapping):
            raise TypeError(f"metrics must be a mapping {{name: value}}; got {type(self.metrics).__name__}.")
        for k, v in self.metrics.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"metrics must map names (str) to numbers; got {k!r}: {type(v).__name__}.")
        self.metrics = {k: float(v) for k, v in self.metrics.items()}
        for f, value in dataclasses.asdict(self).items():
            check_public(value, f)

    @property
    def sparsity(self) -> float | None:
        """Fraction of parameters that are exactly zero (``None`` when not counted)."""
        if not self.parameters or self.nonzero_parameters is None:
            return None
        return 1.0 - self.nonzero_parameters / self.parameters

    @property
    def relative_iqr(self) -> float | None:
        """The largest interquartile range over its median (batch 1 and 32), ``None`` when none was recorded.

        >>> ReportRow("m", "prune", latency_b1_ms=10.0, latency_b1_iqr_ms=2.0).relative_iqr
        0.2
        """
        pairs = ((self.latency_b1_iqr_ms, self.latency_b1_ms), (self.latency_b32_iqr_ms, self.latency_b32_ms))
        ratios = [iqr / median for iqr, median in pairs if iqr is not None and median]
        return max(ratios) if ratios else None

    @classmethod
    def from_evaluation(
        cls, result: EvaluationResult | Mapping[str, Any], *, name: str, stage: str, notes: str = ""
    ) -> ReportRow:
        """A row from :func:`hf_lite.evaluation.evaluate_model`'s result (or its ``to_dict()``): the median and
        the interquartile range at batch 1 and 32, the throughput at the largest batch size timed.

        >>> from hf_lite.evaluation import EvaluationResult
        >>> r = EvaluationResult("causal-lm", {"perplexity": 9.5}, 1000, 500, 4000, latency={"results": [
        ...     {"batch_size": 1, "median_ms": 2.0, "samples_per_s": 500.0, "tokens_per_s": 8000.0}]})
        >>> ReportRow.from_evaluation(r, name="pruned", stage="prune").latency_b1_ms
        2.0
        """
        data = result.to_dict() if hasattr(result, "to_dict") else result
        if not isinstance(data, Mapping):
            raise TypeError(
                f"result must be an EvaluationResult or its to_dict(); got {type(result).__name__}."
            )
        runs = {r["batch_size"]: r for r in ((data.get("latency") or {}).get("results") or [])}
        widest = runs[max(runs)] if runs else {}
        return cls(
            name=name,
            stage=stage,
            parameters=data.get("parameters"),
            nonzero_parameters=data.get("nonzero_parameters"),
            bytes_on_disk=data.get("bytes_on_disk"),
            bytes_in_memory=data.get("bytes_in_memory"),
            latency_b1_ms=runs.get(1, {}).get("median_ms"),
            latency_b32_ms=runs.get(32, {}).get("median_ms"),
            latency_b1_iqr_ms=runs.get(1, {}).get("iqr_ms"),
            latency_b32_iqr_ms=runs.get(32, {}).get("iqr_ms"),
            throughput_samples_s=widest.get("samples_per_s"),
            throughput_tokens_s=widest.get("tokens_per_s"),
            metrics=dict(data.get("metrics") or {}),
            quantization=data.get("quantization"),
            adapter=data.get("adapter"),
            notes=notes,
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["metrics"] = {k: _encode_float(v) for k, v in self.metrics.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportRow:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"report row has unknown fields {unknown}; known fields are {sorted(known)}.")
        values = dict(data)
        values["metrics"] = {k: _decode_float(v) for k, v in (values.get("metrics") or {}).items()}
        return cls(**values)
