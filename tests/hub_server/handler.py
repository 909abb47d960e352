"""The HTTP layer of the test Hub.

One handler per request (parse, dispatch to the server, answer) and the two listening sockets (the Hub
and its storage/CDN host).
"""

from __future__ import annotations

import json
import re
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.hub_server.state import HubError, RequestRecord

if TYPE_CHECKING:
    from tests.hub_server.server import HubServer


class Handler(BaseHTTPRequestHandler):
    """Parses a request, dispatches it to :class:`HubServer`, writes the answer. One instance per request."""

    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from the Hub
    timeout = 600  # idle keep-alive connections are dropped after this long (the client closes them first)
    server: BoundServer

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
            fault = hub.take_fault(method, self.raw_path)
            if fault is not None:
                raise HubError(fault.status, fault.message)
            if self.server.role == "hub":
                hub.route_hub(self)
            else:
                hub.route_storage(self)
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
        # logged before answering, so a test reading the log right after a call sees it
        hub.log_request(
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


class BoundServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: HubServer, role: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.hub = hub
        self.role = role
