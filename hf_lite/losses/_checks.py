"""Argument checks and the argument vocabulary of :mod:`hf_lite.losses` (loss types, kinds, masks, counts).

Every check raises with the argument, the value, why it is wrong and the fix; the loss-type vocabulary
(:data:`LossType`, :data:`LOSS_TYPES`) is spelled here once and imported by the trainers' configs.

>>> check_loss_type("forward_kl")
'forward_kl'
>>> check_loss_type("kl")
Traceback (most recent call last):
...
ValueError: loss_type='kl' is not a known distillation loss (did you mean 'forward_kl'?). Use one of: forward_kl, reverse_kl, jsd, tv, mse.
"""

from __future__ import annotations

import math
import typing
from typing import Literal

import torch

from hf_lite._utils import did_you_mean

IGNORE_INDEX = -100
#: Token-level divergences understood by :func:`hf_lite.losses.distillation_loss`.
LossType = Literal["forward_kl", "reverse_kl", "jsd", "tv", "mse"]
LOSS_TYPES: tuple[str, ...] = typing.get_args(LossType)
#: Distances of :func:`hf_lite.losses.hidden_state_loss`.
HiddenLossKind = Literal["mse", "cosine"]
HIDDEN_LOSS_KINDS: tuple[str, ...] = typing.get_args(HiddenLossKind)
#: Distances of :func:`hf_lite.losses.attention_loss`.
AttentionLossKind = Literal["kl", "mse"]
ATTENTION_LOSS_KINDS: tuple[str, ...] = typing.get_args(AttentionLossKind)

# Names people type for the loss types, used only to suggest the right spelling (never accepted silently,
# so that a config file names one loss in one way).
LOSS_TYPE_HINTS = {
    "kl": "forward_kl", "kld": "forward_kl", "fkl": "forward_kl", "kl_div": "forward_kl",
    "forward": "forward_kl", "rkl": "reverse_kl", "reverse": "reverse_kl", "js": "jsd",
    "generalized_jsd": "jsd", "gkd": "jsd", "total_variation": "tv", "l2": "mse",
}  # fmt: skip

NumItems = int | float | torch.Tensor | None

VOCAB_FIX = (
    "Token-level distillation needs one vocabulary for both models. If both use the same tokenizer and one "
    "embedding matrix is only padded (resized to a multiple of 64, say), slice both logits to the tokenizer "
    "size: `logits[..., :len(tokenizer)]`. If the tokenizers differ, these losses do not apply: use a "
    "cross-tokenizer method (e.g. ULD or GOLD) or match hidden states with hidden_state_loss."
)


def _suggest(value: str, choices: tuple[str, ...], hints: dict[str, str] | None = None) -> str:
    """`` (did you mean 'x'?)`` from the usual aliases first, then by spelling."""
    key = value.strip().lower().replace("-", "_")
    if hints and key in hints:
        return f" (did you mean {hints[key]!r}?)"
    return did_you_mean(key, choices)


def check_loss_type(loss_type: str) -> str:
    if not isinstance(loss_type, str):
        raise TypeError(
            f"loss_type must be a string, one of {list(LOSS_TYPES)}; got {type(loss_type).__name__}."
        )
    if loss_type not in LOSS_TYPES:
        raise ValueError(
            f"loss_type={loss_type!r} is not a known distillation loss"
            f"{_suggest(loss_type, LOSS_TYPES, LOSS_TYPE_HINTS)}. Use one of: {', '.join(LOSS_TYPES)}."
        )
    return loss_type


def check_kind(kind: str, choices: tuple[str, ...]) -> str:
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a string, one of {list(choices)}; got {type(kind).__name__}.")
    if kind not in choices:
        raise ValueError(
            f"kind={kind!r} is not known{_suggest(kind, choices)}. Use one of: {', '.join(choices)}."
        )
    return kind


def check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in [0, 1]; got {type(alpha).__name__} {alpha!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"alpha={alpha!r} is outside [0, 1]: it weighs the distillation loss against the hard-label loss "
            "(alpha*kd + (1-alpha)*ce). Use 1.0 for pure distillation, 0.5 for an even mix."
        )


def check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(
            f"temperature must be a positive number; got {type(temperature).__name__} {temperature!r}."
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature={temperature!r} must be a finite number > 0: logits are divided by it. Use 1.0 for the "
            "models' own distributions, or 2.0-4.0 to soften them as in Hinton et al."
        )


def check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a number in [0, 1]; got {type(beta).__name__} {beta!r}.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(
            f"beta={beta!r} is outside [0, 1]: 0 gives forward KL(teacher||student), 1 reverse KL(student||teacher), "
            "values between the generalized JSD. Use e.g. beta=0.5."
        )


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int; got {type(chunk_size).__name__} {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(
            f"chunk_size={chunk_size} must be >= 1 (tokens per chunk). Use e.g. 128 (the default); lower it if memory is short."
        )


def check_num_items(num_items_in_batch: NumItems) -> torch.Tensor | int | float:
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(
                f"num_items_in_batch must be a number or a one-element tensor; got a tensor of shape "
                f"{tuple(num_items_in_batch.shape)}. Pass the total count of valid tokens, e.g. (labels != -100).sum()."
            )
        return num_items_in_batch
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float)):
        raise TypeError(
            f"num_items_in_batch must be an int, a float or a one-element tensor; got "
            f"{type(num_items_in_batch).__name__}."
        )
    if not (math.isfinite(num_items_in_batch) and num_items_in_batch >= 0):
        raise ValueError(
            f"num_items_in_batch={num_items_in_batch!r} must be a count >= 0: the number of valid tokens in the whole "
            "accumulated batch (what transformers.Trainer passes to compute_loss), or None for this batch's count."
        )
    return num_items_in_batch


def check_tensor(name: str, tensor: torch.Tensor, *, floating: bool = True) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}.")
    if floating and not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor; got dtype {tensor.dtype}.")
    if not floating and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor; got dtype {tensor.dtype}.")


def check_pair(student: torch.Tensor, teacher: torch.Tensor, s_name: str, t_name: str) -> None:
    check_tensor(s_name, student)
    check_tensor(t_name, teacher)
    if student.ndim == 0 or teacher.ndim == 0:
        raise ValueError(f"{s_name} and {t_name} must have a vocabulary dimension: (..., vocab).")
    if student.shape == teacher.shape:
        return
    if student.shape[:-1] == teacher.shape[:-1]:
        raise ValueError(
            f"{s_name} has vocab={student.shape[-1]} and {t_name} vocab={teacher.shape[-1]}. {VOCAB_FIX}"
        )
    raise ValueError(
        f"{s_name}.shape={tuple(student.shape)} and {t_name}.shape={tuple(teacher.shape)} differ: both must come "
        "from the same batch (same input_ids and padding, both shifted with shift_for_causal_lm or neither)."
    )


def valid_mask(
    lead_shape: torch.Size | tuple[int, ...],
    mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean ``lead_shape`` tensor of the positions that count, or ``None`` when all do."""
    valid = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor (bool or 0/1 integers); got {type(mask).__name__}.")
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(
                f"mask must be bool or 0/1 integers (an attention_mask); got dtype {mask.dtype}. Use mask.bool()."
            )
        if mask.shape != lead_shape:
            raise ValueError(
                f"mask.shape={tuple(mask.shape)} must be {tuple(lead_shape)}, the inputs' shape without the last "
                "dimension. For a causal LM shift the mask like the labels: mask[:, 1:]."
            )
        valid = mask.to(device=device, dtype=torch.bool)
    if labels is not None:
        check_tensor("labels", labels, floating=False)
        if labels.shape != lead_shape:
            raise ValueError(
                f"labels.shape={tuple(labels.shape)} must be {tuple(lead_shape)}, the inputs' shape without the last "
                "dimension. For a causal LM align the labels with shift_labels(labels) (or slice both models' logits "
                "with shift_for_causal_lm)."
            )
        from_labels = labels.to(device) != IGNORE_INDEX
        valid = from_labels if valid is None else valid & from_labels
    return valid


def check_labels_in_range(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The valid-position mask of ``labels`` after checking that every valid label is a class of ``logits``."""
    check_tensor("logits", logits)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class ids; got {type(labels).__name__}.")
    valid = valid_mask(logits.shape[:-1], None, labels, logits.device)
    kept = labels.to(logits.device)[valid]
    classes = logits.shape[-1]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= classes):
        raise ValueError(
            f"labels hold ids in [{int(kept.min())}, {int(kept.max())}] but the logits have {classes} classes: "
            "labels must be class ids in [0, num_classes) or -100 for positions left out."
        )
    return valid
