"""Browser sessions: each one (a random id the page sends in a header and keeps per tab in
``sessionStorage``) keeps its own recurrent state, so a conversation costs O(1) per token
however long it gets, and two tabs never mix their contexts. Bounded: idle sessions expire, and beyond ``max_sessions`` the least recently used
idle one is forgotten."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..model import State

SESSION_HEADER = b"x-grufinity-session"
#: Points kept of a session's per-token time against its context length.
TIMELINE_POINTS = 400


@dataclass
class Session:
    id: str
    #: The recurrent state after everything said so far (None: fresh).
    state: Optional[State] = None
    #: Which model (checkpoint key) the state belongs to, and how the page named it.
    model_key: Any = None
    model_name: Optional[dict[str, str]] = None
    #: A generation is running for this session; setting ``cancel`` asks it to stop.
    busy: bool = False
    cancel: Optional[threading.Event] = None
    #: (tokens in the state, milliseconds per generated token) along the conversation.
    timeline: list[list[float]] = field(default_factory=list)
    turns: int = 0
    last: Optional[dict[str, Any]] = None
    used: float = field(default_factory=time.monotonic)

    @property
    def tokens_seen(self) -> int:
        return self.state.tokens_seen if self.state is not None else 0

    def reset(self) -> None:
        self.state, self.model_key, self.model_name = None, None, None
        self.timeline, self.turns, self.last = [], 0, None

    def add_timing(self, tokens: int, ms_per_token: float) -> None:
        self.timeline.append([tokens, round(ms_per_token, 4)])
        if len(self.timeline) > TIMELINE_POINTS:  # keep the whole span, at half the density
            self.timeline = self.timeline[::2]

    def public(self) -> dict[str, Any]:
        return {
            "tokens_seen": self.tokens_seen,
            "turns": self.turns,
            "busy": self.busy,
            "model": self.model_name,
            "timeline": self.timeline,
            "last": self.last,
        }


class SessionStore:
    def __init__(self, max_sessions: int, idle_s: float) -> None:
        self.max_sessions = max(1, max_sessions)
        self.idle_s = idle_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, sid: Optional[str]) -> tuple[Session, bool]:
        """The session called ``sid``, or a new one (then True)."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            session = self._sessions.get(sid) if sid else None
            created = session is None
            if session is None:
                session = Session(secrets.token_urlsafe(24))
                self._sessions[session.id] = session
                self._evict()
            session.used = now
            return session, created

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        for sid in [s.id for s in self._sessions.values() if not s.busy and now - s.used > self.idle_s]:
            del self._sessions[sid]

    def _evict(self) -> None:
        idle = sorted((s for s in self._sessions.values() if not s.busy), key=lambda s: s.used)
        while len(self._sessions) > self.max_sessions and idle:
            del self._sessions[idle.pop(0).id]
