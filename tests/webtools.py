"""Helpers of the web tests: the web extra (skip locally without it, fail in CI), a server on a
free loopback port in a thread, and raw HTTP calls (exact paths, nothing normalised)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
SESSION = "x-grufinity-session"


def need(module: str, why: str) -> None:
    """Skips the test module when ``module`` is missing, except in CI, where that fails it."""
    try:
        __import__(module)
    except ImportError:
        if IN_CI:
            pytest.fail(f"{module} is missing in CI ({why})", pytrace=False)
        pytest.skip(f"{module} is not installed ({why})", allow_module_level=True)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    return dst


class Server:
    """``app`` served by uvicorn on 127.0.0.1 in a daemon thread (bounded start and stop)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json()["error"]

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]

    @property
    def session(self) -> Optional[str]:
        return self.headers.get(SESSION)


def call(port: int, path: str, body: Any = None, *, session: Optional[str] = None, auth: Optional[str] = None,
         headers: Optional[dict[str, str]] = None, raw: Any = None, timeout: float = 60) -> Reply:
    """One request to the test server: GET, or POST with ``body`` as JSON (or ``raw`` bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Host": f"127.0.0.1:{port}"}
    if session:
        h[SESSION] = session
    if auth is not None:
        h["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    try:
        chunked = data is not None and not isinstance(data, bytes)
        conn.request("POST" if data is not None else "GET", path, body=data, headers=h, encode_chunked=chunked)
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def stream(port: int, path: str, body: Any, *, session: Optional[str] = None) -> Iterator[dict[str, Any]]:
    """POST ``body`` and yield the NDJSON lines as they arrive (the first item: the response's
    session id)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    h = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json"}
    if session:
        h[SESSION] = session
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=h)
        r = conn.getresponse()
        assert r.status == 200, r.read()
        yield {"session": r.getheader(SESSION)}
        while line := r.readline():
            yield json.loads(line)
    finally:
        conn.close()
