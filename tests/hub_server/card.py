"""README metadata validation as the Hub does it (its "Invalid metadata in README.md" / YAML metadata error)."""

from __future__ import annotations

import re
from typing import Any

import yaml

_YAML_BLOCK_RE = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")


def _check_strings(meta: dict, key: str, errors: list[str], *, or_string: bool = False) -> None:
    """``meta[key]``, when set, must be an array of strings (or, with ``or_string``, a single string)."""
    value = meta.get(key)
    if value is None or (or_string and isinstance(value, str)):
        return
    if not isinstance(value, list):
        errors.append(f'"{key}" must be ' + ("a string or an array of strings" if or_string else "an array"))
        return
    errors += [f'"{key}[{i}]" must be a string' for i, item in enumerate(value) if not isinstance(item, str)]


def _objects(value: Any, where: str, errors: list[str], *, required: bool = True) -> list[tuple[str, dict]]:
    """The objects of the array ``value`` found at ``where``, each with its own path (``where[i]``); a value
    that is not an array, or an item that is not an object, is recorded in ``errors``."""
    if not isinstance(value, list):
        errors.append(
            f'"{where}" ' + ("is required and must be an array" if required else "must be an array")
        )
        return []
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            out.append((f"{where}[{i}]", item))
        else:
            errors.append(f'"{where}[{i}]" must be of type object')
    return out


def _check_model_index(model_index: Any, errors: list[str]) -> None:
    for where, entry in _objects(model_index, "model-index", errors, required=False):
        if not isinstance(entry.get("name"), str):
            errors.append(f'"{where}.name" is required and must be a string')
        for rwhere, result in _objects(entry.get("results"), f"{where}.results", errors):
            task = result.get("task")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f'"{rwhere}.task.type" is required and must be a string')
            dataset = result.get("dataset")
            if not isinstance(dataset, dict) or not isinstance(dataset.get("type"), str):
                errors.append(f'"{rwhere}.dataset.type" is required and must be a string')
            elif not isinstance(dataset.get("name"), str):
                errors.append(f'"{rwhere}.dataset.name" is required and must be a string')
            for mwhere, metric in _objects(result.get("metrics"), f"{rwhere}.metrics", errors):
                if not isinstance(metric.get("type"), str):
                    errors.append(f'"{mwhere}.type" is required and must be a string')
                if "value" not in metric:
                    errors.append(f'"{mwhere}.value" is required')


def parse_card_metadata(content: str) -> dict[str, Any] | None:
    """Metadata of a README.md: the YAML front matter as a dict (``None`` if there is none).

    Raises ``ValueError`` with Hub-style messages when the block is not valid YAML or when known fields have
    the wrong type (``tags`` not a list, ``license`` not a string, malformed ``model-index``...).
    """
    match = _YAML_BLOCK_RE.search(content)
    if match is None:
        return None
    try:
        meta = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        raise ValueError(f"YAML metadata error: invalid YAML in README.md front matter: {exc}") from exc
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ValueError(f'YAML metadata error: "value" must be of type object, got {type(meta).__name__}')
    errors: list[str] = []
    for key in (
        "license",
        "license_name",
        "license_link",
        "library_name",
        "pipeline_tag",
        "thumbnail",
        "pretty_name",
        "model_name",
    ):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            errors.append(f'"{key}" must be a string')
    for key in (
        "tags",
        "metrics",
        "task_categories",
        "task_ids",
        "size_categories",
        "extra_gated_prompt_list",
    ):
        _check_strings(meta, key, errors)
    for key in ("language", "datasets", "base_model"):
        _check_strings(meta, key, errors, or_string=True)
    if "model-index" in meta:
        _check_model_index(meta["model-index"], errors)
    if "inference" in meta and not isinstance(meta["inference"], (bool, dict)):
        errors.append('"inference" must be a boolean or an object')
    if errors:
        raise ValueError("YAML metadata error: " + "; ".join(errors))
    return meta
