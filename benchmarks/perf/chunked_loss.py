"""Row 3 of the perf benchmark: the chunked distillation loss, and TRL beside hf-lite.

The plain, chunked and from-hidden losses against TRL's generalized JSD (peak memory in fresh processes,
time side by side), and the TRL/hf-lite trainer race.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks.common import (
    peak_rss_bytes,
    proc_status_bytes,
    quiet_libraries,
    reset_peak_rss,
    run_isolated,
    time_side_by_side,
)
from benchmarks.perf.lm import llama_kwargs, lm_dataset, training_args
from benchmarks.perf.stepping import SteppedTrainer, race

#: returns it to the system when freed, so RSS follows the live tensors. (By default it keeps freed
#: blocks up to 32 MiB in its heap, and RSS then depends on the order of allocations as much as on
#: their sizes: a chunk of 256 tokens x 32k vocabulary in fp32 is just under that limit.)
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
JSD_BETA = 0.5


def memory_env(threads: int) -> dict[str, str]:
    """Environment of a process that measures memory: this run's thread count, :data:`MEMORY_ENV`, TRL quiet."""
    return {"OMP_NUM_THREADS": str(threads), "TRL_EXPERIMENTAL_SILENCE": "1", **MEMORY_ENV}


LOSS_KINDS = {
    "plain": "hf-lite distillation_loss",
    "plain-oneblock": "hf-lite distillation_loss in one block of rows (as on an accelerator)",
    "chunked": "hf-lite chunked_distillation_loss",
    "trl": "TRL GKDTrainer.generalized_jsd_loss",
    "plain-hidden": "F.linear to logits + hf-lite distillation_loss",
    "chunked-hidden": "hf-lite chunked_distillation_loss_from_hidden",
}


def trl_status() -> str | None:
    """None when TRL's GKDTrainer can be imported, else why not."""
    if importlib.util.find_spec("trl") is None:
        return "TRL is not installed (pip install trl; it is part of the benchmark environment only)"
    try:
        gkd()
    except Exception as err:  # any import failure makes the TRL rows unavailable, with the reason
        return f"TRL is installed but its GKDTrainer cannot be imported ({type(err).__name__}: {err})"
    return None


def gkd() -> tuple[Any, Any]:
    """TRL's ``(GKDConfig, GKDTrainer)``: in ``trl.experimental.gkd`` in TRL 1.x, top-level before."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        from trl import GKDConfig, GKDTrainer
    return GKDConfig, GKDTrainer


def loss_variants(s: dict[str, Any], with_trl: bool) -> list[str]:
    """Variant names: a kind of :data:`LOSS_KINDS`, with ``@<chunk_size>`` for the chunked ones."""
    sizes = list(dict.fromkeys([s["loss_chunk_size"], s["loss_chunk_size_small"]]))
    return [
        "plain",
        "plain-oneblock",
        *(f"chunked@{c}" for c in sizes),
        *(["trl"] if with_trl else []),
        "plain-hidden",
        *(f"chunked-hidden@{c}" for c in sizes),
    ]


def split_variant(variant: str) -> tuple[str, int | None]:
    kind, _, chunk = variant.partition("@")
    if kind not in LOSS_KINDS:
        raise ValueError(f"variant={variant!r}: the kind must be one of {sorted(LOSS_KINDS)}.")
    return kind, int(chunk) if chunk else None


def describe_variant(variant: str) -> str:
    kind, chunk = split_variant(variant)
    given = "hidden states given" if kind.endswith("hidden") else "logits given"
    return f"{LOSS_KINDS[kind]}{f', chunks of {chunk}' if chunk else ''} ({given})"


def baseline_variant(variant: str) -> str:
    """What a chunked variant is compared with: the plain loss holding whole (tokens, vocab) tensors. On the
    CPU hf-lite's plain loss runs in blocks of rows (hf_lite.losses.fused.BLOCK_ELEMENTS), so its one-block
    run (what it does on an accelerator) is the baseline; from hidden states, building the logits first."""
    return "plain-hidden" if variant.startswith(("plain-hidden", "chunked-hidden")) else "plain-oneblock"


def _inputs_kind(variant: str) -> str:
    return "plain-hidden" if split_variant(variant)[0].endswith("hidden") else "plain"


def _loss_inputs(
    variant: str, tokens: int, vocab: int, hidden_student: int, hidden_teacher: int, seed: int
) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (tokens,), generator=g)  # every position counts, as in a packed batch
    if split_variant(variant)[0].endswith("hidden"):
        return {
            "h_s": torch.randn(tokens, hidden_student, generator=g).requires_grad_(),
            "w_s": (torch.randn(vocab, hidden_student, generator=g) / hidden_student**0.5).requires_grad_(),
            "h_t": torch.randn(tokens, hidden_teacher, generator=g),
            "w_t": torch.randn(vocab, hidden_teacher, generator=g) / hidden_teacher**0.5,
            "labels": labels,
        }
    return {
        "s": (2 * torch.randn(tokens, vocab, generator=g)).requires_grad_(),
        "t": 2 * torch.randn(tokens, vocab, generator=g),
        "labels": labels,
    }


def _loss_call(variant: str, x: dict[str, Any]) -> Any:
    """A no-argument callable: forward + backward of one variant's loss on ``x``; returns the loss value.

    Generalized JSD, beta 0.5, T = 1, every position labelled (the call DistillationTrainer makes for a
    packed causal-LM batch; TRL's loss is called as ``GKDTrainer.compute_loss`` calls it).
    """
    import torch.nn.functional as F

    from hf_lite import losses

    kind, chunk = split_variant(variant)
    kw = {"loss_type": "jsd", "beta": JSD_BETA, "temperature": 1.0, "labels": x["labels"]}
    if kind == "trl":
        GKDTrainer = gkd()[1]

    def call() -> float:
        for t in x.values():
            t.grad = None
        if kind == "plain":
            loss = losses.distillation_loss(x["s"], x["t"], **kw)
        elif kind == "plain-oneblock":
            from hf_lite.losses import fused as divergences

            blocks, divergences.BLOCK_ELEMENTS = divergences.BLOCK_ELEMENTS, x["s"].numel()
            try:
                loss = losses.distillation_loss(x["s"], x["t"], **kw)
            finally:
                divergences.BLOCK_ELEMENTS = blocks
        elif kind == "chunked":
            loss = losses.chunked_distillation_loss(x["s"], x["t"], chunk_size=chunk, **kw)
        elif kind == "trl":
            loss = GKDTrainer.generalized_jsd_loss(
                x["s"],
                x["t"],
                labels=x["labels"],
                beta=JSD_BETA,
                temperature=1.0,
                num_items_in_batch=x["labels"].numel(),
            )
        elif kind == "plain-hidden":
            s_logits = F.linear(x["h_s"], x["w_s"])  # (N, V), what the LM head would give
            t_logits = F.linear(x["h_t"], x["w_t"])  # (N, V)
            loss = losses.distillation_loss(s_logits, t_logits, **kw)
        else:
            loss = losses.chunked_distillation_loss_from_hidden(
                x["h_s"], x["w_s"], x["h_t"], x["w_t"], chunk_size=chunk, **kw
            )
        loss.backward()
        return float(loss.detach())

    return call


def loss_memory_child(
    variant: str, tokens: int, vocab: int, hidden_student: int, hidden_teacher: int, seed: int
) -> dict[str, Any]:
    """``run_isolated`` target: RSS one loss forward + backward adds on top of its inputs.

    One warm-up call on 64 tokens first, so that one-time initialisation (thread pools, allocator arenas)
    is not counted as the loss's memory."""
    _loss_call(variant, _loss_inputs(variant, 64, vocab, hidden_student, hidden_teacher, seed))()
    x = _loss_inputs(variant, tokens, vocab, hidden_student, hidden_teacher, seed)
    call = _loss_call(variant, x)
    before = proc_status_bytes("VmRSS") or peak_rss_bytes()
    reset = reset_peak_rss()
    start = time.perf_counter()
    value = call()
    seconds = time.perf_counter() - start
    return {
        "loss_bytes": peak_rss_bytes() - before,
        "inputs_rss_bytes": before,
        "peak_reset": reset,
        "value": value,
        "seconds": seconds,
    }


def loss_comparison(ctx: Any, s: dict[str, Any], trl_missing: str | None) -> dict[str, Any]:
    import torch

    variants = loss_variants(s, with_trl=not trl_missing)
    dims = dict(
        tokens=s["loss_tokens"],
        vocab=s["loss_vocab"],
        hidden_student=s["student_hidden"],
        hidden_teacher=s["teacher_hidden"],
    )
    env = memory_env(torch.get_num_threads())
    memory = {}
    with ctx.phase("loss memory (isolated processes)"):
        for variant in variants:
            preload = ("torch", "hf_lite.losses", *(("trl",) if variant == "trl" else ()))
            out = run_isolated(
                "benchmarks.perf.chunked_loss:loss_memory_child",
                {"variant": variant, **dims, "seed": ctx.seed},
                preload=preload,
                env=env,
                capture_output=True,
            )
            memory[variant] = {**out.result, "process_peak_rss_bytes": out.peak_rss_bytes}
            ctx.log(f"loss memory {variant}: {out.result['loss_bytes'] / 2**20:.0f} MiB")
    with ctx.phase("loss time (side by side)"):
        # One set of inputs per kind of input, shared by the variants that take it.
        inputs = {
            "plain": _loss_inputs("plain", **dims, seed=ctx.seed),
            "plain-hidden": _loss_inputs("plain-hidden", **dims, seed=ctx.seed),
        }
        calls = {}
        for v in variants:
            small = _loss_inputs(v, **{**dims, "tokens": 64}, seed=ctx.seed)
            _loss_call(v, small)()  # warm-up on 64 tokens: code paths and thread pools, not sizes
            calls[v] = _loss_call(v, inputs[_inputs_kind(v)])
        timing = time_side_by_side(calls, repeats=s["loss_repeats"], warmup=0)
        del inputs, calls
    values = {v: memory[v]["value"] for v in variants}
    return {"memory": memory, "timing": timing, "values": values, "variants": variants}


def _kd_trainer(
    kind: str,
    student: Any,
    teacher: Any,
    data: Any,
    tokenizer: Any,
    out: Path,
    steps: int,
    s: dict[str, Any],
    seed: int,
) -> Any:
    from transformers import default_data_collator

    common = dict(steps=steps, lr=s["student_lr"], batch_size=s["trl_batch_size"], seed=seed)
    if kind == "trl-gkd":
        GKDConfig, GKDTrainer = gkd()

        # lmbda=0, seq_kd=False: distillation on the dataset's sequences (no generation), the path
        # DistillationTrainer takes; GKD's loss ignores temperature (it is the sampling temperature). TRL's
        # own defaults gradient_checkpointing=True and bf16=True are turned off: both trainers run fp32
        # without recomputation, so the comparison is of the loss paths.
        with warnings.catch_warnings():  # TRL's config still sets the field transformers renamed
            warnings.simplefilter("ignore", FutureWarning)
            args = training_args(
                GKDConfig,
                out,
                **common,
                lmbda=0.0,
                seq_kd=False,
                beta=JSD_BETA,
                temperature=1.0,
                gradient_checkpointing=False,
                bf16=False,
            )
        return GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            data_collator=default_data_collator,
        )
    from trainers import DistillationConfig, DistillationTrainer

    chunk = s["loss_chunk_size_small"] if kind == "hf-lite-jsd-chunked" else None
    args = training_args(
        DistillationConfig,
        out,
        **common,
        loss_type="jsd",
        beta=JSD_BETA,
        temperature=1.0,
        alpha=1.0,
        chunk_size=chunk,
    )
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )


def _trl_models_and_data(s: dict[str, Any], seed: int, rows: int) -> tuple[Any, Any, Any, Any]:
    """The tiny causal LM pair with a ``loss_vocab`` vocabulary, and random token rows (a packed batch)."""
    import torch
    import transformers

    from hf_lite.testing import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    ids = {
        "pad_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }

    def model(hidden: int, layers: int, model_seed: int) -> Any:
        torch.manual_seed(model_seed)
        config = tiny_config("llama", s["loss_vocab"], special_ids=ids, **llama_kwargs(hidden, layers))
        return transformers.LlamaForCausalLM(config)

    student = model(s["student_hidden"], s["student_layers"], seed)
    teacher = model(s["teacher_hidden"], s["teacher_layers"], seed + 1).eval()
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, s["loss_vocab"], (rows, s["trl_seq_len"]), generator=g).tolist()
    return student, teacher, tokenizer, lm_dataset(blocks)


TRAINER_KINDS = ("trl-gkd", "hf-lite-jsd", "hf-lite-jsd-chunked")


def trainer_memory_child(kind: str, settings: dict[str, Any], seed: int, out: str) -> dict[str, Any]:
    """``run_isolated`` target: RSS that ``train()`` adds over ``trl_memory_steps`` steps (models, data and
    trainer built before the mark)."""
    quiet_libraries()
    s = settings
    steps = s["trl_memory_steps"]
    student, teacher, tokenizer, data = _trl_models_and_data(s, seed, steps * s["trl_batch_size"])
    trainer = _kd_trainer(kind, student, teacher, data, tokenizer, Path(out), steps, s, seed)
    before = proc_status_bytes("VmRSS") or peak_rss_bytes()
    reset = reset_peak_rss()
    start = time.perf_counter()
    trainer.train()
    return {
        "train_bytes": peak_rss_bytes() - before,
        "peak_reset": reset,
        "seconds": time.perf_counter() - start,
    }


def trainer_comparison(ctx: Any, s: dict[str, Any], trl_missing: str | None) -> dict[str, Any]:
    import torch

    kinds = [k for k in TRAINER_KINDS if not (k == "trl-gkd" and trl_missing)]
    rounds = 1 + s["trl_rounds"]
    participants = {}
    for kind in kinds:
        student, teacher, tokenizer, data = _trl_models_and_data(s, ctx.seed, rounds * s["trl_batch_size"])
        trainer = _kd_trainer(
            kind, student, teacher, data, tokenizer, ctx.work / "trl" / kind, rounds, s, ctx.seed
        )
        participants[kind] = SteppedTrainer(trainer, kind)
    with ctx.phase("TRL/hf-lite trainer race"):
        steps_log = race(participants, rounds)
    del participants
    env = memory_env(torch.get_num_threads())
    memory = {}
    with ctx.phase("trainer memory (isolated processes)"):
        for kind in kinds:
            # Imports are not measured (the mark is set just before train()): import only what runs.
            preload = ("torch", "transformers", "trl" if kind == "trl-gkd" else "trainers")
            out = run_isolated(
                "benchmarks.perf.chunked_loss:trainer_memory_child",
                {"kind": kind, "settings": s, "seed": ctx.seed, "out": str(ctx.work / "trl-mem" / kind)},
                preload=preload,
                env=env,
                capture_output=True,
            )
            memory[kind] = {**out.result, "process_peak_rss_bytes": out.peak_rss_bytes}
            ctx.log(f"trainer memory {kind}: {out.result['train_bytes'] / 2**20:.0f} MiB")
    return {"steps": steps_log, "memory": memory, "kinds": kinds}
