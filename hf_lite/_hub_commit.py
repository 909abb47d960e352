"""Retried calls to the Hub and the one-commit upload that :func:`hf_lite.hub.push_to_hub` is built on.

Transient server errors (5xx, 408, 429, network) are retried where the client does not retry them itself:
idempotent calls through :meth:`RetryPolicy.call`, the commit call through :func:`commit_with_retries`,
which retries only once it knows the server did not apply the commit (the branch head, or the repo's pull
requests, unchanged; or the files it finds there are exactly the ones sent).

>>> policy = RetryPolicy(max_retries=2, base_wait=0.0)
>>> policy.call(lambda: "done", "lookup")
'done'
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

logger = logging.getLogger("hf_lite.hub")  # the logs of push_to_hub, whichever module speaks

__all__ = [
    "TRANSIENT_STATUSES",
    "RetryPolicy",
    "status_code",
    "is_transient",
    "is_network_error",
    "describe_error",
    "file_ids",
    "remote_matches",
    "commit_with_retries",
]

#: HTTP statuses worth retrying: the server did not (or may not have) done the work.
TRANSIENT_STATUSES = (408, 429, 500, 502, 503, 504)

T = TypeVar("T")


def status_code(err: BaseException) -> int | None:
    """The HTTP status of a Hub client error, ``None`` for errors without a response.

    >>> status_code(ValueError("x")) is None
    True
    """
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _network_errors() -> tuple[type[BaseException], ...]:
    try:
        from huggingface_hub.utils._http import _DEFAULT_RETRY_ON_EXCEPTIONS

        return (*_DEFAULT_RETRY_ON_EXCEPTIONS, ConnectionError, TimeoutError)
    except ImportError:  # pragma: no cover - private name of huggingface_hub
        return (ConnectionError, TimeoutError)


def is_network_error(err: BaseException) -> bool:
    """Whether ``err`` means the server was not reached or did not answer (connection, DNS, timeout).

    >>> is_network_error(TimeoutError()), is_network_error(ValueError())
    (True, False)
    """
    if isinstance(err, (HfHubHTTPError, OfflineModeIsEnabled)):  # an answer, or a switch no retry changes
        return False
    return isinstance(err, _network_errors())


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is worth retrying: a transient HTTP status or a network error.

    >>> is_transient(ConnectionError()), is_transient(ValueError())
    (True, False)
    """
    if isinstance(err, HfHubHTTPError):
        return status_code(err) in TRANSIENT_STATUSES
    return is_network_error(err)


def describe_error(err: BaseException) -> str:
    """``"HTTP 502"`` or the error's class name: what logs say about a failed call (never its text).

    >>> describe_error(TimeoutError("secret detail"))
    'TimeoutError'
    """
    status = status_code(err)
    return f"HTTP {status}" if status is not None else type(err).__name__


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transient errors are retried: up to ``max_retries`` times, waiting ``base_wait * 2**attempt`` s.

    >>> RetryPolicy(max_retries=3, base_wait=1.0).wait(2)
    4.0
    """

    max_retries: int
    base_wait: float = 1.0

    def wait(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        return self.base_wait * 2**attempt

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Call ``fn``, retrying transient errors (only for idempotent calls)."""
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except Exception as err:
                if attempt == self.max_retries or not is_transient(err):
                    raise
                wait = self.wait(attempt)
                logger.warning(
                    "%s failed (%s); retry %d/%d in %.1fs",
                    what,
                    describe_error(err),
                    attempt + 1,
                    self.max_retries,
                    wait,
                )
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


def file_ids(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, as the Hub reports LFS and regular files.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "empty"
    >>> _ = path.write_bytes(b"")
    >>> file_ids(path)[1]  # git's id of the empty blob
    'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'
    """
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    sha1.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def remote_matches(api: HfApi, repo_id: str, revision: str, local: dict[str, tuple[str, str]]) -> bool:
    """Whether ``revision`` holds exactly our files (the commit we sent was applied after all).

    Args:
        api: the client.
        repo_id: the repo.
        revision: a branch or commit.
        local: ``{repo path: file_ids(local file)}``.

    >>> from huggingface_hub import HfApi
    >>> remote_matches(HfApi(), "me/tiny", "main", {"README.md": ("...", "...")})  # doctest: +SKIP
    True
    """
    infos = api.get_paths_info(repo_id, list(local), revision=revision)
    remote = {i.path: i for i in infos if hasattr(i, "blob_id")}
    for path, (sha256, sha1) in local.items():
        entry = remote.get(path)
        if entry is None:
            return False
        lfs = getattr(entry, "lfs", None)
        if not (lfs is not None and lfs.sha256 == sha256 or entry.blob_id == sha1):
            return False
    return True


def commit_with_retries(
    api: HfApi,
    repo_id: str,
    operations: Callable[[], list[Any]],
    local_ids: dict[str, tuple[str, str]],
    *,
    branch: str,
    parent: str,
    message: str,
    description: str | None,
    create_pr: bool,
    policy: RetryPolicy,
) -> Any:
    """One commit, based on ``parent``. The client does not retry the commit call; we do, on a transient error,
    only once we know the server did not apply it (the branch head, or the repo's pull requests, unchanged).

    Args:
        api: the client.
        repo_id: the repo.
        operations: builds the commit's operations (called again for each attempt: uploads are file objects).
        local_ids: ``{repo path: file_ids(local file)}`` of the files sent, to recognise a commit applied
            after all.
        branch: the branch committed to; ``parent``: the commit the new one is based on.
        message, description: of the commit.
        create_pr: open a pull request instead of committing to the branch.
        policy: how transient errors are retried.

    Returns:
        The ``huggingface_hub.CommitInfo`` of the commit (or of the one found applied).

    Raises:
        RuntimeError: the commit failed and the branch moved since (another commit landed).

    >>> from huggingface_hub import CommitOperationAdd, HfApi
    >>> api = HfApi()
    >>> ops = lambda: [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=b"# tiny")]
    >>> parent = api.repo_info("me/tiny").sha  # doctest: +SKIP
    >>> commit_with_retries(api, "me/tiny", ops, {}, branch="main", parent=parent, message="Card",
    ...                     description=None, create_pr=False, policy=RetryPolicy(3))  # doctest: +SKIP
    CommitInfo(...)
    """
    prs_before = _pr_refs(api, repo_id, policy) if create_pr else set()
    for attempt in range(policy.max_retries + 1):
        try:
            return api.create_commit(
                repo_id,
                operations(),
                commit_message=message,
                commit_description=description,
                revision=branch,
                create_pr=create_pr,
                parent_commit=parent,
            )
        except Exception as err:
            if not is_transient(err):
                raise
            # Was it applied anyway (an error after the server committed, a lost response)?
            if create_pr:
                new = sorted(_pr_refs(api, repo_id, policy) - prs_before)
                for ref, oid in new:
                    if remote_matches(api, repo_id, oid, local_ids):
                        num = ref.rsplit("/", 1)[-1]
                        return CommitInfo(
                            commit_url=f"{api.endpoint}/{repo_id}/commit/{oid}",
                            commit_message=message,
                            commit_description=description or "",
                            oid=oid,
                            pr_url=f"{api.endpoint}/{repo_id}/discussions/{num}",
                        )
            else:
                head = policy.call(lambda: api.repo_info(repo_id, revision=branch).sha, "repo_info")
                if head != parent:
                    if remote_matches(api, repo_id, head, local_ids):
                        return CommitInfo(
                            commit_url=f"{api.endpoint}/{repo_id}/commit/{head}",
                            commit_message=message,
                            commit_description=description or "",
                            oid=head,
                        )
                    raise RuntimeError(
                        f"The push to {repo_id}@{branch} failed ({describe_error(err)}) and the branch has moved "
                        "since (another commit landed); not retrying. Push again to commit on top of it."
                    ) from err
            if attempt == policy.max_retries:
                raise
            wait = policy.wait(attempt)
            logger.warning(
                "commit to %s failed (%s), not applied; retry %d/%d in %.1fs",
                repo_id,
                describe_error(err),
                attempt + 1,
                policy.max_retries,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _pr_refs(api: HfApi, repo_id: str, policy: RetryPolicy) -> set[tuple[str, str]]:
    """The repo's pull-request refs and the commits they point to."""
    refs = policy.call(lambda: api.list_repo_refs(repo_id, include_pull_requests=True), "list refs")
    return {(r.ref, r.target_commit) for r in refs.pull_requests or []}
