"""The FastAPI app: the page (static files), the runs API and the model API, behind the
middleware of :mod:`grufinity.web.middleware`. Every error is answered as ``{"error": "one
line"}`` with a fitting status; nothing a request does can stop the server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..config import SAMPLING_KEYS
from . import api_model
from .catalog import Catalog, one_line
from .context import Context
from .errors import WebError
from .limits import Limits
from .middleware import BasicAuth, BodyLimit, Headers, LoopbackHost, session_of

STATIC = Path(__file__).parent / "static"
#: How the page shows each sampling key, where the core's schema leaves it open: the slider's
#: range (the box next to it takes any value the core accepts) and which keys sit under "more".
SLIDERS: dict[str, dict[str, Any]] = {
    "temperature": {"max": 2.0, "step": 0.05},
    "top_k": {"max": 200, "step": 1},
    "top_p": {"step": 0.01},
    "min_p": {"step": 0.01},
    "repetition_penalty": {"min": 1.0, "max": 2.0, "step": 0.01},
    "max_new_tokens": {"min": 1, "step": 1},
}
MAIN_KEYS = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens", "seed"]

log = logging.getLogger("grufinity.web")


def create_app(root: str | Path, *, limits: Optional[Limits] = None, auth: Optional[str] = None,
               device: str = "cpu", loopback_only: bool = True) -> FastAPI:
    """The app serving the runs under ``root`` (a directory of runs, or one run).

    ``auth``: ``"user:password"`` required on every request (HTTP Basic). ``device``: where
    models run (already resolved: ``cpu``, ``vulkan:0``...). ``loopback_only``: answer only
    requests addressed to a loopback name (for a server bound to 127.0.0.1)."""
    limits = limits or Limits()
    ctx = Context(Catalog(root), limits, device)
    app = FastAPI(title="grufinity", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    _handlers(app)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "version": __version__,
            "root": str(ctx.catalog.root),
            "device": device,
            "limits": limits.public(),
            "sampling": [{**k, "ui": SLIDERS.get(k["name"], {}), "main": k["name"] in MAIN_KEYS} for k in sorted(
                SAMPLING_KEYS, key=lambda k: MAIN_KEYS.index(k["name"]) if k["name"] in MAIN_KEYS else len(MAIN_KEYS))],
            "running": ctx.slots.running,
        }

    @app.get("/api/runs")
    def run_list() -> list[dict[str, Any]]:
        return ctx.catalog.summaries()

    @app.get("/api/runs/{name:path}")
    def run_detail(name: str) -> dict[str, Any]:
        return ctx.catalog.detail(name)

    @app.get("/api/session")
    def session(request: Request) -> dict[str, Any]:
        return session_of(request.scope, ctx.sessions).public()

    app.include_router(api_model.router(ctx))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # Outermost last: the host check, then auth, then the body cap, then headers and the session.
    app.add_middleware(Headers)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    if auth is not None:
        app.add_middleware(BasicAuth, credentials=auth)
    if loopback_only:
        app.add_middleware(LoopbackHost)
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(WebError)
    async def web_error(_: Request, e: WebError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'bad body')}"},
                            status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("error in %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {one_line(e)}"}, status_code=500)
