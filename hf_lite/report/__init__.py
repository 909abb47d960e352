"""The compression report: one row per model (teacher and each stage), as JSON, Markdown and a PNG plot.

A :class:`CompressionReport` holds :class:`ReportRow` objects (parameters, nonzero parameters, bytes on
disk and in memory, latency at batch 1 and 32, throughput, task metrics, quantization, adapter, notes)
and the description of the machine that measured them (:func:`hf_lite.evaluation.machine_info`).

* :meth:`CompressionReport.to_json` / :meth:`CompressionReport.from_json` round-trip exactly.
* :meth:`CompressionReport.to_markdown` is the table printed at the end of a run: metrics, % of the
  teacher's metric, parameters, bytes, latency and speedup over the teacher, with the measurement setup
  underneath.
* :meth:`CompressionReport.plot` draws the primary metric against size and against latency (Agg
  backend, no display needed).

Reports are meant to be shared (model cards, issues, benchmarks): every string in a report is checked
when rows are added and when it is written, and a local absolute path or an access token is refused
(``ValueError``). Name models by stage (``"student-pruned"``) or Hub id (``"org/model"``). Every file is
written atomically (a temporary file in the same folder, then ``os.replace``).

>>> report = CompressionReport(task="sequence-classification")
>>> report.add(ReportRow("teacher", "teacher", parameters=22_700_000, metrics={"accuracy": 0.859}, latency_b1_ms=9.0))
>>> report.add(ReportRow("student", "distill", parameters=11_200_000, metrics={"accuracy": 0.846}, latency_b1_ms=4.5))
>>> print(report.to_markdown().splitlines()[2])
| teacher | teacher | 0.8590 | 100.0% | 22.70M | – | 9.00 / – | 1.00× / – |
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hf_lite.evaluation import EvaluationResult

__all__ = ["LOWER_IS_BETTER", "CompressionReport", "ReportRow"]

#: Metrics where smaller is better: "% of teacher" is teacher / model for these (100% = as good, < 100% worse).
LOWER_IS_BETTER = frozenset({"perplexity", "loss", "eval_loss"})
_FORMAT = "hf-lite-compression-report/1"
# Preferred primary metric, in order, when none is chosen.
_PRIMARY_ORDER = ("accuracy", "perplexity", "f1", "matthews_correlation", "pearson", "loss")

_ABS_PATH = re.compile(r"(?<![\w.:/-])/[\w.~@+-]+/|(?<![\w])~[/\\]|\b[A-Za-z]:[\\/]|file://")
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b|(?i:\bbearer\s+[\w.~+/-]{16,})")


def _check_public(value: Any, where: str) -> None:
    """Refuse strings that leak local paths or credentials into a shared report (recursing into containers)."""
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
            _check_public(k, f"{where} key")
            _check_public(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_public(v, f"{where}[{i}]")


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
        if not isinstance(self.metrics, Mapping):
            raise TypeError(f"metrics must be a mapping {{name: value}}; got {type(self.metrics).__name__}.")
        for k, v in self.metrics.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"metrics must map names (str) to numbers; got {k!r}: {type(v).__name__}.")
        self.metrics = {k: float(v) for k, v in self.metrics.items()}
        for f, value in dataclasses.asdict(self).items():
            _check_public(value, f)

    @property
    def sparsity(self) -> float | None:
        """Fraction of parameters that are exactly zero (``None`` when not counted)."""
        if not self.parameters or self.nonzero_parameters is None:
            return None
        return 1.0 - self.nonzero_parameters / self.parameters

    @classmethod
    def from_evaluation(
        cls, result: EvaluationResult | Mapping[str, Any], *, name: str, stage: str, notes: str = ""
    ) -> ReportRow:
        """A row from :func:`hf_lite.evaluation.evaluate_model`'s result (or its ``to_dict()``).

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


def _format_count(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _format_metric(v: float | None) -> str:
    if v is None:
        return "–"
    if not math.isfinite(v):
        return str(v)
    if abs(v) < 1:
        return f"{v:.4f}"
    return f"{v:.2f}" if abs(v) < 1000 else f"{v:,.0f}"


def _format_ms(v: float | None) -> str:
    return "–" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _atomic_write(path: Path, write: Any, mode: str = "w") -> Path:
    """Write through a temporary file in the destination folder, then ``os.replace`` (complete or absent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclasses.dataclass
class CompressionReport:
    """Rows (teacher and each stage's model) plus how and where they were measured.

    Args:
        task: the task the metrics refer to (e.g. ``"sequence-classification"``).
        rows: one :class:`ReportRow` per model, in pipeline order.
        machine: :func:`hf_lite.evaluation.machine_info` of the machine that measured latency.
        primary_metric: the metric for "% of teacher" and the plot; default: accuracy, perplexity, f1, ...
            whichever the teacher row has first.
        teacher: name of the reference row; default: the first row whose stage is ``"teacher"``, else the
            first row.
        latency_setup: how latency was measured (``seq_len``, ``threads``, ``warmup``, ``repeats``, ``device``).
        metric_notes: how metrics were computed, e.g. ``{"f1": "binary average"}``, printed under the table.
        title: heading of the Markdown report and the plot.

    >>> report = CompressionReport(task="causal-lm", rows=[ReportRow("teacher", "teacher", metrics={"perplexity": 10.0}),
    ...     ReportRow("int8", "quantize", metrics={"perplexity": 12.5})])
    >>> report.relative_metric(report.rows[1])  # teacher / model for perplexity
    0.8
    """

    task: str
    rows: list[ReportRow] = dataclasses.field(default_factory=list)
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)
    primary_metric: str | None = None
    teacher: str | None = None
    latency_setup: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric_notes: dict[str, str] = dataclasses.field(default_factory=dict)
    title: str = "Compression report"

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise TypeError(f"task must be a non-empty string; got {type(self.task).__name__} {self.task!r}.")
        rows, self.rows = list(self.rows), []
        for row in rows:
            self.add(row)
        for f in ("machine", "latency_setup", "metric_notes"):
            if not isinstance(getattr(self, f), Mapping):
                raise TypeError(f"{f} must be a mapping; got {type(getattr(self, f)).__name__}.")
        _check_public(self.machine, "machine")
        _check_public(self.metric_notes, "metric_notes")
        _check_public(self.title, "title")

    # -------------------------------------------------------------------------------------------- rows

    def add(self, row: ReportRow) -> None:
        """Append ``row`` (names must be unique).

        >>> r = CompressionReport(task="causal-lm")
        >>> r.add(ReportRow("teacher", "teacher"))
        >>> [row.name for row in r.rows]
        ['teacher']
        """
        if not isinstance(row, ReportRow):
            raise TypeError(f"row must be a ReportRow; got {type(row).__name__}.")
        if any(r.name == row.name for r in self.rows):
            raise ValueError(
                f"a row named {row.name!r} is already in the report; give each model a unique name."
            )
        self.rows.append(row)

    def add_evaluation(
        self, result: EvaluationResult | Mapping[str, Any], *, name: str, stage: str, notes: str = ""
    ) -> ReportRow:
        """Add a row from :func:`hf_lite.evaluation.evaluate_model`'s result; record its latency setup and
        metric details. A row timed with a different setup than the report's gets a note saying so.

        >>> from hf_lite.evaluation import EvaluationResult
        >>> report = CompressionReport(task="sequence-classification")
        >>> row = report.add_evaluation(EvaluationResult("sequence-classification", {"accuracy": 0.9, "f1": 0.8}, 10, 10, 40,
        ...     details={"average": "binary"}), name="teacher", stage="teacher")
        >>> report.metric_notes
        {'f1': 'binary average'}
        """
        data = result.to_dict() if hasattr(result, "to_dict") else result
        row = ReportRow.from_evaluation(data, name=name, stage=stage, notes=notes)
        latency = data.get("latency") or {}
        setup = {k: latency[k] for k in ("seq_len", "threads", "warmup", "repeats", "device") if k in latency}
        if setup and not self.latency_setup:
            self.latency_setup = setup
        elif setup and setup != self.latency_setup:
            differs = ", ".join(f"{k}={v}" for k, v in setup.items() if self.latency_setup.get(k) != v)
            row.notes = "; ".join(x for x in (row.notes, f"timed with {differs}") if x)
        average = (data.get("details") or {}).get("average")
        if average:
            for metric in ("f1", "precision", "recall"):
                if metric in row.metrics:
                    self.metric_notes.setdefault(metric, f"{average} average")
        self.add(row)
        return row

    def teacher_row(self) -> ReportRow | None:
        """The reference row: ``teacher`` by name, else the first ``"teacher"`` stage, else the first row."""
        if self.teacher is not None:
            for row in self.rows:
                if row.name == self.teacher:
                    return row
            raise ValueError(
                f"teacher={self.teacher!r} names no row; rows are {[r.name for r in self.rows]}. Set teacher to one."
            )
        return next((r for r in self.rows if r.stage == "teacher"), self.rows[0] if self.rows else None)

    def metric_name(self) -> str | None:
        """The primary metric (see ``primary_metric``)."""
        if self.primary_metric is not None:
            return self.primary_metric
        reference = self.teacher_row()
        names = list(reference.metrics) if reference else []
        names += [k for r in self.rows for k in r.metrics if k not in names]
        return next((m for m in _PRIMARY_ORDER if m in names), names[0] if names else None)

    def relative_metric(self, row: ReportRow) -> float | None:
        """The primary metric of ``row`` as a fraction of the teacher's (inverted for lower-is-better metrics)."""
        metric, reference = self.metric_name(), self.teacher_row()
        if metric is None or reference is None:
            return None
        mine, theirs = row.metrics.get(metric), reference.metrics.get(metric)
        if mine is None or theirs is None:
            return None
        num, den = (theirs, mine) if metric in LOWER_IS_BETTER else (mine, theirs)
        return num / den if den else None

    def speedup(self, row: ReportRow) -> tuple[float | None, float | None]:
        """Teacher latency / ``row`` latency at batch size 1 and 32 (``None`` where either was not timed)."""
        reference = self.teacher_row()
        out = []
        for f in ("latency_b1_ms", "latency_b32_ms"):
            mine, theirs = getattr(row, f), getattr(reference, f) if reference else None
            out.append(theirs / mine if mine and theirs else None)
        return out[0], out[1]

    # -------------------------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": _FORMAT,
            "title": self.title,
            "task": self.task,
            "primary_metric": self.primary_metric,
            "teacher": self.teacher,
            "machine": dict(self.machine),
            "latency_setup": dict(self.latency_setup),
            "metric_notes": dict(self.metric_notes),
            "rows": [r.to_dict() for r in self.rows],
        }
        _check_public(data, "report")  # the machine/notes dicts may have been edited after construction
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionReport:
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"not an hf-lite compression report (format={found!r}, expected {_FORMAT!r}).")
        values = {k: v for k, v in data.items() if k != "format"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"report has unknown fields {unknown}; known fields are {sorted(known)}.")
        values["rows"] = [ReportRow.from_dict(r) for r in values.get("rows", [])]
        return cls(**values)

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int = 2) -> str:
        """The report as JSON text; also written (atomically) to ``path`` when given.

        >>> r = CompressionReport(task="causal-lm", rows=[ReportRow("teacher", "teacher", metrics={"loss": 2.0})])
        >>> CompressionReport.from_json(r.to_json()) == r
        True
        """
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"
        if path is not None:
            _atomic_write(Path(path), lambda f: f.write(text))
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> CompressionReport:
        """Read a report from JSON text or from a ``.json`` file written by :meth:`to_json`.

        >>> CompressionReport.from_json('{"format": "hf-lite-compression-report/1", "task": "causal-lm"}').task
        'causal-lm'
        """
        if isinstance(text_or_path, os.PathLike) or (
            isinstance(text_or_path, str) and not text_or_path.lstrip().startswith("{")
        ):
            path = Path(text_or_path)
            if not path.is_file():
                raise ValueError(
                    f"text_or_path={str(text_or_path)[:80]!r} is neither JSON text nor an existing file."
                )
            text = path.read_text(encoding="utf-8")
        elif isinstance(text_or_path, str):
            text = text_or_path
        else:
            raise TypeError(f"text_or_path must be JSON text or a path; got {type(text_or_path).__name__}.")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"the report is not valid JSON: {err}.") from err
        return cls.from_dict(data)

    # -------------------------------------------------------------------------------------------- Markdown

    def to_markdown(self) -> str:
        """A Markdown table (one row per model) followed by the measurement setup.

        Columns: model, stage, each metric, % of teacher (primary metric), parameters (nonzero), bytes on disk
        and in memory, latency at batch 1 / 32 (ms), speedup over the teacher at batch 1 / 32.

        >>> r = CompressionReport(task="causal-lm", rows=[ReportRow("teacher", "teacher", metrics={"perplexity": 9.0})])
        >>> r.to_markdown().splitlines()[0]
        '| model | stage | perplexity | % of teacher | params (nonzero) | disk / memory | latency b1 / b32 (ms) | speedup b1 / b32 |'
        """
        from hf_lite.summary import format_bytes

        metrics: list[str] = []
        for row in self.rows:
            metrics += [m for m in row.metrics if m not in metrics]
        header = [
            "model",
            "stage",
            *metrics,
            "% of teacher",
            "params (nonzero)",
            "disk / memory",
            "latency b1 / b32 (ms)",
            "speedup b1 / b32",
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            rel = self.relative_metric(row)
            params = _format_count(row.parameters)
            nonzero = _format_count(row.nonzero_parameters)
            if row.nonzero_parameters is not None and nonzero != params:  # a few stray zeros round away
                params += f" ({nonzero})"
            size = " / ".join(
                format_bytes(b) for b in (row.bytes_on_disk, row.bytes_in_memory) if b is not None
            )
            s1, s32 = self.speedup(row)
            cells = [
                _cell(row.name),
                _cell(row.stage),
                *(_format_metric(row.metrics.get(m)) for m in metrics),
                "–" if rel is None else f"{100 * rel:.1f}%",
                params,
                size or "–",
                f"{_format_ms(row.latency_b1_ms)} / {_format_ms(row.latency_b32_ms)}",
                " / ".join("–" if s is None else f"{s:.2f}×" for s in (s1, s32)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        notes = self._footnotes()
        return "\n".join(lines + ([""] + notes if notes else []))

    def _footnotes(self) -> list[str]:
        notes = []
        metric, reference = self.metric_name(), self.teacher_row()
        if metric and reference:
            how = "teacher ÷ model, 100% = as good" if metric in LOWER_IS_BETTER else "model ÷ teacher"
            notes.append(
                f"% of teacher: {metric} ({how}) relative to {reference.name!r}; speedup: teacher latency ÷ "
                "model latency."
            )
        for name, note in self.metric_notes.items():
            notes.append(f"{name}: {note}.")
        m, s = self.machine, self.latency_setup
        if m or s:
            threads = s.get("threads", m.get("torch_threads"))
            where = ", ".join(
                x
                for x in (
                    m.get("cpu"),
                    f"{m['usable_cpus']} usable CPUs" if m.get("usable_cpus") else None,
                    f"GPU {m['gpu']}" if m.get("gpu") else None,
                    f"torch {m['torch']}" if m.get("torch") else None,
                    f"{threads} threads" if threads else None,
                )
                if x
            )
            how = ""
            if s:
                how = (
                    f"; latency = median of {s.get('repeats', '?')} forward passes after {s.get('warmup', '?')} "
                    f"warm-up passes at sequence length {s.get('seq_len', '?')} on {s.get('device', '?')}"
                )
            notes.append(f"Measured on {where or 'an unrecorded machine'}{how}.")
        return notes

    def __str__(self) -> str:
        return self.to_markdown()

    # -------------------------------------------------------------------------------------------- plot

    def plot(
        self, path: str | os.PathLike, *, dpi: int = 100, figsize: tuple[float, float] = (11.0, 4.5)
    ) -> Path:
        """Write a PNG with two panels: the primary metric against size, and against latency (batch 1).

        The size axis is bytes on disk when every plotted row has it, else bytes in memory; both x axes are
        logarithmic when values span more than a factor of 10. The teacher is a star; the other models are
        joined in row (pipeline) order. The image is ``figsize * dpi`` pixels and is written atomically.

        >>> r = CompressionReport(task="causal-lm", rows=[ReportRow("teacher", "teacher", bytes_in_memory=2**20,
        ...     latency_b1_ms=3.0, metrics={"perplexity": 9.0})])
        >>> r.plot("report.png")  # doctest: +SKIP
        PosixPath('report.png')
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= 600:
            raise ValueError(f"dpi={dpi!r} must be an integer between 20 and 600.")
        metric = self.metric_name()
        rows = [r for r in self.rows if metric is not None and metric in r.metrics]
        if not rows:
            raise ValueError(
                f"no row has a value for the primary metric {metric!r} (rows: {[r.name for r in self.rows]}); add "
                "metrics to the rows or set primary_metric."
            )
        use_disk = all(r.bytes_on_disk is not None for r in rows)
        size_key, size_label = ("bytes_on_disk", "on disk") if use_disk else ("bytes_in_memory", "in memory")
        lat_key = "latency_b1_ms" if any(r.latency_b1_ms for r in rows) else "latency_b32_ms"
        lat_label = "batch 1" if lat_key == "latency_b1_ms" else "batch 32"
        reference = self.teacher_row()

        fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        panels = fig.subplots(1, 2)
        colors = [f"C{i % 10}" for i in range(len(rows))]
        specs = [
            (panels[0], size_key, lambda v: v / 2**20, f"size {size_label} (MiB)"),
            (panels[1], lat_key, lambda v: v, f"latency, {lat_label} (ms, median)"),
        ]
        for ax, key, scale, xlabel in specs:
            points = [
                (scale(getattr(r, key)), r.metrics[metric], r, c)
                for r, c in zip(rows, colors, strict=True)
                if getattr(r, key) is not None
            ]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
            ax.grid(True, alpha=0.3)
            if not points:
                ax.text(
                    0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray"
                )
                ax.set_xlabel(xlabel.split(",")[0].split(" (")[0] + " (not measured)")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            xs = [p[0] for p in points]
            ax.plot(xs, [p[1] for p in points], color="0.7", linewidth=1, linestyle="--", zorder=1)
            for x, y, row, color in points:
                is_teacher = row is reference
                ax.scatter(
                    [x],
                    [y],
                    s=180 if is_teacher else 60,
                    marker="*" if is_teacher else "o",
                    color=color,
                    edgecolors="black",
                    linewidths=0.6,
                    zorder=3,
                    label=f"{row.name} ({row.stage})",
                )
                ax.annotate(row.name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
            if min(xs) > 0 and max(xs) / min(xs) > 10:
                ax.set_xscale("log")
            ax.margins(x=0.15, y=0.15)
        panels[0].legend(fontsize=8, loc="best")
        fig.suptitle(f"{self.title}: {metric} vs size and latency ({self.task})", fontsize=11)
        m = self.machine
        if m:
            threads = self.latency_setup.get("threads", m.get("torch_threads"))
            # supxlabel (not fig.text): constrained layout makes room for it below the axis labels
            fig.supxlabel(
                f"measured on {m.get('cpu', '?')}, {threads} threads, torch {m.get('torch', '?')}",
                fontsize=7,
                color="0.4",
                x=0.01,
                ha="left",
            )
        return _atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi), mode="wb")

    def save(self, folder: str | os.PathLike, *, plot: bool = True) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and (with ``plot``) ``report.png`` into ``folder``.

        >>> CompressionReport(task="causal-lm").save("out", plot=False)  # doctest: +SKIP
        {'json': PosixPath('out/report.json'), 'markdown': PosixPath('out/report.md')}
        """
        out = Path(folder)
        paths = {"json": out / "report.json", "markdown": out / "report.md"}
        self.to_json(paths["json"])
        markdown = f"# {self.title}\n\n{self.to_markdown()}\n"
        _atomic_write(paths["markdown"], lambda f: f.write(markdown))
        if plot:
            paths["plot"] = self.plot(out / "report.png")
        return paths
