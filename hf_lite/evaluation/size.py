"""Model size, counted not derived: parameters (total and nonzero) and bytes of the saved weight files.

>>> ParameterCount(total=8, nonzero=2).sparsity
0.75
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch

from hf_lite.summary import logical_numel

#: Files counted by ``bytes_on_disk(folder)`` (top level of the folder): model and adapter weights.
#: Trainer state (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``training_args.bin``) is not weights.
WEIGHT_PATTERNS = (
    "*.safetensors",
    "pytorch_model*.bin",
    "adapter_model.bin",
    "*.gguf",
    "*.onnx",
    "tf_model*.h5",
    "flax_model*.msgpack",
)


class ParameterCount(NamedTuple):
    """Total and nonzero parameter counts.

    >>> ParameterCount(total=100, nonzero=25).sparsity
    0.75
    """

    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        """Fraction of parameters that are exactly zero."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0


def _nonzero(param: torch.Tensor) -> int:
    """Nonzero weights of one parameter; bitsandbytes 4-bit weights are dequantized first (zeros stay 0)."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        import bitsandbytes.functional as bnbf  # optional backend: only for a 4-bit model

        return int(bnbf.dequantize_4bit(param.data, quant_state).count_nonzero())
    # int8 (LLM.int8) weights are scaled per row: a stored 0 is a 0 weight, so counting them directly is exact.
    return int(param.data.count_nonzero())


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    """Count parameters and nonzero parameters (pruned weights are exact zeros).

    Shared (tied) parameters count once; a bitsandbytes 4-bit weight counts its logical size (like
    :func:`hf_lite.model_summary`) and is dequantized to count its zeros. For a quantized model the count
    is of the weights the model computes with, so weights that quantization rounds to 0 count as zeros
    too (NF4 and int8 both have an exact 0). Buffers are not parameters.

    >>> import torch
    >>> m = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = m.weight[0].zero_()
    >>> count_parameters(m)
    ParameterCount(total=10, nonzero=6)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    total = nonzero = 0
    with torch.no_grad():
        for param in model.parameters():  # yields each shared Parameter once
            total += logical_numel(param)
            nonzero += _nonzero(param)
    return ParameterCount(total=total, nonzero=nonzero)


def bytes_on_disk(folder: str | os.PathLike, *, include: str = "weights") -> int:
    """Bytes a saved model takes on disk.

    Args:
        folder: a folder written by ``save_pretrained`` (or a single weight file).
        include: ``"weights"`` sums the weight files at the top level of the folder (:data:`WEIGHT_PATTERNS`:
            ``*.safetensors``, ``pytorch_model*.bin``, ``adapter_model.bin``, ``*.gguf``, ...; config,
            tokenizer and Trainer state excluded), which is what compression changes; ``"all"`` sums every
            file in the folder tree (symlinks followed, as in a Hub cache snapshot).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "model.safetensors").write_bytes(b"x" * 100); _ = (d / "config.json").write_text("{}")
    >>> bytes_on_disk(d), bytes_on_disk(d, include="all")
    (100, 102)
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path (str or os.PathLike); got {type(folder).__name__}.")
    if include not in ("weights", "all"):
        raise ValueError(f"include={include!r} must be 'weights' (weight files only) or 'all' (every file).")
    path = Path(folder)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise ValueError(f"folder={str(folder)!r} does not exist; pass the folder the model was saved to.")
    if include == "all":
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    files = {p for pattern in WEIGHT_PATTERNS for p in path.glob(pattern) if p.is_file()}
    if not files:
        raise ValueError(
            f"folder={path.name!r} has no weight files ({', '.join(WEIGHT_PATTERNS)}); pass the folder written "
            "by save_pretrained, or include='all' to count every file."
        )
    return sum(p.stat().st_size for p in files)
