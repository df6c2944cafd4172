"""``grufinity plot``: training curves of runs as a PNG (the logic is :mod:`grufinity.plot`)."""

from __future__ import annotations

import os
import sys
from typing import Optional

import click

from . import main


def has_display() -> bool:
    """Whether an image viewer can open a window here."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@main.command(context_settings={"max_content_width": 110})
@click.argument("runs", nargs=-1, required=True)
@click.option("-o", "--output", default="plot.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG file to write.")
@click.option("--x", "x", type=click.Choice(["step", "tokens", "time"]), default="step", show_default=True,
              help="Horizontal axis: optimiser steps, training tokens or wall-clock time.")
@click.option("--metrics", default="loss,val_loss", show_default=True,
              help="Comma-separated metrics, one panel each: loss, val_loss, val_bpb, val_ppl, lr, grad_norm, "
                   "tokens_per_sec, step_time.")
@click.option("--smooth", type=click.FloatRange(0, 1, max_open=True), default=0.6, show_default=True,
              help="TensorBoard-style smoothing of training metrics (0 = off); the raw curve stays faint behind.")
@click.option("--size", default="1200x500", show_default=True, help="Image size in pixels, WIDTHxHEIGHT.")
@click.option("--dpi", type=click.IntRange(30, 600), default=100, show_default=True, help="Dots per inch (text size).")
@click.option("--yscale", type=click.Choice(["auto", "linear", "log"]), default="auto", show_default=True,
              help="auto: log when a panel's values are positive and span 10x or more.")
@click.option("--title", default=None, help="Title over the panels.")
@click.option("--show/--no-show", default=None,
              help="Open the PNG in the image viewer.  [default: when a display exists and stdout is a terminal]")
def plot(runs: tuple[str, ...], output: str, x: str, metrics: str, smooth: float, size: str, dpi: int,
         yscale: str, title: Optional[str], show: Optional[bool]) -> None:
    """Plot the curves of RUNS (run directories, directories of runs, or globs such as
    'runs/lr-*') overlaid, one colour per run, into a PNG.

    \b
    grufinity plot runs/a runs/b -o ab.png
    grufinity plot 'runs/lr-*' --x tokens --metrics loss,val_loss,lr
    """
    from .. import plot as plot_mod
    from .. import runs as runs_mod

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    loaded = [runs_mod.load(p) for p in runs_mod.expand(runs)]
    out = plot_mod.save(loaded, output, metrics=names, x=x, smoothing=smooth, size=plot_mod.parse_size(size),
                        dpi=dpi, yscale=yscale, title=title)
    click.echo(f"wrote {out} ({len(loaded)} run{'s' * (len(loaded) != 1)}: {', '.join(runs_mod.labels(loaded))})",
               err=True)
    if show if show is not None else (has_display() and sys.stdout.isatty()):
        click.launch(str(out))
