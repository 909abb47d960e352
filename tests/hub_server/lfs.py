"""Test Hub routes for file bytes: the Git LFS batch/verify API, ``resolve`` downloads, the storage/CDN host."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from tests.hub_server.core import HubCore
from tests.hub_server.state import SHA256_RE, HubError

if TYPE_CHECKING:
    from tests.hub_server.handler import Handler


class LfsRoutes(HubCore):
    """``{repo}.git/info/lfs/objects/{batch,verify}``, ``{repo}/resolve/{rev}/{path}`` and the storage host."""

    def _lfs_batch(self, req: Handler, repo_type: str, repo_id: str) -> None:
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
                    or not SHA256_RE.fullmatch(oid)
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

    def _lfs_verify(self, req: Handler, repo_type: str, repo_id: str) -> None:
        """``POST /{repo_id}.git/info/lfs/objects/verify`` (``{"oid", "size"}``): 404 if the object was not
        uploaded to this repo with that size."""
        payload = req.json_body()
        with self._lock:
            repo = self._get_repo(req, repo_type, repo_id, write=True)
            oid = payload.get("oid")
            if oid not in repo.lfs_objects or len(self.blobs.get(oid, b"")) != payload.get("size"):
                raise HubError(404, f"LFS object {oid} of size {payload.get('size')} not found in {repo_id}")
        req.send_json({"success": True}, content_type="application/vnd.git-lfs+json")

    # -- downloads -------------------------------------------------------------------------------------------

    def _cdn_url(self, oid: str) -> str:
        signature = hmac.new(self._secret, oid.encode(), hashlib.sha256).hexdigest()
        return f"{self.storage_url}/lfs/{oid}?{urlencode({'X-Signature': signature})}"

    def _resolve_file(self, req: Handler, repo_type: str, repo_id: str, revision: str, path: str) -> None:
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

    def route_storage(self, req: Handler) -> None:
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
