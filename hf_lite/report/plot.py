"""The plot of a compression report: the primary metric against size and against latency, as a PNG.

Drawn with matplotlib's Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hf_lite._utils import atomic_write
from hf_lite.report.rows import LOWER_IS_BETTER

if TYPE_CHECKING:
    from hf_lite.report.compression import CompressionReport


def plot_report(
    report: CompressionReport,
    path: str | os.PathLike,
    *,
    dpi: int = 100,
    figsize: tuple[float, float] = (11.0, 4.5),
) -> Path:
    """Write a PNG with two panels: the primary metric against size, and against latency (batch 1).

    The size axis is bytes on disk when every plotted row has it, else bytes in memory; both x axes are
    logarithmic when values span more than a factor of 10. The teacher is a star; the other models are
    joined in row (pipeline) order. The image is ``figsize * dpi`` pixels and is written atomically.

    >>> from hf_lite.report import CompressionReport, ReportRow
    >>> r = CompressionReport(task="causal-lm", rows=[ReportRow("teacher", "teacher", bytes_in_memory=2**20,
    ...     latency_b1_ms=3.0, metrics={"perplexity": 9.0})])
    >>> plot_report(r, "report.png")  # doctest: +SKIP
    PosixPath('report.png')
    """
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= 600:
        raise ValueError(f"dpi={dpi!r} must be an integer between 20 and 600.")
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
    fig.suptitle(f"{report.title}: {metric} vs size and latency ({report.task})", fontsize=11)
    m = report.machine
    if m:
        threads = report.latency_setup.get("threads", m.get("torch_threads"))
        # supxlabel (not fig.text): constrained layout makes room for it below the axis labels
        fig.supxlabel(
            f"measured on {m.get('cpu', '?')}, {threads} threads, torch {m.get('torch', '?')}",
            fontsize=7,
            color="0.4",
            x=0.01,
            ha="left",
        )
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
