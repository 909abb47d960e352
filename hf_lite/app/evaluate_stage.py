"""The evaluate stage: every model of the run measured side by side into the compression report, and the
report's figures read back for a model card.

>>> from hf_lite.app.evaluate_stage import evaluated_summary  # needs a run folder to do anything
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lite._utils import atomic_write_text
from hf_lite.card import CompressionSummary
from hf_lite.evaluation import evaluate_model, machine_info, measure_latency_side_by_side
from hf_lite.loading import load_model
from hf_lite.report import CompressionReport

if TYPE_CHECKING:
    from hf_lite.app.recipe import StageConfig
    from hf_lite.app.runner import RunContext


def stage_evaluate(ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
    """Task metric, parameters (nonzero too), bytes on disk and in memory, latency of each model, side by side
    in one process; the compression report as JSON, Markdown and PNG in the stage folder."""
    spec = stage.spec
    refs = ctx.recipe.stage_inputs(stage.name)
    info: dict[str, Any] = {"models": refs}
    if ctx.is_main:
        batch_sizes = tuple(spec.latency_batch_sizes)
        report = evaluate_models(ctx, refs, batch_sizes=batch_sizes, repeats=int(spec.latency_repeats))
        folder = ctx.root / stage.name
        folder.mkdir(parents=True, exist_ok=True)
        report.to_json(folder / "report.json")
        atomic_write_text(folder / "report.md", report.to_markdown() + "\n")
        report.plot(folder / "report.png")
        info["report"] = "report.json"
        info.update(teacher=report.teacher, load_average=report.load_average)
        print(report.to_markdown(), flush=True)
    ctx.state.wait_for_everyone()
    return info


def evaluate_models(
    ctx: RunContext, refs: list[str], *, batch_sizes: tuple[int, ...] = (1, 32), repeats: int = 10
) -> CompressionReport:
    """Evaluate ``refs`` on the recipe's evaluation split into a :class:`~hf_lite.report.CompressionReport`.

    Metrics, sizes and parameters model by model; then latency of all models *side by side*
    (:func:`hf_lite.evaluation.measure_latency_side_by_side`: interleaved rounds, so background load on a
    shared machine skews no model's speedup). All evaluated models are held in memory together for that.
    """
    data = ctx.tokenized()["eval"]
    report = CompressionReport(
        task=ctx.recipe.task, machine=machine_info(), title=f"{ctx.recipe.name}: compression report"
    )
    # the reference row: "teacher", else the first model a distill stage learned from, else the first model
    taught = ["teacher"] + [
        getattr(s.spec, "teacher", None) for s in ctx.recipe.stages if s.type == "distill"
    ]
    report.teacher = next((ref for ref in refs if ref in taught), refs[0] if refs else None)
    stage_types = {s.name: s.type for s in ctx.recipe.stages}
    models, results = {}, {}
    for ref in refs:
        path = ctx.model_path(ref)
        model = load_as_saved(ctx, ref)
        ctx.log(f"evaluating {ref} on {len(data):,} rows")
        with tempfile.TemporaryDirectory() as tmp:
            folder = path if Path(path).is_dir() else saved_copy(model, tmp)
            results[ref] = evaluate_model(model, data, ctx.recipe.task, folder=folder, measure_speed=False)
        models[ref] = model
        ctx.log(f"evaluated {ref}: {results[ref].metrics}")
    ctx.log(f"timing {len(models)} models side by side: batch sizes {list(batch_sizes)}, {repeats} rounds")
    # one tokenized row; the timing keeps only the model inputs (input_ids, attention_mask, token_type_ids)
    latencies = measure_latency_side_by_side(
        models, data[0], batch_sizes=batch_sizes, repeats=repeats, seq_len=ctx.recipe.data.max_length
    )
    for ref in refs:
        result = dataclasses.replace(results[ref], latency=latencies[ref])
        report.add_evaluation(result, name=ref, stage=stage_types.get(ref, "teacher"))
    return report


def load_as_saved(ctx: RunContext, ref: str) -> Any:
    """Load a model as saved (a bitsandbytes folder comes back quantized through its config)."""
    return load_model(ctx.model_path(ref), ctx.recipe.task, dtype="auto", **ctx.num_labels_kwargs()).eval()


def saved_copy(model: Any, folder: str) -> str:
    model.save_pretrained(folder)
    return folder


def evaluated_summary(ctx: RunContext, model_ref: str) -> CompressionSummary | None:
    """The model card's figures of ``model_ref`` from the last evaluate stage's report that measured it (the
    same record the report prints), or ``None`` when no report has a row for it."""
    for earlier in reversed(ctx.recipe.stages):
        path = ctx.root / earlier.name / "report.json"
        if earlier.type != "evaluate" or not path.is_file():
            continue
        report = CompressionReport.from_json(path)
        if any(row.name == model_ref for row in report.rows):
            return CompressionSummary.from_report(report, model_ref)
    return None
