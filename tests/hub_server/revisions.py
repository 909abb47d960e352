"""Test Hub routes for reading and naming revisions: trees, paths-info, refs, commit lists, branches, tags."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from tests.hub_server.core import HubCore
from tests.hub_server.state import BRANCH_RE, Commit, HubError, Repo

if TYPE_CHECKING:
    from tests.hub_server.handler import Handler


class RevisionRoutes(HubCore):
    """``.../tree``, ``.../paths-info``, ``.../refs``, ``.../commits``, ``.../branch``, ``.../tag``."""

    # -- trees -----------------------------------------------------------------------------------------------

    def _last_commit(self, repo: Repo, commit: Commit, path: str, is_dir: bool) -> dict[str, str]:
        def state(c: Commit) -> Any:
            if is_dir:
                return sorted((p, e.blob_id) for p, e in c.files.items() if p.startswith(path + "/"))
            entry = c.files.get(path)
            return entry.blob_id if entry else None

        current = commit
        target = state(commit)
        while current.parent and state(repo.commits[current.parent]) == target:
            current = repo.commits[current.parent]
        return {"id": current.oid, "title": current.title, "date": current.date}

    def _tree_entries(
        self, repo: Repo, commit: Commit, base: str, recursive: bool, expand: bool
    ) -> list[dict]:
        prefix = base + "/" if base else ""
        files = {p: e for p, e in commit.files.items() if p.startswith(prefix)}
        if base and not files:
            raise HubError(
                404, f"Entry not found: {base!r} is not a folder at this revision", "EntryNotFound"
            )
        dirs: set[str] = set()
        entries: list[dict[str, Any]] = []
        for path, entry in files.items():
            rel = path[len(prefix) :].split("/")
            for k in range(1, len(rel)):
                if recursive or k == 1:
                    dirs.add(prefix + "/".join(rel[:k]))
            if recursive or len(rel) == 1:
                item: dict[str, Any] = {
                    "type": "file",
                    "oid": entry.blob_id,
                    "size": entry.size,
                    "path": path,
                }
                if entry.lfs_oid:
                    item["lfs"] = {
                        "oid": entry.lfs_oid,
                        "size": entry.size,
                        "pointerSize": entry.pointer_size,
                    }
                entries.append(item)
        for d in dirs:
            tree_oid = hashlib.sha1(
                repr(
                    sorted((p, e.blob_id) for p, e in commit.files.items() if p.startswith(d + "/"))
                ).encode()
            ).hexdigest()
            entries.append({"type": "directory", "oid": tree_oid, "size": 0, "path": d})
        entries.sort(key=lambda e: e["path"])
        if expand:
            for item in entries:
                item["lastCommit"] = self._last_commit(
                    repo, commit, item["path"], item["type"] == "directory"
                )
                if item["type"] == "file":
                    item["securityFileStatus"] = {
                        "status": "safe",
                        "avScan": {"virusFound": False, "virusNames": None},
                        "pickleImportScan": None,
                    }
        return entries

    def _paginated(self, req: Handler, items: list[Any], page_size: int) -> None:
        start = int(req.param("cursor") or 0)
        page = items[start : start + page_size]
        headers = {}
        if start + page_size < len(items):
            query = {k: v[0] for k, v in req.query.items() if k != "cursor"}
            query["cursor"] = str(start + page_size)
            headers["Link"] = f'<{self.url}{req.raw_path}?{urlencode(query)}>; rel="next"'
        req.send_json(page, headers=headers)

    def _tree(self, req: Handler, repo_type: str, repo_id: str, revision: str, base: str) -> None:
        """``GET /api/{type}s/{repo_id}/tree/{rev}[/{path}]?recursive=&expand=``: files and folders, paginated
        with a ``Link: <...>; rel="next"`` header; EntryNotFound for a missing folder."""
        expand = req.flag("expand")
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id)
            commit = self._resolve(repo, revision)
            entries = self._tree_entries(repo, commit, base, req.flag("recursive"), expand)
        self._paginated(req, entries, self.page_sizes["tree_expanded" if expand else "tree"])

    def _paths_info(self, req: Handler, repo_type: str, repo_id: str, revision: str) -> None:
        """``POST /api/{type}s/{repo_id}/paths-info/{rev}`` (form or JSON ``paths``): existing paths only."""
        if req.headers.get("Content-Type", "").startswith("application/json"):
            payload = req.json_body()
            paths, expand = payload.get("paths") or [], bool(payload.get("expand"))
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise HubError(400, '"paths" must be an array of strings')
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[0].lower() == "true"
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id)
            commit = self._resolve(repo, revision)
            everything = self._tree_entries(repo, commit, "", True, expand)
        wanted = {p.strip("/") for p in paths}
        req.send_json([e for e in everything if e["path"] in wanted])

    def _refs(self, req: Handler, repo_type: str, repo_id: str) -> None:
        """``GET /api/{type}s/{repo_id}/refs[?include_prs=1]``: branches, tags, converts, pull requests."""
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id)
            refs = dict(repo.refs)

        def group(prefix: str) -> list[dict[str, str]]:
            return [
                {"name": r[len(prefix) :], "ref": r, "targetCommit": oid}
                for r, oid in sorted(refs.items())
                if r.startswith(prefix)
            ]

        data = {"branches": group("refs/heads/"), "tags": group("refs/tags/"), "converts": []}
        if req.flag("include_prs"):
            data["pullRequests"] = group("refs/pr/")
        req.send_json(data)

    def _commits(self, req: Handler, repo_type: str, repo_id: str, revision: str) -> None:
        """``GET /api/{type}s/{repo_id}/commits/{rev}``: first-parent history, newest first, paginated."""
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id)
            history = self._history(repo, self._resolve(repo, revision))
        items = []
        for c in history:
            item: dict[str, Any] = {
                "id": c.oid,
                "title": c.title,
                "message": c.message,
                "date": c.date,
                "authors": [{"user": c.author, "avatar": ""}],
            }
            if "formatted" in (req.query.get("expand[]") or []):
                item["formatted"] = {"title": c.title, "message": c.message}
            items.append(item)
        self._paginated(req, items, self.page_sizes["commits"])

    def _branch(self, req: Handler, repo_type: str, repo_id: str, branch: str) -> None:
        """``POST|DELETE /api/{type}s/{repo_id}/branch/{branch}``: create (from ``startingPoint``, default
        main; 409 if it exists) or delete a branch (``main`` cannot be deleted)."""
        ref = f"refs/heads/{branch}"
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            if req.method == "DELETE":
                if ref not in repo.refs:
                    raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                if branch == "main":
                    raise HubError(403, "Cannot delete the default branch 'main'")
                del repo.refs[ref]
                return req.send_json({})
            if not BRANCH_RE.fullmatch(branch) or ".." in branch or branch.startswith("refs/"):
                raise HubError(400, f"Invalid branch name {branch!r}")
            if ref in repo.refs:
                raise HubError(409, f"Reference already exists: {ref}")
            payload = req.json_body()
            start = self._resolve(repo, payload.get("startingPoint") or "main")
            if payload.get("emptyCommit"):
                start = self._make_commit(
                    repo, None, {}, f"Create branch {branch}", "", self._require_user(req)
                )
            repo.refs[ref] = start.oid
        req.send_json({})

    def _tag(self, req: Handler, repo_type: str, repo_id: str, revision_or_tag: str) -> None:
        """``POST /api/{type}s/{repo_id}/tag/{rev}`` (body ``{"tag": ...}``; 409 if it exists) and
        ``DELETE /api/{type}s/{repo_id}/tag/{tag}``."""
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            if req.method == "DELETE":
                if repo.refs.pop(f"refs/tags/{revision_or_tag}", None) is None:
                    raise HubError(404, f"Invalid rev id: {revision_or_tag}", "RevisionNotFound")
                return req.send_json({})
            tag = req.json_body().get("tag")
            if not isinstance(tag, str) or not BRANCH_RE.fullmatch(tag):
                raise HubError(400, f"Invalid tag name {tag!r}")
            if f"refs/tags/{tag}" in repo.refs:
                raise HubError(409, f"Tag {tag} already exists")
            repo.refs[f"refs/tags/{tag}"] = self._resolve(repo, revision_or_tag).oid
        req.send_json({})
