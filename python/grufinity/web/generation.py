"""Generation for the page: the core generates on a worker thread (it releases the GIL), the
pieces travel to the event loop through a buffer that wakes the loop at most once per batch (a
small model makes thousands of tokens a second), and the response streams them as NDJSON lines.

The worker owns the outcome: it stores the new state in the session and frees the slot even
when the browser has gone away, so the cap on concurrent generations counts real work."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, AsyncIterator, Optional

from ..errors import GrufinityError
from ..model import Model
from ..text import Utf8Pieces
from .catalog import one_line
from .errors import busy
from .sessions import Session

#: Pieces per point of the per-token-time timeline.
WINDOW = 64
#: Seconds between two lines of a stream: pieces made meanwhile travel together (a small model
#: makes a token every fraction of a millisecond; a line per token would cost more than it).
LINE_INTERVAL = 0.03


class Slots:
    """At most ``cap`` model jobs (generations, inspections) at once; no queue: a request over
    the cap is answered at once with a message, instead of piling up on a busy CPU."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.running = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.running >= self.cap:
                raise busy(f"the server is busy: {self.running} generations are running, its cap "
                           f"(grufinity serve --max-concurrent {self.cap}); try again in a moment")
            self.running += 1

    def give(self) -> None:
        with self._lock:
            self.running -= 1


class Channel:
    """Worker thread → event loop: ``put`` from the thread, ``take`` awaited on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[Any] = []
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._signalled = False

    def put(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            if self._signalled:
                return
            self._signalled = True
        self._loop.call_soon_threadsafe(self._ready.set)  # RuntimeError once the loop is closed

    def pending(self) -> bool:
        with self._lock:
            return bool(self._items)

    async def take(self) -> list[Any]:
        await self._ready.wait()
        with self._lock:
            items, self._items = self._items, []
            self._signalled = False
            self._ready.clear()
        return items


class Generation:
    """One generation of one session (the session is marked busy by the caller)."""

    def __init__(self, session: Session, model: Model, prompt: bytes, sampling: dict[str, Any], slots: Slots,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.session, self.model, self.prompt, self.sampling, self.slots = session, model, prompt, sampling, slots
        self.channel = Channel(loop)
        self.cancel = threading.Event()
        self.start_tokens = session.tokens_seen
        self.prompt_tokens = len(model.encode(prompt)) if prompt else 0
        # Piece times: first, last, and the start of the current timeline window.
        self.pieces, self.first, self.last, self.window = 0, 0.0, 0.0, 0.0

    def start(self) -> None:
        threading.Thread(target=self._work, name="grufinity-generate", daemon=True).start()

    def _on_piece(self, piece: bytes) -> bool:
        if self.cancel.is_set():
            return False
        now = time.perf_counter()
        if self.pieces == 0:
            self.first = self.window = now
        self.pieces += 1
        self.last = now
        try:
            self.channel.put(("text", piece))
        except RuntimeError:  # the server is shutting down
            return False
        if self.pieces % WINDOW == 0:  # per-token time over the last window, at this context length
            steps = WINDOW - 1 if self.pieces == WINDOW else WINDOW  # the first window starts at a piece
            self.session.add_timing(self.start_tokens + self.prompt_tokens + self.pieces,
                                    1000 * (now - self.window) / steps)
            self.window = now
        return True

    def _work(self) -> None:
        session, t0 = self.session, time.perf_counter()
        try:
            _, state = self.model.generate_bytes(self.prompt, state=session.state, on_piece=self._on_piece,
                                                 **self.sampling)
            session.state = state
            session.turns += 1
            session.last = self._summary(state, t0)
            outcome: tuple[str, Any] = ("done", session.last)
        except (GrufinityError, ValueError, OSError) as e:
            outcome = ("error", one_line(e))
        except Exception as e:  # a bug: reported on the page, the server carries on
            outcome = ("error", f"internal error: {type(e).__name__}: {one_line(e)}")
        finally:
            session.busy = False
            session.cancel = None
            self.slots.give()
        try:
            self.channel.put(outcome)
        except RuntimeError:
            pass

    def _summary(self, state: Any, t0: float) -> dict[str, Any]:
        """The numbers shown under the reply: per-token time is measured between the first and
        the last piece (after the prompt went through), prompt time before the first piece."""
        t1 = time.perf_counter()
        generated = max(0, state.tokens_seen - self.start_tokens - self.prompt_tokens)
        per_token = self._ms_per_token()
        return {
            "finish": state.finish,
            "generated": generated,
            "prompt_tokens": self.prompt_tokens,
            "prompt_ms": round(1000 * ((self.first if self.pieces else t1) - t0), 3),
            "ms_per_token": per_token,
            "total_ms": round(1000 * (t1 - t0), 3),
            "tokens_seen": state.tokens_seen,
        }

    async def lines(self, first: dict[str, Any]) -> AsyncIterator[bytes]:
        """The NDJSON response: ``first``, then ``{"type": "text", ...}`` batches, then one
        ``done`` (with the session's numbers) or ``error`` line. Closing it early (the browser
        left) cancels the generation."""
        decoder = Utf8Pieces()
        finished = False
        loop = asyncio.get_running_loop()
        try:
            yield line(first)
            sent = loop.time()
            while not finished:
                text, end = [], None
                items = await self.channel.take()
                if (wait := sent + LINE_INTERVAL - loop.time()) > 0 and items[-1][0] == "text":
                    await asyncio.sleep(wait)
                    items += await self.channel.take() if self.channel.pending() else []
                sent = loop.time()
                for kind, value in items:
                    if kind == "text":
                        text.append(decoder.feed(value))
                    else:
                        end = (kind, value)
                if end is not None:
                    text.append(decoder.finish())
                    finished = True
                if "".join(text):
                    yield line(self._progress("".join(text)))
                if end is not None:
                    kind, value = end
                    yield line({"type": "done", **value, "session": self.session.public()} if kind == "done"
                               else {"type": "error", "error": value})
        finally:
            if not finished:
                self.cancel.set()

    def _ms_per_token(self) -> Optional[float]:
        """Between the first piece and the last: the time of the steps, not of the prompt."""
        n = self.pieces
        return round(1000 * (self.last - self.first) / (n - 1), 4) if n > 1 else None

    def _progress(self, text: str) -> dict[str, Any]:
        return {"type": "text", "text": text, "pieces": self.pieces, "ms_per_token": self._ms_per_token(),
                "tokens_seen": self.start_tokens + self.prompt_tokens + self.pieces}


def line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()
