"""`hf-lite demo`: how long the offline demo takes from start to report, and the figures it prints.

What it measures, and how:

- **Wall time** of ``python -m hf_lite demo --output_dir <scratch>`` in a fresh subprocess (the same
  command as the README's ``hf-lite demo``; ``--quick`` with the harness's ``--quick``), with
  ``OMP_NUM_THREADS`` set to the harness's thread count: model loading, training, evaluation and export
  included. ``repeats`` runs, each into an empty folder; the median and the spread are reported.
- **The demo's own report** (``evaluate/report.json`` of the last run): each model's perplexity,
  parameters, bytes on disk and speedup at batch 1 and 32 against the trained teacher, as the demo measured
  them side by side, so the README can point here for the int8-on-CPU slowdown and the size it saves.

Run it with nothing else busy on the machine: the wall time is the figure.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TITLE = "hf-lite demo: wall time and the figures it prints"
ORDER = 40

DEFAULTS: dict[str, Any] = {"repeats": 2}
QUICK: dict[str, Any] = {"repeats": 1}

COLUMNS = [
    {"key": "name", "label": "model"},
    {"key": "perplexity", "label": "perplexity", "format": "{:.3f}"},
    {"key": "parameters", "label": "params", "format": "params"},
    {"key": "bytes_on_disk", "label": "safetensors", "format": "bytes"},
    {"key": "speedup_b1", "label": "speedup b1", "format": "x"},
    {"key": "speedup_b32", "label": "speedup b32", "format": "x"},
]


def run(ctx: Any) -> dict[str, Any]:
    settings = ctx.settings(DEFAULTS, QUICK)
    work = Path(ctx.work_dir) / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(ctx.threads or 1)}
    walls = []
    for i in range(int(settings["repeats"])):
        out = work / f"run-{i}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "hf_lite", "demo", "--output_dir", str(out), *(["--quick"] * ctx.quick)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"hf-lite demo failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "evaluate" / "report.json").read_text())
    rows = [_row(r, report["teacher"], report["rows"]) for r in report["rows"]]
    median = statistics.median(walls)
    return {
        "summary": (
            f"`hf-lite demo`{' --quick' if ctx.quick else ''} took {median:.0f} s (median of {len(walls)} "
            f"run(s), {min(walls):.0f}-{max(walls):.0f} s) with {env['OMP_NUM_THREADS']} thread(s)."
        ),
        "tables": [{"title": "The demo's compression report (last run)", "columns": COLUMNS, "rows": rows}],
        "notes": [
            "Speedups are the demo's own side-by-side timing against the trained teacher; bitsandbytes int8 "
            "is slower than fp32 on a CPU (no fused low-bit kernels there): it saves bytes, not time."
        ],
        "settings": settings,
        "timings_s": {f"demo run {i + 1}": wall for i, wall in enumerate(walls)},
        "wall_s": walls,
        "demo_wall_s": median,
    }


def _row(row: dict[str, Any], teacher: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    ref = next(r for r in rows if r["name"] == teacher)

    def speedup(key: str) -> float | None:
        return ref[key] / row[key] if ref.get(key) and row.get(key) else None

    return {
        "name": row["name"],
        "perplexity": row["metrics"].get("perplexity"),
        "parameters": row["parameters"],
        "bytes_on_disk": row["bytes_on_disk"],
        "speedup_b1": speedup("latency_b1_ms"),
        "speedup_b32": speedup("latency_b32_ms"),
    }
