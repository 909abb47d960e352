"""Test Hub routes that write files: the preupload decision (regular vs LFS) and atomic NDJSON commits."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from tests.hub_server.card import parse_card_metadata
from tests.hub_server.core import HubCore
from tests.hub_server.gitfiles import is_binary, is_gitignored, is_lfs_tracked, lfs_patterns
from tests.hub_server.state import COMMIT_RE, REGULAR_FILE_MAX_SIZE, SHA256_RE, FileEntry, HubError, Repo

if TYPE_CHECKING:
    from tests.hub_server.handler import Handler


class UploadRoutes(HubCore):
    """``.../preupload/{rev}`` and ``.../commit/{rev}``."""

    # -- uploads ---------------------------------------------------------------------------------------------

    def _preupload(self, req: Handler, repo_type: str, repo_id: str, revision: str) -> None:
        """``POST /api/{type}s/{repo_id}/preupload/{rev}``: for each file, ``uploadMode`` ("lfs" if
        ``.gitattributes`` tracks it with LFS, if it is over 10 MiB or if its sample is binary; "regular"
        otherwise), ``shouldIgnore`` (from the ``gitIgnore`` sent or the repo's ``.gitignore``) and the
        ``oid`` of the file already at that path (lets the client skip unchanged files)."""
        payload = req.json_body()
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, '"files" must be an array')
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            commit = self._resolve(repo, revision)
            gitattributes = commit.files.get(".gitattributes")
            rules = (
                lfs_patterns(self._content(gitattributes).decode("utf-8", "replace")) if gitattributes else []
            )
            gitignore = payload.get("gitIgnore")
            if gitignore is not None and not isinstance(gitignore, str):
                raise HubError(400, '"gitIgnore" must be a string')
            if gitignore is None and ".gitignore" in commit.files:
                gitignore = self._content(commit.files[".gitignore"]).decode("utf-8", "replace")
            out = []
            for item in files:
                if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                    raise HubError(400, "Each file needs a 'path'")
                path = _check_path(item["path"])
                try:
                    sample = base64.b64decode(item.get("sample") or "", validate=True)
                except binascii.Error as exc:
                    raise HubError(400, f"Invalid base64 sample for {path!r}") from exc
                size = item.get("size")
                if not isinstance(size, int) or size < 0:
                    raise HubError(400, f"Invalid size for {path!r}: {size!r}")
                lfs = is_lfs_tracked(path, rules) or size > REGULAR_FILE_MAX_SIZE or is_binary(sample)
                info: dict[str, Any] = {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": bool(gitignore) and is_gitignored(path, gitignore),
                }
                existing = commit.files.get(path)
                if existing is not None:
                    info["oid"] = existing.lfs_oid or existing.blob_id
                out.append(info)
        req.send_json({"files": out, "commitOid": commit.oid})

    def _commit(self, req: Handler, repo_type: str, repo_id: str, revision: str) -> None:
        """``POST /api/{type}s/{repo_id}/commit/{rev}[?create_pr=1]``, NDJSON body: a ``header`` line
        (``summary``, ``description``, optional ``parentCommit``) then ``file`` (base64 content), ``lfsFile``
        (``oid`` of an uploaded LFS object), ``deletedFile`` and ``deletedFolder`` lines.

        Atomic: every line is checked (paths, base64, regular files under 10 MiB and not binary, LFS objects
        uploaded, deleted paths existing, README metadata valid) before anything changes. ``parentCommit``
        must be the branch head (412 otherwise) or, with ``create_pr``, is where the PR starts. Answers
        ``{commitUrl, commitOid, pullRequestUrl}``.
        """
        lines = []
        for n, raw in enumerate(req.body.splitlines(), start=1):
            if raw.strip():
                try:
                    lines.append(json.loads(raw))
                except ValueError as exc:
                    raise HubError(400, f"Invalid NDJSON on line {n}: {exc}") from exc
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header ({'key': 'header', ...})")
        header = lines[0].get("value") or {}
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise HubError(400, "Commit summary is required")
        description = header.get("description") or ""
        create_pr = req.flag("create_pr")
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            user = self._require_user(req)
            ref = self._branch_ref(repo, revision)
            if create_pr and not ref.startswith("refs/heads/"):
                raise HubError(400, f"Pull requests can only be opened against a branch, not {revision!r}")
            base = repo.commits[repo.refs[ref]]
            parent_commit = header.get("parentCommit")
            if parent_commit is not None:
                parent = (
                    self._resolve(repo, str(parent_commit))
                    if COMMIT_RE.fullmatch(str(parent_commit))
                    else None
                )
                if parent is None:
                    raise HubError(400, f"Invalid parentCommit {parent_commit!r}")
                if create_pr:
                    base = parent
                elif parent.oid != base.oid:
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = self._apply_operations(repo, dict(base.files), lines[1:])
            changed = {p for p in set(files) | set(base.files) if files.get(p) != base.files.get(p)}
            if "README.md" in changed and "README.md" in files:
                try:
                    parse_card_metadata(self._content(files["README.md"]).decode("utf-8", "replace"))
                except ValueError as exc:
                    raise HubError(400, f"Invalid metadata in README.md. {exc}") from exc
            # Everything checked: from here on, nothing can fail.
            commit = self._make_commit(repo, base, files, summary, description, user)
            result: dict[str, Any] = {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.url}/{repo.url_path}/commit/{commit.oid}",
            }
            if create_pr:
                repo.discussions += 1
                repo.refs[f"refs/pr/{repo.discussions}"] = commit.oid
                result["pullRequestUrl"] = f"{self.url}/{repo.url_path}/discussions/{repo.discussions}"
            else:
                repo.refs[ref] = commit.oid
        req.send_json(result)

    def _apply_operations(
        self, repo: Repo, files: dict[str, FileEntry], ops: list[Any]
    ) -> dict[str, FileEntry]:
        """Apply commit lines to a copy of the tree, raising HubError on the first invalid one."""
        missing_lfs = []
        for op in ops:
            if not isinstance(op, dict) or not isinstance(op.get("value"), dict):
                raise HubError(400, f"Invalid commit operation: {op!r}")
            key, value = op.get("key"), op["value"]
            path = _check_path(value.get("path"))
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path!r}")
                try:
                    data = base64.b64decode(value.get("content") or "", validate=True)
                except binascii.Error as exc:
                    raise HubError(400, f"Invalid base64 content for {path!r}") from exc
                if len(data) > REGULAR_FILE_MAX_SIZE:
                    raise HubError(
                        400,
                        "Your push was rejected because it contains files larger than 10 MiB. "
                        f"Upload them with LFS instead. Offending file: - {path}",
                    )
                if is_binary(data[:1024]):
                    raise HubError(
                        400,
                        "Your push was rejected because it contains binary files. Upload them "
                        f"with LFS instead. Offending file: - {path}",
                    )
                _check_no_conflict(files, path)
                files[path] = FileEntry.regular(data)
            elif key == "lfsFile":
                oid = value.get("oid")
                if (
                    value.get("algo", "sha256") != "sha256"
                    or not isinstance(oid, str)
                    or not SHA256_RE.fullmatch(oid)
                ):
                    raise HubError(400, f"Invalid LFS oid for {path!r}: {oid!r}")
                if oid not in repo.lfs_objects:
                    missing_lfs.append(path)
                    continue
                size = len(self.blobs[oid])
                if value.get("size") is not None and value["size"] != size:
                    raise HubError(400, f"LFS object {oid} has size {size}, not {value['size']} ({path})")
                _check_no_conflict(files, path)
                files[path] = FileEntry.lfs(oid, size)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        if missing_lfs:
            raise HubError(
                400,
                "Your push was rejected because an LFS pointer pointed to a file that does not "
                "exist. Offending file(s): - " + " - ".join(missing_lfs),
            )
        return files


def _check_path(path: Any) -> str:
    """Validate a path in a repo: relative, no empty/``.``/``..`` segment, nothing under ``.git/``."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    parts = path.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git" or ".git" in parts:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _check_no_conflict(files: dict[str, FileEntry], path: str) -> None:
    """A path cannot be both a file and a folder (git trees)."""
    parts = path.split("/")
    for k in range(1, len(parts)):
        if "/".join(parts[:k]) in files:
            raise HubError(400, f"Cannot create {path!r}: {'/'.join(parts[:k])!r} is a file")
    if any(p.startswith(path + "/") for p in files):
        raise HubError(400, f"Cannot create file {path!r}: a folder with this name exists")
