"""The checkpoint-state protocol of the pruning callbacks: their state saved into, and found again in, checkpoints.

A callback whose work must survive an interrupted run (invariant 2) writes its state into every checkpoint
folder the ``Trainer`` saves, beside the model and optimizer: a small JSON file (step, config, counters; the
resume key is ``"global_step"``) and, when it has tensors, a safetensors file (no pickle). One
:class:`CallbackState` per callback names those files; it does the rest the same way for every callback:

- :meth:`CallbackState.folder_to_save` (in ``on_save``): the checkpoint folder the Trainer has just written,
  or ``None`` on processes that do not write files (``args.should_save`` is rank-aware: the main process,
  or each node's main process with ``save_on_each_node``) and when the folder is missing (logged).
- :meth:`CallbackState.save`: tensors first, then the JSON, each written atomically
  (:func:`hf_lite._utils.atomic_write`: complete or absent), the JSON last so that a JSON in a folder means
  the state is complete; ``format_version`` is added to the JSON.
- :meth:`CallbackState.find` (in ``on_train_begin`` with ``state.global_step > 0``): the first of some
  candidate folders that holds the state of the step the Trainer resumes at (see
  :func:`resume_candidates`), or ``None``; the callback raises its own error naming the fix.
- :meth:`CallbackState.read` / :meth:`CallbackState.load_tensors`: the JSON (its ``format_version``
  checked) and the tensors of a folder.

>>> import tempfile
>>> state = CallbackState("demo_state.json", "demo_state.safetensors", owner="DemoCallback")
>>> folder = tempfile.mkdtemp()
>>> state.save(folder, {"global_step": 4, "layers": ["fc"]}, {"masks.fc": torch.ones(2, dtype=torch.bool)})
>>> state.read(folder)
{'format_version': 1, 'global_step': 4, 'layers': ['fc']}
>>> state.find([folder], 4) == folder, state.find([folder], 5)
(True, None)
>>> state.load_tensors(folder)["masks.fc"].tolist()
[True, True]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_lite._utils import atomic_write, atomic_write_text, is_main_process

if TYPE_CHECKING:
    from transformers import TrainerState, TrainingArguments

__all__ = ["CallbackState", "checkpoint_folder", "config_changes", "resume_candidates"]

logger = logging.getLogger(__name__)


def checkpoint_folder(args: TrainingArguments, global_step: int) -> str:
    """The folder the ``Trainer`` saves the checkpoint of ``global_step`` into: ``output_dir/checkpoint-<step>``.

    >>> from types import SimpleNamespace
    >>> checkpoint_folder(SimpleNamespace(output_dir="out"), 100).replace(os.sep, "/")
    'out/checkpoint-100'
    """
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{global_step}")


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, value now)}`` for each field of the config ``now`` that differs from the one a
    saved state recorded: what a resumed run warns about, since its result will differ from an uninterrupted
    one.

    >>> config_changes({"sparsity": 0.5, "method": "magnitude"}, {"sparsity": 0.7, "method": "magnitude"})
    {'sparsity': (0.5, 0.7)}
    """
    return {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}


def resume_candidates(args: TrainingArguments, state: TrainerState, *extra: Any) -> list[str]:
    """Where a resumed run's callback state may lie, in order: ``args.resume_from_checkpoint``, then
    ``extra`` folders, then ``output_dir/checkpoint-<global_step>`` (where ``train(resume_from_checkpoint=True)``
    found it). Entries that are not non-empty strings are dropped, repeats kept once.

    >>> from types import SimpleNamespace
    >>> args = SimpleNamespace(output_dir="out", resume_from_checkpoint=True)
    >>> [c.replace(os.sep, "/") for c in resume_candidates(args, SimpleNamespace(global_step=5), None, "ckpt")]
    ['ckpt', 'out/checkpoint-5']
    """
    candidates = [args.resume_from_checkpoint, *extra, checkpoint_folder(args, state.global_step)]
    return list(dict.fromkeys(c for c in candidates if isinstance(c, str) and c))


class CallbackState:
    """The files one callback keeps in each checkpoint folder, and how they are written, found and read.

    Args:
        json_name: file name of the JSON part (required in every saved state).
        tensors_name: file name of the safetensors part, or ``None`` for a callback without tensors.
        owner: the callback's class name, for error messages.
        what: what the state is called in log messages (``"pruning state"``).
        tensors_optional: ``True`` when a state may have no tensors file (then :meth:`find` does not require
            it, and :meth:`save` with ``tensors=None`` removes a stale one).
        format_version: written into the JSON as ``format_version``; :meth:`read` refuses other versions.

    >>> CallbackState("x.json", owner="X").files()
    ['x.json']
    """

    def __init__(
        self,
        json_name: str,
        tensors_name: str | None = None,
        *,
        owner: str,
        what: str = "callback state",
        tensors_optional: bool = False,
        format_version: int = 1,
    ) -> None:
        self.json_name = json_name
        self.tensors_name = tensors_name
        self.owner = owner
        self.what = what
        self.tensors_optional = tensors_optional
        self.format_version = format_version

    def files(self) -> list[str]:
        """The file names a complete state must have in its folder (the tensors file unless optional)."""
        required = [self.json_name]
        if self.tensors_name is not None and not self.tensors_optional:
            required.insert(0, self.tensors_name)
        return required

    # -- writing ----------------------------------------------------------------------------------------

    def folder_to_save(self, args: TrainingArguments, state: TrainerState) -> str | None:
        """In ``on_save``: the checkpoint folder to write into, or ``None`` when this process writes no files
        (``args.should_save`` false) or the folder is missing (a warning is logged)."""
        if not getattr(args, "should_save", is_main_process()):
            return None
        folder = checkpoint_folder(args, state.global_step)
        if not os.path.isdir(folder):
            logger.warning("checkpoint folder %s not found; %s not saved with it.", folder, self.what)
            return None
        return folder

    def save(
        self,
        folder: str | os.PathLike,
        meta: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor] | None = None,
        *,
        indent: int | None = None,
    ) -> None:
        """Write ``tensors`` (safetensors) and then ``meta`` (JSON, ``format_version`` first) into ``folder``,
        each atomically. ``tensors=None`` writes no tensors file and removes a stale one.

        Args:
            folder: an existing checkpoint folder.
            meta: JSON-serializable state, with ``"global_step"``.
            tensors: ``{name: tensor}`` (contiguous, on CPU), or ``None``.
            indent: JSON indentation (``None``: one line).
        """
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise ValueError(f"folder={folder!r} is not an existing folder; pass the checkpoint folder.")
        if self.tensors_name is not None:
            tensor_path = os.path.join(folder, self.tensors_name)
            if tensors is not None:
                atomic_write(tensor_path, lambda p: save_file(dict(tensors), p, metadata={"format": "pt"}))
            elif os.path.exists(tensor_path):
                os.remove(tensor_path)
        elif tensors:
            raise ValueError(f"{self.owner} keeps no tensors in its checkpoint state (tensors_name=None).")
        text = json.dumps({"format_version": self.format_version, **meta}, indent=indent)
        atomic_write_text(os.path.join(folder, self.json_name), text)

    # -- reading ----------------------------------------------------------------------------------------

    def holds(self, folder: str | os.PathLike, global_step: int) -> bool:
        """Whether ``folder`` holds a complete state of ``global_step``."""
        folder = os.fspath(folder)
        if not all(os.path.isfile(os.path.join(folder, name)) for name in self.files()):
            return False
        with open(os.path.join(folder, self.json_name), encoding="utf-8") as fh:
            return json.load(fh).get("global_step") == global_step

    def find(self, candidates: Iterable[str], global_step: int) -> str | None:
        """The first of ``candidates`` holding the state of ``global_step`` (:meth:`holds`), else ``None``."""
        return next((folder for folder in candidates if self.holds(folder, global_step)), None)

    def read(self, folder: str | os.PathLike) -> dict[str, Any]:
        """The JSON part of the state in ``folder``, after checking it exists and has this ``format_version``."""
        path = os.path.join(os.fspath(folder), self.json_name)
        if not os.path.isfile(path):
            raise ValueError(
                f"{path} does not exist: {os.fspath(folder)!r} is not a checkpoint of a run with "
                f"{self.owner} (it writes that file into every checkpoint). Pass such a checkpoint folder."
            )
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
        if meta.get("format_version") != self.format_version:
            raise ValueError(
                f"{path} has format_version={meta.get('format_version')!r}; this hf-lite reads version "
                f"{self.format_version}. Use the hf-lite version that wrote it."
            )
        return meta

    def load_tensors(self, folder: str | os.PathLike) -> dict[str, torch.Tensor]:
        """The tensors part of the state in ``folder`` (``{}`` when there is none), on CPU."""
        if self.tensors_name is None:
            return {}
        path = os.path.join(os.fspath(folder), self.tensors_name)
        if self.tensors_optional and not os.path.isfile(path):
            return {}
        return load_file(path)
