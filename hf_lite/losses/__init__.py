"""Distillation losses as pure functions: tensors in, a scalar out, no Trainer inside.

Every loss here follows the same contract, so a trainer can swap one for another:

- **fp32 maths.** Inputs in bf16/fp16 are upcast inside (fp64 stays fp64); the result is fp32 (or fp64).
- **Masking.** Positions with ``labels == -100`` (the transformers convention) or ``mask == 0`` (e.g. an
  ``attention_mask``) are left out *before* any computation, so padding that holds ``inf`` or ``nan`` cannot
  leak into the loss or its gradient. When both are given a position must pass both.
- **Normalization.** ``loss = sum over valid positions / num_items_in_batch`` when ``num_items_in_batch`` is
  given (what ``transformers.Trainer`` passes to ``compute_loss``: the valid-token count of the whole
  accumulated batch), else ``/ number of valid positions in this batch``. With ``num_items_in_batch`` the
  sum of the micro-batch losses equals the loss of the full batch, so gradient accumulation is exact.
- **Empty batches.** An all-masked batch gives exactly ``0.`` (not NaN) and an all-zero gradient.
- **Temperature.** Probability divergences use ``softmax(logits / T)`` and are multiplied by ``T**2`` so the
  gradient keeps its size as ``T`` changes (Hinton et al., 2015).

The house, one module per kind of loss (each re-exported here):

- :mod:`~hf_lite.losses.dispatch`: :func:`logit_distillation_loss`, the one entry point a trainer calls; it
  picks the fused, chunked or top-k-cache path below. :func:`mix_teacher_logits` for several teachers.
- :mod:`~hf_lite.losses.logits`: token-level divergences between student and teacher logits of shape
  ``(..., vocab)``: :func:`forward_kl_loss`, :func:`reverse_kl_loss`, :func:`generalized_jsd_loss`,
  :func:`total_variation_loss`, :func:`mse_logits_loss` and the dispatcher :func:`distillation_loss`;
  :func:`cross_entropy_loss`, :func:`combine_losses`, :func:`shift_labels`, :func:`shift_for_causal_lm`.
- :mod:`~hf_lite.losses.chunked`: :func:`chunked_distillation_loss` (and
  :func:`chunked_distillation_loss_from_hidden`, which never builds the full logits) give the same value and
  gradient with memory bounded by ``chunk_size`` tokens, for large vocabularies.
- :mod:`~hf_lite.losses.topk`: a cached teacher stored as its top-k log-probabilities, :func:`teacher_topk`
  and :func:`topk_distillation_loss`.
- :mod:`~hf_lite.losses.mixed`: distillation plus hard-label cross-entropy in one pass,
  :func:`distillation_and_ce_loss` and :func:`topk_distillation_and_ce_loss`.
- :mod:`~hf_lite.losses.cross_tokenizer`: a student and a teacher with different tokenizers, compared on aligned
  spans (:func:`hf_lite.data.alignment_tensors`): :func:`uld_loss` (sorted probabilities, Boizard et al. 2024)
  and :func:`hybrid_uld_loss` (GOLD: the shared vocabulary one to one, ULD for the rest).
- :mod:`~hf_lite.losses.intermediate`: intermediate layers, :func:`hidden_state_loss`, :func:`attention_loss`.
- :mod:`~hf_lite.losses.fused`: the closed-form-gradient kernels behind them (no new API: the losses
  above call them). Private: ``_checks`` (argument checks, the loss-type vocabulary), ``_maths`` (arithmetic).

To add a loss type: add its name to :data:`LossType` and its per-row formula to ``_maths.token_divergence``
(and a closed-form gradient to ``fused`` if it is worth one); trainers and configs pick it up from here.

>>> import torch
>>> from hf_lite.losses import distillation_loss, shift_labels
>>> student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)  # a causal LM's (batch, seq, vocab)
>>> labels = torch.tensor([[-100, 3, 4, 5, -100], [-100, -100, 1, 2, 3]])
>>> loss = distillation_loss(student, teacher, loss_type="jsd", temperature=2.0, labels=shift_labels(labels))
>>> loss.dtype, loss.ndim
(torch.float32, 0)
"""

from __future__ import annotations

from hf_lite.losses._checks import (
    ATTENTION_LOSS_KINDS,
    HIDDEN_LOSS_KINDS,
    IGNORE_INDEX,
    LOSS_TYPES,
    AttentionLossKind,
    HiddenLossKind,
    LossType,
    NumItems,
)
from hf_lite.losses.chunked import chunked_distillation_loss, chunked_distillation_loss_from_hidden
from hf_lite.losses.cross_tokenizer import HYBRID_LOSS_TYPES, hybrid_uld_loss, uld_loss
from hf_lite.losses.dispatch import TOPK_LOSS_TYPES, logit_distillation_loss, mix_teacher_logits
from hf_lite.losses.intermediate import attention_loss, hidden_state_loss
from hf_lite.losses.logits import (
    combine_losses,
    cross_entropy_loss,
    distillation_loss,
    forward_kl_loss,
    generalized_jsd_loss,
    mse_logits_loss,
    reverse_kl_loss,
    shift_for_causal_lm,
    shift_labels,
    total_variation_loss,
)
from hf_lite.losses.mixed import DistillationLosses, distillation_and_ce_loss, topk_distillation_and_ce_loss
from hf_lite.losses.topk import teacher_topk, topk_distillation_loss

__all__ = [
    "ATTENTION_LOSS_KINDS",
    "HIDDEN_LOSS_KINDS",
    "HYBRID_LOSS_TYPES",
    "IGNORE_INDEX",
    "LOSS_TYPES",
    "TOPK_LOSS_TYPES",
    "AttentionLossKind",
    "DistillationLosses",
    "HiddenLossKind",
    "LossType",
    "NumItems",
    "attention_loss",
    "chunked_distillation_loss",
    "chunked_distillation_loss_from_hidden",
    "combine_losses",
    "cross_entropy_loss",
    "distillation_and_ce_loss",
    "distillation_loss",
    "forward_kl_loss",
    "generalized_jsd_loss",
    "hidden_state_loss",
    "hybrid_uld_loss",
    "logit_distillation_loss",
    "mix_teacher_logits",
    "mse_logits_loss",
    "reverse_kl_loss",
    "shift_for_causal_lm",
    "shift_labels",
    "teacher_topk",
    "topk_distillation_and_ce_loss",
    "topk_distillation_loss",
    "total_variation_loss",
    "uld_loss",
]
