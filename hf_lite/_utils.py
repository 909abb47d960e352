"""Small helpers every layer of hf-lite shares: suggestions, atomic writes, ranks, unwrapping, Hub ids.

One home for each: error messages suggest with :func:`did_you_mean`, files and folders are written with
:func:`atomic_write` / :func:`atomic_dir` (invariant 2: complete or absent), rank checks go through
:func:`is_main_process` / :func:`world`, wrappers come off with :func:`unwrap_model`.

>>> did_you_mean("forward_kll", ["forward_kl", "reverse_kl"])
" (did you mean 'forward_kl'?)"
>>> is_hub_id("org/name"), is_hub_id("./folder")
(True, False)
"""

from __future__ import annotations

import contextlib
import difflib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

#: In the names of the temporary sibling folders of :func:`atomic_dir` (``.<name>.tmp-<random>``).
TMP_MARK = ".tmp-"
#: File suffixes of pickle-based weight formats, never loaded or uploaded (invariant 4).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def did_you_mean(value: Any, choices: Iterable[Any], cutoff: float = 0.6) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` to ``value``, ``""`` when none is close.

    Made to be appended to an error message right after the bad value.

    >>> did_you_mean("lerning_rate", {"learning_rate", "seed"})
    " (did you mean 'learning_rate'?)"
    >>> did_you_mean("zzz", ["learning_rate"])
    ''
    """
    close = difflib.get_close_matches(str(value), sorted(str(c) for c in choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``: the file is complete or absent.

    The temporary file lives in the destination folder (a rename within one file system is atomic) and is
    removed when ``write`` raises.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write(out, lambda tmp: pathlib.Path(tmp).write_text("done")).read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private (0600); give it the usual mode
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary sibling folder inside the ``with`` block, then swap it in for ``path``.

    On success the folder at ``path`` is exactly what the block wrote; an earlier folder there is moved aside
    first and deleted only after the rename. When the block raises, the temporary folder is removed and
    ``path`` is left as it was; temporary folders that a killed process left for ``path`` are removed first
    (one writer per path at a time).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_dir(root / "model") as tmp:
    ...     _ = (tmp / "config.json").write_text("{}")
    >>> sorted(p.name for p in (root / "model").iterdir())
    ['config.json']
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A killed earlier write left its temporary folder (never complete, so never needed): one writer per path.
    for stale in out.parent.glob(f".{out.name}{TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{TMP_MARK}"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private (0700); give it the usual mode
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Rename folder ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed only afterwards."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        if out.is_dir() and any(out.iterdir()):
            old = out.parent / f".old-{out.name}-{secrets.token_hex(4)}"
            os.replace(out, old)
        elif out.is_dir():
            out.rmdir()
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of torch's default process group, ``(0, 1)`` outside distributed runs.

    >>> world()
    (0, 1)
    """
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process writes files: rank 0 of the default process group, or the only process.

    >>> is_main_process()
    True
    """
    return world()[0] == 0


def unwrap_model(model: Any, peft_base: bool = False) -> Any:
    """``model`` without DDP / DataParallel / FSDP / ``torch.compile`` wrappers; with ``peft_base=True`` also
    without a PEFT wrapper (the base model whose layers are pruned; adapters stay outside).

    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> unwrap_model(torch.nn.DataParallel(m)) is m
    True
    """
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_torch_compile=False)
    if peft_base and hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None)):
        model = model.get_base_model()
    return model


def is_hub_id(value: Any) -> bool:
    """Whether ``value`` is a valid Hub repo id that is not also a local path (``"org/name"`` or ``"name"``).

    Local folders, absolute or relative paths and ``~`` paths are not Hub ids, even when they would pass the
    Hub's naming rules: they must never be written into a model card or an uploaded config.

    >>> is_hub_id("meta-llama/Llama-3.2-1B"), is_hub_id("/tmp/model"), is_hub_id("./model"), is_hub_id("")
    (True, False, False, False)
    """
    if not isinstance(value, str) or not value or value.count("/") > 1:
        return False
    if value.startswith(("/", ".", "~", "\\")) or (os.sep != "/" and os.sep in value) or ":" in value:
        return False
    if os.path.exists(value):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def has_bnb_layers(model: Any) -> bool:
    """Whether ``model`` holds bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` layers (False without bitsandbytes).

    >>> import torch
    >>> has_bnb_layers(torch.nn.Linear(2, 2))
    False
    """
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    import bitsandbytes as bnb

    return any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())
