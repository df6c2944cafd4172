"""Plain ASGI middleware that every request goes through before the routes: the Host check of
a loopback server, HTTP Basic auth, a cap on request bodies, JSON-only POSTs, response headers that keep the page to itself, and
the session header."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any, Awaitable, Callable, Optional

from .sessions import SESSION_HEADER, Session, SessionStore

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The page loads nothing from other hosts and cannot be framed by them.
HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def header(scope: Scope, name: bytes) -> Optional[bytes]:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


async def answer(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON error response ``{"error": message}``, as the routes answer theirs."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *HEADERS, *extra]})
    await send({"type": "http.response.body", "body": body})


class BasicAuth:
    """Every path needs ``user:password`` (compared in constant time) when auth is set."""

    def __init__(self, app: App, credentials: str) -> None:
        self.app = app
        self.expected = credentials.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(header(scope, b"authorization")):
            return await self.app(scope, receive, send)
        await answer(send, 401, "authentication required",
                     [(b"www-authenticate", b'Basic realm="grufinity", charset="UTF-8"')])

    def _allowed(self, value: Optional[bytes]) -> bool:
        if not value or not value[:6].lower() == b"basic ":
            return False
        try:
            given = base64.b64decode(value[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return secrets.compare_digest(given, self.expected)


def host_name(value: bytes) -> str:
    """The name in a Host header, without the port: ``[::1]:7860`` → ``[::1]``."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1] if "]" in text else text
    return text.split(":")[0]


class LoopbackHost:
    """Answers only requests addressed to a loopback name (for a server bound to one): a page
    elsewhere that points its own domain at 127.0.0.1 (DNS rebinding) is refused."""

    NAMES = ("127.0.0.1", "localhost", "[::1]")

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or host_name(header(scope, b"host") or b"") in self.NAMES:
            return await self.app(scope, receive, send)
        await answer(send, 400, "this server answers only requests addressed to 127.0.0.1 or localhost")


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes (413) before a route reads them, whether the
    client declares a length or streams chunks; and POSTs that are not JSON (415), which also
    keeps other sites' plain form posts out."""

    def __init__(self, app: App, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        kind = (header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != b"application/json":
            return await answer(send, 415, "requests must be JSON (Content-Type: application/json)")
        too_big = f"request body over this server's limit of {self.limit:,} bytes"
        declared = header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await answer(send, 413, too_big)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await answer(send, 413, too_big)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as a stream needs

        await self.app(scope, replay, send)


class Headers:
    """Adds :data:`HEADERS` to every response, and the session header when a route made a new
    session (:func:`session_of`): a request that needs no session creates none."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        given = header(scope, SESSION_HEADER)
        state["session_id"] = given.decode("latin-1") if given else None

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [h for h in HEADERS if h[0] not in names]
                if state.get("session"):
                    extra.append((SESSION_HEADER, state["session"].encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def session_of(scope: Scope, sessions: SessionStore) -> Session:
    """The session named by the request's session header, or a new one; the response names it
    in the same header (the page keeps it in ``sessionStorage``: one session per tab)."""
    state = scope.setdefault("state", {})
    session, _ = sessions.get(state.get("session_id"))
    state["session"] = session.id
    return session
