"""Checkpoint inspection: what a saved folder holds, read from its files without loading a model.

:func:`inspect_checkpoint` reads ``config.json`` / ``adapter_config.json`` and the safetensors headers
(:func:`read_safetensors_header`) to count parameters and bytes, find the dtype, the quantization and the
adapter, and refuses folders that are not loadable safetensors checkpoints (invariant 4: no pickle).
Export reports and model cards are built on it.

>>> import json, pathlib, tempfile
>>> from safetensors.numpy import save_file
>>> import numpy as np
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "float32"}))
>>> save_file({"w": np.zeros((2, 3), dtype=np.float32)}, str(folder / "model.safetensors"))
>>> info = inspect_checkpoint(folder)
>>> info.kind, info.parameters, info.dtype
('model', 6, 'float32')
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hf_lite._utils import PICKLE_SUFFIXES, is_hub_id
from hf_lite.summary import describe_quantization

__all__ = ["CheckpointInfo", "inspect_checkpoint", "read_safetensors_header"]

# bitsandbytes stores these beside a quantized weight; they are not parameters of their own.
_BNB_AUX_SUFFIXES = (
    ".absmax",
    ".quant_map",
    ".nested_absmax",
    ".nested_quant_map",
    ".quant_state.bitsandbytes__nf4",
    ".quant_state.bitsandbytes__fp4",
    ".SCB",
    ".weight_format",
)

#: Files whose presence means a tokenizer was saved with the checkpoint.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "tokenizer.model")


@dataclasses.dataclass
class CheckpointInfo:
    """Facts read from a checkpoint folder's files (nothing is loaded into a model).

    Args:
        kind: ``"model"`` or ``"adapter"``.
        files: all files, relative paths, sorted.
        weight_files: the ``*.safetensors`` files.
        bytes_on_disk: their total size.
        parameters: logical parameter count (bitsandbytes 4-bit weights count all their entries).
        dtype: the weights' floating dtype (``config.json``'s, or the most common one in an adapter).
        model_type, architecture: from ``config.json``.
        quantization: ``"bnb-4bit (nf4, double quant)"``, ``"bnb-8bit (LLM.int8)"`` or ``None``.
        adapter: ``"LORA r=8 on q_proj, v_proj"`` for an adapter folder.
        adapter_task_type: PEFT task type of an adapter (``"CAUSAL_LM"``...).
        base_model: the adapter's base model when it is a Hub id.
        base_model_is_local: the adapter's ``base_model_name_or_path`` is a local path.
        has_tokenizer: tokenizer files are present.

    >>> CheckpointInfo("model", [], [], 0, None, None).kind
    'model'
    """

    kind: str
    files: list[str]
    weight_files: list[str]
    bytes_on_disk: int
    parameters: int | None
    dtype: str | None
    model_type: str | None = None
    architecture: str | None = None
    quantization: str | None = None
    adapter: str | None = None
    adapter_task_type: str | None = None
    base_model: str | None = None
    base_model_is_local: bool = False
    has_tokenizer: bool = False


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its tensor data starts.

    Args:
        path: a ``*.safetensors`` file.

    Returns:
        ``(header, data_start)``: ``header`` maps tensor names to ``{"dtype", "shape", "data_offsets"}`` (plus
        ``"__metadata__"``); offsets are relative to ``data_start``.

    Raises:
        ValueError: the file's header length is not plausible (not a safetensors file).

    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> from safetensors.numpy import save_file
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> save_file({"w": np.zeros((2, 3), dtype=np.float16)}, str(path))
    >>> header, start = read_safetensors_header(path)
    >>> header["w"]["dtype"], header["w"]["shape"], start == path.stat().st_size - 12
    ('F16', [2, 3], True)
    """
    path = Path(path)
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path.name} is not a valid safetensors file (header of {length} bytes).")
        return json.loads(f.read(length)), 8 + length


def _count_parameters(paths: list[Path]) -> tuple[int, dict[str, int]]:
    """Logical parameter count and {dtype: count} from safetensors headers (no tensor is loaded)."""
    total = 0
    dtypes: dict[str, int] = {}
    for path in paths:
        header, start = read_safetensors_header(path)
        header.pop("__metadata__", None)
        for key, entry in header.items():
            if key.endswith(_BNB_AUX_SUFFIXES):
                continue
            count = math.prod(entry["shape"])
            for kind in ("nf4", "fp4"):
                state = header.get(f"{key}.quant_state.bitsandbytes__{kind}")
                if state is not None:  # packed 4-bit: the logical shape is in the JSON quant state
                    begin, end = state["data_offsets"]
                    with path.open("rb") as f:
                        f.seek(start + begin)
                        count = math.prod(json.loads(f.read(end - begin))["shape"])
            total += count
            dtype = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(entry["dtype"])
            if dtype is not None:
                dtypes[dtype] = dtypes.get(dtype, 0) + count
    return total, dtypes


def _describe_quantization(config: Mapping[str, Any]) -> str | None:
    """The quantization of a saved ``config.json`` in :func:`~hf_lite.summary.describe_quantization`'s words."""
    qc = config.get("quantization_config")
    if not qc:
        return None
    return describe_quantization(SimpleNamespace(config=SimpleNamespace(quantization_config=dict(qc))))


def inspect_checkpoint(folder: str | os.PathLike, *, refuse_pickles: bool = True) -> CheckpointInfo:
    """Read what a checkpoint folder holds, and refuse folders that are not loadable safetensors checkpoints.

    Args:
        folder: a folder written by ``save_pretrained`` (a model: ``config.json`` + ``*.safetensors``; an
            adapter: ``adapter_config.json`` + ``adapter_model.safetensors``).
        refuse_pickles: raise on pickle files (``*.bin``, ``*.pt``...). ``False`` to describe a folder that
            holds some beside its safetensors weights (a ``Trainer`` output dir has ``training_args.bin``).

    Returns:
        A :class:`CheckpointInfo`.

    Raises:
        ValueError: the folder does not exist, lacks the config or the weights, or holds pickle files.

    >>> import tempfile
    >>> from hf_lite.testing import build_tiny_model
    >>> model, tokenizer = build_tiny_model("llama")
    >>> folder = tempfile.mkdtemp()
    >>> model.save_pretrained(folder)
    >>> info = inspect_checkpoint(folder)
    >>> info.kind, info.architecture, info.parameters == model.num_parameters(), info.has_tokenizer
    ('model', 'LlamaForCausalLM', True, False)
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path (str or os.PathLike); got {type(folder).__name__}.")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"folder={os.fspath(folder)!r} is not an existing folder.")
    files = sorted(
        rel
        for rel in (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        # hidden files and folders (.git/, .cache/, editor files) are not part of a checkpoint
        if rel == ".gitattributes" or not any(part.startswith(".") for part in rel.split("/"))
    )
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles and refuse_pickles:
        raise ValueError(
            f"folder={os.fspath(folder)!r} holds pickle files {pickles}: hf-lite only publishes safetensors "
            "checkpoints (pickles run code when loaded). Re-save with save_pretrained (safetensors is the "
            "default) and delete them."
        )
    is_adapter = (root / "adapter_config.json").is_file()
    if not is_adapter and not (root / "config.json").is_file():
        raise ValueError(
            f"folder={os.fspath(folder)!r} has no config.json (nor adapter_config.json): it is not a checkpoint "
            "saved with save_pretrained. Point at the folder that holds config.json and the *.safetensors files."
        )
    if is_adapter:
        weights = [
            f for f in files if f.split("/")[-1].startswith("adapter_model") and f.endswith(".safetensors")
        ]
    else:
        weights = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    if not weights:
        expected = (
            "adapter_model.safetensors" if is_adapter else "model.safetensors (or sharded *.safetensors)"
        )
        raise ValueError(
            f"folder={os.fspath(folder)!r} has a config but no weights: {expected} is missing. Save the model "
            "with save_pretrained into this folder (or export it with hf_lite.export)."
        )
    weight_paths = [root / f for f in weights]
    parameters, dtypes = _count_parameters(weight_paths)
    info = CheckpointInfo(
        kind="adapter" if is_adapter else "model",
        files=files,
        weight_files=weights,
        bytes_on_disk=sum(p.stat().st_size for p in weight_paths),
        parameters=parameters,
        dtype=max(dtypes, key=dtypes.get) if dtypes else None,
        has_tokenizer=any(f in files for f in _TOKENIZER_FILES),
    )
    if is_adapter:
        config = json.loads((root / "adapter_config.json").read_text())
        peft_type = config.get("peft_type") or "adapter"
        desc = str(peft_type)
        if config.get("r") is not None:
            desc += f" r={config['r']}"
        targets = config.get("target_modules")
        if isinstance(targets, list) and targets:  # leaf names: PEFT may store full module paths
            desc += f" on {', '.join(sorted({str(t).rsplit('.', 1)[-1] for t in targets}))}"
        elif isinstance(targets, str):
            desc += f" on {targets}"
        info.adapter = desc
        info.adapter_task_type = config.get("task_type")
        base = config.get("base_model_name_or_path")
        info.base_model = base if is_hub_id(base) else None
        info.base_model_is_local = bool(base) and info.base_model is None
    if (root / "config.json").is_file():
        config = json.loads((root / "config.json").read_text())
        info.model_type = config.get("model_type")
        archs = config.get("architectures") or []
        info.architecture = archs[0] if archs else None
        info.quantization = _describe_quantization(config)
        config_dtype = config.get("dtype") or config.get("torch_dtype")
        if isinstance(config_dtype, str) and not is_adapter:
            info.dtype = config_dtype
    return info
