"""The compression report: rows of every model of a run, how they were measured, JSON in and out.

Views: :mod:`hf_lite.report.markdown` (the table), :mod:`hf_lite.report.plot` (the PNG).

>>> report = CompressionReport(task="causal-lm", rows=[ReportRow("teacher", "teacher", metrics={"loss": 2.0})])
>>> report.metric_name()
'loss'
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lite._utils import atomic_write_text
from hf_lite.report.markdown import render_markdown
from hf_lite.report.rows import LOWER_IS_BETTER, ReportRow, check_public

if TYPE_CHECKING:
    from hf_lite.evaluation import EvaluationResult

_FORMAT = "hf-lite-compression-report/1"
# Preferred primary metric, in order, when none is chosen.
_PRIMARY_ORDER = ("accuracy", "perplexity", "f1", "matthews_correlation", "pearson", "loss")


@dataclasses.dataclass
class CompressionReport:
    """Rows (teacher and each stage's model) plus how and where they were measured.

    Args:
        task: the task the metrics refer to (e.g. ``"sequence-classification"``).
        rows: one :class:`ReportRow` per model, in pipeline order.
        machine: :func:`hf_lite.evaluation.machine_info` of the machine that measured latency.
        primary_metric: the metric for "% of teacher" and the plot; default: accuracy, perplexity, f1, ...
            whichever the teacher row has first.
        teacher: name of the reference row; default: the first row whose stage is ``"teacher"`` (named here
            as soon as such a row is added, so ``report.json`` names it), else the first row.
        latency_setup: how latency was measured (``seq_len``, ``threads``, ``warmup``, ``repeats``, ``device``).
        metric_notes: how metrics were computed, e.g. ``{"f1": "binary average"}``, printed under the table.
        title: heading of the Markdown report and the plot.
        load_average: the machine's 1-minute load average right after latency was timed (the highest one when
            rows were timed separately); ``None`` when not recorded. See :meth:`busy_note`.

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
    load_average: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise TypeError(f"task must be a non-empty string; got {type(self.task).__name__} {self.task!r}.")
        rows, self.rows = list(self.rows), []
        for row in rows:
            self.add(row)
        for f in ("machine", "latency_setup", "metric_notes"):
            if not isinstance(getattr(self, f), Mapping):
                raise TypeError(f"{f} must be a mapping; got {type(getattr(self, f)).__name__}.")
        check_public(self.machine, "machine")
        check_public(self.metric_notes, "metric_notes")
        check_public(self.title, "title")
        if self.load_average is not None and (
            isinstance(self.load_average, bool)
            or not isinstance(self.load_average, (int, float))
            or not self.load_average >= 0
        ):
            raise ValueError(f"load_average={self.load_average!r} must be a number >= 0 or None.")

    # -------------------------------------------------------------------------------------------- rows

    def add(self, row: ReportRow) -> None:
        """Append ``row`` (names must be unique). The first row of stage ``"teacher"`` becomes ``teacher`` when
        none is named yet.

        >>> r = CompressionReport(task="causal-lm")
        >>> r.add(ReportRow("org/bert", "teacher"))
        >>> [row.name for row in r.rows], r.teacher
        (['org/bert'], 'org/bert')
        """
        if not isinstance(row, ReportRow):
            raise TypeError(f"row must be a ReportRow; got {type(row).__name__}.")
        if any(r.name == row.name for r in self.rows):
            raise ValueError(
                f"a row named {row.name!r} is already in the report; give each model a unique name."
            )
        self.rows.append(row)
        if self.teacher is None and row.stage == "teacher":
            self.teacher = row.name

    def add_evaluation(
        self, result: EvaluationResult | Mapping[str, Any], *, name: str, stage: str, notes: str = ""
    ) -> ReportRow:
        """Add a row from :func:`hf_lite.evaluation.evaluate_model`'s result; record its latency setup and
        metric details and the load average at timing (the highest so far). A row timed with a different setup
        than the report's gets a note saying so.

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
        load = latency.get("load_average")
        if load is not None:
            self.load_average = max(load, self.load_average or 0.0)
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

    def relative_metrics(self, row: ReportRow) -> dict[str, float]:
        """Every metric ``row`` shares with the teacher, as a fraction of the teacher's (teacher / model for
        lower-is-better metrics such as perplexity and loss), primary metric first.

        >>> r = CompressionReport(task="x", rows=[ReportRow("t", "teacher", metrics={"accuracy": 0.8, "f1": 0.5}),
        ...     ReportRow("s", "distill", metrics={"accuracy": 0.6, "f1": 0.4})])
        >>> {k: round(v, 2) for k, v in r.relative_metrics(r.rows[1]).items()}
        {'accuracy': 0.75, 'f1': 0.8}
        """
        reference, primary = self.teacher_row(), self.metric_name()
        if reference is None:
            return {}
        names = sorted(row.metrics, key=lambda m: m != primary)  # stable: the primary metric first
        out = {}
        for metric in names:
            mine, theirs = row.metrics[metric], reference.metrics.get(metric)
            if theirs is None:
                continue
            num, den = (theirs, mine) if metric in LOWER_IS_BETTER else (mine, theirs)
            if den:
                out[metric] = num / den
        return out

    def busy_note(self) -> str | None:
        """A sentence when latency was timed on a busy machine (load average above the usable CPUs) or with a
        wide spread (see :func:`hf_lite.evaluation.busy_note`), else ``None``.

        >>> CompressionReport(task="x", machine={"usable_cpus": 2}, load_average=6.0).busy_note()[:30]
        'the machine was busy while lat'
        """
        from hf_lite.evaluation.machine import busy_note

        spreads = [r.relative_iqr for r in self.rows if r.relative_iqr is not None]
        return busy_note(
            self.load_average, self.machine.get("usable_cpus"), relative_iqr=max(spreads) if spreads else None
        )

    def quantized_on_cpu(self) -> bool:
        """Whether a bitsandbytes-quantized row was timed on CPU (then :data:`LOW_BIT_CPU_NOTE` applies).

        >>> CompressionReport(task="x", rows=[ReportRow("q", "quantize", quantization="bnb-8bit",
        ...     latency_b1_ms=3.0)], latency_setup={"device": "cpu"}).quantized_on_cpu()
        True
        """
        device = str(self.latency_setup.get("device", "cpu" if not self.machine.get("gpu") else ""))
        return device.startswith("cpu") and any(
            r.quantization and "bnb" in r.quantization and (r.latency_b1_ms or r.latency_b32_ms)
            for r in self.rows
        )

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
            "teacher": self.teacher if self.teacher is not None or not self.rows else self.teacher_row().name,
            "machine": dict(self.machine),
            "latency_setup": dict(self.latency_setup),
            "metric_notes": dict(self.metric_notes),
            "load_average": self.load_average,
            "rows": [r.to_dict() for r in self.rows],
        }
        check_public(data, "report")  # the machine/notes dicts may have been edited after construction
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
            atomic_write_text(path, text)
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
        return render_markdown(self)

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
        from hf_lite.report.plot import plot_report  # matplotlib is imported only when a plot is drawn

        return plot_report(self, path, dpi=dpi, figsize=figsize)

    def save(self, folder: str | os.PathLike, *, plot: bool = True) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and (with ``plot``) ``report.png`` into ``folder``.

        >>> CompressionReport(task="causal-lm").save("out", plot=False)  # doctest: +SKIP
        {'json': PosixPath('out/report.json'), 'markdown': PosixPath('out/report.md')}
        """
        out = Path(folder)
        paths = {"json": out / "report.json", "markdown": out / "report.md"}
        self.to_json(paths["json"])
        markdown = f"# {self.title}\n\n{self.to_markdown()}\n"
        atomic_write_text(paths["markdown"], markdown)
        if plot:
            paths["plot"] = self.plot(out / "report.png")
        return paths
