"""The perf benchmark's figures: medians and ratios of the races, goals, ratio rows.

Derived from the raw timings only; nothing is measured here.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from benchmarks.perf.chunked_loss import baseline_variant, split_variant
from benchmarks.perf.prune import AA_CONTROL
from benchmarks.perf.stepping import step_times, window_sums

KD_GOAL, CACHE_GOAL, CACHE_BYTES_GOAL, CACHE_POINTS_GOAL = 1.05, 1.10, 128, 0.5
CHUNK_MEMORY_GOAL, PRUNE_GOAL = 0.2, 1.10


def ms(seconds: float) -> float:
    return 1000.0 * seconds


def fmt_ms(seconds: float) -> str:
    value = ms(seconds)
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _status(ratio: float, goal: float | None) -> str:
    return "comparison" if goal is None else ("met" if ratio <= goal else "missed")


def _ratio_row(what: str, ratio: float, goal: float | None, raw: str) -> dict[str, Any]:
    return {
        "ratio": what,
        "x": ratio,
        "goal": "–" if goal is None else f"≤ {goal:g}×",
        "status": _status(ratio, goal),
        "raw": raw,
    }


@dataclasses.dataclass
class Figures:
    """Medians (seconds) and ratios of the races; ``*_c`` are the ``compile_loss=True`` ratios (None in
    results written before it existed)."""

    warm: Any
    med: Any
    kd_ratio: Any
    cache_ratio: Any
    compiled: Any
    kd_ratio_c: Any
    cache_ratio_c: Any
    per_round: Any
    q: Any
    points: Any
    bpt: Any
    k: Any
    mem: Any
    lt: Any
    chunked: Any
    freq: Any
    windows: Any
    win_med: Any
    prune_ratio: Any
    torch_ratio: Any
    aa_ratio: Any
    trl_warm: Any
    trl_med: Any
    tmem: Any
    tok_label: Any


def derive(
    s: dict[str, Any],
    kd: dict[str, Any],
    prune: dict[str, Any],
    loss: dict[str, Any],
    trl_cmp: dict[str, Any],
) -> Figures:
    """The figures of one run from the raw results of its races."""
    warm = s["warmup_steps"]
    med = {n: statistics.median(step_times(v, warm)) for n, v in kd["steps"].items()}
    kd_ratio = med["kd-online"] / (med["student-ce"] + med["teacher-forward"])
    cache_ratio = med["kd-cache"] / med["student-ce"]
    compiled = "kd-online-compiled" in med  # results written before compile_loss existed lack them
    kd_ratio_c = cache_ratio_c = None
    if compiled:
        kd_ratio_c = med["kd-online-compiled"] / (med["student-ce"] + med["teacher-forward"])
        cache_ratio_c = med["kd-cache-compiled"] / med["student-ce"]
    online, ce, tf = (kd["steps"][n] for n in ("kd-online", "student-ce", "teacher-forward"))
    per_round = [o["step_s"] / (c["step_s"] + t["step_s"]) for o, c, t in zip(online, ce, tf, strict=True)][
        warm:
    ]
    q = kd["quality"]
    points = 100 * (q["kd-cache"]["accuracy"] - q["kd-online"]["accuracy"])
    bpt, k = kd["cache"]["bytes_per_token"], kd["cache"]["k"]

    mem, lt = loss["memory"], loss["timing"]
    chunked = [v for v in loss["variants"] if "@" in v]

    freq = s["prune_frequency"]
    windows = {n: window_sums(v, freq) for n, v in prune["steps"].items()}
    win_med = {n: statistics.median(w) for n, w in windows.items()}
    prune_ratio = win_med["PruningCallback"] / win_med["no callback"]
    torch_ratio = win_med["torch.nn.utils.prune"] / win_med["no callback"]
    aa_ratio = win_med[AA_CONTROL] / win_med["no callback"]

    trl_warm = 1
    trl_med = {name: statistics.median(step_times(v, trl_warm)) for name, v in trl_cmp["steps"].items()}
    tmem = trl_cmp["memory"]

    tok_label = f"{s['loss_tokens']:,} tokens × {s['loss_vocab'] // 1000}k vocab"
    return Figures(
        warm=warm,
        med=med,
        kd_ratio=kd_ratio,
        cache_ratio=cache_ratio,
        compiled=compiled,
        kd_ratio_c=kd_ratio_c,
        cache_ratio_c=cache_ratio_c,
        per_round=per_round,
        q=q,
        points=points,
        bpt=bpt,
        k=k,
        mem=mem,
        lt=lt,
        chunked=chunked,
        freq=freq,
        windows=windows,
        win_med=win_med,
        prune_ratio=prune_ratio,
        torch_ratio=torch_ratio,
        aa_ratio=aa_ratio,
        trl_warm=trl_warm,
        trl_med=trl_med,
        tmem=tmem,
        tok_label=tok_label,
    )


def goals(f: Figures) -> list[dict[str, Any]]:
    """Every goal with what was measured and whether it was met."""
    goals = [
        {
            "goal": f"DistillationTrainer step ≤ {KD_GOAL:.2f} × (plain Trainer step of the student + one no-grad "
            "teacher forward), same batch, side by side",
            "measured": f"{f.kd_ratio:.2f}× ({fmt_ms(f.med['kd-online'])} vs {fmt_ms(f.med['student-ce'])} + "
            f"{fmt_ms(f.med['teacher-forward'])})",
            "met": f.kd_ratio <= KD_GOAL,
        },
        {
            "goal": f"training from a teacher cache: step ≤ {CACHE_GOAL:.2f} × plain student step",
            "measured": f"{f.cache_ratio:.2f}× ({fmt_ms(f.med['kd-cache'])} vs {fmt_ms(f.med['student-ce'])})",
            "met": f.cache_ratio <= CACHE_GOAL,
        },
    ]
    if f.compiled:
        goals += [
            {
                "goal": f"the same, DistillationConfig(compile_loss=True): step ≤ {KD_GOAL:.2f} × (student step + "
                "teacher forward)",
                "measured": f"{f.kd_ratio_c:.2f}× ({fmt_ms(f.med['kd-online-compiled'])} vs "
                f"{fmt_ms(f.med['student-ce'])} + {fmt_ms(f.med['teacher-forward'])})",
                "met": f.kd_ratio_c <= KD_GOAL,
            },
            {
                "goal": f"the same from the cache, compile_loss=True: step ≤ {CACHE_GOAL:.2f} × plain student step",
                "measured": f"{f.cache_ratio_c:.2f}× ({fmt_ms(f.med['kd-cache-compiled'])} vs "
                f"{fmt_ms(f.med['student-ce'])})",
                "met": f.cache_ratio_c <= CACHE_GOAL,
            },
        ]
    goals += [
        {
            "goal": f"teacher cache ≤ {CACHE_BYTES_GOAL} bytes/token at k=16",
            "measured": f"{f.bpt:.1f} bytes/token at k={f.k}",
            "met": f.bpt <= CACHE_BYTES_GOAL if f.k == 16 else None,
        },
        {
            "goal": f"KD from the cache (k=16) within {CACHE_POINTS_GOAL} point of online KD (validation "
            "next-token accuracy)",
            "measured": f"{f.points:+.2f} points ({100 * f.q['kd-cache']['accuracy']:.2f}% vs "
            f"{100 * f.q['kd-online']['accuracy']:.2f}%)",
            "met": abs(f.points) <= CACHE_POINTS_GOAL + 1e-9 if f.k == 16 else None,
        },
    ]
    for v in f.chunked:
        base = baseline_variant(v)
        ratio = f.mem[v]["loss_bytes"] / f.mem[base]["loss_bytes"]
        given = (
            "from hidden states, vs logits + plain loss"
            if base == "plain-hidden"
            else "logits given, vs the plain loss in one block"
        )
        goals.append(
            {
                "goal": f"chunked loss peak memory ≤ {CHUNK_MEMORY_GOAL} × the plain loss ({f.tok_label}; {given}; "
                f"chunks of {split_variant(v)[1]})",
                "measured": f"{ratio:.3f}× ({mib(f.mem[v]['loss_bytes'])} vs {mib(f.mem[base]['loss_bytes'])})",
                "met": ratio <= CHUNK_MEMORY_GOAL,
            }
        )
    goals.append(
        {
            "goal": f"training step with PruningCallback ≤ {PRUNE_GOAL:.2f} × the step without it",
            "measured": f"{f.prune_ratio:.3f}× (per {f.freq} steps: {fmt_ms(f.win_med['PruningCallback'])} vs "
            f"{fmt_ms(f.win_med['no callback'])}; torch.nn.utils.prune {f.torch_ratio:.3f}×)",
            "met": f.prune_ratio <= PRUNE_GOAL,
        }
    )
    return goals


def ratio_rows(f: Figures) -> list[dict[str, Any]]:
    """The rows of the ratio table: each ratio, its goal (if any) and the medians it divides."""
    ratio_rows = [
        _ratio_row(
            "KD step / (student step + teacher forward)",
            f.kd_ratio,
            KD_GOAL,
            f"{fmt_ms(f.med['kd-online'])} / ({fmt_ms(f.med['student-ce'])} + {fmt_ms(f.med['teacher-forward'])})",
        ),
        _ratio_row(
            "KD-from-cache step / student step",
            f.cache_ratio,
            CACHE_GOAL,
            f"{fmt_ms(f.med['kd-cache'])} / {fmt_ms(f.med['student-ce'])}",
        ),
    ]
    if f.compiled:
        ratio_rows += [
            _ratio_row(
                "KD step, compile_loss=True / (student step + teacher forward)",
                f.kd_ratio_c,
                KD_GOAL,
                f"{fmt_ms(f.med['kd-online-compiled'])} / ({fmt_ms(f.med['student-ce'])} + "
                f"{fmt_ms(f.med['teacher-forward'])})",
            ),
            _ratio_row(
                "KD-from-cache step, compile_loss=True / student step",
                f.cache_ratio_c,
                CACHE_GOAL,
                f"{fmt_ms(f.med['kd-cache-compiled'])} / {fmt_ms(f.med['student-ce'])}",
            ),
        ]

    def chunked_rows(measure: str, figure: Any, goal: float | None, raw: Any) -> list[dict[str, Any]]:
        """One row per chunked variant: ``figure(v) / figure(its baseline)``, ``raw`` shows both."""
        rows = []
        for v in f.chunked:
            base = baseline_variant(v)
            what = (
                "chunked from hidden / logits + plain loss"
                if base == "plain-hidden"
                else "chunked / one-block plain loss"
            )
            label = f"{what}, {measure} (chunks of {split_variant(v)[1]})"
            rows.append(_ratio_row(label, figure(v) / figure(base), goal, f"{raw(v)} / {raw(base)}"))
        return rows

    ratio_rows += chunked_rows(
        "peak memory",
        lambda v: f.mem[v]["loss_bytes"],
        CHUNK_MEMORY_GOAL,
        lambda v: mib(f.mem[v]["loss_bytes"]),
    )
    ratio_rows += chunked_rows(
        "time", lambda v: f.lt[v]["median_ms"], None, lambda v: f"{f.lt[v]['median_ms']:,.0f} ms"
    )
    if "trl" in f.mem:
        best = min(
            (v for v in f.chunked if baseline_variant(v) == "plain-oneblock"),
            key=lambda v: f.mem[v]["loss_bytes"],
        )
        ratio_rows += [
            _ratio_row(
                "TRL generalized_jsd_loss / hf-lite plain loss, peak memory",
                f.mem["trl"]["loss_bytes"] / f.mem["plain"]["loss_bytes"],
                None,
                f"{mib(f.mem['trl']['loss_bytes'])} / {mib(f.mem['plain']['loss_bytes'])}",
            ),
            _ratio_row(
                f"hf-lite chunked ({split_variant(best)[1]}) / TRL loss, peak memory",
                f.mem[best]["loss_bytes"] / f.mem["trl"]["loss_bytes"],
                None,
                f"{mib(f.mem[best]['loss_bytes'])} / {mib(f.mem['trl']['loss_bytes'])}",
            ),
            _ratio_row(
                "hf-lite plain / TRL loss, time",
                f.lt["plain"]["median_ms"] / f.lt["trl"]["median_ms"],
                None,
                f"{f.lt['plain']['median_ms']:,.0f} ms / {f.lt['trl']['median_ms']:,.0f} ms",
            ),
            _ratio_row(
                f"hf-lite chunked ({split_variant(best)[1]}) / TRL loss, time",
                f.lt[best]["median_ms"] / f.lt["trl"]["median_ms"],
                None,
                f"{f.lt[best]['median_ms']:,.0f} ms / {f.lt['trl']['median_ms']:,.0f} ms",
            ),
        ]
    if "trl-gkd" in f.trl_med:
        for kind in ("hf-lite-jsd", "hf-lite-jsd-chunked"):
            label = f"DistillationTrainer ({'chunked ' if 'chunked' in kind else ''}jsd) / GKDTrainer"
            ratio_rows += [
                _ratio_row(
                    f"{label}, step time",
                    f.trl_med[kind] / f.trl_med["trl-gkd"],
                    None,
                    f"{fmt_ms(f.trl_med[kind])} / {fmt_ms(f.trl_med['trl-gkd'])}",
                ),
                _ratio_row(
                    f"{label}, train() peak memory",
                    f.tmem[kind]["train_bytes"] / f.tmem["trl-gkd"]["train_bytes"],
                    None,
                    f"{mib(f.tmem[kind]['train_bytes'])} / {mib(f.tmem['trl-gkd']['train_bytes'])}",
                ),
            ]
    ratio_rows += [
        _ratio_row(
            f"step with PruningCallback / without (per {f.freq} steps)",
            f.prune_ratio,
            PRUNE_GOAL,
            f"{fmt_ms(f.win_med['PruningCallback'])} / {fmt_ms(f.win_med['no callback'])}",
        ),
        _ratio_row(
            "step with torch.nn.utils.prune / without (same schedule)",
            f.torch_ratio,
            None,
            f"{fmt_ms(f.win_med['torch.nn.utils.prune'])} / {fmt_ms(f.win_med['no callback'])}",
        ),
        _ratio_row(
            "step with PruningCallback / with torch.nn.utils.prune",
            f.prune_ratio / f.torch_ratio,
            None,
            f"{fmt_ms(f.win_med['PruningCallback'])} / {fmt_ms(f.win_med['torch.nn.utils.prune'])}",
        ),
        _ratio_row(
            "A/A control: the same trainer twice (noise floor of this run)",
            f.aa_ratio,
            None,
            f"{fmt_ms(f.win_med[AA_CONTROL])} / {fmt_ms(f.win_med['no callback'])}",
        ),
    ]
    return ratio_rows
