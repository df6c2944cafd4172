"""Routes that run a model: generate (streamed), stop, reset and inspect."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..cli.generate import unescape
from ..config import SAMPLING_KEYS
from ..errors import GrufinityError
from ..text import Utf8Pieces
from .catalog import finite, one_line
from .context import Context
from .errors import WebError, invalid, too_large
from .generation import Generation
from .limits import Limits
from .middleware import session_of

_DEFAULTS = {k["name"]: k["default"] for k in SAMPLING_KEYS}


class ModelChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str = Field(max_length=255)
    checkpoint: str = Field("best", max_length=64)
    #: A weight dtype (checked by the core when the model loads); None is the default.
    dtype: Optional[str] = Field(None, max_length=16)


class GenerateBody(ModelChoice):
    prompt: str = ""
    sampling: dict[str, Any] = Field(default_factory=dict)


class InspectBody(ModelChoice):
    text: str


def capped(sampling: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The sampling keywords with this server's caps applied: a value over a cap is refused with
    a message naming the cap; a default over it is lowered to it. Stop strings understand
    ``\\n`` and ``\\t`` as the CLI's ``--stop`` does. The core checks everything else."""
    out = dict(sampling)
    for key, cap, flag in (("max_new_tokens", limits.max_new_tokens, "--max-new-tokens"),
                           ("beams", limits.max_beams, "--max-beams")):
        value = out.get(key)
        if key not in out:
            out[key] = min(_DEFAULTS[key], cap)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value > cap:
            raise invalid(f"{key} = {value} is over this server's cap of {cap:,} (grufinity serve {flag})")
    if isinstance(out.get("stop"), list):
        out["stop"] = [unescape(s) if isinstance(s, str) else s for s in out["stop"]]
    return out


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/api")
    limits = ctx.limits

    @api.post("/generate")
    async def generate(body: GenerateBody, request: Request) -> StreamingResponse:
        """Continues the session's state with ``prompt``; streams NDJSON lines (start, text...,
        done or error)."""
        session = session_of(request.scope, ctx.sessions)
        prompt = body.prompt.encode()
        if len(prompt) > limits.max_prompt_bytes:
            raise too_large(f"the prompt is {len(prompt):,} bytes; this server takes at most "
                            f"{limits.max_prompt_bytes:,} (grufinity serve --max-prompt-bytes)")
        sampling = capped(body.sampling, limits)
        if session.busy:
            raise WebError(409, "this session is already generating: press Stop first")
        session.busy, started = True, False
        try:
            checkpoint = await run_in_threadpool(ctx.catalog.checkpoint, body.run, body.checkpoint)
            ctx.slots.take()
            try:
                key, model = await run_in_threadpool(ctx.models.get, checkpoint, body.dtype)
                try:
                    model.check_sampling(**sampling)
                except GrufinityError as e:
                    raise invalid(one_line(e)) from None
                note = None
                if session.model_key != key:
                    if session.state is not None:
                        note = "another checkpoint: the conversation starts again from a fresh state"
                    session.reset()
                    session.model_key = key
                    session.model_name = {"run": body.run, "checkpoint": checkpoint.name, "dtype": body.dtype}
                job = Generation(session, model, prompt, sampling, ctx.slots, asyncio.get_running_loop())
            except BaseException:
                ctx.slots.give()
                raise
            session.cancel = job.cancel
            job.start()  # from here the worker frees the slot and the session
            started = True
        finally:
            if not started:
                session.busy = False
        first = {"type": "start", "tokens_seen": job.start_tokens, "prompt_tokens": job.prompt_tokens,
                 "checkpoint": checkpoint.name, "note": note}
        return StreamingResponse(job.lines(first), media_type="application/x-ndjson",
                                 headers={"x-accel-buffering": "no"})

    @api.post("/stop")
    def stop(request: Request) -> dict[str, Any]:
        session = session_of(request.scope, ctx.sessions)
        cancel = session.cancel
        if cancel is not None:
            cancel.set()
        return {"stopping": cancel is not None}

    @api.post("/reset")
    def reset(request: Request) -> dict[str, Any]:
        session = session_of(request.scope, ctx.sessions)
        if session.busy:
            raise WebError(409, "this session is generating: press Stop first")
        session.reset()
        return session.public()

    @api.post("/inspect")
    def inspect(body: InspectBody) -> dict[str, Any]:
        """Per token of ``text``: its text, the model's surprise and each layer's mean z."""
        text = body.text.encode()
        if not text:
            raise invalid("enter some text to inspect")
        if len(text) > limits.max_inspect_bytes:
            raise too_large(f"the text is {len(text):,} bytes; this server inspects at most "
                            f"{limits.max_inspect_bytes:,} (grufinity serve --max-inspect-bytes)")
        checkpoint = ctx.catalog.checkpoint(body.run, body.checkpoint)
        ctx.slots.take()
        try:
            _, model = ctx.models.get(checkpoint, body.dtype)
            r = model.inspect(text)
        except GrufinityError as e:
            raise invalid(one_line(e)) from None
        finally:
            ctx.slots.give()
        return {
            "checkpoint": checkpoint.name,
            "tokens": r["tokens"],
            "pieces": token_texts(r["pieces"]),
            "surprise": [finite(s) for s in r["surprise"]],
            "gates": [[finite(z) for z in layer] for layer in r["gates"]],
        }

    return api


def token_texts(pieces: list[bytes]) -> list[str]:
    """The text of each token, decoded as a stream: a character split over several tokens (bytes
    of UTF-8) shows at the token that completes it, so the texts join to the decoded input."""
    decoder = Utf8Pieces()
    out = [decoder.feed(p) for p in pieces]
    if out:
        out[-1] += decoder.finish()
    return out
