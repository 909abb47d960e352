"""Git and Git LFS rules of the test Hub.

Blob ids, LFS pointers, binary detection, .gitattributes and .gitignore matching.
"""

from __future__ import annotations

import hashlib
import re

#: The ``.gitattributes`` the Hub writes in the initial commit of every new repo.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z",
        "*.arrow",
        "*.bin",
        "*.bz2",
        "*.ckpt",
        "*.ftz",
        "*.gz",
        "*.h5",
        "*.joblib",
        "*.lfs.*",
        "*.mlmodel",
        "*.model",
        "*.msgpack",
        "*.npy",
        "*.npz",
        "*.onnx",
        "*.ot",
        "*.parquet",
        "*.pb",
        "*.pickle",
        "*.pkl",
        "*.pt",
        "*.pth",
        "*.rar",
        "*.safetensors",
        "saved_model/**/*",
        "*.tar.*",
        "*.tar",
        "*.tflite",
        "*.tgz",
        "*.wasm",
        "*.xz",
        "*.zip",
        "*.zst",
        "*tfevents*",
    )
)


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob: the ``oid``/``blobId`` the Hub reports and the ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The Git LFS pointer file stored in git in place of an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def is_binary(sample: bytes) -> bool:
    """Whether a file's first bytes look binary (NUL byte or not UTF-8), the Hub's criterion for LFS."""
    if b"\0" in sample:
        return True
    for cut in range(4):  # the sample may end in the middle of a multi-byte character
        try:
            sample[: len(sample) - cut].decode("utf-8")
            return False
        except UnicodeDecodeError:
            continue
    return True


def _glob_regex(pattern: str) -> tuple[re.Pattern[str], bool]:
    """Compile a gitignore/gitattributes pattern into (regex on the path, whether it only matches dirs)."""
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = "/" in pattern  # a slash anywhere but at the end anchors the pattern to the repo root
    pattern = pattern.lstrip("/")
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(prefix + "".join(out)), dir_only


def lfs_patterns(gitattributes: str) -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, is_lfs) rules of a .gitattributes file; the last matching rule wins, as in git."""
    rules = []
    for line in gitattributes.splitlines():
        parts = line.strip().split()
        if len(parts) < 2 or parts[0].startswith("#"):
            continue
        attrs = parts[1:]
        if "filter=lfs" in attrs:
            rules.append((_glob_regex(parts[0])[0], True))
        elif "-filter" in attrs or "!filter" in attrs:
            rules.append((_glob_regex(parts[0])[0], False))
    return rules


def is_lfs_tracked(path: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    tracked = False
    for regex, is_lfs in rules:
        if regex.fullmatch(path):
            tracked = is_lfs
    return tracked


def is_gitignored(path: str, gitignore: str) -> bool:
    """Whether ``path`` is ignored by a .gitignore (patterns, ``!`` negation, ``dir/`` rules, ``**``)."""
    parts = path.split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]  # parents first, then the file
    ignored = False
    for line in gitignore.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex, dir_only = _glob_regex(line[1:] if negate else line)
        for k, candidate in enumerate(candidates):
            is_dir = k < len(candidates) - 1
            if (is_dir or not dir_only) and regex.fullmatch(candidate):
                ignored = not negate
                break
    return ignored
