"""The sections of a model card, one function each, all drawn from one :class:`CardFacts`.

:func:`card_metadata` builds the YAML header; the text is the title, what was done, the compression report,
this checkpoint, how to load it and the notes.

Each text section returns its lines (ending with a blank line), or none when it has nothing to say.

>>> from hf_lite.card.facts import resolve_facts
>>> from hf_lite.card.records import CompressionSummary
>>> facts = resolve_facts(CompressionSummary(pruning="magnitude", sparsity=0.5), repo_id="me/tiny")
>>> print(what_was_done_section(facts)[2])
- **Pruning**: magnitude; 50.00% of the pruned layers' weights are zero (counted).
"""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCardData

from hf_lite._utils import is_hub_id
from hf_lite.card.facts import CardFacts
from hf_lite.summary import format_bytes

__all__ = [
    "card_metadata",
    "title_section",
    "what_was_done_section",
    "compression_report_section",
    "checkpoint_section",
    "how_to_load_section",
    "notes_section",
]


def card_metadata(
    facts: CardFacts,
    *,
    license: str | None = None,  # noqa: A002 - the Hub's metadata key
    language: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    tags: str | list[str] | None = None,
) -> ModelCardData:
    """The card's YAML metadata: base model, library, pipeline, tags, datasets and ``model-index`` results.

    >>> from hf_lite.card.facts import resolve_facts
    >>> from hf_lite.card.records import CompressionSummary
    >>> card_metadata(resolve_facts(CompressionSummary(pruning="magnitude")), license="mit").tags
    ['hf-lite', 'pruning']
    """
    summary = facts.summary
    all_tags = ["hf-lite"]
    if facts.distilled:
        all_tags.append("distillation")
    if facts.pruned:
        all_tags.append("pruning")
    if facts.saved_quant:
        all_tags += [
            "bitsandbytes",
            "4-bit" if "4bit" in facts.saved_quant else "8-bit" if "8bit" in facts.saved_quant else "",
        ]
    if facts.adapter:
        all_tags += ["peft", "lora" if facts.adapter.upper().startswith("LORA") else ""]
    all_tags = _dedup(all_tags + ([tags] if isinstance(tags, str) else list(tags or [])))
    dataset_ids = [datasets] if isinstance(datasets, str) else list(datasets or [])
    if summary.dataset is not None:
        dataset_ids.append(summary.dataset)
    dataset_ids = _dedup([d for d in dataset_ids if is_hub_id(d)])
    metrics = summary.student.metrics
    eval_results = None
    if metrics and facts.eval_task and summary.dataset is not None and is_hub_id(summary.dataset):
        eval_results = [
            EvalResult(
                task_type=facts.eval_task,
                dataset_type=summary.dataset,
                dataset_name=summary.dataset_name or summary.dataset,
                dataset_config=summary.dataset_config,
                dataset_split=summary.dataset_split,
                metric_type=metric,
                metric_value=float(value),
            )
            for metric, value in metrics.items()
        ]
    extra = {}
    if facts.base_model is not None:
        if facts.kind == "adapter":
            extra["base_model_relation"] = "adapter"
        elif facts.saved_quant and not facts.distilled and not facts.pruned:
            extra["base_model_relation"] = "quantized"
        else:
            extra["base_model_relation"] = "finetune"
    return ModelCardData(
        base_model=facts.base_model,
        library_name="peft" if facts.kind == "adapter" else "transformers",
        pipeline_tag=facts.pipeline,
        tags=all_tags,
        datasets=dataset_ids or None,
        metrics=sorted(metrics) or None,
        eval_results=eval_results,
        model_name=facts.name if eval_results else None,
        license=license,
        language=language,
        **extra,
    )


def title_section(facts: CardFacts) -> list[str]:
    """The title and the sentence that says what the checkpoint is and what loads it.

    >>> from hf_lite.card.facts import resolve_facts
    >>> from hf_lite.card.records import CompressionSummary
    >>> title_section(resolve_facts(CompressionSummary(pruning="magnitude"), repo_id="me/tiny"))[:2]
    ['# tiny', '']
    """
    made = []
    if facts.distilled:
        made.append("distilled")
    if facts.pruned:
        made.append("pruned")
    if facts.saved_quant or facts.dequantized_from:
        made.append("quantized")
    if facts.adapter:
        made.append("adapted")
    origin = f" from {_public(facts.base_model, 'model')}" if facts.base_model else ""
    adjectives = (
        ", ".join(made[:-1]) + " and " + made[-1] if len(made) > 1 else (made[0] if made else "compressed")
    )
    article = "An" if adjectives[0] in "aeiou" else "A"
    adapter = facts.kind == "adapter"
    return [
        f"# {facts.name}",
        "",
        f"{article} {adjectives} checkpoint{origin}, made with "
        "[hf-lite](https://github.com/hf-lite/hf-lite). It is an ordinary "
        f"{'PEFT adapter' if adapter else 'transformers checkpoint'}: stock "
        f"`{'peft' if adapter else 'transformers'}` loads it, no hf-lite and no remote code needed.",
        "",
    ]


def what_was_done_section(facts: CardFacts) -> list[str]:
    """One bullet per compression step: distillation, pruning, quantization, adapter.

    >>> from hf_lite.card.facts import resolve_facts
    >>> from hf_lite.card.records import CompressionSummary
    >>> what_was_done_section(resolve_facts(CompressionSummary()))
    ['## What was done', '', '- No compression step was recorded for this checkpoint.', '']
    """
    summary, export_report = facts.summary, facts.export_report
    lines = ["## What was done", ""]
    if facts.distilled:
        line = f"- **Distillation**: distilled from {_public(summary.teacher, 'teacher checkpoint')}"
        lines.append(line + (f" ({summary.distillation})." if summary.distillation else "."))
    if facts.pruned:
        line = f"- **Pruning**: {summary.pruning or 'pruned'}"
        if facts.sparsity is not None:
            line += f"; {facts.sparsity:.2%} of the pruned layers' weights are zero (counted)"
        if export_report is not None and export_report.pruning_made_permanent:
            line += (
                f"; made permanent ({len(export_report.pruning_made_permanent)} pruning re-parametrizations "
                "replaced by plain weights)"
            )
        lines.append(line + ".")
        if summary.pruning is None or "struct" not in summary.pruning.lower():
            lines.append(
                "  Zeros left in dense weights neither shrink the checkpoint nor speed up dense kernels; only "
                "structural pruning (smaller layers, recorded in `config.json`) does."
            )
    if facts.saved_quant:
        lines.append(
            f"- **Quantization**: bitsandbytes {_quant_text(facts.saved_quant)}. The checkpoint stores the "
            "quantized weights and their quantization config; loading it needs `bitsandbytes` "
            "(`pip install bitsandbytes`)."
        )
    elif facts.dequantized_from:
        dtype = export_report.dtype if export_report is not None else None
        lines.append(
            f"- **Quantization**: trained on a bitsandbytes {_quant_text(facts.dequantized_from)} base; "
            f"dequantized{f' to {dtype}' if dtype else ''} for this checkpoint (no bitsandbytes needed to load it)."
        )
    elif facts.quantization:
        lines.append(f"- **Quantization**: {facts.quantization}.")
    if facts.adapter:
        if facts.merged:
            how = "merged into the weights (a plain checkpoint, no PEFT needed)"
        elif facts.kind == "adapter":
            how = (
                "kept separate: this repo holds the adapter only; its base model is "
                f"{_public(facts.base_model, 'model')}"
            )
        else:
            how = "trained"
        lines.append(f"- **Adapter**: {facts.adapter}, {how}.")
    if not (facts.distilled or facts.pruned or facts.quantization or facts.adapter):
        lines.append("- No compression step was recorded for this checkpoint.")
    return [*lines, ""]


def compression_report_section(facts: CardFacts) -> list[str]:
    """The measured figures: student alone, or teacher vs student with ratios and metric differences.

    >>> from hf_lite.card.facts import resolve_facts
    >>> from hf_lite.card.records import CompressionSummary
    >>> summary = CompressionSummary(student={"parameters": 1000}, teacher_figures={"parameters": 4000})
    >>> compression_report_section(resolve_facts(summary))[4]
    '| parameters | 4,000 | 1,000 | 0.25× |'
    """
    summary = facts.summary
    student, teacher = summary.student, summary.teacher_figures
    has_figures = (
        any(v is not None for v in (student.parameters, student.bytes, student.latency_ms))
        or bool(student.metrics)
        or teacher is not None
    )
    if not has_figures:
        return []
    lines = ["## Compression report", ""]
    if teacher is not None:
        lines += ["| | teacher | student | student / teacher |", "|---|---:|---:|---:|"]
        rows = [
            (
                "parameters",
                _fmt_int(teacher.parameters),
                _fmt_int(student.parameters),
                _ratio(student.parameters, teacher.parameters),
            ),
            (
                "size",
                _fmt_bytes(teacher.bytes),
                _fmt_bytes(student.bytes),
                _ratio(student.bytes, teacher.bytes),
            ),
            (
                "latency (ms)",
                _fmt_num(teacher.latency_ms),
                _fmt_num(student.latency_ms),
                _ratio(student.latency_ms, teacher.latency_ms),
            ),
        ]
        for metric in _dedup([*teacher.metrics, *student.metrics]):
            t, s = teacher.metrics.get(metric), student.metrics.get(metric)
            delta = "–" if t is None or s is None else f"{s - t:+.4g}"
            rows.append((metric, _fmt_num(t), _fmt_num(s), delta))
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    else:
        lines += ["| | student |", "|---|---:|"]
        student_rows = [
            ("parameters", _fmt_int(student.parameters)),
            ("size", _fmt_bytes(student.bytes)),
            ("latency (ms)", _fmt_num(student.latency_ms)),
        ]
        student_rows += [(m, _fmt_num(v)) for m, v in student.metrics.items()]
        lines += [f"| {a} | {b} |" for a, b in student_rows]
    lines.append("")
    if summary.latency_setup:
        lines += [f"Latency measured: {summary.latency_setup}.", ""]
    if summary.dataset or summary.dataset_name:
        where = summary.dataset_name or (summary.dataset if is_hub_id(summary.dataset) else "a local dataset")
        split = f", split `{summary.dataset_split}`" if summary.dataset_split else ""
        lines += [f"Metrics on {where}{split}.", ""]
    if teacher is not None and teacher.metrics and student.metrics:
        lines += ["Metric differences are student minus teacher.", ""]
    return lines


def checkpoint_section(facts: CardFacts) -> list[str]:
    """The uploaded files' own counted figures and the export check's largest difference.

    >>> from hf_lite.card.facts import resolve_facts
    >>> from hf_lite.card.records import CompressionSummary
    >>> checkpoint_section(resolve_facts(CompressionSummary()))  # neither a checkpoint nor an export report
    []
    """
    checkpoint, export_report = facts.checkpoint, facts.export_report
    if checkpoint is None and export_report is None:
        return []
    lines = ["## This checkpoint", ""]
    if checkpoint is not None:
        lines.append(
            f"- {_fmt_int(checkpoint.parameters)} parameters, {_fmt_bytes(checkpoint.bytes_on_disk)} of "
            f"safetensors weights in {len(checkpoint.weight_files)} file(s) (counted from the files)"
            + (f", {checkpoint.dtype}" if checkpoint.dtype else "")
            + (
                " for the tensors that are not quantized"
                if checkpoint.dtype and checkpoint.quantization
                else ""
            )
            + "."
        )
    if export_report is not None and export_report.max_abs_diff is not None:
        shape = "×".join(map(str, export_report.check_inputs_shape or ())) or "a few"
        output = export_report.check_output or "outputs"
        vs_quantized = getattr(export_report, "max_abs_diff_vs_quantized", None)
        reference = (
            "the model they were exported from"
            if vs_quantized is None
            else f"the exact reference they stand for ({str(export_report.check_reference).split(': ')[-1]}, "
            "computed from the dequantized weights)"
        )
        line = (
            f"- Export check: reloaded with stock {'PEFT' if facts.kind == 'adapter' else 'transformers'}, these "
            f"files reproduce the {output} of {reference} to within {export_report.max_abs_diff:.3g} (largest "
            f"absolute difference, {shape} token ids)"
        )
        if vs_quantized is not None:
            line += (
                f"; the quantized model they were exported from, which computes with bitsandbytes' kernels, "
                f"differs from them by up to {vs_quantized:.3g}"
            )
        lines.append(line + ".")
    return [*lines, ""]


def how_to_load_section(facts: CardFacts) -> list[str]:
    """A runnable loading example (stock transformers or PEFT), with what loading needs.

    >>> from hf_lite.card.facts import resolve_facts
    >>> from hf_lite.card.records import CompressionSummary
    >>> print(how_to_load_section(resolve_facts(CompressionSummary(), repo_id="me/tiny"))[5])
    model = AutoModel.from_pretrained("me/tiny")
    """
    loader, shown_id = facts.loader, facts.shown_id
    tok = facts.checkpoint is None or facts.checkpoint.has_tokenizer
    tok_import = ["from transformers import AutoTokenizer"] if tok else []
    lines = ["## How to load", "", "```python"]
    if facts.kind == "adapter" and facts.base_model is not None:
        lines += [
            f"from peft import {loader}",
            *tok_import,
            "",
            f'model = {loader}.from_pretrained("{shown_id}")  # also downloads the base model',
        ]
    elif facts.kind == "adapter":
        lines += [
            "from peft import PeftModel",
            *tok_import,
            "",
            "base = ...  # the base model this adapter was trained on, loaded with from_pretrained",
            f'model = PeftModel.from_pretrained(base, "{shown_id}")',
        ]
    else:
        imports = loader + (", AutoTokenizer" if tok else "")
        lines += [
            f"from transformers import {imports}",
            "",
            f'model = {loader}.from_pretrained("{shown_id}")',
        ]
    if tok:
        lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{shown_id}")')
    lines += ["```", ""]
    if facts.saved_quant:
        lines += ["The stored quantization config is applied on load; `bitsandbytes` must be installed.", ""]
    if facts.kind == "adapter" and facts.quantization:
        lines += [
            f"The adapter was trained on a {_quant_text(facts.quantization)} base: load the base the same way "
            "(pass a `BitsAndBytesConfig`) to reproduce its outputs exactly.",
            "",
        ]
    return lines


def notes_section(facts: CardFacts) -> list[str]:
    """The summary's free-text notes, when there are any.

    >>> from hf_lite.card.facts import resolve_facts
    >>> from hf_lite.card.records import CompressionSummary
    >>> notes_section(resolve_facts(CompressionSummary(notes="Trained for 1k steps.  ")))
    ['## Notes', '', 'Trained for 1k steps.', '']
    """
    notes = facts.summary.notes
    return ["## Notes", "", notes.strip(), ""] if notes else []


# --------------------------------------------------------------------------------------------------
# formatting


def _public(value: str | None, what: str) -> str:
    """Markdown for a reference that may be a Hub id (linked) or a local path (described, never printed)."""
    if value is None:
        return f"an unnamed {what}"
    if is_hub_id(value):
        return f"[`{value}`](https://huggingface.co/{value})"
    return f"a local {what} (not on the Hub)"


def _dedup(items: list[str]) -> list[str]:
    """``items`` without empty strings and repeats, in their first order."""
    return list(dict.fromkeys(i for i in items if i))


def _quant_text(description: str) -> str:
    """``'bnb-4bit (nf4, double quant)'`` -> ``'4-bit (nf4, double quant)'`` (the text says bitsandbytes already)."""
    return description.replace("bnb-4bit", "4-bit").replace("bnb-8bit", "8-bit")


def _fmt_int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _fmt_num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _fmt_bytes(n: int | None) -> str:
    return "–" if n is None else format_bytes(n)


def _ratio(student: float | None, teacher: float | None) -> str:
    if student is None or teacher is None or teacher == 0:
        return "–"
    return f"{student / teacher:.2f}×"
