"""The perf benchmark's result from its raw timings: goals, ratio rows, tables and notes (rendering only,
nothing is measured here)."""

from __future__ import annotations

import os
import statistics
from typing import Any

from benchmarks.common import column, summarize_times
from benchmarks.perf.chunked_loss import JSD_BETA, baseline_variant, describe_variant, split_variant
from benchmarks.perf.prune import AA_CONTROL
from benchmarks.perf.stepping import step_times, window_sums

KD_GOAL, CACHE_GOAL, CACHE_BYTES_GOAL, CACHE_POINTS_GOAL = 1.05, 1.10, 128, 0.5
CHUNK_MEMORY_GOAL, PRUNE_GOAL = 0.2, 1.10


def _ms(seconds: float) -> float:
    return 1000.0 * seconds


def _fmt_ms(seconds: float) -> str:
    ms = _ms(seconds)
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def _mib(n: float) -> str:
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


def assemble(
    s: dict[str, Any],
    teacher_meta: dict[str, Any],
    kd: dict[str, Any],
    prune: dict[str, Any],
    loss: dict[str, Any],
    trl_cmp: dict[str, Any],
    trl_missing: str | None,
) -> dict[str, Any]:
    """The benchmark's result: goals, tables and the raw timings (see the module docstring for the method)."""
    warm = s["warmup_steps"]
    med = {n: statistics.median(step_times(v, warm)) for n, v in kd["steps"].items()}
    kd_ratio = med["kd-online"] / (med["student-ce"] + med["teacher-forward"])
    cache_ratio = med["kd-cache"] / med["student-ce"]
    compiled = "kd-online-compiled" in med  # results written before compile_loss existed lack them
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
    goals = [
        {
            "goal": f"DistillationTrainer step ≤ {KD_GOAL:.2f} × (plain Trainer step of the student + one no-grad "
            "teacher forward), same batch, side by side",
            "measured": f"{kd_ratio:.2f}× ({_fmt_ms(med['kd-online'])} vs {_fmt_ms(med['student-ce'])} + "
            f"{_fmt_ms(med['teacher-forward'])})",
            "met": kd_ratio <= KD_GOAL,
        },
        {
            "goal": f"training from a teacher cache: step ≤ {CACHE_GOAL:.2f} × plain student step",
            "measured": f"{cache_ratio:.2f}× ({_fmt_ms(med['kd-cache'])} vs {_fmt_ms(med['student-ce'])})",
            "met": cache_ratio <= CACHE_GOAL,
        },
    ]
    if compiled:
        goals += [
            {
                "goal": f"the same, DistillationConfig(compile_loss=True): step ≤ {KD_GOAL:.2f} × (student step + "
                "teacher forward)",
                "measured": f"{kd_ratio_c:.2f}× ({_fmt_ms(med['kd-online-compiled'])} vs "
                f"{_fmt_ms(med['student-ce'])} + {_fmt_ms(med['teacher-forward'])})",
                "met": kd_ratio_c <= KD_GOAL,
            },
            {
                "goal": f"the same from the cache, compile_loss=True: step ≤ {CACHE_GOAL:.2f} × plain student step",
                "measured": f"{cache_ratio_c:.2f}× ({_fmt_ms(med['kd-cache-compiled'])} vs "
                f"{_fmt_ms(med['student-ce'])})",
                "met": cache_ratio_c <= CACHE_GOAL,
            },
        ]
    goals += [
        {
            "goal": f"teacher cache ≤ {CACHE_BYTES_GOAL} bytes/token at k=16",
            "measured": f"{bpt:.1f} bytes/token at k={k}",
            "met": bpt <= CACHE_BYTES_GOAL if k == 16 else None,
        },
        {
            "goal": f"KD from the cache (k=16) within {CACHE_POINTS_GOAL} point of online KD (validation "
            "next-token accuracy)",
            "measured": f"{points:+.2f} points ({100 * q['kd-cache']['accuracy']:.2f}% vs "
            f"{100 * q['kd-online']['accuracy']:.2f}%)",
            "met": abs(points) <= CACHE_POINTS_GOAL + 1e-9 if k == 16 else None,
        },
    ]
    for v in chunked:
        base = baseline_variant(v)
        ratio = mem[v]["loss_bytes"] / mem[base]["loss_bytes"]
        given = (
            "from hidden states, vs logits + plain loss"
            if base == "plain-hidden"
            else "logits given, vs the plain loss in one block"
        )
        goals.append(
            {
                "goal": f"chunked loss peak memory ≤ {CHUNK_MEMORY_GOAL} × the plain loss ({tok_label}; {given}; "
                f"chunks of {split_variant(v)[1]})",
                "measured": f"{ratio:.3f}× ({_mib(mem[v]['loss_bytes'])} vs {_mib(mem[base]['loss_bytes'])})",
                "met": ratio <= CHUNK_MEMORY_GOAL,
            }
        )
    goals.append(
        {
            "goal": f"training step with PruningCallback ≤ {PRUNE_GOAL:.2f} × the step without it",
            "measured": f"{prune_ratio:.3f}× (per {freq} steps: {_fmt_ms(win_med['PruningCallback'])} vs "
            f"{_fmt_ms(win_med['no callback'])}; torch.nn.utils.prune {torch_ratio:.3f}×)",
            "met": prune_ratio <= PRUNE_GOAL,
        }
    )

    ratio_rows = [
        _ratio_row(
            "KD step / (student step + teacher forward)",
            kd_ratio,
            KD_GOAL,
            f"{_fmt_ms(med['kd-online'])} / ({_fmt_ms(med['student-ce'])} + {_fmt_ms(med['teacher-forward'])})",
        ),
        _ratio_row(
            "KD-from-cache step / student step",
            cache_ratio,
            CACHE_GOAL,
            f"{_fmt_ms(med['kd-cache'])} / {_fmt_ms(med['student-ce'])}",
        ),
    ]
    if compiled:
        ratio_rows += [
            _ratio_row(
                "KD step, compile_loss=True / (student step + teacher forward)",
                kd_ratio_c,
                KD_GOAL,
                f"{_fmt_ms(med['kd-online-compiled'])} / ({_fmt_ms(med['student-ce'])} + "
                f"{_fmt_ms(med['teacher-forward'])})",
            ),
            _ratio_row(
                "KD-from-cache step, compile_loss=True / student step",
                cache_ratio_c,
                CACHE_GOAL,
                f"{_fmt_ms(med['kd-cache-compiled'])} / {_fmt_ms(med['student-ce'])}",
            ),
        ]
    for v in chunked:
        base = baseline_variant(v)
        what = (
            "chunked from hidden / logits + plain loss"
            if base == "plain-hidden"
            else "chunked / one-block plain loss"
        )
        ratio_rows.append(
            _ratio_row(
                f"{what}, peak memory (chunks of {split_variant(v)[1]})",
                mem[v]["loss_bytes"] / mem[base]["loss_bytes"],
                CHUNK_MEMORY_GOAL,
                f"{_mib(mem[v]['loss_bytes'])} / {_mib(mem[base]['loss_bytes'])}",
            )
        )
    for v in chunked:
        base = baseline_variant(v)
        what = (
            "chunked from hidden / logits + plain loss"
            if base == "plain-hidden"
            else "chunked / one-block plain loss"
        )
        ratio_rows.append(
            _ratio_row(
                f"{what}, time (chunks of {split_variant(v)[1]})",
                lt[v]["median_ms"] / lt[base]["median_ms"],
                None,
                f"{lt[v]['median_ms']:,.0f} ms / {lt[base]['median_ms']:,.0f} ms",
            )
        )
    if "trl" in mem:
        best = min(
            (v for v in chunked if baseline_variant(v) == "plain-oneblock"),
            key=lambda v: mem[v]["loss_bytes"],
        )
        ratio_rows += [
            _ratio_row(
                "TRL generalized_jsd_loss / hf-lite plain loss, peak memory",
                mem["trl"]["loss_bytes"] / mem["plain"]["loss_bytes"],
                None,
                f"{_mib(mem['trl']['loss_bytes'])} / {_mib(mem['plain']['loss_bytes'])}",
            ),
            _ratio_row(
                f"hf-lite chunked ({split_variant(best)[1]}) / TRL loss, peak memory",
                mem[best]["loss_bytes"] / mem["trl"]["loss_bytes"],
                None,
                f"{_mib(mem[best]['loss_bytes'])} / {_mib(mem['trl']['loss_bytes'])}",
            ),
            _ratio_row(
                "hf-lite plain / TRL loss, time",
                lt["plain"]["median_ms"] / lt["trl"]["median_ms"],
                None,
                f"{lt['plain']['median_ms']:,.0f} ms / {lt['trl']['median_ms']:,.0f} ms",
            ),
            _ratio_row(
                f"hf-lite chunked ({split_variant(best)[1]}) / TRL loss, time",
                lt[best]["median_ms"] / lt["trl"]["median_ms"],
                None,
                f"{lt[best]['median_ms']:,.0f} ms / {lt['trl']['median_ms']:,.0f} ms",
            ),
        ]
    if "trl-gkd" in trl_med:
        for kind in ("hf-lite-jsd", "hf-lite-jsd-chunked"):
            label = f"DistillationTrainer ({'chunked ' if 'chunked' in kind else ''}jsd) / GKDTrainer"
            ratio_rows += [
                _ratio_row(
                    f"{label}, step time",
                    trl_med[kind] / trl_med["trl-gkd"],
                    None,
                    f"{_fmt_ms(trl_med[kind])} / {_fmt_ms(trl_med['trl-gkd'])}",
                ),
                _ratio_row(
                    f"{label}, train() peak memory",
                    tmem[kind]["train_bytes"] / tmem["trl-gkd"]["train_bytes"],
                    None,
                    f"{_mib(tmem[kind]['train_bytes'])} / {_mib(tmem['trl-gkd']['train_bytes'])}",
                ),
            ]
    ratio_rows += [
        _ratio_row(
            f"step with PruningCallback / without (per {freq} steps)",
            prune_ratio,
            PRUNE_GOAL,
            f"{_fmt_ms(win_med['PruningCallback'])} / {_fmt_ms(win_med['no callback'])}",
        ),
        _ratio_row(
            "step with torch.nn.utils.prune / without (same schedule)",
            torch_ratio,
            None,
            f"{_fmt_ms(win_med['torch.nn.utils.prune'])} / {_fmt_ms(win_med['no callback'])}",
        ),
        _ratio_row(
            "step with PruningCallback / with torch.nn.utils.prune",
            prune_ratio / torch_ratio,
            None,
            f"{_fmt_ms(win_med['PruningCallback'])} / {_fmt_ms(win_med['torch.nn.utils.prune'])}",
        ),
        _ratio_row(
            "A/A control: the same trainer twice (noise floor of this run)",
            aa_ratio,
            None,
            f"{_fmt_ms(win_med[AA_CONTROL])} / {_fmt_ms(win_med['no callback'])}",
        ),
    ]

    def step_rows(race_name: str, steps: dict[str, list], skip: int) -> list[dict[str, Any]]:
        out = []
        for name, log in steps.items():
            full, compute = (
                summarize_times(step_times(log, skip)),
                summarize_times(step_times(log, skip, "compute_s")),
            )
            out.append(
                {
                    "race": race_name,
                    "participant": name,
                    "median_ms": full["median_ms"],
                    "iqr_ms": full["iqr_ms"],
                    "compute_ms": compute["median_ms"],
                    "n": full["n"],
                }
            )
        return out

    timing_rows = step_rows("distillation", kd["steps"], warm)
    for name, w in windows.items():
        summary = summarize_times(w)
        timing_rows.append(
            {
                "race": f"pruning (sum of {freq} steps)",
                "participant": name,
                "median_ms": summary["median_ms"],
                "iqr_ms": summary["iqr_ms"],
                "compute_ms": None,
                "n": summary["n"],
            }
        )
    timing_rows += step_rows("TRL vs hf-lite", trl_cmp["steps"], trl_warm)

    loss_rows = []
    for v in loss["variants"]:
        base = baseline_variant(v)
        loss_rows.append(
            {
                "variant": describe_variant(v),
                "loss_bytes": mem[v]["loss_bytes"],
                "x_mem": mem[v]["loss_bytes"] / mem[base]["loss_bytes"],
                "time_ms": lt[v]["median_ms"],
                "x_time": lt[v]["median_ms"] / lt[base]["median_ms"],
                "value": loss["values"][v],
            }
        )

    trainer_rows = []
    for kind in trl_cmp["kinds"]:
        label = {
            "trl-gkd": f"TRL GKDTrainer (lmbda=0, beta={JSD_BETA})",
            "hf-lite-jsd": "DistillationTrainer jsd",
            "hf-lite-jsd-chunked": f"DistillationTrainer jsd, chunk_size={s['loss_chunk_size_small']}",
        }[kind]
        trainer_rows.append(
            {"trainer": label, "step_ms": _ms(trl_med[kind]), "train_bytes": tmem[kind]["train_bytes"]}
        )

    student_how = f"Llama {s['student_layers']}×{s['student_hidden']}"
    quality_rows = [
        {
            "model": "teacher",
            "how": f"Llama {s['teacher_layers']}×{s['teacher_hidden']}, CE, {s['teacher_steps']} steps",
            "params": kd["params"]["teacher"],
            **q["teacher"],
        },
        {
            "model": "student-ce",
            "how": f"{student_how}, plain CE (Trainer)",
            "params": kd["params"]["student"],
            **q["student-ce"],
        },
        {
            "model": "kd-online",
            "how": f"DistillationTrainer, live teacher, forward KL, α={s['kd_alpha']}, "
            f"T={s['kd_temperature']}",
            "params": kd["params"]["student"],
            **q["kd-online"],
        },
        {
            "model": "kd-cache",
            "how": f"DistillationTrainer from the top-{k} cache ({bpt:.1f} bytes/token)",
            "params": kd["params"]["student"],
            **q["kd-cache"],
        },
    ]
    for name, m in prune["models"].items():
        quality_rows.append(
            {
                "model": f"student-ce + {s['prune_steps']} steps, {name}",
                "how": "CE fine-tuning",
                "params": kd["params"]["student"],
                "sparsity": m["sparsity"],
                "accuracy": m["accuracy"],
                "perplexity": m["perplexity"],
            }
        )

    share = {name.split(" (")[0]: v for name, v in med.items() if name.startswith("loss: ")}
    summary = (
        f"Ratios of medians of interleaved timings, all taken in one run on this machine. Distillation: a student "
        f"({kd['params']['student'] / 1e6:.2f}M parameters) and a teacher ({kd['params']['teacher'] / 1e6:.2f}M) "
        f"of hf-lite's tiny Llama on tinyshakespeare ({s['vocab_size']:,}-word vocabulary, batches of "
        f"{s['batch_size']}×{s['seq_len']} tokens), {s['student_steps']} steps each, the first {warm} left out. "
        f"Teacher cache: k={k}, {kd['cache']['tokens']:,} tokens, {bpt:.1f} bytes/token, computed in "
        f"{kd['cache']['precompute_s']:.0f} s. Chunked loss: generalized JSD on {tok_label}. Pruning: the "
        f"CE-trained student fine-tuned {s['prune_steps']} more steps to {s['prune_sparsity']:.0%} sparsity, masks "
        f"recomputed every {freq} steps."
    )
    notes = [
        f"Noise floor: the pruning race also runs the no-callback trainer twice (A/A control); its two medians "
        f"differ by {abs(aa_ratio - 1):.1%} in this run. A ratio that meets or misses its goal by less than that "
        "is within the noise of the machine at the time.",
        "A step is timed from the moment its trainer is let go (batch fetching and collation included) to "
        "on_step_end; 'compute' starts at on_step_begin. The teacher forward is `torch.no_grad()` in eval mode on "
        "a batch of the same shape, as DistillationTrainer calls it. The distillation ratios come from the same "
        "rounds; the per-round KD ratio has median "
        f"{statistics.median(per_round):.2f}×.",
        "The KD overhead is mostly the loss's share of a step. Timed alone in the race's first "
        f"{s['loss_share_rounds']} rounds (forward + backward on the logits of the first batch), the plain student's "
        f"CE takes {_fmt_ms(share['loss: CE'])}, DistillationTrainer's forward KL + CE "
        f"{_fmt_ms(share['loss: forward KL + CE'])} and the cached top-k KL + CE {_fmt_ms(share['loss: top-k KL + CE'])}: "
        "at these tiny widths the vocabulary-sized softmaxes weigh more than in a real model, where the "
        "transformer layers dominate.",
        "Loss memory is the peak RSS of a fresh process during one forward + backward minus its RSS just before "
        "(inputs excluded, gradients included, after a warm-up call on 64 tokens); the baseline of the from-hidden "
        "variants builds both models' logits with F.linear, which the chunked variant never does whole.",
        "Loss values (all variants on the same inputs agree): "
        + ", ".join(f"{v} {loss['values'][v]:.6f}" for v in loss["variants"])
        + ".",
        f"TRL: {trl_missing}."
        if trl_missing
        else "TRL's GKDTrainer runs with lmbda=0 and seq_kd=False (no on-policy generation: the off-policy path that "
        "DistillationTrainer also takes), fp32 and no gradient checkpointing (TRL's defaults bf16=True and "
        "gradient_checkpointing=True turned off for both to run alike), on random tokens; train() memory is what "
        f"train() adds in a fresh process over {s['trl_memory_steps']} step(s), models and data excluded.",
    ]
    faults = {
        name: statistics.median([r.get("page_faults", 0) for r in rows[warm:]])
        for name, rows in kd["steps"].items()
        if not name.startswith("loss: ")
    }
    allocator = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}
    notes.append(
        "Page faults per step (medians): "
        + ", ".join(f"{n} {f:,.0f}" for n, f in faults.items())
        + ". glibc "
        "hands freed blocks of this size back to the system, and the next step that allocates them pays a page "
        "fault per 4 KiB again (~10 ms per 16k faults here), depending on the heap's state rather than on the "
        "code: identical trainers can differ by thousands of faults per step. Allocator settings of this run: "
        + (", ".join(f"{k}={v}" for k, v in allocator.items()) if allocator else "glibc's defaults")
        + ". `MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647` keeps freed "
        "memory in the process (no faults after the first steps), so that the ratios compare the code only."
    )
    if teacher_meta.get("from_cache"):
        notes.append(
            "The teacher was loaded from the benchmark cache (trained by an earlier run with the same settings)."
        )

    return {
        "summary": summary,
        "goals": goals,
        "tables": [
            {
                "title": "Ratios",
                "columns": [
                    column("ratio", "ratio"),
                    column("x", "measured", "x"),
                    column("goal", "goal"),
                    column("status", "status"),
                    column("raw", "medians"),
                ],
                "rows": ratio_rows,
            },
            {
                "title": "Step times (medians of interleaved rounds)",
                "columns": [
                    column("race", "race"),
                    column("participant", "participant"),
                    column("median_ms", "step (ms)", "ms"),
                    column("iqr_ms", "IQR (ms)", "ms"),
                    column("compute_ms", "compute (ms)", "ms"),
                    column("n", "n", "int"),
                ],
                "rows": timing_rows,
            },
            {
                "title": f"Distillation losses, forward + backward, {tok_label}",
                "columns": [
                    column("variant", "variant"),
                    column("loss_bytes", "peak memory", "bytes"),
                    column("x_mem", "× plain", "x"),
                    column("time_ms", "time (ms)", "ms"),
                    column("x_time", "× plain", "x"),
                ],
                "rows": loss_rows,
                "notes": [
                    "'× plain' compares with the plain loss on the same inputs: logits given, the plain loss in one "
                    "block of rows (whole (tokens, vocab) temporaries, as on an accelerator; on the CPU "
                    "distillation_loss itself runs in blocks, the 'hf-lite distillation_loss' row); hidden states "
                    "given, the plain loss after building the logits."
                ],
            },
            {
                "title": f"Distillation trainers, tiny Llama pair with a {s['loss_vocab'] // 1000}k vocabulary, batch "
                f"{s['trl_batch_size']}×{s['trl_seq_len']}",
                "columns": [
                    column("trainer", "trainer"),
                    column("step_ms", "step (ms)", "ms"),
                    column("train_bytes", "train() peak memory", "bytes"),
                ],
                "rows": trainer_rows,
                "notes": [f"TRL rows missing: {trl_missing}."] if trl_missing else [],
            },
            {
                "title": "Quality checks (validation: next-token accuracy, perplexity)",
                "columns": [
                    column("model", "model"),
                    column("how", "how"),
                    column("params", "params", "params"),
                    column("sparsity", "sparsity", "pct"),
                    column("accuracy", "accuracy", "pct2"),
                    column("perplexity", "perplexity", "{:.1f}"),
                ],
                "rows": quality_rows,
            },
        ],
        "notes": notes,
        "settings": s,
        "teacher": {key: v for key, v in teacher_meta.items() if key != "settings"},
        "raw": {
            "distillation_steps": kd["steps"],
            "kd_ratio_per_round_median": statistics.median(per_round),
            "cache": kd["cache"],
            "quality": kd["quality"],
            "loss": {"memory": mem, "timing": lt, "values": loss["values"]},
            "trainers": trl_cmp,
            "pruning": {"windows_s": windows, "steps": prune["steps"], "models": prune["models"]},
        },
    }
