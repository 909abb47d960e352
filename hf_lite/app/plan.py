"""``hf-lite plan``: validate a recipe and show what it would do, without training anything.

Models are resolved from their configs only and instantiated on the ``meta`` device (no weights are read),
so planning a 7B recipe takes seconds. The memory estimate counts weights, gradients and AdamW moments of
each training stage (fp32: 4 + 4 + 8 bytes per trainable parameter, 4 per frozen one, 0.5/1 per 4/8-bit
one); activations depend on batch and sequence length and are not included.

>>> from hf_lite.app.recipe import Recipe
>>> print(plan_recipe(Recipe.from_yaml("examples/recipes/distill_encoder.yaml")))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import transformers
from accelerate import PartialState
from peft import get_peft_model

from hf_lite.adapters import check_target_modules, resolve_peft_config
from hf_lite.app.recipe import Recipe, StageConfig
from hf_lite.app.run_folder import stage_status
from hf_lite.app.runner import RunContext, check_stages
from hf_lite.app.stages import (
    DistillStage,
    EvaluateStage,
    GenerateStage,
    InitStudentStage,
    PruneStage,
    QuantizeStage,
    TrainingStage,
)
from hf_lite.loading import load_checked_config
from hf_lite.student import select_layers
from hf_lite.summary import format_bytes
from hf_lite.tasks import TASKS


def _meta_model(config: Any, task: str, num_labels: int | None) -> Any:
    config = copy.deepcopy(config)
    if num_labels is not None:
        config.num_labels = num_labels
    with torch.device("meta"):
        return getattr(transformers, TASKS[task]).from_config(config)


def _adapter(model: Any, stage: StageConfig, task: str) -> tuple[int, list[str]]:
    """Trainable parameters and targeted module names with the stage's adapter (on the meta model)."""
    peft_config = resolve_peft_config(stage.spec.peft, task)
    check_target_modules(model, peft_config)
    peft_model = get_peft_model(model, peft_config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    targets = sorted({n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")})
    return trainable, targets


def _training_memory(total: int, trainable: int, quantization: str | None) -> int:
    frozen_bytes = {None: 4.0, "8bit": 1.0, "4bit": 0.5, "nf4": 0.5, "fp4": 0.5}.get(quantization, 4.0)
    return int(trainable * 16 + (total - trainable) * frozen_bytes)


def plan_recipe(recipe: Recipe) -> str:
    """A readable plan of ``recipe``: data sizes, models, parameters, trainable parameters, adapter targets,
    a training-memory estimate per stage, the world size, and what a run would do with each stage given the output
    folder (skip it, resume it, rerun it and why). Raises what the run would raise on bad input:
    every training stage's arguments are checked first (:func:`~hf_lite.app.runner.check_stages`)."""
    ctx = RunContext(recipe)
    check_stages(ctx)

    def status(stage: StageConfig) -> str:  # what a run would do, once the output folder holds a run
        return f" [{stage_status(ctx, stage)}]" if ctx.root.is_dir() else ""

    lines = [
        f"recipe {recipe.name!r}: task {recipe.task}, output_dir {recipe.output_dir}, seed {recipe.seed}",
        f"world size: {PartialState().num_processes} process(es)",
    ]
    if recipe.data is not None:
        data = ctx.raw_data()
        lines.append(
            f"data: {len(data['train']):,} train rows, {len(data['eval']):,} eval rows, "
            f"columns {sorted(data['train'].column_names)}"
        )
        if recipe.task == "causal-lm":
            lines.append(_format_line(recipe, data["train"].column_names))
    num_labels = ctx.num_labels() if recipe.data is not None else recipe.num_labels
    teacher_config = load_checked_config(recipe.teacher, recipe.task, False, None, {})
    configs: dict[str, Any] = {"teacher": teacher_config}
    lines.append(f"teacher: {recipe.teacher} ({teacher_config.model_type})")
    for stage in recipe.stages:
        ref, spec = stage.model, stage.spec
        if isinstance(spec, EvaluateStage):
            lines.append(
                f"- {stage.name} (evaluate): {', '.join(recipe.stage_inputs(stage.name))}{status(stage)}"
            )
            continue
        if isinstance(spec, GenerateStage):
            lines.append(_generate_line(recipe, stage) + status(stage))
            continue
        if ref in configs:
            config = configs[ref]
        else:
            config = load_checked_config(ctx.model_path(ref), recipe.task, False, None, {})
        config = copy.deepcopy(config)
        if isinstance(spec, InitStudentStage):
            config.num_hidden_layers = len(select_layers(spec.layers, config.num_hidden_layers))
        elif isinstance(spec, PruneStage) and spec.method == "ffn" and hasattr(config, "intermediate_size"):
            config.intermediate_size = round(config.intermediate_size * float(spec.keep_ratio))
        configs[stage.name] = config
        model = _meta_model(config, recipe.task, num_labels)
        total = sum(p.numel() for p in model.parameters())
        line = f"- {stage.name} ({stage.type}) reads {ref}: {total:,} parameters"
        if isinstance(spec, TrainingStage):
            trainable, targets = total, []
            if spec.peft:
                trainable, targets = _adapter(model, stage, recipe.task)
            memory = _training_memory(total, trainable, spec.quantization)
            line += f", {trainable:,} trainable"
            if targets:
                line += f" (adapter on {', '.join(targets)})"
            line += f", ~{format_bytes(memory)} for weights, gradients and optimizer"
            cached = spec.data is not None and recipe.stage(spec.data).spec.topk is not None
            if isinstance(spec, DistillStage) and cached:
                line += f" + no teacher (top-k cache of {spec.data})"
            elif isinstance(spec, DistillStage):
                teacher_model = _meta_model(
                    configs.get(spec.teacher, teacher_config), recipe.task, num_labels
                )
                t_total = sum(p.numel() for p in teacher_model.parameters())
                line += f" + teacher {spec.teacher} ~{format_bytes(t_total * 4)}"
            if spec.data is not None:
                line += f", trains on the teacher completions of {spec.data}"
            if spec.pruning:
                p = spec.pruning
                line += f", gradual pruning to {p.get('target_sparsity', p.get('pattern'))} sparsity"
        if isinstance(spec, PruneStage):
            line += f", method {spec.method}"
        if isinstance(spec, QuantizeStage):
            line += f", to {spec.bits}-bit"
        lines.append(line + status(stage))
    lines.append("plan OK: nothing was trained.")
    return "\n".join(lines)


def _format_line(recipe: Recipe, columns: list[str]) -> str:
    """The causal-LM data format (checked against the columns) and which tokens the loss counts."""
    from hf_lite.data.chat import check_data_format, detect_data_format

    d = recipe.data
    fmt = detect_data_format(columns) if d.data_format == "auto" else d.data_format
    check_data_format(fmt, columns)
    counted = {
        "text": "every token",
        "prompt": "no labels (prompts only)",
        "prompt-completion": "the completion" if d.completion_only_loss else "every token",
        "messages": "the assistant turns" if d.assistant_only_loss else "every token",
    }[fmt]
    how = "detected from the columns" if d.data_format == "auto" else "data.data_format"
    return f"data format: {fmt} ({how}); the loss counts {counted}"


def _generate_line(recipe: Recipe, stage: StageConfig) -> str:
    """What a generate stage will do: who completes which prompts, how, and what it stores."""
    spec = stage.spec
    how = f"sampled (temperature {spec.temperature}, top_p {spec.top_p})" if spec.do_sample else "greedy"
    prompt = spec.max_prompt_length or recipe.data.max_length - spec.max_new_tokens
    line = (
        f"- {stage.name} (generate): {stage.model} completes the train and eval prompts, {how}, at most "
        f"{spec.max_new_tokens} new tokens after at most {prompt} prompt tokens"
    )
    if spec.topk is not None:
        line += f", with its top-{spec.topk} log-probabilities at temperature {spec.kd_temperature}"
    readers = [s.name for s in recipe.stages if getattr(s.spec, "data", None) == stage.name]
    return line + (f"; read by {', '.join(readers)}" if readers else "; read by no stage")
