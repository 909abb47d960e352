"""Markdown of the benchmark results: RESULTS.md from the JSON records.

Table cells by column format, goal tables, one section per record and the whole file (see
:mod:`benchmarks.harness` for the record and table formats).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from benchmarks import common

if TYPE_CHECKING:
    from benchmarks.harness import Benchmark

#: The command that runs the benchmarks; RESULTS.md and every record name it.
ENTRY = "python -m benchmarks"


#: The named column formats; any other format is a ``str.format`` spec such as ``"{:.3f}"``.
FORMATS: dict[str, Callable[[Any], str]] = {
    "pct": lambda v: f"{100 * v:.1f}%",
    "pct2": lambda v: f"{100 * v:.2f}%",
    "params": lambda v: f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:,}",
    "bytes": lambda v: f"{v / 2**20:.1f} MiB",
    "gib": lambda v: f"{v / 2**30:.2f} GiB",
    "ms": lambda v: f"{v:.1f}" if v >= 10 else f"{v:.2f}",
    "x": lambda v: f"{v:.2f}×",
    "int": lambda v: f"{int(v):,}",
    "min": lambda v: f"{v / 60:.1f}",
}


def format_value(value: Any, fmt: str | None) -> str:
    """One table cell.

    >>> [format_value(v, f) for v, f in [(0.9123, "pct"), (22_713_216, "params"), (90_867_952, "bytes"),
    ...                                  (2.314, "x"), (None, "pct"), (3.14159, "{:.2f}"), (12.345, "ms")]]
    ['91.2%', '22.71M', '86.7 MiB', '2.31×', '–', '3.14', '12.3']
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str) or fmt is None:
        return str(value).replace("|", "\\|")
    named = FORMATS.get(fmt)
    return named(value) if named else fmt.format(value)


def render_table(table: Mapping[str, Any]) -> str:
    columns = table["columns"]
    lines = []
    if table.get("title"):
        lines += [f"### {table['title']}", ""]
    lines.append("| " + " | ".join(c.get("label", c["key"]) for c in columns) + " |")
    lines.append("|" + "|".join("---:" if c.get("format") else "---" for c in columns) + "|")  # numbers right
    for row in table["rows"]:
        lines.append(
            "| " + " | ".join(format_value(row.get(c["key"]), c.get("format")) for c in columns) + " |"
        )
    for note in table.get("notes", []):
        lines += ["", note]
    return "\n".join(lines)


def render_goals(goals: Sequence[Mapping[str, Any]]) -> str:
    mark = {True: "✅ met", False: "❌ missed", None: "– not measured"}
    lines = ["| goal | measured | |", "|---|---|---|"]
    for g in goals:
        lines.append(f"| {g['goal']} | {g.get('measured', '–')} | {mark[g.get('met')]} |")
    return "\n".join(lines)


def render_record(record: Mapping[str, Any], custom: Callable[[dict[str, Any]], str] | None = None) -> str:
    """The Markdown section of one benchmark: provenance line, summary, goals, tables, notes."""
    result = record["result"]
    head = [f"## {record['title']}", ""]
    provenance = (
        f"`{record.get('command', ENTRY)}` · {record['started_utc']} · {record['wall_s'] / 60:.1f} min"
        + (f" · peak RSS {record['peak_rss_bytes'] / 2**30:.2f} GiB" if record.get("peak_rss_bytes") else "")
        + (f" · commit {record['git_commit']}" if record.get("git_commit") else "")
        + f" · data: `results/{record['benchmark']}.json`"
    )
    head.append(provenance)
    head += ["", f"Machine: {common.describe_machine(record.get('machine', {}))}."]
    if record.get("quick"):
        head += ["", "**Quick mode: reduced sizes, the numbers only show that the benchmark runs.**"]
    if record.get("overrides"):
        sets = ", ".join(f"{k}={v}" for k, v in record["overrides"].items())
        head += ["", f"**Settings changed from the defaults: {sets}.**"]
    if custom is not None:
        return "\n".join(head) + "\n\n" + custom(dict(record))
    body = []
    if result.get("summary"):
        body.append(result["summary"])
    if result.get("goals"):
        body.append(render_goals(result["goals"]))
    body += [render_table(t) for t in result.get("tables", [])]
    if result.get("notes"):
        body.append("\n".join(f"- {n}" for n in result["notes"]))
    if result.get("timings_s"):
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in result["timings_s"].items())
        body.append(f"Wall time by phase: {phases}.")
    return "\n".join(head) + "\n\n" + "\n\n".join(body)


def render_results(
    records: Sequence[Mapping[str, Any]], registry: Mapping[str, Benchmark] | None = None
) -> str:
    """The whole RESULTS.md from benchmark records (sorted by the registry's ORDER, unknown ones last)."""
    registry = registry or {}
    order = {name: i for i, name in enumerate(registry)}
    records = sorted(records, key=lambda r: (order.get(r["benchmark"], len(order)), r["benchmark"]))
    lines = [
        "# hf-lite benchmarks: measured results",
        "",
        f"Written by `{ENTRY}` from the JSON files in `results/` beside this file; every number below is in",
        "one of them, measured by the run named in its section. Do not edit by hand: rerun the command",
        f"(`{ENTRY} --render` rebuilds this file from the JSON alone). How the benchmarks work: `README.md`.",
    ]
    if not records:
        lines += ["", f"No results yet: run `{ENTRY}` (see README.md)."]
    for record in records:
        bench = registry.get(record["benchmark"])
        lines += ["", render_record(record, bench.render if bench else None)]
    return "\n".join(lines).rstrip() + "\n"
