"""The generate stage (sequence-level distillation) and the data of a training stage that reads it.

A ``generate`` stage (:class:`~hf_lite.app.stages.GenerateStage`) lets its ``model`` complete the prompts of the
recipe's train and eval splits once, with :func:`hf_lite.teacher_cache.generate_teacher_completions`, into
``<stage>/train`` and ``<stage>/eval``: shards complete or absent in ``<split>.partial/``, so a killed run resumes
where it stopped (the run folder keeps an unfinished stage of the same settings) and gives the same dataset;
a dataset made with other generation settings, or by a teacher whose weights changed behind a Hub id, is
refused with the difference named. A training stage with ``data: <generate stage>`` trains on those rows
(:func:`training_data`): ``input_ids`` = prompt + the teacher's completion, labels on the completion, and with
``topk`` the teacher's cached top-k log-probabilities, which a ``distill`` stage trains from without loading
the teacher.

>>> import datasets
>>> chats = datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"},
...                                                   {"role": "assistant", "content": "hello"}]]})
>>> generation_prompts(chats, None, "stage 'g'")[0]["prompt"]
[{'role': 'user', 'content': 'hi'}]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import datasets

from hf_lite.data.chat import detect_data_format
from hf_lite.losses import TOPK_LOSS_TYPES
from hf_lite.teacher_cache import TEACHER_COLUMNS, generate_teacher_completions, load_teacher_cache

if TYPE_CHECKING:
    from hf_lite.app.recipe import StageConfig
    from hf_lite.app.runner import RunContext

#: The splits a generate stage completes (each in its own folder under the stage's).
GENERATED_SPLITS = ("train", "eval")


def generation_prompts(split: datasets.Dataset, data_format: str | None, where: str) -> datasets.Dataset:
    """The prompts of one split of the recipe's data, in a ``prompt`` column: the ``prompt`` column of
    prompt/completion or prompt-only rows, or each ``messages`` conversation up to its last assistant turn
    (the whole conversation when it has none). Text rows have no prompts: a ``ValueError`` names the fix."""
    fmt = data_format or detect_data_format(split.column_names)
    if fmt in ("prompt", "prompt-completion"):
        return split.select_columns(["prompt"])
    if fmt != "messages":
        raise ValueError(
            f"{where}: the teacher completes prompts, but the recipe's data is {fmt!r} rows (columns "
            f"{split.column_names}) with no prompt to complete. Give prompt/completion, prompt-only or messages data "
            "(data.data_format, or the columns prompt / messages)."
        )
    prompts = []
    for i, messages in enumerate(split["messages"]):
        turns = [{k: v for k, v in m.items() if v is not None} for m in messages]
        assistant = [j for j, m in enumerate(turns) if m.get("role") == "assistant"]
        cut = assistant[-1] if assistant else len(turns)
        if cut == 0:
            raise ValueError(
                f"{where}: conversation {i} starts with the assistant turn, so no prompt precedes it; give each "
                "conversation a user (or system) turn first."
            )
        prompts.append(turns[:cut])
    return datasets.Dataset.from_dict({"prompt": prompts})


def stage_generate(ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
    """The teacher's completions of every train and eval prompt (resumed if interrupted); under several
    processes each generates its share of the shards and the main process joins them."""
    from hf_lite.loading import load_teacher

    spec, data = stage.spec, ctx.recipe.data
    where = f"stage {stage.name!r}"
    info: dict[str, Any] = {"max_new_tokens": spec.max_new_tokens, "topk": spec.topk}
    teacher = load_teacher(ctx.model_path(stage.model), "causal-lm", dtype="float32")
    fmt = data.tokenize_kwargs()["data_format"]
    for split in GENERATED_SPLITS:
        prompts = generation_prompts(ctx.raw_data()[split], fmt, where)
        ctx.log(f"{stage.name}: {stage.model} completes {len(prompts):,} {split} prompts")
        try:
            generated = generate_teacher_completions(
                teacher,
                ctx.tokenizer,
                prompts,
                ctx.root / stage.name / split,
                max_new_tokens=spec.max_new_tokens,
                do_sample=spec.do_sample,
                temperature=spec.temperature,
                top_p=spec.top_p,
                seed=ctx.recipe.seed,
                batch_size=spec.batch_size,
                shard_size=spec.shard_size,
                max_prompt_length=spec.max_prompt_length or data.max_length - spec.max_new_tokens,
                topk=spec.topk,
                kd_temperature=spec.kd_temperature,
                dtype=spec.dtype,
                teacher_name=str(stage.model),
            )
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where}: {err}") from err
        info[f"{split}_rows"] = len(generated)
        info[f"{split}_completion_tokens"] = sum(len(ids) for ids in generated["completion_ids"])
    ctx.state.wait_for_everyone()
    return info


def training_data(ctx: RunContext, stage: StageConfig, *, keep_cache: bool) -> dict[str, datasets.Dataset]:
    """The train/eval rows of a training stage whose ``data`` names a generate stage: ``input_ids``, ``labels``
    (the completion only, or every token with ``data.completion_only_loss: false``), ``prompt_length`` and,
    when the generate stage cached the teacher's top-k and ``keep_cache``, the teacher columns."""
    source = ctx.recipe.stage(stage.spec.data)
    cached = keep_cache and source.spec.topk is not None
    out = {}
    for split in GENERATED_SPLITS:
        path = ctx.root / source.name / split
        rows = (
            load_teacher_cache(path) if source.spec.topk is not None else datasets.load_from_disk(str(path))
        )
        prompt_lengths = [len(ids) for ids in rows["prompt_ids"]]
        rows = rows.select_columns(["input_ids", "labels", *(TEACHER_COLUMNS if cached else ())])
        if not ctx.recipe.data.completion_only_loss:
            rows = rows.remove_columns("labels").add_column("labels", rows["input_ids"])
        out[split] = rows.add_column("prompt_length", prompt_lengths)
    return out


def check_generate_stages(ctx: RunContext, distill_args: dict[str, Any]) -> None:
    """Before any stage runs: the data has prompts for each generate stage, and a ``distill`` stage that reads
    a top-k cache trains with what a cache supports (``distill_args``: stage name -> its parsed
    ``DistillationConfig``)."""
    generate = [s for s in ctx.recipe.stages if s.type == "generate"]
    if generate:
        fmt = ctx.recipe.data.tokenize_kwargs()["data_format"] if ctx.recipe.data is not None else None
        generation_prompts(ctx.raw_data()["train"], fmt, f"stage {generate[0].name!r}")
    for name, args in distill_args.items():
        stage = ctx.recipe.stage(name)
        if not stage.spec.data or ctx.recipe.stage(stage.spec.data).spec.topk is None:
            continue
        source = ctx.recipe.stage(stage.spec.data).spec
        where = f"stage {name!r} reads the top-k teacher cache of stage {stage.spec.data!r}"
        if args.temperature != source.kd_temperature:
            raise ValueError(
                f"{where}, stored at kd_temperature={source.kd_temperature}, but args.temperature="
                f"{args.temperature}; set both to the same value."
            )
        if args.lmbda > 0:
            raise ValueError(
                f"{where}, but args.lmbda={args.lmbda}: a cache cannot score completions the student has not "
                "written yet. Use lmbda: 0, or drop topk from the generate stage (the teacher is then loaded)."
            )
        unsupported = {
            "loss_type": args.loss_type not in TOPK_LOSS_TYPES,
            "hidden_weight": args.hidden_weight > 0,
            "attention_weight": args.attention_weight > 0,
            "teacher_weights": args.teacher_weights is not None,
            "chunk_size": args.chunk_size is not None,
        }
        bad = [key for key, value in unsupported.items() if value]
        if bad:
            raise ValueError(
                f"{where}; training from a cache supports the top-k losses {list(TOPK_LOSS_TYPES)} without "
                f"hidden-state, attention or several teachers' terms: unset args {bad}, or drop topk from the "
                "generate stage (the teacher is then loaded)."
            )
