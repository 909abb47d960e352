"""Output heads and the layers that transform features for them: one list for pruning, quantization and LoRA.

A head maps the body's features to the task's outputs: a language-model head, a classifier, a pooler,
and the transform some encoders put before them (DistilBERT's ``pre_classifier``, BERT's
``cls.predictions.transform``, ModernBERT's ``head.dense``). Heads hold few of the parameters but much
of the accuracy; they are often new for the task (randomly initialised) or tied to the input embeddings.
So hf-lite leaves every layer in a head dense when pruning, in full precision when quantizing for a
classification task, and out of the default LoRA's ``all-linear`` targets.

A module is in a head when one component of its dotted name is one of :data:`HEAD_NAMES`
(``bert.pooler.dense`` is, ``model.layers.0.mlp.down_proj`` is not).

>>> is_head("pre_classifier"), is_head("head.dense"), is_head("bert.pooler.dense")
(True, True, True)
>>> is_head("distilbert.transformer.layer.0.ffn.lin1"), is_head("model.layers.0.mlp.gate_proj")
(False, False)
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["HEAD_NAMES", "HEAD_PATTERNS", "is_head", "head_module_names"]

#: Names of head modules (one component of a dotted module name) and where they occur.
HEAD_NAMES: dict[str, str] = {
    "lm_head": "causal/seq2seq LM heads; RoBERTa's and DeBERTa-v2's MLM heads (lm_head.dense, lm_head.decoder)",
    "embed_out": "GPT-NeoX's output embeddings",
    "classifier": "sequence/token classifiers (BERT, DistilBERT, ModernBERT; RoBERTa's classifier.dense/out_proj)",
    "pre_classifier": "DistilBERT's transform before its classifier",
    "score": "sequence classifiers of decoder models (Llama, Qwen2, Mistral, ...)",
    "pooler": "BERT's pooler (pooler.dense), DeBERTa-v2's ContextPooler",
    "qa_outputs": "question-answering heads",
    "cls": "BERT's MLM/NSP heads (cls.predictions.transform.dense)",
    "vocab_transform": "DistilBERT's MLM transform",
    "vocab_projector": "DistilBERT's MLM output layer",
    "head": "ModernBERT's prediction head before its classifier/decoder (head.dense)",
    "lm_predictions": "DeBERTa-v2's MLM head",
    "predictions": "ALBERT's MLM head",
    "sop_classifier": "ALBERT's sentence-order head",
    "generator_predictions": "ELECTRA's generator head",
    "generator_lm_head": "ELECTRA's generator output layer",
    "discriminator_predictions": "ELECTRA's discriminator head",
    "classification_head": "BART-style sequence classifiers",
    "sequence_summary": "XLNet/XLM summary heads",
}

#: The same as regexes for ``re.search`` on dotted module names: a whole component, anywhere in the name.
HEAD_PATTERNS: tuple[str, ...] = tuple(rf"(^|\.){re.escape(name)}(\.|$)" for name in HEAD_NAMES)

_HEAD_RE = re.compile(r"(^|\.)(" + "|".join(re.escape(n) for n in HEAD_NAMES) + r")(\.|$)")


def is_head(name: str) -> bool:
    """Whether the module called ``name`` (dotted, as in ``named_modules()``) is a head or inside one.

    >>> is_head("lm_head"), is_head("base_model.model.classifier.modules_to_save.default"), is_head("head_dim")
    (True, True, False)
    """
    return _HEAD_RE.search(name) is not None


def head_module_names(model: torch.nn.Module) -> list[str]:
    """The outermost head modules of ``model`` (a head's sub-layers are not listed again), in module order.

    >>> import torch
    >>> model = torch.nn.Module()
    >>> model.body, model.pre_classifier, model.classifier = (torch.nn.Linear(2, 2) for _ in range(3))
    >>> head_module_names(model)
    ['pre_classifier', 'classifier']
    """
    found: list[str] = []
    for name, _ in model.named_modules():
        if name and is_head(name) and not any(name.startswith(f"{outer}.") for outer in found):
            found.append(name)
    return found
