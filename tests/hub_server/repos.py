"""Test Hub routes for accounts and repos: whoami, create/delete, settings, repo info, README validation."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from tests.hub_server.card import parse_card_metadata
from tests.hub_server.core import HubCore
from tests.hub_server.gitfiles import DEFAULT_GITATTRIBUTES
from tests.hub_server.state import NAME_RE, URL_PREFIXES, FileEntry, HubError, Repo, now

if TYPE_CHECKING:
    from tests.hub_server.handler import Handler


class RepoRoutes(HubCore):
    """``/api/whoami-v2``, ``/api/repos/{create,delete}``, ``.../settings``, repo info, ``/api/validate-yaml``."""

    # -- account ---------------------------------------------------------------------------------------------

    def _whoami(self, req: Handler) -> None:
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
                or not NAME_RE.fullmatch(value)
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

    def _create_repo(self, req: Handler) -> None:
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
            repo = Repo(repo_type, repo_id, private, now())
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

    def _delete_repo(self, req: Handler) -> None:
        """``DELETE /api/repos/delete``: RepoNotFound when missing (``missing_ok`` handles it client-side)."""
        user = self._require_user(req)
        repo_type, repo_id = self._repo_id_from_payload(req.json_body(), user)
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            del self.repos[repo.key]
        req.send_json({})

    def _settings(self, req: Handler, repo_type: str, repo_id: str) -> None:
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

    def _repo_info(self, req: Handler, repo_type: str, repo_id: str, revision: str) -> None:
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

    # -- README metadata -------------------------------------------------------------------------------------

    def _validate_yaml(self, req: Handler) -> None:
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
