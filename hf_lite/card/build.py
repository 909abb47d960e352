"""Model cards for compressed checkpoints: what was done, the measured compression report, how to load it.

:func:`build_model_card` returns a ``huggingface_hub.ModelCard`` whose metadata (``base_model``, library,
tags, datasets, metrics and ``model-index`` evaluation results) passes the Hub's validation, and whose text
states the distillation teacher, the pruning method and sparsity, the quantization, the adapter, the
compression report (parameters, bytes, measured latency, task metrics, teacher vs student) and how to load
the checkpoint. :func:`push_to_hub <hf_lite.hub.push_to_hub>` uses it, and so can a ``Trainer``'s push.
It checks its arguments, resolves the facts once (:mod:`hf_lite.card.facts`) and assembles the sections
(:mod:`hf_lite.card.sections`).

Cards never name local paths (a base model, teacher or dataset given as a folder is left out of the
metadata and described as "a local checkpoint"), and hold no timestamps, so the same inputs give the same
card, byte for byte, and pushing it again uploads nothing.

>>> from hf_lite.card import build_model_card
>>> card = build_model_card({"teacher": "org/teacher", "student": {"parameters": 1000}}, repo_id="me/tiny")
>>> card.data.tags
['hf-lite', 'distillation']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard

from hf_lite._utils import is_hub_id
from hf_lite.card.facts import resolve_facts
from hf_lite.card.records import CompressionSummary
from hf_lite.card.sections import (
    card_metadata,
    checkpoint_section,
    compression_report_section,
    how_to_load_section,
    notes_section,
    title_section,
    what_was_done_section,
)
from hf_lite.checkpoint import CheckpointInfo, inspect_checkpoint

if TYPE_CHECKING:
    from hf_lite.exporting import ExportReport

__all__ = ["build_model_card"]

#: The card's text, section by section, in order.
SECTIONS = (
    title_section,
    what_was_done_section,
    compression_report_section,
    checkpoint_section,
    how_to_load_section,
    notes_section,
)


def build_model_card(
    report: CompressionSummary | Mapping[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    checkpoint: CheckpointInfo | str | os.PathLike | None = None,
    export_report: ExportReport | None = None,
    base_model: str | None = None,
    license: str | None = None,  # noqa: A002 - the Hub's metadata key
    language: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    tags: list[str] | None = None,
    pipeline_tag: str | None = None,
) -> ModelCard:
    """Build the model card of a compressed checkpoint (metadata + Markdown), ready for ``card.push_to_hub``
    or to be written as ``README.md``.

    The metadata holds ``base_model`` (a Hub id only), ``library_name`` (``peft`` for an adapter, else
    ``transformers``), ``pipeline_tag``, ``tags`` (``hf-lite`` plus ``distillation``, ``pruning``,
    ``bitsandbytes``/``4-bit``/``8-bit``, ``lora``/``peft`` as they apply), ``datasets`` and, when the report
    names a task and a Hub dataset, the student's metrics as ``model-index`` results. The text states what
    was done, the compression report (teacher vs student: parameters, bytes, measured latency, metrics), the
    uploaded checkpoint's own counted figures and export check, and how to load it.

    Args:
        report: a :class:`CompressionSummary` or a dict with its field names (the trainers' report, or
            figures you measured). ``None`` for a card from the checkpoint facts alone.
        repo_id: the repo the card is for (its name becomes the model name; used in the loading example).
        checkpoint: the folder being published (a ``Trainer`` output dir will do), or its
            :class:`~hf_lite.checkpoint.CheckpointInfo` (counted parameters and bytes, quantization, adapter, architecture).
        export_report: the :class:`~hf_lite.exporting.ExportReport` of the export (merge, dequantization,
            pruning made permanent, check difference).
        base_model: Hub id of the model this one derives from; default: the export report's or the
            adapter's base when it is a Hub id. Local paths are refused (``ValueError``).
        license, language, datasets, tags, pipeline_tag: card metadata (``datasets`` are Hub dataset ids;
            local paths are left out).

    Returns:
        A ``huggingface_hub.ModelCard``.

    Example:

    >>> card = build_model_card(
    ...     {"teacher": "org/bert-base", "pruning": "magnitude", "sparsity": 0.5, "task": "text-classification",
    ...      "dataset": "stanfordnlp/sst2", "student": {"parameters": 1000, "metrics": {"accuracy": 0.9}}},
    ...     repo_id="me/tiny-bert")
    >>> card.data.eval_results[0].metric_value
    0.9
    """
    summary = CompressionSummary.from_dict(report) if report is not None else CompressionSummary()
    if repo_id is not None and not isinstance(repo_id, str):
        raise TypeError(f"repo_id must be a string or None; got {type(repo_id).__name__}.")
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = inspect_checkpoint(checkpoint, refuse_pickles=False)  # describing is not publishing
    elif checkpoint is not None and not isinstance(checkpoint, CheckpointInfo):
        raise TypeError(
            f"checkpoint must be a folder path, a CheckpointInfo or None; got {type(checkpoint).__name__}."
        )
    if base_model is not None:
        if not isinstance(base_model, str):
            raise TypeError(
                f"base_model must be a Hub repo id string or None; got {type(base_model).__name__}."
            )
        if not is_hub_id(base_model):
            raise ValueError(
                f"base_model={base_model!r} is not a Hub repo id ('org/name'). Model cards only name models on "
                "the Hub: pass the base model's Hub id, or None to leave it out."
            )
    for name, value in (("tags", tags), ("datasets", datasets), ("language", language)):
        if value is not None and not isinstance(value, (str, list, tuple)):
            raise TypeError(
                f"{name} must be a string, a list of strings or None; got {type(value).__name__}."
            )
    for name, value in (("license", license), ("pipeline_tag", pipeline_tag)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None; got {type(value).__name__}.")

    facts = resolve_facts(
        summary,
        checkpoint=checkpoint,
        export_report=export_report,
        base_model=base_model,
        repo_id=repo_id,
        pipeline_tag=pipeline_tag,
    )
    data = card_metadata(facts, license=license, language=language, datasets=datasets, tags=tags)
    lines = [line for section in SECTIONS for line in section(facts)]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines).rstrip() + "\n"
    return ModelCard(content)
