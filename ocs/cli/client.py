"""A small synchronous client of the REST API (standard library only).

`ocsctl` is a thin client: it sends one request per step and shows the
answer. Errors keep the server's words: `ApiFailure` carries the status,
code, message and details of the API's error body
(`{"error": {"status", "code", "message", "details"}}`); `ApiUnreachable`
means nothing answered at all.

Proxies from the environment are ignored: the admin API is reached directly
(it listens on loopback by default), and a `http_proxy` meant for the web
must not swallow requests to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, BinaryIO

USER_AGENT = "ocsctl"


class ApiFailure(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


class ApiUnreachable(Exception):
    """No HTTP answer: connection refused, timed out, name not resolved..."""


class Client:
    """`Client("http://127.0.0.1:8080", token).get("/v1/accounts", limit=10)`."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -------------------------------------------------------------------- verbs
    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body={} if body is None else body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def upload(self, path: str, stream: BinaryIO, size: int | None, content_type: str,
               *, timeout: float | None = None) -> Any:
        """POST a file as the raw body, read from `stream` as it is sent."""
        headers = {"Content-Type": content_type}
        if size is not None:
            headers["Content-Length"] = str(size)
        return self._send("POST", self.url(path), stream, headers, timeout or self.timeout)

    # -------------------------------------------------------------------- plumbing
    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        url = self.base_url + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return url

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                body: Any = None) -> Any:
        data, headers = None, {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self._send(method, self.url(path, query), data, headers, self.timeout)

    def _send(self, method: str, url: str, data, headers: dict[str, str],
              timeout: float) -> Any:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **headers}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _failure(exc) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiUnreachable(f"cannot reach the API at {self.base_url}: {reason}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiFailure(resp.status, f"the API answered {resp.status} with a body that "
                                          "is not JSON") from None


def _failure(exc: urllib.error.HTTPError) -> ApiFailure:
    raw = b""
    try:
        raw = exc.read()
    except OSError:
        pass
    try:
        err = json.loads(raw)["error"]
        return ApiFailure(int(err.get("status", exc.code)), str(err.get("message", "")),
                          code=err.get("code"), details=err.get("details") or [])
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()[:200]
        return ApiFailure(exc.code, f"HTTP {exc.code} {exc.reason}" + (f": {text}" if text
                                                                        else ""))


def file_size(stream: BinaryIO) -> int | None:
    """The size of a regular file, or None for a pipe."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    import stat
    return st.st_size if stat.S_ISREG(st.st_mode) else None
