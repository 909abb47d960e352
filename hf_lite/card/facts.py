"""The facts a model card states, resolved once from the summary, the checkpoint's files and the export.

:func:`resolve_facts` decides each fact of :class:`CardFacts` from its sources (the summary's word first,
then the saved files', then the export report's) and the loader class and pipeline tag the checkpoint's
architecture implies; the card's sections only format them.

>>> from hf_lite.card.records import CompressionSummary
>>> facts = resolve_facts(CompressionSummary(teacher="org/big"), repo_id="me/small")
>>> facts.name, facts.distilled, facts.pruned, facts.loader
('small', True, False, 'AutoModel')
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from hf_lite.card.records import CompressionSummary
from hf_lite.checkpoint import CheckpointInfo

if TYPE_CHECKING:
    from hf_lite.exporting import ExportReport

__all__ = ["CardFacts", "resolve_facts"]

_ARCH_SUFFIXES = (  # architecture class suffix -> (pipeline tag, Auto class)
    ("ForCausalLM", "text-generation", "AutoModelForCausalLM"),
    ("LMHeadModel", "text-generation", "AutoModelForCausalLM"),
    ("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "token-classification", "AutoModelForTokenClassification"),
    ("ForConditionalGeneration", "text2text-generation", "AutoModelForSeq2SeqLM"),
    ("ForQuestionAnswering", "question-answering", "AutoModelForQuestionAnswering"),
    ("ForMaskedLM", "fill-mask", "AutoModelForMaskedLM"),
    ("Model", "feature-extraction", "AutoModel"),
)
_PEFT_TASKS = {  # PEFT task type -> (pipeline tag, AutoPeftModel class)
    "CAUSAL_LM": ("text-generation", "AutoPeftModelForCausalLM"),
    "SEQ_CLS": ("text-classification", "AutoPeftModelForSequenceClassification"),
    "TOKEN_CLS": ("token-classification", "AutoPeftModelForTokenClassification"),
    "SEQ_2_SEQ_LM": ("text2text-generation", "AutoPeftModelForSeq2SeqLM"),
    "QUESTION_ANS": ("question-answering", "AutoPeftModelForQuestionAnswering"),
    "FEATURE_EXTRACTION": ("feature-extraction", "AutoPeftModelForFeatureExtraction"),
}


@dataclasses.dataclass
class CardFacts:
    """Everything the card's sections need, each fact resolved from its sources in one place.

    Args:
        summary: the compression summary (what was done, the measured figures).
        checkpoint: the published folder's facts, or ``None``.
        export_report: the export's report, or ``None``.
        base_model: Hub id of the model this one derives from (given, or the export's / adapter's base).
        kind: ``"model"`` or ``"adapter"``.
        loader: the class whose ``from_pretrained`` loads the checkpoint (``"AutoModelForCausalLM"``...).
        pipeline: the card's pipeline tag; ``eval_task``: the task of its ``model-index`` results.
        saved_quant: quantization of the saved weights; ``dequantized_from``: of the model they were
            dequantized from; ``quantization``: what the card calls the quantization.
        adapter, merged: the adapter and whether it was merged into the weights.
        sparsity: counted sparsity; ``pruned``, ``distilled``: whether these steps were done.
        name: the model's name (the repo name); ``shown_id``: the repo id used in the loading example.

    >>> facts = resolve_facts(CompressionSummary(adapter="LORA r=8"))
    >>> facts.adapter, facts.merged, facts.shown_id
    ('LORA r=8', None, 'your-org/your-model')
    """

    summary: CompressionSummary
    checkpoint: CheckpointInfo | None
    export_report: ExportReport | None
    base_model: str | None
    kind: str
    loader: str
    pipeline: str | None
    eval_task: str | None
    saved_quant: str | None
    dequantized_from: str | None
    quantization: str | None
    adapter: str | None
    merged: bool | None
    sparsity: float | None
    pruned: bool
    distilled: bool
    name: str
    shown_id: str


def resolve_facts(
    summary: CompressionSummary,
    *,
    checkpoint: CheckpointInfo | None = None,
    export_report: ExportReport | None = None,
    base_model: str | None = None,
    repo_id: str | None = None,
    pipeline_tag: str | None = None,
) -> CardFacts:
    """Resolve the card's facts: the summary's word first, then the saved files', then the export report's.

    Args:
        summary: the compression summary.
        checkpoint: the published folder's :class:`~hf_lite.checkpoint.CheckpointInfo`, or ``None``.
        export_report: the export's report, or ``None``.
        base_model: a checked Hub id, or ``None`` to take the export report's or the adapter's base.
        repo_id: the repo the card is for, or ``None``.
        pipeline_tag: a pipeline tag that overrides the one the architecture implies.

    Returns:
        A :class:`CardFacts`.

    >>> resolve_facts(CompressionSummary(task="text-classification"), pipeline_tag="fill-mask").eval_task
    'text-classification'
    """
    if base_model is None:
        base_model = (export_report.base_model if export_report is not None else None) or (
            checkpoint.base_model if checkpoint is not None else None
        )
    kind = checkpoint.kind if checkpoint is not None else (export_report.kind if export_report else "model")
    arch_tag, loader = _arch_facts(checkpoint)
    pipeline = pipeline_tag or arch_tag or summary.task
    saved_quant = checkpoint.quantization if checkpoint is not None else None
    if saved_quant is None and export_report is not None:
        saved_quant = export_report.quantization
    adapter = (
        summary.adapter
        or (export_report.adapter if export_report else None)
        or (checkpoint.adapter if checkpoint is not None else None)
    )
    merged = summary.adapter_merged
    if merged is None and export_report is not None and export_report.adapter is not None:
        merged = export_report.adapter_merged
    if merged is None and kind == "adapter":
        merged = False
    dequantized_from = export_report.dequantized_from if export_report is not None else None
    sparsity = summary.sparsity
    if sparsity is None and export_report is not None:
        sparsity = export_report.sparsity
    return CardFacts(
        summary=summary,
        checkpoint=checkpoint,
        export_report=export_report,
        base_model=base_model,
        kind=kind,
        loader=loader,
        pipeline=pipeline,
        eval_task=summary.task or pipeline,
        saved_quant=saved_quant,
        dequantized_from=dequantized_from,
        quantization=summary.quantization or saved_quant or dequantized_from,
        adapter=adapter,
        merged=merged,
        sparsity=sparsity,
        pruned=summary.pruning is not None or bool(export_report and export_report.pruning_made_permanent),
        distilled=summary.teacher is not None or summary.distillation is not None,
        name=repo_id.split("/")[-1] if repo_id else "hf-lite compressed model",
        shown_id=repo_id or "your-org/your-model",
    )


def _arch_facts(info: CheckpointInfo | None) -> tuple[str | None, str]:
    """(pipeline tag, loader class name) for a checkpoint."""
    if info is None:
        return None, "AutoModel"
    if info.kind == "adapter":
        tag, auto = _PEFT_TASKS.get(str(info.adapter_task_type), (None, "AutoPeftModel"))
        return tag, auto
    arch = info.architecture or ""
    auto_name = _auto_class_name(info.model_type, arch)
    for suffix, tag, auto in _ARCH_SUFFIXES:
        if arch.endswith(suffix):
            return tag, auto_name or auto
    return None, auto_name or "AutoModel"


def _auto_class_name(model_type: str | None, arch: str) -> str | None:
    """The transformers Auto class whose mapping sends ``model_type`` to ``arch``, by name (no model import)."""
    if not model_type or not arch:
        return None
    # imported here: transformers' Auto mappings import torch, which a card built from files never needs
    from transformers.models.auto import modeling_auto as ma

    for auto, mapping in (
        ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
        ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
        ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
        ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
        ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
        ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
        ("AutoModel", "MODEL_MAPPING_NAMES"),
    ):
        names = getattr(ma, mapping, {}).get(model_type)
        if names == arch or (isinstance(names, (tuple, list)) and arch in names):
            return auto
    return None
