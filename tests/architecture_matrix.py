"""The architecture matrix: fifteen families users load from the Hub every day, times what hf-lite does to them.

Each operation, on a tiny random model of each family (configs made here: hidden 64, 3 blocks so that
dropping each block tests every position, vocabulary 128),
either works, checked against a reference computation, or is refused before anything is written with an error
that names the family and what cannot be expressed. ``tests/test_architecture_matrix.py`` runs every pair and
compares the README's support table with the one rendered from what it measured; this module regenerates that
table:

    python -m tests.architecture_matrix --write-readme      # run the matrix, rewrite the README block
    python -m tests.architecture_matrix                     # run it and print the table

What "works" means, per operation:

- ``lora_4bit`` / ``lora_8bit``: ``load_model(quantization=..., peft="lora")`` quantizes the body, and a
  ``Trainer`` that evaluates after every step (each evaluation repacks every 4-bit layer for bitsandbytes' CPU
  kernel where it does) trains three steps with the LoRA gradients of the same run without evaluation (rtol
  1e-4), every one finite and the adapters moving.
- ``prune_ffn`` / ``prune_heads`` / ``prune_layers``: the structural edit shrinks the model, the saved folder
  reloads with the stock ``AutoModelFor*`` class with exactly the tensors (names and shapes) that class builds
  from the saved config, and the same logits within 1e-5 in fp32 (also in a process without hf-lite: the test
  file reloads every saved folder there).
- ``prune_experts`` / ``prune_expert_ffn`` (mixture-of-experts families): half of the experts dropped by router
  load on calibration data, or every expert's FFN (and a shared expert's) halved; checked as the other
  structural edits, with the config's expert count or width halved. Dense families refuse them ("—").
- ``distill``: ``DistillationTrainer`` with a teacher of the same family trains two steps; each logged loss is
  ``alpha * loss_kd + (1 - alpha) * loss_ce`` and the teacher is unchanged.
- ``export_merged``: ``export(merge_adapter=True)`` of a model with the default LoRA (``peft="lora"``) reloads with stock ``from_pretrained`` as a
  plain checkpoint with the LoRA model's logits within 1e-5.
- ``export_merged_4bit``: the same from a 4-bit base evaluated once (bitsandbytes' CPU repacking): every merged
  weight equals the dequantized 4-bit weight plus the LoRA update, and the reload matches that exact reference.
- ``wanda``: ``wanda_prune_`` at 50% zeros half of every row of every body layer (and of every expert matrix
  of MoE blocks), and leaves heads, embeddings, norms and MoE routers untouched.

A refusal counts only when it is an ``ValueError``/``TypeError`` whose message names the family (its config or
model class) and matches a documented reason of :data:`REFUSALS` (the table shows that reason), the operation's
output folder does not exist, and, for in-place edits, the model's tensors and config are unchanged.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- architecture-matrix:start -->", "<!-- architecture-matrix:end -->"

_SIZES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=64,
)
_GQA = dict(num_key_value_heads=2)
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


@dataclass(frozen=True)
class Family:
    """A family: its README label, config class, config entries besides the shared sizes, task and layout."""

    label: str
    config_class: str
    extra: dict[str, Any]
    task: str = "causal-lm"
    layout: str = "decoder"  # decoder, fused, encoder, moe: the subprocess reload covers each

    def config(self) -> transformers.PretrainedConfig:
        sizes = dict(_SIZES)
        if self.config_class == "DistilBertConfig":  # DistilBERT names its sizes differently
            sizes = dict(vocab_size=128, max_position_embeddings=64)
        return getattr(transformers, self.config_class)(**{**sizes, **self.extra})

    @property
    def auto_class(self) -> str:
        return "AutoModelForCausalLM" if self.task == "causal-lm" else "AutoModelForSequenceClassification"

    @property
    def names(self) -> tuple[str, ...]:
        """How an error may name the family: its config class without ``Config``, or its model type."""
        cls = getattr(transformers, self.config_class)
        return (self.config_class.removesuffix("Config"), cls.model_type)


_ENCODER = dict(num_labels=3)
FAMILIES: dict[str, Family] = {
    "qwen2": Family("Qwen2", "Qwen2Config", _GQA),
    "qwen3": Family("Qwen3", "Qwen3Config", dict(_GQA, head_dim=16)),
    "mistral": Family("Mistral", "MistralConfig", _GQA),
    "gemma2": Family("Gemma2", "Gemma2Config", dict(_GQA, head_dim=16, sliding_window=4)),
    "gemma3_text": Family("Gemma3 (text)", "Gemma3TextConfig", dict(_GQA, head_dim=16, sliding_window=4)),
    "phi3": Family("Phi3", "Phi3Config", dict(_GQA, pad_token_id=0), layout="fused"),
    "gpt_neox": Family("GPT-NeoX", "GPTNeoXConfig", {}, layout="fused"),
    "opt": Family("OPT", "OPTConfig", dict(ffn_dim=128, word_embed_proj_dim=64)),
    "falcon": Family("Falcon", "FalconConfig", dict(ffn_hidden_size=128), layout="fused"),
    "distilbert": Family(
        "DistilBERT",
        "DistilBertConfig",
        dict(_ENCODER, dim=64, hidden_dim=128, n_layers=3, n_heads=4),
        task="sequence-classification",
        layout="encoder",
    ),
    "roberta": Family(
        "RoBERTa", "RobertaConfig", dict(_ENCODER, pad_token_id=1), "sequence-classification", "encoder"
    ),
    "deberta_v2": Family("DeBERTa-v2", "DebertaV2Config", _ENCODER, "sequence-classification", "encoder"),
    "modernbert": Family(
        "ModernBERT",
        "ModernBertConfig",
        dict(
            _ENCODER,
            **_IDS,
            cls_token_id=1,
            sep_token_id=2,
            global_attn_every_n_layers=2,
            local_attention=8,
        ),
        task="sequence-classification",
        layout="encoder",
    ),
    "qwen2_moe": Family(
        "Qwen2-MoE",
        "Qwen2MoeConfig",
        dict(
            _GQA,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
        ),
        layout="moe",
    ),
    "mixtral": Family(
        "Mixtral", "MixtralConfig", dict(_GQA, num_local_experts=4, num_experts_per_tok=2), layout="moe"
    ),
}


# ------------------------------------------------------------------------------------------------------
# shared pieces


def build_model(family: Family, seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny random ``family`` model in eval mode, with trained-like norms and biases (not ones and zeros)."""
    torch.manual_seed(seed)
    model = getattr(transformers, family.auto_class).from_config(family.config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def input_ids(seed: int = 7, batch: int = 2, length: int = 10) -> torch.Tensor:
    return torch.randint(3, 120, (batch, length), generator=torch.Generator().manual_seed(seed))


def training_batch(family: Family, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = input_ids(seed, batch=4, length=12)
    labels = torch.tensor([0, 2, 1, 0]) if family.task != "causal-lm" else ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def calibration_batches() -> list[dict[str, torch.Tensor]]:
    return [
        {"input_ids": input_ids(s), "attention_mask": torch.ones(2, 10, dtype=torch.long)} for s in (1, 2)
    ]


@torch.no_grad()
def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


@dataclass
class Context:
    """Where a run writes (one folder per family and operation), its saved checkpoints, and what it saved
    for the reload in a process without hf-lite: ``{name: (folder, auto class, logits)}``."""

    root: Path
    checkpoints: dict[str, Path] = field(default_factory=dict)
    saved: dict[str, tuple[str, str, torch.Tensor]] = field(default_factory=dict)

    def checkpoint(self, key: str) -> Path:
        """The family's tiny model saved once, for operations that start from a Hub-like folder."""
        if key not in self.checkpoints:
            folder = self.root / "checkpoints" / key
            build_model(FAMILIES[key]).save_pretrained(folder)
            self.checkpoints[key] = folder
        return self.checkpoints[key]

    def output(self, key: str, operation: str) -> Path:
        """The folder an operation may write to (it must not exist after a refusal)."""
        return self.root / key / operation


def _state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, model.config.to_dict()


def _assert_untouched(model: torch.nn.Module, before: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
    state, config = before
    after = model.state_dict()
    assert after.keys() == state.keys(), "a refused edit changed the model's tensors"
    assert all(torch.equal(after[k], v) for k, v in state.items()), "a refused edit changed a weight"
    assert model.config.to_dict() == config, "a refused edit changed the config"


# ------------------------------------------------------------------------------------------------------
# operations: each returns when it works (checked; a note on what part of it is refused, or None), or raises
# the refusal


def _lora_with_evaluation(key: str, ctx: Context, quantization: str) -> None:
    import bitsandbytes as bnb
    from datasets import Dataset

    from hf_lite import load_model
    from hf_lite.quantization import bnb_repacks_on_cpu

    family = FAMILIES[key]
    torch.manual_seed(0)
    # On the CPU everywhere (also where a GPU is present): the table describes what a CPU gives.
    model = load_model(
        ctx.checkpoint(key), family.task, quantization=quantization, peft="lora", device_map="cpu"
    )
    kind = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    quantized = [m for m in model.modules() if isinstance(m, kind)]
    assert quantized, f"no {kind.__name__} layer"
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}  # LoRA, a classifier head
    assert any("lora_" in n for n in trainable), "no trainable LoRA parameter"
    start = {n: p.detach().clone() for n, p in trainable.items()}
    data = Dataset.from_dict({k: v.tolist() for k, v in training_batch(family).items()})
    repacks = quantization == "4bit" and bnb_repacks_on_cpu()

    class Record(transformers.TrainerCallback):
        """Gradients at every optimizer step; how many 4-bit layers were repacked at each evaluation."""

        def __init__(self):
            self.grads, self.packed = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            torch.manual_seed(
                state.global_step
            )  # the same dropout masks in both runs, whatever evaluation draws

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.grads.append({n: p.grad.detach().clone() for n, p in trainable.items()})

        def on_evaluate(self, args, state, control, **kwargs):
            self.packed.append(
                sum(
                    bool(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False))
                    for m in quantized
                )
            )

    def run(evaluate: bool) -> Record:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(start[n])
        args = transformers.TrainingArguments(
            output_dir=str(ctx.output(key, f"lora_{quantization}") / ("evaluated" if evaluate else "plain")),
            max_steps=3,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            learning_rate=1e-2,
            eval_strategy="steps" if evaluate else "no",
            eval_steps=1,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
        )
        record = Record()
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=data,
            eval_dataset=data if evaluate else None,
            callbacks=[record],
        )
        trainer.remove_callback(transformers.PrinterCallback)
        trainer.train()
        return record

    plain, evaluated = run(False), run(True)
    # Every evaluation repacked every 4-bit layer where bitsandbytes does (the situation under test).
    assert evaluated.packed == [len(quantized) if repacks else 0] * 3, evaluated.packed
    assert len(plain.grads) == len(evaluated.grads) == 3
    for step, (a, b) in enumerate(zip(plain.grads, evaluated.grads, strict=True)):
        for name in a:
            assert torch.isfinite(a[name]).all(), f"step {step} {name}: non-finite gradient"
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-8, msg=f"step {step} {name}")
    assert any(not torch.equal(p, start[n]) for n, p in trainable.items() if "lora_A" in n), (
        "no adapter moved"
    )


def lora_4bit(key: str, ctx: Context) -> None:
    _lora_with_evaluation(key, ctx, "4bit")


def lora_8bit(key: str, ctx: Context) -> None:
    _lora_with_evaluation(key, ctx, "8bit")


def _pruned_and_reloaded(
    key: str, ctx: Context, name: str, prune: Callable[[torch.nn.Module], object], model=None
) -> torch.nn.Module:
    """Prune a fresh model (``ValueError`` raised as is, after checking the model is untouched), save it to
    ``ctx.output(key, name)``, and check the stock class reloads it as the same model."""
    family = FAMILIES[key]
    model = model if model is not None else build_model(family)
    parameters = sum(p.numel() for p in model.parameters())
    before = _state(model)
    try:
        prune(model)
    except (ValueError, TypeError):
        _assert_untouched(model, before)
        raise
    assert sum(p.numel() for p in model.parameters()) < parameters, "nothing was removed"
    folder = ctx.output(key, name)
    model.save_pretrained(folder)
    auto = getattr(transformers, family.auto_class)
    reloaded = auto.from_pretrained(folder).eval()
    with torch.device("meta"):
        fresh = auto.from_config(transformers.AutoConfig.from_pretrained(folder))
    expected = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert {k: tuple(v.shape) for k, v in reloaded.state_dict().items()} == expected
    ids = input_ids()
    pruned = logits(model, ids)
    torch.testing.assert_close(logits(reloaded, ids), pruned, rtol=1e-5, atol=1e-5)
    ctx.saved[f"{key}-{name}"] = (str(folder), family.auto_class, pruned)
    return model


def prune_ffn(key: str, ctx: Context) -> None:
    from hf_lite.pruning import prune_ffn_
    from hf_lite.pruning.sites import find_ffn_sites

    model = build_model(FAMILIES[key])
    site = find_ffn_sites(model)[0] if _recognized(model, find_ffn_sites) else None
    width_key, width = (site.config_key, site.width) if site is not None else (None, 0)
    kept = {}
    model = _pruned_and_reloaded(key, ctx, "prune_ffn", lambda m: kept.update(prune_ffn_(m, 0.5)), model)
    assert getattr(model.config, width_key) == width // 2, f"config {width_key} is not {width // 2}"
    assert len(kept) == model.config.num_hidden_layers and all(len(k) == width // 2 for k in kept.values())
    assert all(s.width == width // 2 for s in find_ffn_sites(model))


def _recognized(model: torch.nn.Module, find: Callable[[torch.nn.Module], object]) -> bool:
    try:
        find(model)
    except ValueError:
        return False  # the pruning function itself raises the refusal
    return True


def prune_heads(key: str, ctx: Context) -> None:
    from hf_lite.pruning import prune_attention_heads_
    from hf_lite.pruning.sites import head_layout

    model = build_model(FAMILIES[key])
    layout = head_layout(model) if _recognized(model, head_layout) else None
    kept = {}
    model = _pruned_and_reloaded(
        key, ctx, "prune_heads", lambda m: kept.update(prune_attention_heads_(m, 0.5)), model
    )
    heads, groups, head_dim = layout
    assert all(len(k.query) == heads // 2 for k in kept.values()), kept
    stored = FAMILIES[key].config().to_dict().get("head_dim")
    assert head_dim == (stored or FAMILIES[key].config().hidden_size // heads), "head size misread"
    config = model.config
    assert (config.num_attention_heads, getattr(config, "num_key_value_heads", heads)) == (
        heads // 2,
        groups // 2,
    )
    # The head size survives: configs without head_dim (Qwen2, Phi3, Qwen2-MoE) get it written.
    saved = transformers.AutoConfig.from_pretrained(ctx.output(key, "prune_heads"))
    assert saved.head_dim == head_dim, f"saved head_dim {saved.head_dim} != {head_dim}"


def prune_layers(key: str, ctx: Context) -> str | None:
    """Drop each block alone, then the lowest-influence half: every accepted edit reloads as the same model;
    a single drop may be refused where the family builds blocks differently by position (then the selection
    by influence skips that block)."""
    from hf_lite.pruning import prune_layers_

    family = FAMILIES[key]
    blocks = family.config().num_hidden_layers
    refused = {}
    for block in range(blocks):
        try:
            model = _pruned_and_reloaded(
                key, ctx, f"drop_{block}", lambda m, b=block: prune_layers_(m, drop=[b])
            )
        except ValueError as err:
            refused[block] = documented("prune_layers", str(err))
            assert refused[block], f"undocumented refusal of dropping block {block}: {err}"
            continue
        assert model.config.num_hidden_layers == blocks - 1
    if len(refused) == blocks:
        raise ValueError(f"{family.config_class}: no block can be dropped alone ({refused})")
    batches = calibration_batches()
    kept = []
    model = _pruned_and_reloaded(
        key,
        ctx,
        "prune_layers",
        lambda m: kept.extend(prune_layers_(m, keep_ratio=0.5, calibration_batches=batches)),
    )
    assert model.config.num_hidden_layers == len(kept) < blocks and not set(refused) - set(kept)
    if refused:
        dropped = ", ".join(str(b) for b in refused)
        return f"block {dropped} stays: {'; '.join(sorted(set(refused.values())))}"
    return None


def prune_experts(key: str, ctx: Context) -> None:
    from hf_lite.pruning import prune_experts_

    family = FAMILIES[key]
    batches = calibration_batches()
    model = _pruned_and_reloaded(
        key, ctx, "prune_experts", lambda m: prune_experts_(m, keep_ratio=0.5, calibration_batches=batches)
    )
    count = "num_local_experts" if "num_local_experts" in family.extra else "num_experts"
    assert getattr(model.config, count) == family.extra[count] // 2, f"config {count} not halved"


def prune_expert_ffn(key: str, ctx: Context) -> None:
    from hf_lite.pruning import prune_expert_ffn_

    family = FAMILIES[key]
    width = "moe_intermediate_size" if "moe_intermediate_size" in family.extra else "intermediate_size"
    shared = "shared_expert_intermediate_size" in family.extra
    model = _pruned_and_reloaded(
        key,
        ctx,
        "prune_expert_ffn",
        lambda m: prune_expert_ffn_(m, 0.5, **({"shared_keep_ratio": 0.5} if shared else {})),
    )
    before = family.config()
    assert getattr(model.config, width) == getattr(before, width) // 2, f"config {width} not halved"
    if shared:
        assert model.config.shared_expert_intermediate_size == before.shared_expert_intermediate_size // 2


def distill(key: str, ctx: Context) -> None:
    from datasets import Dataset

    from trainers import DistillationConfig, DistillationTrainer

    family = FAMILIES[key]
    teacher, student = build_model(family, seed=1), build_model(family, seed=2)
    teacher_state = _state(teacher)[0]
    student_state = _state(student)[0]
    batch = training_batch(family)
    data = Dataset.from_dict({k: v.tolist() for k, v in batch.items()})
    args = DistillationConfig(
        output_dir=str(ctx.output(key, "distill")),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        alpha=0.5,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    trainer.remove_callback(transformers.PrinterCallback)  # the logs are checked below, not printed
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss_kd" in log]
    assert len(logs) == 2, trainer.state.log_history
    for log in logs:
        assert abs(log["loss"] - (0.5 * log["loss_kd"] + 0.5 * log["loss_ce"])) <= 1e-4 * abs(log["loss"])
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_state.items()), "teacher changed"
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in student_state.items()), "no training"


def export_merged(key: str, ctx: Context) -> None:
    from hf_lite import load_model
    from hf_lite.exporting import export

    family = FAMILIES[key]
    torch.manual_seed(0)
    model = load_model(
        ctx.checkpoint(key), family.task, dtype="float32", peft="lora"
    ).eval()  # the default LoRA
    with torch.no_grad():  # random B as well as A: the adapter changes the outputs, so the merge is tested
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = input_ids()
    folder = ctx.output(key, "export_merged")
    report = export(
        model, folder, merge_adapter=True, check_inputs={"input_ids": ids}, check_atol=1e-5, card=False
    )
    assert report.adapter_merged and report.kind == "model"
    reloaded = getattr(transformers, family.auto_class).from_pretrained(folder).eval()
    assert not any("lora_" in k for k in reloaded.state_dict())
    adapted = logits(model, ids)
    with model.disable_adapter():
        assert not torch.allclose(logits(model, ids), adapted, rtol=1e-3, atol=1e-3), (
            "the adapter does nothing"
        )
    torch.testing.assert_close(logits(reloaded, ids), adapted, rtol=1e-5, atol=1e-5)


def export_merged_4bit(key: str, ctx: Context) -> None:
    """QLoRA merge: every merged weight is the dequantized 4-bit weight plus the LoRA update, the reload matches
    that exact reference, and the difference from the 4-bit model in memory is reported apart."""
    import bitsandbytes as bnb

    from hf_lite import load_model
    from hf_lite.exporting import export
    from hf_lite.exporting.writer import EXACT_MERGE

    family = FAMILIES[key]
    torch.manual_seed(0)
    model = load_model(
        ctx.checkpoint(key),
        family.task,
        quantization="4bit",
        peft={"target_modules": "all-linear", "lora_dropout": 0.0, "init_lora_weights": False},
        device_map="cpu",
    ).eval()
    ids = input_ids()
    logits(model, ids)  # an evaluation first: bitsandbytes repacks the 4-bit weights for its CPU kernel
    folder = ctx.output(key, "export_merged_4bit")
    report = export(
        model, folder, merge_adapter=True, check_inputs={"input_ids": ids}, check_atol=1e-5, card=False
    )
    assert report.check_reference == EXACT_MERGE and report.max_abs_diff_vs_quantized is not None
    assert report.quantization is None and report.dequantized_from is not None
    reloaded = getattr(transformers, family.auto_class).from_pretrained(folder).eval()
    assert getattr(reloaded.config, "quantization_config", None) is None
    saved, merged = reloaded.state_dict(), 0
    for name, module in model.get_base_model().named_modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, bnb.nn.Linear4bit):
            exact = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state).float()
            exact = exact + module.get_delta_weight("default").float()
            torch.testing.assert_close(saved[f"{name}.weight"], exact, rtol=1e-5, atol=1e-6, msg=name)
            merged += 1
    assert merged, "no 4-bit layer with an adapter"


def wanda(key: str, ctx: Context) -> None:
    from hf_lite.heads import is_head
    from hf_lite.pruning import find_moe_routers, wanda_prune_
    from hf_lite.pruning.experts import find_expert_weights
    from hf_lite.pruning.sites import is_prunable

    family = FAMILIES[key]
    model = build_model(family)
    before = _state(model)[0]
    routers = set(find_moe_routers(model))
    experts = set(find_expert_weights(model))
    masks = wanda_prune_(model, calibration_batches(), sparsity=0.5)
    body = {
        n
        for n, m in model.named_modules()
        if is_prunable(m) and not is_head(n) and n not in routers and m is not model.get_output_embeddings()
    }
    assert body | experts == set(masks), f"pruned {sorted(set(masks) ^ (body | experts))} wrongly"
    params = dict(model.named_parameters())
    for name in masks:
        weight = params[name if name in experts else f"{name}.weight"].detach()
        if name not in experts and type(model.get_submodule(name)).__name__ == "Conv1D":
            weight = weight.T
        zeros = (weight == 0).sum(-1)  # per output row (per expert and row for 3-D expert weights)
        assert (zeros == weight.shape[-1] // 2).all(), f"{name}: {zeros.tolist()} zeros per row"
    pruned_params = {f"{n}.weight" for n in masks} | experts
    for name, value in before.items():
        if name not in pruned_params:
            assert torch.equal(model.state_dict()[name], value), f"{name} (not a pruned body layer) changed"


#: Operation name -> (README column, function).
OPERATIONS: dict[str, tuple[str, Callable[[str, Context], str | None]]] = {
    "lora_4bit": ("4-bit + LoRA", lora_4bit),
    "lora_8bit": ("8-bit + LoRA", lora_8bit),
    "prune_ffn": ("FFN pruning", prune_ffn),
    "prune_heads": ("head pruning", prune_heads),
    "prune_layers": ("layer pruning", prune_layers),
    "prune_experts": ("expert dropping", prune_experts),
    "prune_expert_ffn": ("expert FFN pruning", prune_expert_ffn),
    "distill": ("distillation", distill),
    "export_merged": ("merged LoRA export", export_merged),
    "export_merged_4bit": ("merged QLoRA export", export_merged_4bit),
    "wanda": ("Wanda", wanda),
}

#: The reason of a refusal that only says the operation does not apply (a dense model has no experts): cell "—".
NOT_APPLICABLE = "not applicable"
#: bitsandbytes replaces exact torch.nn.Linear layers only (Falcon's are FalconLinear).
_NOT_NN_LINEAR = (
    r"quantized no layer of .*: its linear layers are \w+, subclasses of torch.nn.Linear.*without quantization",
    "nn.Linear subclasses, which bitsandbytes does not replace",
)
#: The documented refusals: (operation, regex the message matches, the reason the README shows).
REFUSALS: list[tuple[str, str, str]] = [
    *(
        (
            op,
            r"has no mixture-of-experts blocks .* For a dense model prune FFN neurons \(prune_ffn_\)",
            NOT_APPLICABLE,
        )
        for op in ("prune_experts", "prune_expert_ffn")
    ),
    *((op, *_NOT_NN_LINEAR) for op in ("lora_4bit", "lora_8bit", "export_merged_4bit")),
    (
        "prune_heads",
        r"head pruning is not possible for .*no head_dim that its attention reads.*"
        r"Prune FFN neurons \(prune_ffn_\) or whole layers \(prune_layers_\) instead",
        "no head_dim in the config (head size = hidden / heads)",
    ),
    (
        "prune_layers",
        r"builds blocks differently by position",
        "stock builds it differently",
    ),
    (
        "prune_ffn",
        r"is a mixture-of-experts model: prune_ffn_ prunes one dense FFN per block.*prune_expert_ffn_",
        "experts: use prune_expert_ffn_",
    ),
]


# ------------------------------------------------------------------------------------------------------
# running and rendering


@dataclass(frozen=True)
class Outcome:
    """``refused`` is ``None`` when the operation works, else the documented reason; ``note`` says what part of
    a working operation is refused (e.g. a block that cannot be dropped)."""

    refused: str | None = None
    message: str = ""
    note: str | None = None

    @property
    def cell(self) -> str:
        if self.refused == NOT_APPLICABLE:
            return "—"
        if self.refused is not None:
            return f"refused: {self.refused}"
        return "yes" if self.note is None else f"yes ({self.note})"


def documented(operation: str, message: str) -> str | None:
    """The README reason of the first documented refusal of ``operation`` that ``message`` matches."""
    return next(
        (short for op, pattern, short in REFUSALS if op == operation and re.search(pattern, message)), None
    )


def measure(key: str, operation: str, ctx: Context) -> Outcome:
    """Run one operation on one family: an :class:`Outcome`, or ``AssertionError`` if it neither works nor is
    refused as documented (a check failed, an unexpected exception, an undocumented or anonymous refusal)."""
    family = FAMILIES[key]
    try:
        note = OPERATIONS[operation][1](key, ctx)
    except (ValueError, TypeError) as err:
        message = str(err)
        output = ctx.output(key, operation)
        assert not output.exists() or not any(output.iterdir()), f"refused after writing {output}: {message}"
        assert any(n.lower() in message.lower() for n in family.names), (
            f"the refusal does not name the family ({' or '.join(family.names)}): {message}"
        )
        reason = documented(operation, message)
        assert reason, (
            f"undocumented refusal of {operation} on {family.label}: {type(err).__name__}: {message}"
        )
        return Outcome(reason, message)
    return Outcome(note=note)


#: The text above the table in the README block (the block between the markers is generated as a whole).
LEGEND = """\
What hf-lite does on fifteen families users load from the Hub every day, measured on a tiny random model of
each by `tests/test_architecture_matrix.py`, which fails when this table differs from what it measures
(`python -m tests.architecture_matrix --write-readme` rewrites it). "yes": it works, checked against a
reference: 4/8-bit + the default LoRA (`peft="lora"`) trains with evaluation passes in between and the same
LoRA gradients as without them; structural pruning saves a checkpoint that stock `from_pretrained` reloads
with the same logits (within 1e-5, fp32); distillation trains against a teacher of the same family; the merged
export of the default LoRA reloads with the LoRA model's logits (from a 4-bit base: every merged weight is the
dequantized weight plus the LoRA update); Wanda zeros half of every row of the body layers (and of each MoE
expert) and leaves heads, embeddings, norms and routers untouched. "refused": hf-lite raises before anything
is written or changed, with an error that names the family, what cannot be expressed and what to do instead;
"—": the operation does not apply (no experts).
"""


def render_table(outcomes: dict[tuple[str, str], Outcome]) -> str:
    """The markdown table: a row per family, a column per operation, cells ``yes`` / ``refused: <reason>``."""
    header = ["family", *(OPERATIONS[op][0] for op in OPERATIONS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, family in FAMILIES.items():
        cells = [outcomes[(key, op)].cell if (key, op) in outcomes else "not measured" for op in OPERATIONS]
        lines.append("| " + " | ".join([family.label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def render_block(outcomes: dict[tuple[str, str], Outcome]) -> str:
    """What goes between the README's markers: :data:`LEGEND` and :func:`render_table`."""
    return f"{LEGEND}\n{render_table(outcomes)}"


def readme_block(text: str) -> str:
    """The README's block between the markers (``ValueError`` if they are missing)."""
    if START not in text or END not in text:
        raise ValueError(f"README.md has no {START} ... {END} block")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def with_block(text: str, block: str) -> str:
    """``text`` with the block between the markers replaced by ``block``."""
    head, rest = text.split(START, 1)
    return f"{head}{START}\n{block}{END}{rest.split(END, 1)[1]}"


def run_matrix(root: Path, log: Callable[[str], None] = lambda s: None) -> dict[tuple[str, str], Outcome]:
    ctx = Context(root)
    outcomes = {}
    for key in FAMILIES:
        for operation in OPERATIONS:
            outcomes[(key, operation)] = measure(key, operation, ctx)
            log(f"{key:12s} {operation:14s} {outcomes[(key, operation)].cell}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-readme", action="store_true", help="rewrite the README block with the table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = run_matrix(Path(tmp), log=lambda s: print(s, file=sys.stderr))
    if args.write_readme:
        README.write_text(
            with_block(README.read_text(encoding="utf-8"), render_block(outcomes)), encoding="utf-8"
        )
    print(render_table(outcomes), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
