"""The Markdown view of a compression report: one table row per model, then how it was measured.

>>> _format_count(22_700_000), _format_ms(9.0)
('22.70M', '9.00')
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hf_lite.report.rows import LOW_BIT_CPU_NOTE, LOWER_IS_BETTER
from hf_lite.summary import format_bytes

if TYPE_CHECKING:
    from hf_lite.report.compression import CompressionReport


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


def _format_latency(median: float | None, iqr: float | None) -> str:
    """``median (IQR x)``; the bare median when no spread was recorded (older reports)."""
    text = _format_ms(median)
    return text if median is None or iqr is None else f"{text} (IQR {_format_ms(iqr)})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: CompressionReport) -> str:
    """A Markdown table (one row per model) followed by the measurement setup.

    Columns: model, stage, each metric, % of teacher (every metric, primary first), parameters (nonzero),
    bytes on disk and in memory, latency at batch 1 / 32 (ms: median, with its interquartile range when
    recorded), speedup over the teacher at batch 1 / 32. Under the table: how the figures were computed, the
    machine and its load average, and notes when it was busy or when quantized models were timed on CPU.

    >>> from hf_lite.report import CompressionReport, ReportRow
    >>> r = CompressionReport(task="causal-lm", rows=[ReportRow("teacher", "teacher", metrics={"perplexity": 9.0})])
    >>> render_markdown(r).splitlines()[0]
    '| model | stage | perplexity | % of teacher | params (nonzero) | disk / memory | latency b1 / b32 (ms) | speedup b1 / b32 |'
    """
    metrics: list[str] = []
    for row in report.rows:
        metrics += [m for m in row.metrics if m not in metrics]
    reference = report.teacher_row()
    relative = [m for m in metrics if reference is not None and m in reference.metrics]
    relative.sort(key=lambda m: m != report.metric_name())  # stable: the primary metric first
    header = [
        "model",
        "stage",
        *metrics,
        "% of teacher" + (f" ({' / '.join(relative)})" if len(relative) > 1 else ""),
        "params (nonzero)",
        "disk / memory",
        "latency b1 / b32 (ms)",
        "speedup b1 / b32",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report.rows:
        rel = report.relative_metrics(row)
        params = _format_count(row.parameters)
        nonzero = _format_count(row.nonzero_parameters)
        if row.nonzero_parameters is not None and nonzero != params:  # a few stray zeros round away
            params += f" ({nonzero})"
        size = " / ".join(format_bytes(b) for b in (row.bytes_on_disk, row.bytes_in_memory) if b is not None)
        s1, s32 = report.speedup(row)
        cells = [
            _cell(row.name),
            _cell(row.stage),
            *(_format_metric(row.metrics.get(m)) for m in metrics),
            " / ".join("–" if m not in rel else f"{100 * rel[m]:.1f}%" for m in relative) or "–",
            params,
            size or "–",
            f"{_format_latency(row.latency_b1_ms, row.latency_b1_iqr_ms)} / "
            f"{_format_latency(row.latency_b32_ms, row.latency_b32_iqr_ms)}",
            " / ".join("–" if s is None else f"{s:.2f}×" for s in (s1, s32)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = _footnotes(report)
    return "\n".join(lines + ([""] + notes if notes else []))


def _footnotes(report: CompressionReport) -> list[str]:
    notes = []
    metric, reference = report.metric_name(), report.teacher_row()
    if metric and reference:
        how = "teacher ÷ model, 100% = as good" if metric in LOWER_IS_BETTER else "model ÷ teacher"
        others = [m for m in reference.metrics if m != metric]
        also = ""
        if others:
            lower = [m for m in others if m in LOWER_IS_BETTER]
            also = f", then {', '.join(others)}" + (
                f" ({', '.join(lower)}: teacher ÷ model)" if lower else ""
            )
        notes.append(
            f"% of teacher: {metric} ({how}) relative to {reference.name!r}{also}; speedup: teacher latency ÷ "
            "model latency."
        )
    for name, note in report.metric_notes.items():
        notes.append(f"{name}: {note}.")
    m, s = report.machine, report.latency_setup
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
            if any(r.latency_b1_iqr_ms is not None or r.latency_b32_iqr_ms is not None for r in report.rows):
                how += " (IQR: interquartile range of those passes, third minus first quartile)"
        if report.load_average is not None:
            how += f"; 1-minute load average at measurement {report.load_average:.2f}"
        notes.append(f"Measured on {where or 'an unrecorded machine'}{how}.")
    busy = report.busy_note()
    if busy:
        notes.append(f"Note: {busy}.")
    if report.quantized_on_cpu():
        notes.append(f"Quantized models on CPU: {LOW_BIT_CPU_NOTE}")
    return notes
