"""The test Hub's state and the rules every route shares.

Repos and commits, revisions, authentication, the request log and fault injection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from typing import TYPE_CHECKING

from tests.hub_server.state import (
    COMMIT_RE,
    PAGE_SIZES,
    Commit,
    FaultRule,
    FileEntry,
    HubError,
    Repo,
    RequestRecord,
    now,
)

if TYPE_CHECKING:
    from tests.hub_server.handler import BoundServer, Handler


class HubCore:
    """State, revisions, authentication, request log and fault injection of :class:`HubServer` (the routes
    are in the mixins beside this module)."""

    def __init__(
        self,
        token: str | None = None,
        *,
        user: str = "test-user",
        orgs: tuple[str, ...] = ("test-org",),
        require_auth: bool = True,
    ) -> None:
        self.token = token or "hf_test_" + secrets.token_hex(12)
        self.user = user
        self.orgs = tuple(orgs)
        self.require_auth = require_auth
        self.page_sizes = dict(PAGE_SIZES)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # LFS object store (sha256 -> bytes), shared by all repos like S3
        self.requests: list[RequestRecord] = []
        self.internal_errors: list[str] = []
        self.faults: list[FaultRule] = []
        self._upload_tickets: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._secret = secrets.token_bytes(16)
        self._lock = threading.RLock()
        self._counter = 0
        self._servers: list[BoundServer] = []
        self._threads: list[threading.Thread] = []
        self.url = ""
        self.storage_url = ""

    # -- test helpers ----------------------------------------------------------------------------------------

    def fail_next(
        self,
        pattern: str,
        times: int = 1,
        status: int = 500,
        *,
        method: str | None = None,
        message: str = "Injected fault",
    ) -> FaultRule:
        """Make the next ``times`` requests whose path matches the regex ``pattern`` (``re.search`` on the
        URL path, query excluded; e.g. ``r"/commit/"``, ``r"/preupload/"``, ``r"^/upload/"``) fail with
        ``status``.

        ``method`` restricts the rule to one HTTP method. Returns the rule; ``rule.hits`` counts the failures
        served, ``rule.remaining`` those still to come.
        """
        rule = FaultRule(re.compile(pattern), status, times, method.upper() if method else None, message)
        with self._lock:
            self.faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def take_fault(self, method: str, path: str) -> FaultRule | None:
        """The fault rule this request triggers (counted as served), None when no rule matches."""
        with self._lock:
            for rule in self.faults:
                if rule.remaining > 0 and rule.method in (None, method) and rule.pattern.search(path):
                    rule.remaining -= 1
                    rule.hits += 1
                    return rule
        return None

    def count(
        self,
        method: str | None = None,
        pattern: str | None = None,
        *,
        host: str | None = None,
        status: int | None = None,
    ) -> int:
        """How many logged requests match method, path regex, host (``"hub"``/``"storage"``) and status."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method.upper())
                and (pattern is None or re.search(pattern, r.path))
                and (host is None or r.host == host)
                and (status is None or r.status == status)
            )

    def log_request(self, record: RequestRecord) -> None:
        """Append to :attr:`requests` (the handler logs every answer before sending it)."""
        with self._lock:
            self.requests.append(record)

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def _repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"No {repo_type} repo {repo_id!r} on this server")
        return repo

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Commit oid that ``revision`` points to (server-side view, no HTTP)."""
        with self._lock:
            return self._resolve(self._repo(repo_id, repo_type), revision).oid

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Content of every file at ``revision`` (server-side view, no HTTP)."""
        with self._lock:
            commit = self._resolve(self._repo(repo_id, repo_type), revision)
            return {p: self._content(e) for p, e in commit.files.items()}

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commits reachable from ``revision`` by first parents, newest first (server-side view, no HTTP)."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            return self._history(repo, self._resolve(repo, revision))

    # -- internals: state ------------------------------------------------------------------------------------

    def _content(self, entry: FileEntry) -> bytes:
        return entry.data if entry.data is not None else self.blobs[entry.lfs_oid or ""]

    def _new_oid(self, *parts: str) -> str:
        self._counter += 1
        return hashlib.sha1("\n".join((*parts, str(time.time_ns()), str(self._counter))).encode()).hexdigest()

    def _make_commit(
        self,
        repo: Repo,
        parent: Commit | None,
        files: dict[str, FileEntry],
        title: str,
        message: str,
        author: str,
    ) -> Commit:
        oid = self._new_oid(repo.repo_id, parent.oid if parent else "", title)
        commit = Commit(oid, parent.oid if parent else None, title, message, author, now(), files)
        repo.commits[oid] = commit
        return commit

    def _history(self, repo: Repo, commit: Commit) -> list[Commit]:
        out: list[Commit] = []
        current: Commit | None = commit
        while current is not None:
            out.append(current)
            current = repo.commits.get(current.parent) if current.parent else None
        return out

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        """Branch, tag, ``refs/...`` or (prefix of a) commit oid -> commit; RevisionNotFound otherwise."""
        for ref in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
            if ref.startswith("refs/") and ref in repo.refs:
                return repo.commits[repo.refs[ref]]
        if COMMIT_RE.fullmatch(revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _branch_ref(self, repo: Repo, revision: str) -> str:
        """The ref a commit on ``revision`` moves: a branch (``main``, ``refs/heads/x``) or ``refs/pr/N``."""
        ref = revision if revision.startswith("refs/") else f"refs/heads/{revision}"
        if ref in repo.refs and (ref.startswith("refs/heads/") or ref.startswith("refs/pr/")):
            return ref
        if ref in repo.refs or f"refs/tags/{revision}" in repo.refs or COMMIT_RE.fullmatch(revision):
            raise HubError(400, f"Cannot commit to {revision!r}: not a branch. Create a branch first.")
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # -- internals: auth -------------------------------------------------------------------------------------

    def _user(self, req: Handler) -> str | None:
        """The authenticated user name, ``None`` for anonymous; 401 on a token the server does not know."""
        header = req.headers.get("Authorization")
        if not self.require_auth:
            return self.user
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), self.token):
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.user

    def _namespaces(self, user: str | None) -> set[str]:
        return {user, *self.orgs} if user else set()

    def _require_user(self, req: Handler) -> str:
        user = self._user(req)
        if user is None:
            raise HubError(
                401,
                "Authentication required: pass a token with write access "
                "(token=... or the HF_TOKEN environment variable)",
            )
        return user

    def _get_repo(self, req: Handler, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        """The repo if it exists and the caller may see it (and write to it, if ``write``)."""
        user = self._require_user(req) if write else self._user(req)
        repo = self.repos.get((repo_type, repo_id))
        visible = repo is not None and (not repo.private or repo_id.split("/")[0] in self._namespaces(user))
        if not visible:
            # Like the Hub: the same answer for missing and private repos, 401 when anonymous, 404 otherwise.
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        assert repo is not None
        if write and repo_id.split("/")[0] not in self._namespaces(user):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo
