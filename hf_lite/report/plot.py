"""The plot of a compression report: the primary metric against size and against latency, as a PNG.

Drawn with matplotlib's Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hf_lite._utils import atomic_write
from hf_lite.report.rows import LOWER_IS_BETTER

if TYPE_CHECKING:
    from hf_lite.report.compression import CompressionReport


def _y_range(values: list[float], *, worse_is_higher: bool) -> tuple[float, float, set[float]]:
    """The y range to draw, and the values left off it: with four or more values, the single worst one is off
    scale when its distance to the others exceeds three times their own spread.

    >>> _y_range([0.90, 0.88, 0.86, 0.50], worse_is_higher=False)
    (0.86, 0.9, {0.5})
    >>> _y_range([0.90, 0.88, 0.70], worse_is_higher=False)
    (0.7, 0.9, set())
    """
    ordered = sorted(values, reverse=worse_is_higher)  # the worst first
    if len(ordered) >= 4:
        worst, rest = ordered[0], ordered[1:]
        spread = max(rest) - min(rest)
        if spread > 0 and abs(worst - (min(rest) if not worse_is_higher else max(rest))) > 3 * spread:
            return min(rest), max(rest), {worst}
    return min(values), max(values), set()


def _label_points(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point with its label, trying offsets around it until the label's box (estimated from its
    length at 8 pt) overlaps no label already placed."""
    offsets = [
        (6, 6, "left"),
        (6, -12, "left"),
        (-6, 6, "right"),
        (-6, -12, "right"),
        (6, 18, "left"),
        (6, -24, "left"),
        (-6, 18, "right"),
        (-6, -24, "right"),
    ]
    scale = ax.figure.dpi / 72  # points -> pixels
    placed: list[tuple[float, float, float, float]] = []
    for x, y, text in points:
        px, py = ax.transData.transform((x, y))
        width, height = 5.0 * len(text) * scale, 10.0 * scale
        choice = offsets[0]
        for dx, dy, ha in offsets:
            left = px + dx * scale - (width if ha == "right" else 0)
            box = (left, py + dy * scale, left + width, py + dy * scale + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                choice = (dx, dy, ha)
                placed.append(box)
                break
        else:
            dx, dy, ha = choice
            left = px + dx * scale - (width if ha == "right" else 0)
            placed.append((left, py + dy * scale, left + width, py + dy * scale + height))
        dx, dy, ha = choice
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8, ha=ha)


def plot_report(
    report: CompressionReport,
    path: str | os.PathLike,
    *,
    dpi: int = 100,
    figsize: tuple[float, float] = (11.0, 4.5),
) -> Path:
    """Write a PNG with two panels: the primary metric against size, and against latency (batch 1).

    The size axis is bytes on disk when every plotted row has it, else bytes in memory; both x axes are
    logarithmic when values span more than a factor of 10. The teacher is a star; every model is a point on
    its own (no line: the rows are separate models, not a path). Labels are moved apart where they would
    overlap. A model far worse than all others (e.g. an untrained student) is drawn on the edge of the axis as
    a triangle labelled with its value, so it does not flatten the others. The image is ``figsize * dpi``
    pixels and is written atomically.

    >>> from hf_lite.report import CompressionReport, ReportRow
    >>> r = CompressionReport(task="causal-lm", rows=[ReportRow("teacher", "teacher", bytes_in_memory=2**20,
    ...     latency_b1_ms=3.0, metrics={"perplexity": 9.0})])
    >>> plot_report(r, "report.png")  # doctest: +SKIP
    PosixPath('report.png')
    """
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= 600:
        raise ValueError(f"dpi={dpi!r} must be an integer between 20 and 600.")
    fig = report_figure(report, dpi=dpi, figsize=figsize)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def report_figure(
    report: CompressionReport, *, dpi: int = 100, figsize: tuple[float, float] = (11.0, 4.5)
) -> Figure:
    """The matplotlib ``Figure`` that :func:`plot_report` writes (Agg canvas attached), for inspection or reuse.

    >>> from hf_lite.report import CompressionReport, ReportRow
    >>> r = CompressionReport(task="causal-lm", rows=[ReportRow("teacher", "teacher", bytes_in_memory=2**20,
    ...     latency_b1_ms=3.0, metrics={"perplexity": 9.0})])
    >>> [len(ax.collections) for ax in report_figure(r).axes]  # one point per panel
    [1, 1]
    """
    metric = report.metric_name()
    rows = [r for r in report.rows if metric is not None and metric in r.metrics]
    if not rows:
        raise ValueError(
            f"no row has a value for the primary metric {metric!r} (rows: {[r.name for r in report.rows]}); add "
            "metrics to the rows or set primary_metric."
        )
    use_disk = all(r.bytes_on_disk is not None for r in rows)
    size_key, size_label = ("bytes_on_disk", "on disk") if use_disk else ("bytes_in_memory", "in memory")
    lat_key = "latency_b1_ms" if any(r.latency_b1_ms for r in rows) else "latency_b32_ms"
    lat_label = "batch 1" if lat_key == "latency_b1_ms" else "batch 32"
    reference = report.teacher_row()

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
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xlabel(xlabel.split(",")[0].split(" (")[0] + " (not measured)")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        xs = [p[0] for p in points]
        # points only: the rows are separate models, not a path from one to the next
        low, high, off_scale = _y_range([p[1] for p in points], worse_is_higher=metric in LOWER_IS_BETTER)
        pad = 0.15 * (high - low) or 0.05 * abs(high) or 0.05
        edge = (low - pad, high + pad)

        def shown(y: float, edge: tuple[float, float] = edge) -> float:
            return min(max(y, edge[0]), edge[1])

        for x, y, row, color in points:
            is_teacher = row is reference
            ax.scatter(
                [x],
                [shown(y)],
                s=180 if is_teacher else 60,
                marker="*" if is_teacher else ("v" if y < low else "^") if y in off_scale else "o",
                color=color,
                edgecolors="black",
                linewidths=0.6,
                zorder=3,
                label=f"{row.name} ({row.stage})",
                clip_on=False,
            )
        if min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
        ax.margins(x=0.15, y=0.15)
        if off_scale:  # one far-off model (e.g. an untrained student) would flatten every other point
            ax.set_ylim(*edge)
        labels = [
            (x, shown(y), row.name + (f" ({y:.3g}, off scale)" if y in off_scale else ""))
            for x, y, row, _ in points
        ]
        _label_points(ax, labels)
    panels[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{report.title}: {metric} vs size and latency ({report.task})", fontsize=11)
    m = report.machine
    if m:
        threads = report.latency_setup.get("threads", m.get("torch_threads"))
        # supxlabel (not fig.text): constrained layout makes room for it below the axis labels
        fig.supxlabel(
            f"measured on {m.get('cpu', '?')}, {threads} threads, torch {m.get('torch', '?')}"
            + (
                f", 1-minute load average {report.load_average:.2f}"
                if report.load_average is not None
                else ""
            )
            + (" (busy: see the report's note)" if report.busy_note() else ""),
            fontsize=7,
            color="0.4",
            x=0.01,
            ha="left",
        )
    return fig
