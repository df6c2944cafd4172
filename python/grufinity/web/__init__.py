"""``grufinity serve``: a browser UI to chat with a model, watch training runs and look inside
the minGRU. FastAPI + uvicorn serve a JSON/NDJSON API and one static page (plain JavaScript,
no framework, nothing fetched from other hosts); both come with ``pip install 'grufinity[web]'``.

>>> from grufinity.web import create_app
>>> app = create_app("runs")          # an ASGI app: serve it with uvicorn
"""

from __future__ import annotations

from typing import Any

EXTRA_MESSAGE = "grufinity serve needs the web extra: pip install 'grufinity[web]'"


def missing() -> str | None:
    """None when the web extra is installed, else the one-line message naming it."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return EXTRA_MESSAGE
    return None


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The FastAPI app (see :func:`grufinity.web.app.create_app`)."""
    from .app import create_app as create

    return create(*args, **kwargs)


__all__ = ["create_app", "missing", "EXTRA_MESSAGE"]
