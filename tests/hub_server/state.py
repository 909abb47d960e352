"""What the test Hub stores and logs.

Repos, commits, file entries, request records, fault rules, the Hub's error type and naming rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tests.hub_server.gitfiles import git_blob_sha1, lfs_pointer

#: Files above this size cannot be committed as regular git blobs on the Hub; they must go through LFS.
REGULAR_FILE_MAX_SIZE = 10 * 1024 * 1024
#: Tree listings are paginated like the Hub's: 1000 entries per page, 50 with ``expand=True``; commit
#: lists by 50. ``HubServer.page_sizes`` holds the values in use (tests shrink them to exercise pagination).
PAGE_SIZES = {"tree": 1000, "tree_expanded": 50, "commits": 50}

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Path segments that follow a repo id in /api/{type}s/{repo_id}/... (as in the client's own URL parser).
API_SUBRESOURCES = {
    "revision",
    "tree",
    "paths-info",
    "preupload",
    "commit",
    "commits",
    "branch",
    "tag",
    "refs",
    "settings",
    "discussions",
    "resolve",
}
# Hub naming rules (the client checks the same before sending): letters, digits, '-', '_', '.'; no leading or
# trailing '-'/'.'; no '--' or '..'; at most 96 characters; no '.git' suffix.
NAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
BRANCH_RE = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
COMMIT_RE = re.compile(r"[0-9a-f]{7,40}")


class HubError(Exception):
    """An HTTP error answered as the Hub does: status, ``X-Error-Code``, ``X-Error-Message``, JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body


def now() -> str:
    """Current time in the Hub's JSON date format (``2024-05-01T12:00:00.000Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree. Regular files keep their bytes; LFS files point into the object store."""

    size: int
    blob_id: str
    data: bytes | None = None
    lfs_oid: str | None = None

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.lfs_oid or "", self.size))

    @classmethod
    def regular(cls, data: bytes) -> FileEntry:
        return cls(size=len(data), blob_id=git_blob_sha1(data), data=data)

    @classmethod
    def lfs(cls, oid: str, size: int) -> FileEntry:
        return cls(size=size, blob_id=git_blob_sha1(lfs_pointer(oid, size)), lfs_oid=oid)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # "refs/heads/main" -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: set[str] = field(default_factory=set)  # sha256 of the LFS objects uploaded to this repo
    discussions: int = 0
    gated: bool | str = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.repo_type, self.repo_id)

    @property
    def url_path(self) -> str:
        return URL_PREFIXES[self.repo_type] + self.repo_id


@dataclass
class RequestRecord:
    """One request handled by the server (``host`` is ``"hub"`` or ``"storage"``)."""

    method: str
    path: str
    status: int
    host: str
    query: str = ""


@dataclass
class FaultRule:
    """Makes the next ``remaining`` requests whose path matches ``pattern`` fail with ``status``."""

    pattern: re.Pattern[str]
    status: int
    remaining: int
    method: str | None = None
    message: str = "Injected fault"
    hits: int = 0
