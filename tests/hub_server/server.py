"""The test Hub server: starts both sockets, routes each request to the mixin that serves it."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

from tests.hub_server.client import patched_client
from tests.hub_server.handler import BoundServer, Handler
from tests.hub_server.lfs import LfsRoutes
from tests.hub_server.repos import RepoRoutes
from tests.hub_server.revisions import RevisionRoutes
from tests.hub_server.state import API_SUBRESOURCES, REPO_TYPES, HubError
from tests.hub_server.uploads import UploadRoutes


class HubServer(RepoRoutes, RevisionRoutes, UploadRoutes, LfsRoutes):
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

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Bind both sockets on 127.0.0.1 (ephemeral ports) and serve them from background threads."""
        for role in ("hub", "storage"):
            server = BoundServer(self, role)
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
        with patched_client(self, str(home), set_token):
            yield self

    # -- routing ---------------------------------------------------------------------------------------------

    def route_hub(self, req: Handler) -> None:
        """Answer a request to the Hub host: the JSON API, LFS batch/verify, ``resolve`` downloads."""
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
            n = 1 if len(segs) == 3 or segs[3] in API_SUBRESOURCES else 2
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

    def _route_repo_api(self, req: Handler, repo_type: str, repo_id: str, rest: list[str]) -> None:
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
