"""Memory of the causal LM benchmark's rows, each measured in a fresh process.

Inference peaks of the saved rows, and training peaks of full fine-tuning vs. QLoRA on one larger model.
"""

from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.causal_lm.data import Windows
from benchmarks.causal_lm.training import build_llama, seed_for
from benchmarks.common import (
    IsolatedRun,
    bytes_on_disk,
    peak_rss_bytes,
    proc_status_bytes,
    reset_peak_rss,
    run_isolated,
)

#: glibc: blocks above this size come from mmap and return to the system when freed (isolated processes).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
#: Imported before the isolated processes take their baseline, so that imports are not counted.
PRELOAD = (
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "hf_lite.loading",
    "benchmarks.common",
)


def _isolated(target: str, kwargs: dict[str, Any], preload: tuple[str, ...] = PRELOAD) -> IsolatedRun:
    """Run ``target`` (a function of this module) in a fresh process: imports preloaded before the baseline,
    glibc returning freed blocks (:data:`MALLOC_ENV`), output shown only if it fails."""
    return run_isolated(f"{__name__}:{target}", kwargs, preload=preload, env=MALLOC_ENV, capture_output=True)


def _threads(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def inference_peaks(folders: dict[str, str], input_ids: list[list[int]], threads: int) -> dict[str, Any]:
    """Isolated-process target: for each row in turn, load it with ``load_model`` and run one forward pass on
    ``input_ids``; its figure is the peak RSS minus the RSS just before loading it. Between rows the previous
    model is freed and the peak mark reset (:func:`benchmarks.common.reset_peak_rss`, Linux). A first,
    unmeasured load and forward of the first row pays the lazy imports and kernel set-up, which would
    otherwise be charged to whichever row came first. Returns ``{"peaks": None}`` where the mark cannot be
    reset (the caller then starts one process per row)."""
    import torch

    from hf_lite import load_model

    _threads(threads)
    ids = torch.tensor(input_ids)

    def load_and_run(folder: str) -> None:
        model = load_model(folder, disable_mmap=True)
        model.eval()
        with torch.inference_mode():
            model(input_ids=ids)
        del model
        gc.collect()

    load_and_run(next(iter(folders.values())))
    peaks: dict[str, int] = {}
    for name, folder in folders.items():
        gc.collect()
        if not reset_peak_rss():
            return {"peaks": None}
        before = proc_status_bytes("VmRSS") or peak_rss_bytes()
        load_and_run(folder)
        peaks[name] = peak_rss_bytes() - before
    return {"peaks": peaks, "threads": torch.get_num_threads()}


def inference_peak(folder: str, input_ids: list[list[int]], threads: int) -> dict[str, Any]:
    """Isolated-process target (fallback without a resettable peak mark): one row, load and one forward pass."""
    import torch

    from hf_lite import load_model

    _threads(threads)
    model = load_model(folder, disable_mmap=True)
    model.eval()
    with torch.inference_mode():
        model(input_ids=torch.tensor(input_ids))
    return {"threads": torch.get_num_threads()}


def training_peak(
    folder: str,
    mode: str,
    gradient_checkpointing: bool,
    input_ids: list[list[int]],
    steps: int,
    lr: float,
    threads: int,
    seed: int,
) -> dict[str, Any]:
    """Isolated-process target: load the memory model for full fine-tuning (``mode="full"``) or QLoRA
    (``"qlora"``), reset the peak-RSS mark, train ``steps`` steps with ``Trainer`` on ``input_ids`` (one batch
    per step) and return what the process saw; the caller reads the training peak from ``run_isolated``."""
    import torch
    from transformers import Trainer, TrainingArguments

    from hf_lite import load_model

    _threads(threads)
    start = time.perf_counter()
    if mode == "full":
        model = load_model(folder, disable_mmap=True)
        if gradient_checkpointing:
            # What load_model(gradient_checkpointing=True) asks for: non-reentrant checkpointing of every block.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif mode == "qlora":
        model = load_model(
            folder,
            quantization="4bit",
            peft="lora",
            gradient_checkpointing=gradient_checkpointing,
            disable_mmap=True,
        )
    else:
        raise ValueError(f"mode={mode!r} must be 'full' or 'qlora'.")
    load_s = time.perf_counter() - start
    load_peak = peak_rss_bytes()
    reset_ok = reset_peak_rss()  # from here on the peak is the training phase's
    ids = torch.tensor(input_ids)
    data = [{"input_ids": ids[i], "labels": ids[i].clone()} for i in range(len(ids))] * steps
    args = TrainingArguments(
        output_dir=str(Path(folder).parent / f"mem-run-{mode}"),
        per_device_train_batch_size=len(ids),
        max_steps=steps,
        learning_rate=lr,
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        logging_steps=1,  # gradient checkpointing, when asked, was set up by load_model
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "load_s": round(load_s, 2),
        "load_peak_rss_bytes": load_peak,
        "peak_reset": reset_ok,
        "train_s": round(train_s, 2),
        "tokens_per_s": ids.numel() * steps / train_s,
        "trainable_params": int(trainable),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "optimizer": str(trainer.args.optim),
        "threads": torch.get_num_threads(),
    }


def measure_training_memory(
    ctx: Any, s: dict[str, Any], tokenizer: Any, train_ids: Any, threads: int
) -> dict[str, Any]:
    """Full fine-tuning vs. QLoRA of one ~76M-parameter model, each in its own process (see the docstring)."""
    folder = ctx.work / "memory-model"
    shutil.rmtree(folder, ignore_errors=True)
    model = build_llama(
        tokenizer,
        ctx.seed,
        hidden=s["mem_hidden_size"],
        layers=s["mem_layers"],
        heads=s["mem_heads"],
        kv_heads=s["mem_kv_heads"],
        intermediate=s["mem_intermediate_size"],
        max_len=s["mem_seq_len"],
    )
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    windows = Windows(train_ids, s["mem_seq_len"], s["mem_batch_size"], seed_for(ctx.seed, "memory"))
    input_ids = [windows[i]["input_ids"].tolist() for i in range(len(windows))]
    runs: dict[tuple[str, bool], dict[str, Any]] = {}
    for ckpt in (False, True):
        for mode in ("full", "qlora"):
            ctx.log(f"training memory: {mode}, gradient checkpointing {ckpt}")
            out = _isolated(
                "training_peak",
                {
                    "folder": str(folder),
                    "mode": mode,
                    "gradient_checkpointing": ckpt,
                    "input_ids": input_ids,
                    "steps": s["mem_steps"],
                    "lr": s["mem_lr"],
                    "threads": threads,
                    "seed": ctx.seed,
                },
                preload=(*PRELOAD, "peft", "bitsandbytes"),
            )
            r = out.result
            runs[(mode, ckpt)] = {
                **r,
                "train_peak_bytes": out.added_rss_bytes,
                "load_peak_bytes": r["load_peak_rss_bytes"] - out.baseline_rss_bytes,
                "baseline_rss_bytes": out.baseline_rss_bytes,
            }
    rows = []
    for (mode, ckpt), r in runs.items():
        full = runs[("full", ckpt)]
        what = (
            "full fine-tune (fp32 weights, all trainable)"
            if mode == "full"
            else "QLoRA (NF4 + double quant., LoRA r=16 on every linear layer)"
        )
        rows.append(
            {
                "row": f"{'QLoRA' if mode == 'qlora' else 'full fine-tune'}{' + grad. checkpointing' if ckpt else ''}",
                "how": what + (", gradient checkpointing" if ckpt else ""),
                "mode": mode,
                "gradient_checkpointing": ckpt,
                "params": n_params,
                "trainable_params": r["trainable_params"],
                "train_peak_bytes": r["train_peak_bytes"],
                "ratio_to_full": r["train_peak_bytes"] / full["train_peak_bytes"],
                "load_peak_bytes": r["load_peak_bytes"],
                "train_tokens_per_s": r["tokens_per_s"],
                "losses": r["losses"],
                "optimizer": r["optimizer"],
                "peak_reset": r["peak_reset"],
            }
        )
    note = (
        f"Model: Llama, {s['mem_layers']} layers, hidden {s['mem_hidden_size']}, {s['mem_heads']} query / "
        f"{s['mem_kv_heads']} key-value heads, FFN {s['mem_intermediate_size']}, the character vocabulary "
        f"({n_params / 1e6:.1f}M parameters, {bytes_on_disk(folder) / 2**20:.0f} MiB fp32 safetensors), random "
        f"initialisation. {s['mem_steps']} Trainer steps of batch {s['mem_batch_size']} × {s['mem_seq_len']} "
        "training characters, each row in a fresh process. Training peak = peak RSS during the steps − peak "
        "before the call (interpreter, torch, transformers, peft, bitsandbytes imported); load peak = the same "
        "while loading (for QLoRA it includes reading the fp32 checkpoint that is quantized). Ratio = the "
        "row's training peak / full fine-tuning's at the same gradient-checkpointing setting."
    )
    return {"rows": rows, "note": note, "model": {"params": n_params, "bytes": bytes_on_disk(folder)}}


def measure_inference_memory(
    folders: dict[str, str], input_ids: list[list[int]], threads: int
) -> dict[str, int]:
    """Inference peak of every row (its folder) on ``input_ids``: one fresh process for all rows, the peak
    mark reset between them; one process per row where the mark cannot be reset."""
    out = _isolated("inference_peaks", {"folders": folders, "input_ids": input_ids, "threads": threads})
    peaks = out.result["peaks"]
    if peaks is None:  # no resettable peak mark: one fresh process per row
        peaks = {}
        for name, folder in folders.items():
            one = _isolated("inference_peak", {"folder": folder, "input_ids": input_ids, "threads": threads})
            peaks[name] = one.added_rss_bytes
    return peaks
