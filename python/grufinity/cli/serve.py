"""``grufinity serve``: the web UI (:mod:`grufinity.web`) on a local port."""

from __future__ import annotations

import ipaddress
import socket
from typing import Optional

import click

from . import fail, main
from .options import device_or_env

_LIMIT_HELP = {
    "max_new_tokens": "Most tokens one generation may ask for.",
    "max_prompt_bytes": "Largest prompt, in bytes of UTF-8.",
    "max_concurrent": "Generations and inspections running at once, over all browsers; more are refused.",
    "max_inspect_bytes": "Largest text for the 'inside the model' view, in bytes.",
    "max_beams": "Widest beam search.",
    "max_sessions": "Browser sessions kept (each holds its own recurrent state).",
}


def limit_options(f):  # type: ignore[no-untyped-def]
    from ..web.limits import Limits

    defaults = Limits()
    for name in reversed(list(_LIMIT_HELP)):
        f = click.option("--" + name.replace("_", "-"), name, type=click.IntRange(min=1),
                         default=getattr(defaults, name), show_default=True, help=_LIMIT_HELP[name])(f)
    return f


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: any free one), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror or e} (choose another --port or --host)")
    return sock


def is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback


def exposure_warning(host: str, auth: Optional[str]) -> Optional[str]:
    """What to say when the server can be reached from other machines (None on loopback)."""
    if auth is None:
        return (f"WARNING: listening on {host} WITHOUT --auth: anyone who can reach this machine can read "
                "your runs and run your models. Use --auth USER:PASS, or --host 127.0.0.1.")
    return (f"note: listening on {host}; HTTP Basic auth travels unencrypted over plain HTTP, so put the "
            "server behind HTTPS (a reverse proxy) on networks you do not trust.")


@main.command()
@click.argument("runs", default="runs", required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 makes the UI reachable from other machines (use --auth).")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True, help="Port (0: any free one).")
@click.option("--auth", envvar="GRUFINITY_AUTH", default=None, metavar="USER:PASS",
              help="Require this user and password (HTTP Basic) on every request; or set GRUFINITY_AUTH.")
@click.option("--device", type=str, default=None, help="auto, cpu, vulkan[:N]; or set GRUFINITY_DEVICE.")
@click.option("--access-log", is_flag=True, help="Print a line per request.")
@limit_options
def serve(runs: str, host: str, port: int, auth: Optional[str], device: Optional[str], access_log: bool,
          **limits: int) -> None:
    """A web UI on the runs under RUNS (a directory of runs, default ./runs, or one run): chat
    with a model, watch training runs, and see per token what the minGRU remembers.

    Needs the web extra: pip install 'grufinity[web]'."""
    from ..web import missing

    if (message := missing()) is not None:
        fail(message)
    if auth is not None and (":" not in auth or not auth.split(":", 1)[0] or not auth.split(":", 1)[1]):
        fail("--auth must be USER:PASS with a non-empty user and password")

    import uvicorn

    from ..devices import resolve
    from ..web.app import create_app
    from ..web.catalog import Catalog
    from ..web.limits import Limits

    catalog = Catalog(runs)  # a missing directory is an error before anything listens
    resolved, _ = resolve(device_or_env(device))
    sock = listen(host, port)
    loopback = is_loopback(sock)
    app = create_app(catalog.root, limits=Limits(**limits), auth=auth, device=resolved, loopback_only=loopback)
    if not loopback:
        warning = exposure_warning(host, auth)
        click.secho(warning, err=True, fg="red" if auth is None else "yellow", bold=auth is None)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    count = len(catalog.runs())
    click.echo(f"serving {count} run{'s' if count != 1 else ''} under {catalog.root} on {resolved}")
    click.echo(f"open http://{shown}:{bound_port}/  (Ctrl-C stops)", color=False)
    config = uvicorn.Config(app, log_level="warning", access_log=access_log, timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: stopping is normal here
        pass
    click.echo("stopped")
