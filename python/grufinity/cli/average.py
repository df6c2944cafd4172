"""``grufinity average``: checkpoint averaging after the fact."""

from __future__ import annotations

import click

from .. import runs
from . import main


@main.command()
@click.argument("run", type=str)
@click.option("--last", "last", type=int, default=5, show_default=True, help="How many of the newest checkpoints to average.")
def average(run: str, last: int) -> None:
    """Average the weights of RUN's newest checkpoints into RUN/checkpoints/average-last-K,
    a checkpoint that generate, eval and load take. Keep enough of them while training with
    --keep-last."""
    done = runs.average(run, last)
    steps = ", ".join(str(s) for s in done["steps"])
    click.echo(f"averaged {' and '.join(done['files'])} of steps {steps} into {done['path']}")
    click.echo(f"compare: grufinity eval {done['path']} TEXT  vs  grufinity eval {run} TEXT")
