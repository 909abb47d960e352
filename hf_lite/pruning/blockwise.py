"""Calibration one transformer block at a time, on cached block inputs (the layer-wise pass of Wanda and SparseGPT).

Sequential one-shot pruning scores block ``b`` on the activations of the already-pruned blocks before it.
Running the whole model once per block costs ``num_blocks`` full forward passes over the calibration data
(30 passes for a 30-block LLM). :class:`BlockInputs` instead runs the dense model once, keeping block 0's input
hidden states and the keyword arguments every block was called with (attention masks, rotary position
embeddings, per-layer mask kinds such as Gemma's sliding windows), then feeds the cached hidden states
through one block at a time: ``run(b)`` calls block ``b`` on them (hooks registered by the caller see its
layers' inputs), ``advance(b)`` replaces them by block ``b``'s outputs with its current (pruned) weights.
Total cost: about three forward passes instead of ``num_blocks``; extra memory: the calibration tokens'
hidden states, twice (``tokens x hidden`` floats each).

Only for models whose blocks form one chain (decoder-only and encoder-only models: the block list of
:func:`hf_lite.pruning.sites.find_layer_list`); :func:`blockwise_supported` says whether a model qualifies,
and callers fall back to whole-model passes otherwise (encoder-decoder models, whose decoder reads the
encoder's output).

>>> import torch
>>> from hf_lite.testing import build_tiny_model
>>> model, tok = build_tiny_model("llama")
>>> batches = [tok(["the cat sees a dog"], return_tensors="pt")]
>>> with torch.no_grad():
...     inputs = BlockInputs(model, batches)
...     for b in range(len(inputs.blocks)):
...         inputs.advance(b)
...     full = model.model(**batches[0]).last_hidden_state  # after the final norm
>>> torch.allclose(model.model.norm(inputs.hidden[0]), full, atol=1e-5)
True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hf_lite.pruning.calibration import forward_kwargs
from hf_lite.pruning.sites import find_layer_list, model_config

__all__ = [
    "BlockInputs",
    "block_of",
    "blockwise_supported",
    "block_names",
    "calibration_passes",
    "forward_calibration",
]


def block_of(name: str) -> str:
    """The transformer block a layer belongs to: its name up to the first numeric component; a layer
    outside numbered blocks is its own group.

    >>> block_of("model.layers.3.mlp.up_proj"), block_of("lm_head")
    ('model.layers.3', 'lm_head')
    """
    match = re.match(r"^(.*?\.\d+)(\.|$)", name)
    return match.group(1) if match else name


class _Stop(Exception):
    """Raised by the last block's hook: the rest of the model (final norm, head) is not needed."""


def blockwise_supported(model: nn.Module) -> bool:
    """Whether the model's blocks form one chain that :class:`BlockInputs` can run one at a time.

    >>> from hf_lite.testing import build_tiny_model
    >>> blockwise_supported(build_tiny_model("llama")[0]), blockwise_supported(build_tiny_model("t5", task="seq2seq-lm")[0])
    (True, False)
    """
    try:
        if getattr(model_config(model), "is_encoder_decoder", False):
            return False
        find_layer_list(model)
    except (TypeError, ValueError):  # not a transformers model, or no single block list
        return False
    return True


def block_names(model: nn.Module) -> list[str]:
    """The module name of every block, in order (``model.layers.0``, ...), as ``named_modules`` spells it.

    >>> from hf_lite.testing import build_tiny_model
    >>> block_names(build_tiny_model("gpt2")[0])[:2]
    ['transformer.h.0', 'transformer.h.1']
    """
    index = {id(block): i for i, block in enumerate(find_layer_list(model))}
    names: list[str | None] = [None] * len(index)
    for name, module in model.named_modules():
        i = index.get(id(module))
        if i is not None and names[i] is None:
            names[i] = name
    return [n for n in names if n is not None]


class BlockInputs:
    """The calibration batches' hidden states at the input of one block, advanced block by block.

    Args:
        model: a decoder-only or encoder-only model (see :func:`blockwise_supported`); run in eval mode by
            the caller, under ``torch.no_grad()``.
        batches: calibration batches, ``model(**batch)`` inputs.

    Attributes:
        blocks: the model's blocks, in order.
        hidden: for each batch, the hidden states entering the next block to run (block 0's input at first).
        token_masks: for each batch, its ``attention_mask`` as booleans (``[]`` without one), for collectors
            that drop padded positions.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Mapping[str, Any]]):
        if not blockwise_supported(model):
            raise ValueError(
                f"{type(model).__name__} has no single chain of blocks (an encoder-decoder, or no block list), "
                "so its calibration cannot run block by block; run whole-model forward passes instead."
            )
        self.blocks = list(find_layer_list(model))
        self.hidden: list[torch.Tensor] = []
        self.token_masks: list[list[torch.Tensor]] = []
        self._args: list[
            list[tuple[Any, ...]]
        ] = []  # [batch][block]: positional args after the hidden states
        self._kwargs: list[list[dict[str, Any]]] = []  # [batch][block]: keyword args (masks, positions, ...)
        self._capture(model, batches)

    def _capture(self, model: nn.Module, batches: Sequence[Mapping[str, Any]]) -> None:
        device = next(model.parameters()).device
        extra = forward_kwargs(model)
        handles = [
            block.register_forward_pre_hook(self._hook(i), with_kwargs=True)
            for i, block in enumerate(self.blocks)
        ]
        try:
            for batch in batches:
                self._args.append([])
                self._kwargs.append([])
                inputs = {k: v.to(device) for k, v in batch.items()}
                try:
                    model(**inputs, **extra)
                except _Stop:
                    pass
                if len(self._args[-1]) != len(self.blocks):
                    raise RuntimeError(
                        f"{type(model).__name__} called {len(self._args[-1])} of its {len(self.blocks)} blocks "
                        "in one forward pass; hf-lite cannot run its calibration block by block."
                    )
                self.token_masks.append(
                    [inputs[k].bool() for k in ("attention_mask", "decoder_attention_mask") if k in inputs]
                )
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, i: int) -> Callable[..., None]:
        last = len(self.blocks) - 1

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]  # not popped: the block still runs
            if i == 0:
                self.hidden.append(hidden.detach())
            self._args[-1].append(tuple(args[1:]))
            self._kwargs[-1].append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            if i == last:
                raise _Stop  # nothing after the last block's inputs is needed

        return hook

    def _call(self, b: int, i: int) -> torch.Tensor:
        out = self.blocks[b](self.hidden[i], *self._args[i][b], **self._kwargs[i][b])
        return out[0] if isinstance(out, tuple) else out

    def run(self, b: int, collectors: Sequence[Any] = ()) -> None:
        """Call block ``b`` on every batch's cached hidden states (outputs discarded), each collector's
        ``token_masks`` set to the batch's masks while it runs."""
        for i in range(len(self.hidden)):
            for collector in collectors:
                collector.token_masks = self.token_masks[i]
            self._call(b, i)
        for collector in collectors:
            collector.token_masks = []

    def advance(self, b: int) -> None:
        """Replace the cached hidden states by block ``b``'s outputs (with its current weights)."""
        self.hidden = [self._call(b, i).detach() for i in range(len(self.hidden))]


def forward_calibration(
    model: nn.Module, batches: Sequence[Mapping[str, Any]], collectors: Sequence[Any]
) -> None:
    """Run every batch through the whole model, each collector's ``token_masks`` set to the batch's masks."""
    device = next(model.parameters()).device
    extra = forward_kwargs(model)  # no KV cache: it would only cost memory here
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items()}
        token_masks = [inputs[k].bool() for k in ("attention_mask", "decoder_attention_mask") if k in inputs]
        for collector in collectors:
            collector.token_masks = token_masks
        model(**inputs, **extra)
    for collector in collectors:
        collector.token_masks = []


def calibration_passes(
    model: nn.Module, batches: Sequence[Mapping[str, Any]], groups: Sequence[str]
) -> Iterator[tuple[str, Callable[[Sequence[Any]], None]]]:
    """Sequential calibration: for each group of layers, ``(group, run)`` where ``run(collectors)`` passes the
    calibration data through the model with the collectors' hooks seeing that group's layers.

    The caller prunes the group before asking for the next one, so every group is calibrated on the outputs
    of the groups pruned before it. Where every group is a block of the model's block chain (``groups`` are
    block names as :func:`block_names` spells them), groups come in block order and ``run`` calls one block
    on cached inputs (:class:`BlockInputs`); otherwise (other groups, encoder-decoder models) groups come in
    the given order and ``run`` is a whole-model pass.

    >>> import torch
    >>> from hf_lite.testing import build_tiny_model
    >>> model, tok = build_tiny_model("llama")
    >>> with torch.no_grad():
    ...     order = [g for g, run in calibration_passes(model, [tok(["a cat"], return_tensors="pt")],
    ...                                                 ["model.layers.1", "model.layers.0"])]
    >>> order
    ['model.layers.0', 'model.layers.1']
    """
    names = block_names(model) if blockwise_supported(model) else []
    if not groups or not set(groups) <= set(names):
        for group in groups:
            yield group, lambda collectors: forward_calibration(model, batches, collectors)
        return
    cached = BlockInputs(model, batches)
    last = max(names.index(g) for g in groups)
    wanted = set(groups)
    for b, name in enumerate(names[: last + 1]):
        if name in wanted:
            yield name, lambda collectors, b=b: cached.run(b, collectors)
        if b < last:
            cached.advance(b)  # with the block's weights as the caller left them (pruned)
