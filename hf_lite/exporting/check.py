"""The export check: reload a written folder with stock libraries and compare its outputs with the model's.

:func:`reload_and_compare` loads the folder the way users will (``AutoModel*.from_pretrained`` for a model,
``PeftModel.from_pretrained`` onto a copy of the in-memory base for an adapter) and returns the largest
absolute difference of one forward on the check inputs (:func:`default_check_inputs`: seeded random ids).

>>> from transformers import BertConfig
>>> default_check_inputs(BertConfig(vocab_size=50))["attention_mask"].shape
torch.Size([2, 8])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers

from hf_lite.exporting.adapters import is_peft_model
from hf_lite.exporting.quantization import bnb_layout_kept
from hf_lite.exporting.sparsity import deepcopy_model
from hf_lite.tasks import TASKS

__all__ = [
    "default_check_inputs",
    "model_outputs",
    "auto_class",
    "reload_outputs",
    "max_abs_diff",
    "reload_and_compare",
]


def default_check_inputs(
    config: Any, *, batch: int = 2, seq_len: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Seeded random token ids (and decoder ids for encoder-decoders) for comparing two copies of a model.

    Args:
        config: the model's config (its text config's ``vocab_size`` bounds the ids).
        batch: number of sequences.
        seq_len: tokens per sequence.
        seed: generator seed (the same inputs every time).

    Returns:
        ``{"input_ids", "attention_mask"}`` and, for encoder-decoders, ``"decoder_input_ids"``.

    >>> from transformers import BertConfig
    >>> default_check_inputs(BertConfig(vocab_size=50))["input_ids"].shape
    torch.Size([2, 8])
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text_config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        raise ValueError(
            f"config has no usable vocab_size ({vocab!r}) to draw check inputs from; pass check_inputs=... "
            "(the keyword arguments of one forward call) or check=False."
        )
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = torch.randint(
            0, vocab, (batch, max(2, seq_len // 2)), generator=generator
        )
    return inputs


# --------------------------------------------------------------------------------------------------
# export


def model_outputs(model: Any, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    """The main output tensor of one eval-mode, no-grad forward (training mode restored afterwards).

    Returns:
        ``(output, key)``: the output as float32 on the CPU, and which one it is (``"logits"``,
        ``"last_hidden_state"``, ``"start_logits"``, ``"output"`` or ``"output[0]"``).

    >>> import torch
    >>> model_outputs(torch.nn.Linear(2, 3), {"input": torch.ones(1, 2)})[0].shape
    torch.Size([1, 3])
    """
    device = next(model.parameters()).device
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), bnb_layout_kept(model):
            output = model(**moved)
    finally:
        model.train(was_training)
    for key in ("logits", "last_hidden_state", "start_logits"):
        value = getattr(output, key, None) if not isinstance(output, Mapping) else output.get(key)
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", torch.float32), key
    if isinstance(output, torch.Tensor):
        return output.detach().to("cpu", torch.float32), "output"
    first = output[0] if isinstance(output, (tuple, list)) else output.to_tuple()[0]
    return first.detach().to("cpu", torch.float32), "output[0]"


def auto_class(model: Any) -> Any:
    """The transformers Auto class that builds ``type(model)`` from its config (stock loading path).

    >>> from hf_lite.testing import build_tiny_model
    >>> auto_class(build_tiny_model("llama")[0]).__name__
    'AutoModelForCausalLM'
    """
    for auto_name in TASKS.values():
        auto = getattr(transformers, auto_name)
        try:
            if auto._model_mapping[type(model.config)] is type(model):
                return auto
        except KeyError:
            continue
    return type(model)  # not reachable through an Auto class: its own class is the stock loader


def reload_outputs(
    model: Any, folder: Path, kind: str, inputs: Mapping[str, Any]
) -> tuple[torch.Tensor, str]:
    """Reload ``folder`` the way users will and return its main output on ``inputs`` (see :func:`model_outputs`).

    Args:
        model: the in-memory model the folder was written from (a ``PreTrainedModel`` or ``PeftModel``): it
            names the stock class, and for an adapter a copy of its base receives the reloaded adapter.
        folder: the written folder.
        kind: ``"model"`` (a full checkpoint) or ``"adapter"`` (PEFT files, reloaded onto a copy of the base).
        inputs: keyword arguments of one forward call.

    Returns:
        ``(output, key)``: the reloaded model's output (float32, CPU) and which output it is.

    >>> import tempfile
    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")
    >>> folder = tempfile.mkdtemp()
    >>> model.save_pretrained(folder)
    >>> reload_outputs(model, folder, "model", default_check_inputs(model.config))[0].shape[:2]
    torch.Size([2, 8])
    """
    device = next(model.parameters()).device
    if kind == "adapter":
        from peft import PeftModel

        active = list(model.active_adapters)
        name = active[0]
        base = deepcopy_model(model).unload()
        reloaded = PeftModel.from_pretrained(
            base, folder if name == "default" else Path(folder) / name, adapter_name=name
        )
    else:
        auto = auto_class(model.get_base_model() if is_peft_model(model) else model)
        kwargs: dict[str, Any] = {"dtype": "auto"}
        if device.type != "cpu":
            kwargs["device_map"] = {"": device}
        reloaded = auto.from_pretrained(folder, **kwargs)
    output = model_outputs(reloaded, inputs)
    del reloaded
    return output


def max_abs_diff(output: torch.Tensor, reference: torch.Tensor, key: str) -> float:
    """The largest absolute difference of two outputs of the same shape (0.0 when empty).

    Raises:
        RuntimeError: the shapes differ (the reloaded checkpoint is not the same model).

    >>> import torch
    >>> max_abs_diff(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]), "logits")
    0.5
    """
    if output.shape != reference.shape:
        raise RuntimeError(
            f"export check failed: the reloaded checkpoint's {key} have shape {tuple(output.shape)}, the "
            f"reference's {tuple(reference.shape)}."
        )
    return float((output - reference).abs().max()) if reference.numel() else 0.0


def reload_and_compare(model: Any, folder: Path, kind: str, inputs: Mapping[str, Any]) -> tuple[float, str]:
    """Reload ``folder`` with stock libraries and compare one forward with the in-memory model's.

    Args:
        model: the in-memory model the folder was written from (a ``PreTrainedModel`` or ``PeftModel``).
        folder: the written folder.
        kind: ``"model"`` (a full checkpoint) or ``"adapter"`` (PEFT files, reloaded onto a copy of the base).
        inputs: keyword arguments of one forward call.

    Returns:
        ``(max_abs_diff, key)``: the largest absolute difference and which output was compared.

    Raises:
        RuntimeError: the reloaded model's output has another shape.

    >>> import tempfile
    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")
    >>> folder = tempfile.mkdtemp()
    >>> model.save_pretrained(folder)
    >>> reload_and_compare(model, folder, "model", default_check_inputs(model.config))
    (0.0, 'logits')
    """
    reference, key = model_outputs(model, inputs)
    output, _ = reload_outputs(model, folder, kind, inputs)
    return max_abs_diff(output, reference, key), key
