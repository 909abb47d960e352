"""Checks on a checkpoint source before ``from_pretrained`` reads it: a folder or a Hub repo id, its config.

:func:`check_source` fails early, and clearly, on what is neither a checkpoint folder nor a valid repo id (a
typo in a path, a file, a folder without ``config.json``). :func:`load_checked_config` reads ``config.json``
(no code runs) or a GGUF file's metadata and refuses remote code that was not allowed, architectures unknown to
transformers and, with :func:`check_task`, tasks the architecture has no class for. :mod:`hf_lite.loading`
runs them before loading a model or tokenizer.

>>> from transformers import BertConfig
>>> check_task(BertConfig(), "sequence-classification", "bert")  # supported: no error
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub import is_offline_mode
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from hf_lite.gguf import load_gguf_config, split_gguf_source
from hf_lite.tasks import TASKS

__all__ = ["check_source", "load_checked_config", "check_task"]


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
        or name in (".", "..")
    )


def check_source(name_or_path: Any, revision: str | None, hub_kwargs: dict[str, Any]) -> str:
    """Fail early, and clearly, when ``name_or_path`` is neither a checkpoint folder nor a loadable repo id."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"name_or_path must be a Hub repo id or a folder path (str or os.PathLike); got "
            f"{type(name_or_path).__name__}. To use a model object you already have, pass it directly "
            "where that is accepted (e.g. load_teacher(model))."
        )
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
            ggufs = ", ".join(sorted(p.name for p in path.glob("*.gguf")))
            raise ValueError(
                f"name_or_path={name!r} is a folder without config.json: not a checkpoint saved with "
                "save_pretrained. Point at the folder that holds config.json and the *.safetensors files"
                f"{f', or pass gguf_file= naming one of its GGUF files ({ggufs})' if ggufs else ''}."
            )
        return name
    if path.exists():
        raise ValueError(f"name_or_path={name!r} is a file; pass the checkpoint folder that contains it.")
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise FileNotFoundError(
            f"name_or_path={name!r} looks like a local path but does not exist (resolved to {path.absolute()}). "
            "Check the path, or pass a Hub repo id such as 'org/model'."
        )

    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ValueError(
            f"name_or_path={name!r} is neither an existing folder nor a valid Hub repo id ({err}). "
            "Repo ids look like 'org/model'."
        ) from err
    return name


def load_checked_config(
    name_or_path: Any,
    task: str,
    trust_remote_code: bool,
    revision: str | None,
    hub_kwargs: dict[str, Any],
    *,
    gguf_file: str | None = None,
) -> Any:
    """Read config.json (no code runs), or a GGUF file's metadata, then check remote code, architecture and task
    support."""

    gguf_source = split_gguf_source(name_or_path, gguf_file)
    if gguf_source is not None:
        config = load_gguf_config(*gguf_source)
        check_task(config, task, gguf_source[1])
        return config
    name = check_source(name_or_path, revision, hub_kwargs)
    rev_kwargs = {"revision": revision} if revision is not None else {}
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(name, **rev_kwargs, **hub_kwargs)
    except OSError as err:
        if is_offline_mode() or hub_kwargs.get("local_files_only"):
            raise OSError(
                f"name_or_path={name!r} is not in the local Hugging Face cache"
                f"{f' at revision {revision!r}' if revision else ''} and the Hub is offline "
                "(HF_HUB_OFFLINE=1 or local_files_only=True). Download it while online "
                f"(`hf download {name}`), point HF_HOME at a cache that has it, or pass a local folder."
            ) from err
        raise OSError(
            f"name_or_path={name!r} could not be resolved on the Hub: {err}. Check the repo id and revision; "
            "for a private or gated repo log in (`hf auth login`) or pass token=..."
        ) from err

    model_type = config_dict.get("model_type")
    auto_map = config_dict.get("auto_map") or {}
    if model_type not in CONFIG_MAPPING:
        if auto_map and not trust_remote_code:
            raise ValueError(
                f"name_or_path={name!r} has model_type={model_type!r}, which transformers does not implement: "
                f"the repo ships its own model code (auto_map {sorted(auto_map)}). Pass trust_remote_code=True "
                "only after reading that code, since it runs on your machine with your permissions."
            )
        if not auto_map:
            raise ValueError(
                f"name_or_path={name!r} has model_type={model_type!r}, unknown to transformers "
                f"{transformers.__version__} and without custom code. Upgrade transformers, or check config.json."
            )
    config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **rev_kwargs, **hub_kwargs)
    if model_type in CONFIG_MAPPING:
        check_task(config, task, name)
    return config


def check_task(config: Any, task: str, name: str) -> None:
    """Raise ``ValueError`` when transformers has no ``task`` class for ``config``'s architecture."""
    if type(config) not in getattr(transformers, TASKS[task])._model_mapping:
        supported = [
            t for t, cls in TASKS.items() if type(config) in getattr(transformers, cls)._model_mapping
        ]
        raise ValueError(
            f"task={task!r} is not available for model_type={config.model_type!r} ({name!r}): transformers has no "
            f"{TASKS[task]} class for it. Tasks this architecture supports: {', '.join(supported) or 'none'}."
        )
