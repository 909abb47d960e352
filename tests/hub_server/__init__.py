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

Layout: :mod:`.server` (``HubServer``: sockets and routing) over one mixin per group of routes --
:mod:`.repos` (account, repos, settings, info), :mod:`.revisions` (trees, refs, commits, branches, tags),
:mod:`.uploads` (preupload, commits), :mod:`.lfs` (LFS batch/verify, downloads, the storage host) -- all on
:mod:`.core` (state, revisions, auth, request log, faults); :mod:`.state` holds the records,
:mod:`.gitfiles` the git/LFS rules, :mod:`.card` the README metadata rules, :mod:`.handler` the HTTP layer
and :mod:`.client` the client patching behind :meth:`HubServer.client_env`.

>>> with HubServer() as hub, hub.client_env(tmp_dir):  # doctest: +SKIP
...     HfApi().create_repo("test-user/tiny")
"""

from tests.hub_server.card import parse_card_metadata
from tests.hub_server.gitfiles import (
    DEFAULT_GITATTRIBUTES,
    git_blob_sha1,
    is_binary,
    is_gitignored,
    is_lfs_tracked,
    lfs_patterns,
    lfs_pointer,
)
from tests.hub_server.server import HubServer
from tests.hub_server.state import (
    PAGE_SIZES,
    REGULAR_FILE_MAX_SIZE,
    Commit,
    FaultRule,
    FileEntry,
    HubError,
    Repo,
    RequestRecord,
)

__all__ = [
    "DEFAULT_GITATTRIBUTES",
    "PAGE_SIZES",
    "REGULAR_FILE_MAX_SIZE",
    "Commit",
    "FaultRule",
    "FileEntry",
    "HubError",
    "HubServer",
    "Repo",
    "RequestRecord",
    "git_blob_sha1",
    "is_binary",
    "is_gitignored",
    "is_lfs_tracked",
    "lfs_patterns",
    "lfs_pointer",
    "parse_card_metadata",
]
