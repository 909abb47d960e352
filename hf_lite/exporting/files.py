"""The finishing touches of an exported folder: the KV cache switched back on, the model card written, an
adapter pointed at its Hub base, no pickle file.

Training turns ``use_cache`` off (gradient checkpointing, PEFT's k-bit preparation) and ``save_pretrained``
writes what the config holds, so an exported decoder would generate without its KV cache:
:func:`enable_kv_cache` sets ``use_cache: true`` in the saved ``config.json`` (and ``generation_config.json``)
of a model that generates. :func:`write_card` writes the model card that :func:`~hf_lite.hub.push_to_hub`
would upload for the same folder, without the fields only a Hub repo gives (the repo name in the title and
in the loading example, which show a placeholder).

>>> import json, pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "config.json").write_text(json.dumps({"model_type": "llama", "use_cache": False}))
>>> enable_kv_cache(folder)
['config.json']
>>> json.loads((folder / "config.json").read_text())["use_cache"]
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lite._utils import PICKLE_SUFFIXES
from hf_lite.card import CompressionSummary, build_model_card
from hf_lite.checkpoint import CheckpointInfo
from hf_lite.exporting.adapters import set_adapter_base

if TYPE_CHECKING:
    from hf_lite.exporting.writer import ExportReport

__all__ = ["enable_kv_cache", "write_card"]

#: Config files whose ``use_cache`` (top level or in a nested sub-config) is switched on.
_CACHE_FILES = ("config.json", "generation_config.json")


def enable_kv_cache(folder: str | Path) -> list[str]:
    """Set every ``use_cache: false`` in the folder's ``config.json`` and ``generation_config.json`` to ``true``
    (nested sub-configs such as ``text_config`` included); keys that are absent stay absent.

    Call it only for a model that generates (``model.can_generate()``): for the others the flag means nothing.

    Args:
        folder: a checkpoint folder written by ``save_pretrained``.

    Returns:
        The files changed.

    >>> import pathlib, tempfile
    >>> enable_kv_cache(tempfile.mkdtemp())  # nothing to change
    []
    """
    changed = []
    for name in _CACHE_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if _switch_on(data):
            # the layout transformers' to_json_string writes
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            changed.append(name)
    return changed


def _switch_on(data: Any) -> bool:
    """Set ``use_cache`` to True wherever it is False in a nested dict; whether anything changed."""
    if not isinstance(data, dict):
        return False
    changed = False
    if data.get("use_cache") is False:
        data["use_cache"] = True
        changed = True
    for value in data.values():
        changed = _switch_on(value) or changed
    return changed


def write_card(
    folder: str | Path,
    info: CheckpointInfo,
    export_report: ExportReport,
    summary: CompressionSummary | Mapping[str, Any] | None = None,
) -> Path:
    """Write ``README.md``: the card ``push_to_hub`` builds for this folder, without a repo id.

    Args:
        folder: the exported folder.
        info: its :class:`~hf_lite.checkpoint.CheckpointInfo` (counted from the files).
        export_report: the export's report (merge, dequantization, check differences).
        summary: the compression summary for the card's figures, or ``None``.

    Returns:
        The path written.
    """
    card = build_model_card(summary, checkpoint=info, export_report=export_report)
    path = Path(folder) / "README.md"
    path.write_text(card.content, encoding="utf-8")
    return path


def finish_adapter_folder(folder: Path, base_model: str | None) -> None:
    """Point the adapter at its Hub base and drop the template README PEFT writes (it holds local paths)."""
    readme = folder / "README.md"
    if readme.exists():
        readme.unlink()
    if base_model is None:
        return
    for config_path in folder.rglob("adapter_config.json"):
        set_adapter_base(config_path, base_model)


def refuse_pickles(folder: Path) -> None:
    """Raise if the folder holds a pickle-based weight file (invariant 4)."""
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if found:  # pragma: no cover - save_pretrained writes safetensors only
        raise RuntimeError(f"export wrote pickle files {found}; hf-lite saves safetensors only.")
