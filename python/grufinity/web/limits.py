"""What one server allows: caps on request sizes, generation length and concurrent work, so a
server left running cannot be made to use unbounded memory or CPU by a page or a script."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    #: Bytes of UTF-8 in one prompt.
    max_prompt_bytes: int = 16_384
    #: ``max_new_tokens`` of one generation.
    max_new_tokens: int = 2_000
    #: Beam search width (each beam costs as much as one generation).
    max_beams: int = 8
    #: Generations and inspections running at once, over all sessions.
    max_concurrent: int = 4
    #: Bytes of text in one "inside the model" request (one forward pass over it).
    max_inspect_bytes: int = 8_192
    #: Browser sessions kept (each holds its recurrent state); the least recently used idle one
    #: is forgotten beyond this.
    max_sessions: int = 64
    #: Seconds a session is kept without requests.
    session_idle_s: float = 3_600.0
    #: Models kept loaded (least recently used unloaded beyond this).
    max_models: int = 3

    @property
    def max_body_bytes(self) -> int:
        """Request bodies: room for the largest prompt or text, JSON-escaped, and settings."""
        return 6 * max(self.max_prompt_bytes, self.max_inspect_bytes) + 16_384

    def public(self) -> dict[str, float]:
        """The caps as the page shows them."""
        return {
            "max_prompt_bytes": self.max_prompt_bytes,
            "max_new_tokens": self.max_new_tokens,
            "max_beams": self.max_beams,
            "max_concurrent": self.max_concurrent,
            "max_inspect_bytes": self.max_inspect_bytes,
        }
