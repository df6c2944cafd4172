"""Click options generated from the core's schema: each key a flag (dashes for underscores)
with its help and ``[default: …]``, defaulting to None so that only the flags given are passed
on (the core fills in the rest)."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional

import click

_CLICK_TYPES = {"int": click.INT, "float": click.FLOAT, "str": click.STRING, "path": click.STRING}


def show_default(key: dict[str, Any]) -> Optional[str]:
    """The default as ``--help`` shows it, or None when there is nothing to show."""
    value = key["default"]
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def option(key: dict[str, Any], short: Optional[str] = None) -> Callable[[Any], Any]:
    """The click option of one schema key."""
    name = key["name"]
    default = show_default(key)
    help_text = key["help"] + (f"  [default: {default}]" if default is not None else "")
    names = [flag(name)] + ([short] if short else [])
    kind = key["kind"]
    if kind == "bool":
        return click.option(f"{flag(name)}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)
    if kind in ("strs", "paths"):
        return click.option(*names, name, multiple=True, default=None, metavar="TEXT", help=help_text + "  (repeatable)")
    if kind == "choice":
        return click.option(*names, name, type=click.Choice(key["choices"]), default=None, help=help_text)
    return click.option(*names, name, type=_CLICK_TYPES[kind], default=None, help=help_text)


def options(
    keys: Iterable[dict[str, Any]],
    skip: Iterable[str] = (),
    only: Optional[Iterable[str]] = None,
    short: Optional[dict[str, str]] = None,
) -> Callable[[Any], Any]:
    """A decorator adding the options of ``keys`` (those in ``only`` if given, but not those in
    ``skip``)."""
    short = short or {}
    wanted = None if only is None else set(only)
    chosen = [k for k in keys if k["name"] not in set(skip) and (wanted is None or k["name"] in wanted)]

    def deco(f: Any) -> Any:
        for key in reversed(chosen):
            f = option(key, short.get(key["name"]))(f)
        return f

    return deco


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags the user gave (click leaves the others None, or empty for repeatable ones)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items() if v is not None and v != ()}


def device_or_env(device: Optional[str]) -> Optional[str]:
    """``--device``, else ``GRUFINITY_DEVICE``, else None (the default device)."""
    return device or os.environ.get("GRUFINITY_DEVICE") or None


def fmt_time(seconds: Optional[float]) -> str:
    """``45s``, ``3m07s``, ``1h05m``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
