"""Run a :class:`~hf_lite.app.recipe.Recipe`: stages in order, each writing ``<output_dir>/<stage>/``.

Each model-producing stage writes its model to ``<stage>/model`` atomically and then a marker
``<stage>/stage.json`` holding the stage's fingerprint (:mod:`hf_lite.app.run_folder`); a stage whose marker
matches is skipped, so a killed run restarted with the same command resumes at the first unfinished stage (and
a training stage resumes from its last Trainer checkpoint in ``<stage>/trainer``). A stage whose settings
changed reruns from scratch, and so does every stage after it; checkpoints of other settings are never resumed.
Every stage's arguments are checked before the first stage runs (:func:`check_stages`). Under ``accelerate launch`` the training stages run on
every process; the others run on the main process while the rest wait, and only the main process writes
reports and pushes.

>>> from hf_lite.app.recipe import Recipe
>>> from hf_lite.app.runner import run_recipe
>>> report = run_recipe(Recipe.from_yaml("examples/recipes/distill_encoder.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_lite._utils import atomic_dir, did_you_mean, has_bnb_layers
from hf_lite.adapters import resolve_peft_config
from hf_lite.app.evaluate_stage import evaluated_summary, stage_evaluate
from hf_lite.app.generate_stage import check_generate_stages, stage_generate, training_data
from hf_lite.app.recipe import Recipe, StageConfig, check_training_args
from hf_lite.app.run_folder import (  # noqa: F401 (RUN_MARKER, STAGE_MARKER: importable from here too)
    RUN_MARKER,
    STAGE_MARKER,
    check_selection,
    claim_run_folder,
    finish_stage,
    last_complete_checkpoint,
    prepare_stage,
    stage_done,
)
from hf_lite.app.stages import MODEL_STAGES, DistillStage, TrainingStage
from hf_lite.app.training_eval import final_evaluation
from hf_lite.data import CompletionCollator, augment_data, load_data, tokenize_data
from hf_lite.exporting import dequantize_bnb_, export, strip_quantization_, unpack_bnb_cpu_weights_
from hf_lite.hub import push_to_hub
from hf_lite.loading import load_model, load_teacher, load_tokenizer
from hf_lite.pruning import sparsity_report
from hf_lite.quantization import resolve_quantization
from hf_lite.student import init_student_from_teacher
from hf_lite.teacher_cache import TEACHER_COLUMNS, TeacherCacheCollator
from trainers import DistillationConfig, DistillationTrainer, FinetuneTrainer, PruningCallback, PruningConfig


class RunContext:
    """What stages share: the recipe, the run folder, the process state, data and tokenizer."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.root = Path(recipe.output_dir)
        # Without GPUs, processes started by `accelerate launch` only join one process group (gloo) when the
        # state is created for the CPU; the Trainer's arguments get use_cpu=True to match (_training_base).
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self._tokenizer: Any = None
        self._data: Any = None
        self._tokenized: Any = None

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def log(self, message: str) -> None:
        if self.is_main:
            print(f"[hf-lite] {message}", flush=True)

    def model_path(self, ref: str) -> str:
        """``teacher``, an earlier stage's name, or a Hub id / folder -> something ``from_pretrained`` takes."""
        if ref == "teacher":
            return self.recipe.teacher
        names = [s.name for s in self.recipe.stages]
        if ref in names:
            stage = self.recipe.stage(ref)
            if stage.type not in MODEL_STAGES:
                raise ValueError(f"model reference {ref!r} is a {stage.type} stage, which produces no model.")
            return str(self.root / ref / "model")
        return ref

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.recipe.teacher)
        return self._tokenizer

    def raw_data(self) -> Any:
        if self._data is None:
            d = self.recipe.data
            if d is None:
                raise ValueError(
                    f"recipe {self.recipe.name!r} has no data, but a stage needs it (training, calibration "
                    "or evaluation): add data: {train: FILE_OR_HUB_ID}."
                )
            source: Any = d.train if d.eval is None else {"train": d.train, "eval": d.eval}
            data = load_data(
                source, columns=d.columns or None, eval_fraction=d.eval_fraction, seed=self.recipe.seed
            )
            if "eval" not in data:
                raise ValueError(
                    f"recipe {self.recipe.name!r}: the data has no evaluation split; set data.eval or data.eval_fraction."
                )
            limits = {"train": d.max_train_rows, "eval": d.max_eval_rows}
            self._data = {
                split: data[split].select(range(min(limits[split], len(data[split]))))
                if limits[split]
                else data[split]
                for split in ("train", "eval")
            }
        return self._data

    def tokenized(self, augment: dict[str, Any] | None = None) -> Any:
        """Tokenized train/eval splits; ``augment`` (EDA options) enlarges the train split first."""
        if augment:
            raw = self.raw_data()
            train = augment_data(raw["train"], seed=self.recipe.seed, **augment)
            return {
                "train": tokenize_data(train, self.tokenizer, **self._tokenize_kwargs()),
                "eval": self.tokenized()["eval"],
            }
        if self._tokenized is None:
            raw = self.raw_data()
            self._tokenized = {
                split: tokenize_data(raw[split], self.tokenizer, **self._tokenize_kwargs())
                for split in ("train", "eval")
            }
        return self._tokenized

    def _tokenize_kwargs(self) -> dict[str, Any]:
        kwargs = {"task": self.recipe.task, **self.recipe.data.tokenize_kwargs()}
        if self.recipe.task != "causal-lm":  # the format and loss options are causal-LM data's
            kwargs = {"task": kwargs["task"], "max_length": kwargs["max_length"]}
        return kwargs

    def num_labels_kwargs(self) -> dict[str, int]:
        """``{"num_labels": n}`` for classification tasks, ``{}`` otherwise (keyword arguments of load_model)."""
        n = self.num_labels()
        return {"num_labels": n} if n is not None else {}

    def num_labels(self) -> int | None:
        if self.recipe.task not in ("sequence-classification", "token-classification"):
            return None
        if self.recipe.num_labels is not None:
            return int(self.recipe.num_labels)
        labels = self.raw_data()["train"]["label"]
        return int(max(labels)) + 1


# ------------------------------------------------------------------------------------------ run folders


def _save_model(ctx: RunContext, stage: StageConfig, model: Any) -> Path:
    """Main process: write ``<stage>/model`` through a temp folder and a rename (complete or absent)."""
    out = ctx.root / stage.name / "model"
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        ctx.tokenizer.save_pretrained(tmp)
    return out


# ----------------------------------------------------------------------------------------------- stages


def _training_base(ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
    return {
        "output_dir": str(ctx.root / stage.name / "trainer"),
        "seed": ctx.recipe.seed,
        "report_to": [],
        "save_total_limit": 2,
        "use_cpu": not torch.cuda.is_available(),
    }


def _load_for_training(ctx: RunContext, stage: StageConfig, ref: str) -> Any:
    spec = stage.spec
    return load_model(
        ctx.model_path(ref),
        ctx.recipe.task,
        quantization=spec.quantization,
        peft=spec.peft,
        gradient_checkpointing=bool(spec.gradient_checkpointing),
        dtype="float32",
        **ctx.num_labels_kwargs(),
    )


def _callbacks(stage: StageConfig) -> list[Any]:
    pruning = stage.spec.pruning
    if not pruning:
        return []
    return [PruningCallback(**pruning)]


def _train_and_save(ctx: RunContext, stage: StageConfig, trainer: Any) -> dict[str, Any]:
    trainer_dir = Path(trainer.args.output_dir)
    last = last_complete_checkpoint(trainer_dir)
    if last:
        ctx.log(f"{stage.name}: resuming from {Path(last).name}")
    result = trainer.train(resume_from_checkpoint=last)
    eval_metrics = final_evaluation(trainer, ctx.log, stage.name)  # only if asked, never twice
    model = trainer.model
    if hasattr(model, "peft_config"):
        model = _merged(model)
    if ctx.is_main:
        _save_model(ctx, stage, model)
    return {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        **{k: v for k, v in eval_metrics.items() if isinstance(v, (int, float))},
    }


def _merged(model: Any) -> Any:
    """A PEFT model as a plain model for the next stage: the adapter merged (onto a dequantized base)."""
    if has_bnb_layers(model):
        unpack_bnb_cpu_weights_(model)  # bnb's CPU kernel repacks 4-bit weights after a forward (evaluation)
        dequantize_bnb_(model)
        strip_quantization_(model)
    return model.merge_and_unload()


def _check_labels(stage: StageConfig, data: Any, why: str) -> None:
    """Prompt-only data has no labels: refuse a stage that trains on them before any model is loaded."""
    columns = data["train"].column_names
    if "labels" not in columns:
        raise ValueError(
            f"stage {stage.name!r} {why}, but the data has prompts only (tokenized columns {columns}): no "
            "completion to learn. Add a 'completion' column (or give 'messages' with assistant turns)."
        )


def stage_finetune(ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
    args = check_training_args(stage, TrainingArguments, _training_base(ctx, stage))
    data = training_data(ctx, stage, keep_cache=False) if stage.spec.data else ctx.tokenized()
    _check_labels(stage, data, "trains cross-entropy on labels")
    model = _load_for_training(ctx, stage, stage.model)
    # FinetuneTrainer: the loss is the global-batch mean under DDP and gradient accumulation for every head
    return _train_and_save(ctx, stage, _trainer(ctx, stage, FinetuneTrainer, model, args, data))


def stage_distill(ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
    args = check_training_args(stage, DistillationConfig, _training_base(ctx, stage))
    spec = stage.spec
    data = training_data(ctx, stage, keep_cache=True) if spec.data else ctx.tokenized(spec.augment)
    if args.alpha < 1:
        _check_labels(stage, data, f"mixes in cross-entropy on labels (alpha={args.alpha}; 1.0 = KD only)")
    student = _load_for_training(ctx, stage, stage.model)
    teacher = None  # training from the top-k cache of a generate stage: no teacher in memory
    if not set(TEACHER_COLUMNS) & set(data["train"].column_names):
        teacher = load_teacher(
            ctx.model_path(spec.teacher),
            ctx.recipe.task,
            quantization=args.teacher_quantization,
            dtype="float32",
        )
    trainer = _trainer(ctx, stage, DistillationTrainer, student, args, data, teacher_model=teacher)
    return _train_and_save(ctx, stage, trainer)


def _trainer(
    ctx: RunContext, stage: StageConfig, cls: type[Trainer], model: Any, args: Any, data: Any, **kwargs: Any
) -> Trainer:
    """A ``Trainer`` subclass on the run's tokenized splits, collator and the stage's callbacks."""
    return cls(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["eval"],
        processing_class=ctx.tokenizer,
        data_collator=_collator(ctx, data["train"]),
        callbacks=_callbacks(stage),
        **kwargs,
    )


def _collator(ctx: RunContext, train: Any = None) -> Any:
    """The collator of ``train`` (default: the recipe's tokenized train split)."""
    columns = (ctx.tokenized()["train"] if train is None else train).column_names
    if set(TEACHER_COLUMNS) & set(columns):
        return TeacherCacheCollator(ctx.tokenizer)  # a generate stage's top-k cache
    if ctx.recipe.task == "causal-lm" and "prompt_length" in columns:
        return CompletionCollator(ctx.tokenizer)  # prompt/completion or chat rows: their labels kept as made
    if ctx.recipe.task == "causal-lm":
        return DataCollatorForLanguageModeling(ctx.tokenizer, mlm=False)
    if ctx.recipe.task == "token-classification":
        return DataCollatorForTokenClassification(ctx.tokenizer)
    return DataCollatorWithPadding(ctx.tokenizer)


def _load_plain(ctx: RunContext, ref: str) -> Any:
    return load_model(ctx.model_path(ref), ctx.recipe.task, dtype="float32", **ctx.num_labels_kwargs())


def stage_init_student(ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
    layers = stage.spec.layers
    if ctx.is_main:
        teacher = _load_plain(ctx, stage.model)
        student = init_student_from_teacher(teacher, layers)
        _save_model(ctx, stage, student)
    ctx.state.wait_for_everyone()
    return {"layers": layers}


def _calibration(ctx: RunContext, n: int) -> list[dict[str, Any]]:
    data = ctx.tokenized()["train"].select(range(min(n, len(ctx.tokenized()["train"]))))
    collate = _collator(ctx)
    rows = [dict(r) for r in data]
    batches = []
    for i in range(0, len(rows), 8):
        batch = collate(rows[i : i + 8])
        batches.append(
            {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and not k.startswith("prompt_")}
        )
    return batches


def stage_prune(ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
    spec = stage.spec
    info: dict[str, Any] = {"method": spec.method}
    if ctx.is_main:
        model = _load_plain(ctx, stage.model).eval()
        before = sum(p.numel() for p in model.parameters())  # tied parameters once
        spec.prune_(model, _calibration(ctx, int(spec.calibration_samples)))
        counted = sparsity_report(model, original_parameters=before)  # structural pruning leaves no zeros:
        removed, fraction = (
            counted.removed_parameters,
            counted.removed_fraction,
        )  # it shows as removed parameters
        info.update(sparsity=counted.body_sparsity, removed_parameters=removed, removed_fraction=fraction)
        ctx.log(f"{stage.name}: {removed:,} of {before:,} parameters removed ({fraction:.1%})")
        _save_model(ctx, stage, model)
    ctx.state.wait_for_everyone()
    return info


def stage_quantize(ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
    bits = int(stage.spec.bits)
    if ctx.is_main:
        path = ctx.model_path(stage.model)
        model = load_model(path, ctx.recipe.task, quantization=f"{bits}bit", **ctx.num_labels_kwargs())
        _save_model(ctx, stage, model)
    ctx.state.wait_for_everyone()
    return {"bits": bits}


def stage_export(ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
    spec = stage.spec
    info: dict[str, Any] = {}
    if ctx.is_main:
        model = _load_plain(ctx, stage.model)
        out = ctx.root / stage.name / "model"
        summary = evaluated_summary(ctx, stage.model)  # the card states the figures the run's report measured
        report = export(
            model,
            out,
            tokenizer=ctx.tokenizer,
            merge_adapter=bool(spec.merge_adapter),
            dtype=spec.dtype,
            overwrite=True,
            card_report=summary,
        )
        if report is not None:
            info["max_abs_logit_diff"] = getattr(report, "max_abs_diff", None)
        if spec.push:
            result = push_to_hub(str(out), **{"report": summary, **spec.push})
            info["pushed"] = getattr(result, "commit_url", None)
    ctx.state.wait_for_everyone()
    return info


STAGES = {
    "finetune": stage_finetune,
    "init_student": stage_init_student,
    "distill": stage_distill,
    "generate": stage_generate,
    "prune": stage_prune,
    "quantize": stage_quantize,
    "evaluate": stage_evaluate,
    "export": stage_export,
}


def check_stages(ctx: RunContext) -> None:
    """Everything about the recipe's stages that a run would refuse, checked before any stage runs: each
    training stage's ``args`` through ``HfArgumentParser`` (names, with a did-you-mean, and values), its
    ``pruning``, ``peft`` and ``quantization`` options, and the generate stages' prompts and caches
    (:func:`~hf_lite.app.generate_stage.check_generate_stages`). Raises ``ValueError``/``TypeError`` naming the
    stage."""
    distill_args = {}
    for stage in ctx.recipe.stages:
        spec = stage.spec
        if not isinstance(spec, TrainingStage):
            continue
        where = f"stage {stage.name!r}"
        try:
            args = check_training_args(stage, type(spec).args_class(), _training_base(ctx, stage))
        except (ValueError, TypeError) as err:
            if str(err).startswith(where):
                raise
            raise type(err)(f"{where}: {err}") from err
        if isinstance(spec, DistillStage):
            distill_args[stage.name] = args
            if (
                args.teacher_tokenizer
            ):  # every model of a recipe shares the teacher's tokenizer (evaluation too)
                raise ValueError(
                    f"{where}: teacher_tokenizer={args.teacher_tokenizer!r}, but a recipe tokenizes the data once with "
                    "the teacher's tokenizer for every model. Distil across tokenizers from Python "
                    "(DistillationTrainer(teacher_tokenizer=...), README 'Distil across tokenizers')."
                )
        if spec.pruning:
            if not isinstance(spec.pruning, dict):
                raise ValueError(
                    f"{where}: pruning must be a mapping of PruningConfig fields, not {spec.pruning!r}."
                )
            fields = {f.name for f in dataclasses.fields(PruningConfig) if f.init}
            for key in spec.pruning:
                if key not in fields:
                    raise ValueError(
                        f"{where}: pruning.{key} is not a PruningConfig field{did_you_mean(key, fields)}."
                    )
            PruningConfig(**spec.pruning)
        try:
            resolve_peft_config(spec.peft, ctx.recipe.task)
            resolve_quantization(spec.quantization)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where}: {err}") from err
    check_generate_stages(ctx, distill_args)


def run_recipe(recipe: Recipe, *, stages: list[str] | None = None) -> RunContext:
    """Run (or resume) every stage of ``recipe``; ``stages`` limits the run to those names.

    The recipe is checked first (:func:`check_stages`, and :func:`check_selection` for ``stages``); a stage whose
    folder holds a complete result of the same settings is skipped, one with other settings reruns from
    scratch, and so does every stage after it (:mod:`hf_lite.app.run_folder`)."""
    ctx = RunContext(recipe)
    check_stages(ctx)
    if ctx.is_main:
        claim_run_folder(recipe)
    ctx.state.wait_for_everyone()
    if stages is not None:
        check_selection(ctx, stages)
    for stage in recipe.stages:
        if stages is not None and stage.name not in stages:
            continue
        if stage_done(ctx, stage):
            ctx.log(f"{stage.name}: done in an earlier run, skipped")
            continue
        if ctx.is_main:
            prepare_stage(ctx, stage)
        ctx.state.wait_for_everyone()
        if stage_done(ctx, stage):  # restored from .previous
            continue
        ctx.log(f"{stage.name} ({stage.type}) ...")
        start = time.perf_counter()
        info = STAGES[stage.type](ctx, stage)
        info["seconds"] = round(time.perf_counter() - start, 1)
        finish_stage(ctx, stage, info)
    return ctx
