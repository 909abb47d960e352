"""Calibration data for pruning: checks of calibration batches and the forward passes and hooks that read them.

Calibration batches are dicts of tensors (a tokenizer's output, ``model(**batch)``); padded positions
(``attention_mask == 0``) are left out of every statistic.

>>> import torch
>>> layer = torch.nn.Linear(3, 2)
>>> with InputAbsMean({"l": layer}) as hooks:
...     _ = layer(torch.tensor([[[1.0, -2.0, 0.0]]]))
>>> hooks.means()["l"].tolist()
[1.0, 2.0, 0.0]
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "InputAbsMean",
    "check_calibration",
    "check_calibration_batches",
    "forward_kwargs",
    "mean_abs_inputs",
    "real_tokens",
    "to_device",
    "token_mask",
]


def check_calibration_batches(
    calibration_batches: Iterable[Mapping[str, Any]] | None,
) -> list[Mapping[str, Any]]:
    """Materialize ``calibration_batches`` and check each is a dict of tensors with ``input_ids`` (or
    ``inputs_embeds``). The messages name Wanda (``wanda_prune_`` passes its argument straight here);
    :func:`check_calibration` first checks for missing data with a message naming its own caller.

    >>> import torch
    >>> len(check_calibration_batches([{"input_ids": torch.ones(1, 3, dtype=torch.long)}]))
    1
    """
    if calibration_batches is None:
        raise ValueError(
            "calibration_batches=None: Wanda scores weights by the norms of their inputs, so it needs "
            "calibration data. Pass a few batches of tokenized text (dicts with input_ids and "
            "attention_mask), e.g. 128 sequences; or use magnitude_prune_ for data-free pruning."
        )
    if isinstance(calibration_batches, Mapping):
        raise TypeError(
            "calibration_batches must be an iterable of batches (dicts of tensors), not a single dict; "
            "wrap one batch in a list: [batch]."
        )
    if not isinstance(calibration_batches, Iterable):
        raise TypeError(
            "calibration_batches must be an iterable of dicts of tensors; "
            f"got {type(calibration_batches).__name__}."
        )
    # Materialized: sequential calibration goes over the batches once per block (they are small: token ids).
    batches = list(calibration_batches)
    if not batches:
        raise ValueError(
            "calibration_batches is empty: Wanda needs calibration data. Pass at least one batch of "
            "tokenized text (a dict with input_ids and attention_mask)."
        )
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping):
            raise TypeError(f"calibration batch {i} must be a dict of tensors; got {type(batch).__name__}.")
        if "input_ids" not in batch and "inputs_embeds" not in batch:
            raise ValueError(
                f"calibration batch {i} has keys {sorted(batch)} but no 'input_ids' (or 'inputs_embeds'); "
                "pass the tokenizer's output, e.g. tokenizer(texts, return_tensors='pt', padding=True)."
            )
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"calibration batch {i}[{key!r}] must be a torch.Tensor; got {type(value).__name__} "
                    "(tokenize with return_tensors='pt')."
                )
    return batches


def check_calibration(
    calibration_batches: Iterable[Mapping[str, Any]] | None, why: str, *, labels: bool = False
) -> list[Mapping[str, Any]]:
    """Materialize and check calibration batches (dicts of tensors with ``input_ids``).

    Args:
        calibration_batches: iterable of dicts passed as ``model(**batch)``.
        why: what needs the data, for the error message (e.g. ``"importance='activation'"``).
        labels: whether every batch must carry ``labels`` (for a loss).

    Returns:
        The batches as a list.

    >>> import torch
    >>> len(check_calibration([{"input_ids": torch.ones(1, 3, dtype=torch.long)}], "block influence"))
    1
    """
    if isinstance(calibration_batches, Iterable) and not isinstance(
        calibration_batches, (Mapping, str, bytes)
    ):
        calibration_batches = list(calibration_batches)  # also materializes generators, once
    if calibration_batches is None or (isinstance(calibration_batches, list) and not calibration_batches):
        raise ValueError(
            f"calibration_batches={calibration_batches!r}: {why} needs calibration data. Pass a list of "
            "tokenized batches, e.g. [tokenizer(texts, return_tensors='pt', padding=True)]"
            + (" with 'labels'" if labels else "")
            + ", or use importance='magnitude', which needs no data."
        )
    batches = check_calibration_batches(calibration_batches)
    if labels:
        missing = [i for i, b in enumerate(batches) if "labels" not in b]
        if missing:
            raise ValueError(
                f"calibration batches {missing[:5]} have no 'labels': {why} takes the gradient of the loss, "
                "which needs labels. Add them (for a causal LM: batch['labels'] = input_ids with padding set "
                "to -100; for classification: the class ids), or use importance='activation'."
            )
    return batches


def token_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The batch's ``attention_mask`` as booleans (``True`` = real token), or ``None`` without one."""
    mask = batch.get("attention_mask")
    return None if mask is None else mask.bool()


def real_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` of shape ``(batch, seq, ...)`` -> ``(tokens, ...)``, padded positions dropped when the mask fits."""
    if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    return x.reshape(-1, *x.shape[2:]) if x.dim() >= 3 else x


def forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """``{"use_cache": False}`` for models that take it (a KV cache would only cost memory here), else ``{}``."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch with every tensor moved to ``device``."""
    return {k: v.to(device) for k, v in batch.items()}


class InputAbsMean:
    """Forward pre-hooks accumulating the mean ``|input|`` per input feature of each layer, real tokens only.

    Use as a context manager (the hooks are removed on exit); set :attr:`mask` to the batch's token mask
    before each forward pass; :meth:`means` gives ``{key: (in,)}``.
    """

    def __init__(self, layers: Mapping[Any, nn.Module]):
        self.layers = layers
        self.sums: dict[Any, torch.Tensor] = {}
        self.counts = dict.fromkeys(layers, 0)
        self.mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> InputAbsMean:
        for key, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._hook(key), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, key: Any):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = (args[0] if args else next(iter(kwargs.values()))).detach()  # (batch, seq, in)
            x = real_tokens(x, self.mask).reshape(-1, x.shape[-1]).float().abs()  # (tokens, in)
            total = x.sum(dim=0)
            self.sums[key] = self.sums[key] + total if key in self.sums else total
            self.counts[key] += x.shape[0]

        return hook

    def means(self) -> dict[Any, torch.Tensor]:
        """``{key: mean |input| per input feature}``; ``ValueError`` when a layer saw no real token."""
        silent = [k for k, c in self.counts.items() if c == 0]
        if silent:
            raise ValueError(
                f"layers of blocks {silent[:5]} saw no real token during the calibration passes; check that "
                "calibration_batches hold input_ids and an attention_mask with some ones."
            )
        return {k: self.sums[k] / self.counts[k] for k in self.layers}


@torch.no_grad()
def mean_abs_inputs(
    model: nn.Module, layers: Mapping[Any, nn.Module], batches: list[Mapping[str, torch.Tensor]]
) -> dict[Any, torch.Tensor]:
    """Mean ``|input|`` per input feature of each of ``layers`` over the real tokens of ``batches`` (eval mode,
    no gradients): ``{key: (in,)}``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with InputAbsMean(layers) as collector:
            for batch in batches:
                inputs = to_device(batch, device)
                collector.mask = token_mask(inputs)
                model(**inputs, **forward_kwargs(model))
    finally:
        model.train(was_training)
    return collector.means()
