"""The ``grufinity`` command line: one module per group of commands, all options of settings
generated from the core's schema (:mod:`grufinity.cli.options`)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import GrufinityError

_DEBUG = False


def fail(message: str, code: int = 1) -> None:
    """Prints ``error: message`` as one line and exits."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns every GrufinityError (and OSError) into a one-line message, unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (GrufinityError, OSError) as e:
            if _DEBUG:
                raise
            text = str(e).strip()
            fail(text.splitlines()[0] if text else type(e).__name__)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grufinity")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """Train and run minGRU language models.

    \b
    grufinity train                 train on the built-in corpus (Python's standard library)
    grufinity train my.txt          train on your own text
    grufinity generate runs/NAME    write text with a trained model
    """
    global _DEBUG
    _DEBUG = debug


# Each module adds its commands to `main`.
from . import average, compare, generate, inspect, plot, serve, sweep, train  # noqa: E402,F401

__all__ = ["main", "fail"]
