"""What decides a stage's result, hashed: settings, content signatures of local inputs, and what changed.

A stage's *settings* are the recipe's shared settings (task, teacher, seed, labels, data), the stage's options
with their defaults filled in, and a content signature of each local file or folder it reads (data files, the
teacher's folder, a model folder given by path). A stage's fingerprint hashes its own settings together with
those of every stage before it (:meth:`hf_lite.app.recipe.Recipe.stage_fingerprint`), so a changed setting
reruns that stage and every stage after it. The runner keeps the settings in each stage's marker so that it
can say what changed (:func:`changed_settings`).

>>> settings_hash({"seed": 0}) == settings_hash({"seed": 0}) != settings_hash({"seed": 1})
True
>>> changed_settings({"seed": 0, "data": {"max_length": 64}}, {"seed": 1, "data": {"max_length": 64}})
['seed: 0 -> 1']
>>> normalized({"args": {"learning_rate": "3e-5", "max_steps": 5}})  # YAML 1.1 reads 3e-5 as a string
{'args': {'learning_rate': 3e-05, 'max_steps': 5}}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

#: Files up to this size are hashed whole; a larger one by its size, modification time and first and last MiB
#: (hashing a 14 GB checkpoint on every run would cost longer than many stages).
WHOLE_FILE_LIMIT = 512 * 2**20
_CHUNK = 2**20


def normalized(value: Any) -> Any:
    """``value`` as plain JSON data (keys sorted, tuples as lists, objects as their ``str``) with strings that
    read as numbers turned into floats, so that ``3e-5`` written in YAML (a string) and ``--learning_rate 3e-5``
    (a float) are the same setting."""
    if isinstance(value, dict):
        return {str(k): normalized(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [normalized(v) for v in value]
    if isinstance(value, (set, frozenset)):  # a set's order changes from one process to the next
        return sorted((normalized(v) for v in value), key=str)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if number == number and abs(number) != float("inf") else value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def settings_hash(settings: Any) -> str:
    """A short hash of ``settings`` (any JSON-able data), stable across processes and runs."""
    text = json.dumps(normalized(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    stat = path.stat()
    with path.open("rb") as f:
        if stat.st_size <= WHOLE_FILE_LIMIT:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            digest.update(f.read(_CHUNK))
            f.seek(-_CHUNK, os.SEEK_END)
            digest.update(f.read(_CHUNK))
    return digest.hexdigest()[:16]


def path_signature(ref: str, *, recursive: bool = False) -> str | None:
    """A content signature of a local file or folder, ``None`` when ``ref`` is not a local path (a Hub id).

    A folder's signature covers the names and contents of its files (those in subfolders too when
    ``recursive``); hidden entries are left out (temporary folders of atomic writes, ``.cache``).

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text("{}")
    >>> before = path_signature(str(folder))
    >>> _ = (folder / "config.json").write_text('{"a": 1}')
    >>> before != path_signature(str(folder)), path_signature("org/model-on-the-hub")
    (True, None)
    """
    path = Path(os.path.expanduser(str(ref)))
    if not path.exists():
        return None
    if path.is_file():
        return _file_digest(path)
    files = path.rglob("*") if recursive else path.iterdir()
    entries = []
    for file in files:
        relative = file.relative_to(path)
        if file.is_file() and not any(part.startswith(".") for part in relative.parts):
            entries.append((relative.as_posix(), _file_digest(file)))
    return settings_hash(sorted(entries))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def changed_settings(old: Any, new: Any, *, limit: int = 4) -> list[str]:
    """``"key: old -> new"`` for each setting that differs between two settings mappings (dotted keys, at most
    ``limit`` lines, then ``"..."``)."""
    a, b = _flatten(normalized(old)), _flatten(normalized(new))
    unset = object()

    def show(value: Any) -> str:
        return "(unset)" if value is unset else value if isinstance(value, str) else json.dumps(value)

    lines = []
    for key in sorted(set(a) | set(b)):
        before, after = a.get(key, unset), b.get(key, unset)
        if before != after:
            lines.append(f"{key}: {show(before)} -> {show(after)}")
    return lines[:limit] + (["..."] if len(lines) > limit else [])
