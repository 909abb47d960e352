"""A local stand-in for the Hugging Face Hub's HTTP API, for the test suite.

The unmodified ``huggingface_hub`` client (and ``transformers``' ``from_pretrained``/``push_to_hub``) talk
to it when ``HF_ENDPOINT`` points here and Xet is disabled (``HF_HUB_DISABLE_XET=1``): uploads then go
through the legacy Git LFS protocol, which this server implements. Everything lives in memory; nothing
leaves 127.0.0.1.

Two listening sockets imitate the Hub's two hosts:

* the **Hub** (``server.url``): the JSON API under ``/api``, the ``/{repo_id}/resolve/{revision}/{path}``
  download route and the Git LFS batch/verify API under ``/{repo_id}.git/info/lfs/objects``;
* the **storage/CDN** host (``server.storage_url``): where LFS objects are PUT (the Hub hands out presigned S3
  URLs) and downloaded from (the Hub answers ``resolve`` on an LFS file with a 302 to a signed CDN URL).
  Being on another origin, the client does not follow the redirect during its HEAD call and does not send
  the token there, exactly as with the real Hub.

What the client sees matches the Hub where the client looks: error headers (``X-Error-Code`` and
``X-Error-Message``, which ``hf_raise_for_status`` turns into ``RepositoryNotFoundError``,
``RevisionNotFoundError``, ``RemoteEntryNotFoundError``, ``BadRequestError``...), the download headers
(``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``, ``Location``, ``Content-Length``), the
preupload decision (regular vs LFS), atomic NDJSON commits, pull requests (``refs/pr/N``), branches and tags,
README metadata validation.

Tests can inject faults (:meth:`HubServer.fail_next`), read the request log (:attr:`HubServer.requests`,
:meth:`HubServer.count`) and inspect repos directly (:meth:`HubServer.files`, :meth:`HubServer.head`).

>>> with HubServer() as hub, hub.client_env(tmp_dir):  # doctest: +SKIP
...     HfApi().create_repo("test-user/tiny")
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

#: Files above this size cannot be committed as regular git blobs on the Hub; they must go through LFS.
REGULAR_FILE_MAX_SIZE = 10 * 1024 * 1024
#: Tree listings are paginated like the Hub's: 1000 entries per page, 50 with ``expand=True``; commit
#: lists by 50. ``HubServer.page_sizes`` holds the values in use (tests shrink them to exercise pagination).
PAGE_SIZES = {"tree": 1000, "tree_expanded": 50, "commits": 50}

#: The ``.gitattributes`` the Hub writes in the initial commit of every new repo.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
        "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)  # fmt: skip

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Path segments that follow a repo id in /api/{type}s/{repo_id}/... (as in the client's own URL parser).
_API_SUBRESOURCES = {
    "revision", "tree", "paths-info", "preupload", "commit", "commits", "branch", "tag", "refs", "settings",
    "discussions", "resolve",
}  # fmt: skip
# Hub naming rules (the client checks the same before sending): letters, digits, '-', '_', '.'; no leading or
# trailing '-'/'.'; no '--' or '..'; at most 96 characters; no '.git' suffix.
_NAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
_BRANCH_RE = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_COMMIT_RE = re.compile(r"[0-9a-f]{7,40}")
_YAML_BLOCK_RE = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")


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


def _now() -> str:
    """Current time in the Hub's JSON date format (``2024-05-01T12:00:00.000Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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


# ----------------------------------------------------------------------------------------------------------
# README metadata validation (the Hub's "Invalid metadata in README.md" / YAML metadata error)
# ----------------------------------------------------------------------------------------------------------


def _check_str_or_str_list(meta: dict, key: str, errors: list[str]) -> None:
    value = meta.get(key)
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        errors.append(f'"{key}" must be a string or an array of strings')
        return
    for i, item in enumerate(value):
        if not isinstance(item, str):
            errors.append(f'"{key}[{i}]" must be a string')


def _check_model_index(model_index: Any, errors: list[str]) -> None:
    if not isinstance(model_index, list):
        errors.append('"model-index" must be an array')
        return
    for i, entry in enumerate(model_index):
        where = f"model-index[{i}]"
        if not isinstance(entry, dict):
            errors.append(f'"{where}" must be of type object')
            continue
        if not isinstance(entry.get("name"), str):
            errors.append(f'"{where}.name" is required and must be a string')
        results = entry.get("results")
        if not isinstance(results, list):
            errors.append(f'"{where}.results" is required and must be an array')
            continue
        for j, result in enumerate(results):
            rwhere = f"{where}.results[{j}]"
            if not isinstance(result, dict):
                errors.append(f'"{rwhere}" must be of type object')
                continue
            task = result.get("task")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f'"{rwhere}.task.type" is required and must be a string')
            dataset = result.get("dataset")
            if not isinstance(dataset, dict) or not isinstance(dataset.get("type"), str):
                errors.append(f'"{rwhere}.dataset.type" is required and must be a string')
            elif not isinstance(dataset.get("name"), str):
                errors.append(f'"{rwhere}.dataset.name" is required and must be a string')
            metrics = result.get("metrics")
            if not isinstance(metrics, list):
                errors.append(f'"{rwhere}.metrics" is required and must be an array')
                continue
            for k, metric in enumerate(metrics):
                mwhere = f"{rwhere}.metrics[{k}]"
                if not isinstance(metric, dict):
                    errors.append(f'"{mwhere}" must be of type object')
                    continue
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
        if key in meta and meta[key] is not None:
            if not isinstance(meta[key], list):
                errors.append(f'"{key}" must be an array')
            else:
                errors += [
                    f'"{key}[{i}]" must be a string'
                    for i, v in enumerate(meta[key])
                    if not isinstance(v, str)
                ]
    for key in ("language", "datasets", "base_model"):
        _check_str_or_str_list(meta, key, errors)
    if "model-index" in meta:
        _check_model_index(meta["model-index"], errors)
    if "inference" in meta and not isinstance(meta["inference"], (bool, dict)):
        errors.append('"inference" must be a boolean or an object')
    if errors:
        raise ValueError("YAML metadata error: " + "; ".join(errors))
    return meta


# ----------------------------------------------------------------------------------------------------------
# State
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# HTTP handler
# ----------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Parses a request, dispatches it to :class:`HubServer`, writes the answer. One instance per request."""

    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from the Hub
    timeout = 600  # idle keep-alive connections are dropped after this long (the client closes them first)
    server: _BoundServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass  # the request log is kept in HubServer.requests instead of stderr

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        self.raw_path, self.query_string = split.path, split.query
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.method = method
        self.status = 500
        self.responded = False
        try:
            self.body = self._read_body()  # always drained, so the keep-alive connection stays usable
        except ValueError:
            self.close_connection = True
            return self.send_error_response(HubError(400, "Malformed chunked request body"))
        try:
            fault = hub._take_fault(method, self.raw_path)
            if fault is not None:
                raise HubError(fault.status, fault.message)
            if self.server.role == "hub":
                hub._route_hub(self)
            else:
                hub._route_storage(self)
        except HubError as err:
            self.send_error_response(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-answer: nothing to fix here
        except Exception as exc:  # a bug in the server: answer 500 and remember it for the fixture's teardown
            hub.internal_errors.append(f"{method} {self.path}: {exc!r}\n{traceback.format_exc()}")
            if self.responded:
                self.close_connection = True
            else:
                self.send_error_response(HubError(500, f"Internal server error: {exc!r}"))

    # -- responses -------------------------------------------------------------------------------------------

    def send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json; charset=utf-8",
    ) -> None:
        self.status = status
        self.responded = True
        hub = self.server.hub
        with hub._lock:  # logged before answering, so a test reading the log right after a call sees it
            hub.requests.append(
                RequestRecord(self.method, self.raw_path, status, self.server.role, self.query_string)
            )
        self.send_response(status)
        self.send_header("X-Request-Id", f"Root={uuid.uuid4()}")
        for key, value in (headers or {}).items():
            self.send_header(key, _header_safe(value))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.method != "HEAD" and body:
            self.wfile.write(body)

    def send_json(
        self,
        data: Any,
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json; charset=utf-8",
    ) -> None:
        # default=str: README metadata may hold YAML dates, which JSON has no type for (the Hub sends strings)
        self.send(status, json.dumps(data, default=str).encode(), headers, content_type)

    def send_error_response(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        body = err.body if err.body is not None else {"error": err.message}
        self.send_json(body, err.status, headers)

    def send_content(self, data: bytes, headers: dict[str, str]) -> None:
        """Send file bytes, honouring a ``Range: bytes=a-b`` header (206) like the Hub and its CDN."""
        headers = {"Accept-Ranges": "bytes", **headers}
        range_header = self.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
            total = len(data)
            if match is None or match.groups() == ("", ""):
                raise HubError(
                    416, f"Invalid range {range_header!r}", headers={"Content-Range": f"bytes */{total}"}
                )
            start_s, end_s = match.groups()
            if start_s:
                start, end = int(start_s), min(int(end_s) if end_s else total - 1, total - 1)
            else:
                start, end = max(total - int(end_s), 0), total - 1
            if start >= total or start > end:
                raise HubError(
                    416,
                    f"Range {range_header!r} not satisfiable",
                    headers={"Content-Range": f"bytes */{total}"},
                )
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
            self.send(206, data[start : end + 1], headers, "application/octet-stream")
        else:
            self.send(200, data, headers, "application/octet-stream")

    def json_body(self) -> dict[str, Any]:
        try:
            payload = json.loads(self.body or b"{}")
        except ValueError as exc:
            raise HubError(400, f"Invalid JSON body: {exc}") from exc
        if not isinstance(payload, dict):
            raise HubError(400, "The JSON body must be an object")
        return payload

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name) or self.query.get(name + "[]")
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")


def _header_safe(value: str) -> str:
    return " ".join(str(value).splitlines()).encode("latin-1", "replace").decode("latin-1")


class _BoundServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: HubServer, role: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self.role = role


# ----------------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------------


class HubServer:
    """In-memory imitation of the Hugging Face Hub HTTP API on 127.0.0.1 (two ephemeral ports).

    Args:
        token: the access token of the (single) user. With ``require_auth=True`` (default), every write
            (create/delete repo, preupload, LFS batch, commit, branch, tag, settings) needs
            ``Authorization: Bearer <token>``; a missing token is a 401, a wrong one a 401
            ``Invalid credentials in Authorization header`` (on any request, as on the Hub). Reads of public
            repos need no token; private repos are visible to the token's user only (others get the Hub's
            ``RepoNotFound``, 401 without token and 404 with one).
        user: name of the user; repo ids without namespace are created under it.
        orgs: organisations the user belongs to (it may create repos under them too).
        require_auth: ``False`` treats every request as the user's, token or not.

    >>> with HubServer() as hub:  # doctest: +SKIP
    ...     print(hub.url, hub.token)
    """

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
        self._servers: list[_BoundServer] = []
        self._threads: list[threading.Thread] = []
        self.url = ""
        self.storage_url = ""

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Bind both sockets on 127.0.0.1 (ephemeral ports) and serve them from background threads."""
        for role in ("hub", "storage"):
            server = _BoundServer(self, role)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"hub-server-{role}",
                daemon=True,
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.storage_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop serving and close the sockets (idempotent)."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def client_env(self, home: str | os.PathLike[str], *, set_token: bool = True) -> Iterator[HubServer]:
        """Point ``huggingface_hub`` (and ``transformers``/``datasets`` if imported) at this server.

        Sets ``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET=1``, ``HF_HOME``/``HF_HUB_CACHE`` under ``home``,
        ``HF_TOKEN`` (unless ``set_token=False``), unsets ``HF_HUB_OFFLINE``, and patches the module constants
        the libraries read at import time (``constants.ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET``,
        cache and token paths, the default ``HfApi`` instance). Everything is restored on exit.
        """
        with _patched_client(self, str(home), set_token):
            yield self

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

    def _take_fault(self, method: str, path: str) -> FaultRule | None:
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
        commit = Commit(oid, parent.oid if parent else None, title, message, author, _now(), files)
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
        if _COMMIT_RE.fullmatch(revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _branch_ref(self, repo: Repo, revision: str) -> str:
        """The ref a commit on ``revision`` moves: a branch (``main``, ``refs/heads/x``) or ``refs/pr/N``."""
        ref = revision if revision.startswith("refs/") else f"refs/heads/{revision}"
        if ref in repo.refs and (ref.startswith("refs/heads/") or ref.startswith("refs/pr/")):
            return ref
        if ref in repo.refs or f"refs/tags/{revision}" in repo.refs or _COMMIT_RE.fullmatch(revision):
            raise HubError(400, f"Cannot commit to {revision!r}: not a branch. Create a branch first.")
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # -- internals: auth -------------------------------------------------------------------------------------

    def _user(self, req: _Handler) -> str | None:
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

    def _require_user(self, req: _Handler) -> str:
        user = self._user(req)
        if user is None:
            raise HubError(
                401,
                "Authentication required: pass a token with write access "
                "(token=... or the HF_TOKEN environment variable)",
            )
        return user

    def _get_repo(self, req: _Handler, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
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

    # -- routing ---------------------------------------------------------------------------------------------

    def _route_hub(self, req: _Handler) -> None:
        path, method = req.raw_path, req.method
        segs = path.strip("/").split("/")
        if path == "/api/whoami-v2" and method == "GET":
            return self._whoami(req)
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(req)
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo(req)
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(req)
        if path == "/api/agent-harnesses" and method == "GET":
            return req.send_json({"standardEnvVars": [], "harnesses": {}})  # the client's agent detection
        if len(segs) >= 3 and segs[0] == "api" and segs[1] in REPO_TYPES:
            repo_type = REPO_TYPES[segs[1]]
            n = 1 if len(segs) == 3 or segs[3] in _API_SUBRESOURCES else 2
            repo_id = "/".join(segs[2 : 2 + n])
            rest = [unquote(s) for s in segs[2 + n :]]
            return self._route_repo_api(req, repo_type, repo_id, rest)
        # /[datasets/|spaces/]{repo_id}.git/info/lfs/objects/{batch,verify}
        match = re.fullmatch(r"/(?:(datasets|spaces)/)?(.+)\.git/info/lfs/objects/(batch|verify)", path)
        if match and method == "POST":
            repo_type = REPO_TYPES[match.group(1)] if match.group(1) else "model"
            if match.group(3) == "batch":
                return self._lfs_batch(req, repo_type, match.group(2))
            return self._lfs_verify(req, repo_type, match.group(2))
        # /[datasets/|spaces/]{repo_id}/resolve/{revision}/{path}
        if method in ("GET", "HEAD"):
            offset = 1 if segs[0] in REPO_TYPES else 0
            repo_type = REPO_TYPES[segs[0]] if offset else "model"
            for n in (2, 1):
                if len(segs) > offset + n + 2 and segs[offset + n] == "resolve":
                    repo_id = "/".join(segs[offset : offset + n])
                    rest = segs[offset + n + 1 :]
                    if rest[0] == "refs" and len(rest) > 3 and rest[1] in ("pr", "heads", "tags", "convert"):
                        rest = ["/".join(rest[:3]), *rest[3:]]  # an unquoted "refs/pr/1" revision
                    return self._resolve_file(
                        req, repo_type, repo_id, unquote(rest[0]), unquote("/".join(rest[1:]))
                    )
        raise HubError(404, f"Not found: {method} {path} is not an endpoint of this test Hub")

    def _route_repo_api(self, req: _Handler, repo_type: str, repo_id: str, rest: list[str]) -> None:
        method = req.method
        head = rest[0] if rest else None
        if head is None and method == "GET":
            return self._repo_info(req, repo_type, repo_id, "main")
        if head == "revision" and len(rest) >= 2 and method == "GET":
            return self._repo_info(req, repo_type, repo_id, "/".join(rest[1:]))
        if head == "tree" and len(rest) >= 2 and method == "GET":
            return self._tree(req, repo_type, repo_id, rest[1], "/".join(rest[2:]).strip("/"))
        if head == "paths-info" and len(rest) == 2 and method == "POST":
            return self._paths_info(req, repo_type, repo_id, rest[1])
        if head == "refs" and len(rest) == 1 and method == "GET":
            return self._refs(req, repo_type, repo_id)
        if head == "commits" and len(rest) == 2 and method == "GET":
            return self._commits(req, repo_type, repo_id, rest[1])
        if head == "preupload" and len(rest) == 2 and method == "POST":
            return self._preupload(req, repo_type, repo_id, rest[1])
        if head == "commit" and len(rest) == 2 and method == "POST":
            return self._commit(req, repo_type, repo_id, rest[1])
        if head == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
            return self._branch(req, repo_type, repo_id, rest[1])
        if head == "tag" and len(rest) == 2 and method in ("POST", "DELETE"):
            return self._tag(req, repo_type, repo_id, rest[1])
        if head == "settings" and len(rest) == 1 and method == "PUT":
            return self._settings(req, repo_type, repo_id)
        raise HubError(404, f"Not found: {method} {req.raw_path} is not an endpoint of this test Hub")

    # -- account ---------------------------------------------------------------------------------------------

    def _whoami(self, req: _Handler) -> None:
        """``GET /api/whoami-v2``: the token's user, 401 without a valid token."""
        user = self._user(req)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        req.send_json(
            {
                "type": "user",
                "id": hashlib.md5(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "email": None,
                "emailVerified": False,
                "isPro": False,
                "canPay": False,
                "orgs": [{"type": "org", "name": org, "roleInOrg": "write"} for org in self.orgs],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "hf-lite-tests", "role": "write"},
                },
            }
        )

    # -- repos -----------------------------------------------------------------------------------------------

    def _repo_id_from_payload(self, payload: dict[str, Any], user: str) -> tuple[str, str]:
        name, organization = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}: must be one of {sorted(URL_PREFIXES)}")
        namespace = organization or user
        for label, value in (("name", name), ("namespace", namespace)):
            if (
                not isinstance(value, str)
                or not _NAME_RE.fullmatch(value)
                or "--" in value
                or ".." in value
                or value.endswith(".git")
            ):
                raise HubError(
                    400,
                    f"Invalid repo {label} {value!r}: use letters, digits, '-', '_' and '.', do "
                    "not start or end with '-' or '.', no '--' or '..', at most 96 characters.",
                )
        return repo_type, f"{namespace}/{name}"

    def _create_repo(self, req: _Handler) -> None:
        """``POST /api/repos/create``: new repo with the Hub's initial commit (a ``.gitattributes``).

        409 (with the repo ``url`` in the body, which ``create_repo(exist_ok=True)`` relies on) when it
        exists; 403 outside the user's namespaces; 400 on an invalid name.
        """
        user = self._require_user(req)
        payload = req.json_body()
        repo_type, repo_id = self._repo_id_from_payload(payload, user)
        if repo_id.split("/")[0] not in self._namespaces(user):
            raise HubError(
                403,
                f"You don't have the rights to create a {repo_type} under the namespace "
                f"{repo_id.split('/')[0]!r}",
            )
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        with self._lock:
            if any(k[0] == repo_type and k[1].lower() == repo_id.lower() for k in self.repos):
                raise HubError(
                    409,
                    f"You already created this {repo_type} repo",
                    body={"error": f"You already created this {repo_type} repo", "url": url},
                )
            repo = Repo(repo_type, repo_id, private, _now())
            commit = self._make_commit(
                repo,
                None,
                {".gitattributes": FileEntry.regular(DEFAULT_GITATTRIBUTES.encode())},
                "initial commit",
                "",
                user,
            )
            repo.refs["refs/heads/main"] = commit.oid
            self.repos[repo.key] = repo
        req.send_json({"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self, req: _Handler) -> None:
        """``DELETE /api/repos/delete``: RepoNotFound when missing (``missing_ok`` handles it client-side)."""
        user = self._require_user(req)
        repo_type, repo_id = self._repo_id_from_payload(req.json_body(), user)
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            del self.repos[repo.key]
        req.send_json({})

    def _settings(self, req: _Handler, repo_type: str, repo_id: str) -> None:
        """``PUT /api/{type}s/{repo_id}/settings``: visibility (``private``/``visibility``) and ``gated``."""
        payload = req.json_body()
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                repo.private = payload["visibility"] != "public"
            if "gated" in payload:
                repo.gated = payload["gated"]
        req.send_json({})

    def _sibling(self, path: str, entry: FileEntry, blobs: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"rfilename": path}
        if blobs:
            out.update(size=entry.size, blobId=entry.blob_id)
            if entry.lfs_oid:
                out["lfs"] = {"size": entry.size, "sha256": entry.lfs_oid, "pointerSize": entry.pointer_size}
        return out

    def _repo_info(self, req: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        """``GET /api/{type}s/{repo_id}[/revision/{rev}]``: id, sha, private, siblings (+ sizes/LFS with
        ``blobs=true``), cardData and tags from the README metadata; ``expand=`` keeps only the listed
        fields."""
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id)
            commit = self._resolve(repo, revision)
            blobs = req.flag("blobs")
            card: dict[str, Any] | None = None
            if "README.md" in commit.files:
                try:
                    card = parse_card_metadata(
                        self._content(commit.files["README.md"]).decode("utf-8", "replace")
                    )
                except ValueError:
                    card = None
            config = None
            if "config.json" in commit.files:
                try:
                    full = json.loads(self._content(commit.files["config.json"]))
                    config = {k: full[k] for k in ("architectures", "model_type") if k in full}
                except ValueError:
                    config = None
            data: dict[str, Any] = {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": repo.gated,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [t for t in (card or {}).get("tags") or [] if isinstance(t, str)],
                "siblings": [self._sibling(p, e, blobs) for p, e in sorted(commit.files.items())],
                "usedStorage": sum(e.size for e in commit.files.values()),
            }
            if repo_type == "model":
                data["modelId"] = repo_id
                if config:
                    data["config"] = config
                for key in ("library_name", "pipeline_tag"):
                    value = (card or {}).get(key)
                    if isinstance(value, str):
                        data[key] = value
            if card:
                data["cardData"] = card
        expand = req.query.get("expand") or req.query.get("expand[]")
        if expand:
            data = {k: v for k, v in data.items() if k in ("_id", "id") or k in expand}
        req.send_json(data)

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

    def _paginated(self, req: _Handler, items: list[Any], page_size: int) -> None:
        start = int(req.param("cursor") or 0)
        page = items[start : start + page_size]
        headers = {}
        if start + page_size < len(items):
            query = {k: v[0] for k, v in req.query.items() if k != "cursor"}
            query["cursor"] = str(start + page_size)
            headers["Link"] = f'<{self.url}{req.raw_path}?{urlencode(query)}>; rel="next"'
        req.send_json(page, headers=headers)

    def _tree(self, req: _Handler, repo_type: str, repo_id: str, revision: str, base: str) -> None:
        """``GET /api/{type}s/{repo_id}/tree/{rev}[/{path}]?recursive=&expand=``: files and folders, paginated
        with a ``Link: <...>; rel="next"`` header; EntryNotFound for a missing folder."""
        expand = req.flag("expand")
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id)
            commit = self._resolve(repo, revision)
            entries = self._tree_entries(repo, commit, base, req.flag("recursive"), expand)
        self._paginated(req, entries, self.page_sizes["tree_expanded" if expand else "tree"])

    def _paths_info(self, req: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
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

    def _refs(self, req: _Handler, repo_type: str, repo_id: str) -> None:
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

    def _commits(self, req: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
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

    def _branch(self, req: _Handler, repo_type: str, repo_id: str, branch: str) -> None:
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
            if not _BRANCH_RE.fullmatch(branch) or ".." in branch or branch.startswith("refs/"):
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

    def _tag(self, req: _Handler, repo_type: str, repo_id: str, revision_or_tag: str) -> None:
        """``POST /api/{type}s/{repo_id}/tag/{rev}`` (body ``{"tag": ...}``; 409 if it exists) and
        ``DELETE /api/{type}s/{repo_id}/tag/{tag}``."""
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            if req.method == "DELETE":
                if repo.refs.pop(f"refs/tags/{revision_or_tag}", None) is None:
                    raise HubError(404, f"Invalid rev id: {revision_or_tag}", "RevisionNotFound")
                return req.send_json({})
            tag = req.json_body().get("tag")
            if not isinstance(tag, str) or not _BRANCH_RE.fullmatch(tag):
                raise HubError(400, f"Invalid tag name {tag!r}")
            if f"refs/tags/{tag}" in repo.refs:
                raise HubError(409, f"Tag {tag} already exists")
            repo.refs[f"refs/tags/{tag}"] = self._resolve(repo, revision_or_tag).oid
        req.send_json({})

    # -- README metadata -------------------------------------------------------------------------------------

    def _validate_yaml(self, req: _Handler) -> None:
        """``POST /api/validate-yaml`` (``{"content", "repoType"}``): 400 with ``errors: [{message}]`` when
        the README metadata is invalid; the client raises ``ValueError("Invalid metadata in README.md")``."""
        self._user(req)  # a wrong token is rejected, no token is fine
        content = req.json_body().get("content")
        if not isinstance(content, str):
            raise HubError(
                400,
                '"content" must be a string',
                body={"errors": [{"message": '"content" must be a string'}]},
            )
        try:
            parse_card_metadata(content)
        except ValueError as exc:
            raise HubError(400, str(exc), body={"errors": [{"message": str(exc)}], "warnings": []}) from exc
        req.send_json({"errors": [], "warnings": []})

    # -- uploads ---------------------------------------------------------------------------------------------

    def _preupload(self, req: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
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

    def _lfs_batch(self, req: _Handler, repo_type: str, repo_id: str) -> None:
        """``POST /{repo_id}.git/info/lfs/objects/batch`` (Git LFS batch API, basic transfer).

        Upload: objects already in the repo get no ``actions`` (the client then skips them); the others get an
        ``upload`` href on the storage host (a presigned-URL stand-in, no token needed) and a ``verify``
        href on the Hub. Download: ``download`` hrefs to signed CDN URLs.
        """
        payload = req.json_body()
        operation = payload.get("operation")
        objects = payload.get("objects")
        if operation not in ("upload", "download") or not isinstance(objects, list):
            raise HubError(
                422, "Invalid LFS batch request: needs 'operation' (upload|download) and 'objects'"
            )
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=operation == "upload")
            out = []
            for obj in objects:
                oid, size = (
                    obj.get("oid") if isinstance(obj, dict) else None,
                    obj.get("size") if isinstance(obj, dict) else None,
                )
                item: dict[str, Any] = {"oid": str(oid), "size": size if isinstance(size, int) else 0}
                if (
                    not isinstance(oid, str)
                    or not _SHA256_RE.fullmatch(oid)
                    or not isinstance(size, int)
                    or size < 0
                ):
                    item["error"] = {
                        "code": 422,
                        "message": "Invalid object: 'oid' must be a sha256 hex digest "
                        "and 'size' a non-negative integer",
                    }
                elif operation == "download":
                    if oid not in repo.lfs_objects:
                        item["error"] = {"code": 404, "message": "Object does not exist"}
                    else:
                        item["actions"] = {"download": {"href": self._cdn_url(oid)}}
                elif oid not in repo.lfs_objects:
                    ticket = secrets.token_urlsafe(16)
                    self._upload_tickets[ticket] = (repo.key, oid, size)
                    verify = f"{self.url}/{repo.url_path}.git/info/lfs/objects/verify"
                    item["authenticated"] = True
                    item["actions"] = {
                        "upload": {"href": f"{self.storage_url}/upload/{ticket}", "expires_in": 86400},
                        "verify": {"href": verify},
                    }
                out.append(item)
        req.send_json(
            {"transfer": "basic", "objects": out, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_verify(self, req: _Handler, repo_type: str, repo_id: str) -> None:
        """``POST /{repo_id}.git/info/lfs/objects/verify`` (``{"oid", "size"}``): 404 if the object was not
        uploaded to this repo with that size."""
        payload = req.json_body()
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            oid = payload.get("oid")
            if oid not in repo.lfs_objects or len(self.blobs.get(oid, b"")) != payload.get("size"):
                raise HubError(404, f"LFS object {oid} of size {payload.get('size')} not found in {repo_id}")
        req.send_json({"success": True}, content_type="application/vnd.git-lfs+json")

    def _commit(self, req: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
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
                    if _COMMIT_RE.fullmatch(str(parent_commit))
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
                    or not _SHA256_RE.fullmatch(oid)
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

    # -- downloads -------------------------------------------------------------------------------------------

    def _cdn_url(self, oid: str) -> str:
        signature = hmac.new(self._secret, oid.encode(), hashlib.sha256).hexdigest()
        return f"{self.storage_url}/lfs/{oid}?{urlencode({'X-Signature': signature})}"

    def _resolve_file(self, req: _Handler, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        """``GET|HEAD /{repo_id}/resolve/{rev}/{path}``: what ``hf_hub_download``/``from_pretrained`` call.

        Regular file: 200 with the bytes, ``ETag`` (git blob id), ``X-Repo-Commit``, ``Content-Length``. LFS
        file: 302 to a signed URL on the storage host with ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and
        ``X-Repo-Commit``. Errors: RepoNotFound (401/404), GatedRepo (gated repo, caller not in its
        namespace), RevisionNotFound (404), EntryNotFound (404, with ``X-Repo-Commit`` so the client caches
        the absence).
        """
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id)
            user = self._user(req)
            if repo.gated and repo_id.split("/")[0] not in self._namespaces(user):
                # The Hub lets anyone see a gated repo's info but not download its files.
                raise HubError(
                    401 if user is None else 403,
                    f"Access to {repo_type} {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in.",
                    "GatedRepo",
                )
            commit = self._resolve(repo, revision)
            entry = commit.files.get(path)
            if entry is None:
                raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
            data = self._content(entry)
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{entry.blob_id}"',
            "Content-Disposition": f'inline; filename="{quote(path.rsplit("/", 1)[-1])}"',
        }
        if entry.lfs_oid:
            headers.update(
                {
                    "Location": self._cdn_url(entry.lfs_oid),
                    "X-Linked-Etag": f'"{entry.lfs_oid}"',
                    "X-Linked-Size": str(entry.size),
                }
            )
            return req.send(302, b"", headers, "text/plain; charset=utf-8")
        req.send_content(data, headers)

    # -- storage host ----------------------------------------------------------------------------------------

    def _route_storage(self, req: _Handler) -> None:
        """The S3/CDN stand-in: ``PUT /upload/{ticket}`` (presigned LFS upload, checks size and sha256) and
        ``GET|HEAD /lfs/{sha256}?X-Signature=...`` (signed download; no token needed or expected)."""
        segs = req.raw_path.strip("/").split("/")
        if len(segs) == 2 and segs[0] == "upload" and req.method == "PUT":
            with self._lock:
                ticket = self._upload_tickets.get(segs[1])
            if ticket is None:
                raise HubError(403, "Request has expired or the signature does not match")
            repo_key, oid, size = ticket
            if len(req.body) != size:
                raise HubError(400, f"Uploaded {len(req.body)} bytes, expected {size} for object {oid}")
            if hashlib.sha256(req.body).hexdigest() != oid:
                raise HubError(400, f"BadDigest: the sha256 of the uploaded content does not match {oid}")
            with self._lock:
                self.blobs[oid] = req.body
                if repo_key in self.repos:
                    self.repos[repo_key].lfs_objects.add(oid)
            return req.send(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'}, "text/plain")
        if len(segs) == 2 and segs[0] == "lfs" and req.method in ("GET", "HEAD"):
            oid = segs[1]
            expected = hmac.new(self._secret, oid.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(req.param("X-Signature") or "", expected):
                raise HubError(403, "Request has expired or the signature does not match")
            with self._lock:
                data = self.blobs.get(oid)
            if data is None:
                raise HubError(404, "NoSuchKey")
            return req.send_content(data, {"ETag": f'"{oid}"'})
        raise HubError(404, f"Not found: {req.method} {req.raw_path} on the storage host")


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


# ----------------------------------------------------------------------------------------------------------
# Pointing the client libraries at the server
# ----------------------------------------------------------------------------------------------------------


@contextmanager
def _patched_client(hub: HubServer, home: str, set_token: bool) -> Iterator[None]:
    import sys

    from huggingface_hub import constants

    saved_env = dict(os.environ)
    restore: list[Callable[[], None]] = []

    def setattr_(obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name)
        restore.append(lambda: setattr(obj, name, old))
        setattr(obj, name, value)

    cache = os.path.join(home, "hub")
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": home,
        "HF_HUB_CACHE": cache,
        "HF_XET_CACHE": os.path.join(home, "xet"),
        "HF_TOKEN_PATH": os.path.join(home, "token"),
    }
    if set_token:
        env["HF_TOKEN"] = hub.token
    try:
        for name in (
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_DATASETS_OFFLINE",
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_OIDC_RESOURCE",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN",
            "HUGGINGFACE_CO_STAGING",
            "HUGGINGFACE_HUB_CACHE",
            "HF_ASSETS_CACHE",
        ):
            os.environ.pop(name, None)
        os.environ.update(env)
        # huggingface_hub reads these once, at import time.
        for name, value in {
            "ENDPOINT": hub.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
            "HF_HOME": home,
            "HF_HUB_CACHE": cache,
            "HUGGINGFACE_HUB_CACHE": cache,
            "HF_ASSETS_CACHE": os.path.join(home, "assets"),
            "HUGGINGFACE_ASSETS_CACHE": os.path.join(home, "assets"),
            "HF_XET_CACHE": os.path.join(home, "xet"),
            "HF_TOKEN_PATH": os.path.join(home, "token"),
            "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
            "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
        }.items():
            setattr_(constants, name, value)
        from huggingface_hub import hf_api

        setattr_(hf_api.api, "endpoint", hub.url)  # the instance behind the module-level functions
        if "transformers.utils.hub" in sys.modules:
            setattr_(
                sys.modules["transformers.utils.hub"], "_hf_api", None
            )  # rebuilt lazily with the new endpoint
        if "datasets.config" in sys.modules:
            dconfig = sys.modules["datasets.config"]
            setattr_(dconfig, "HF_ENDPOINT", hub.url)
            setattr_(dconfig, "HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
            setattr_(dconfig, "HF_HUB_OFFLINE", False)
            setattr_(dconfig, "HF_DATASETS_OFFLINE", False)
        _reset_client_caches()
        yield
    finally:
        for undo in reversed(restore):
            undo()
        if "transformers.utils.hub" in sys.modules:
            sys.modules[
                "transformers.utils.hub"
            ]._hf_api = None  # built during the test: it knows the dead server
        _reset_client_caches()
        os.environ.clear()
        os.environ.update(saved_env)


def _reset_client_caches() -> None:
    """Drop pooled connections and cached filesystem instances that remember an endpoint."""
    import sys

    from huggingface_hub.utils import close_session

    close_session()
    if "huggingface_hub.hf_file_system" in sys.modules:
        sys.modules["huggingface_hub.hf_file_system"].HfFileSystem.clear_instance_cache()
