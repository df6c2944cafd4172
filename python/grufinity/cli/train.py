"""``grufinity train``."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Optional

import click

from .. import config as config_mod
from ..corpus import DEFAULT_CORPUS_DESCRIPTION
from . import main, progress as progress_mod
from .options import given, options


@main.command(context_settings={"max_content_width": 110})
@click.argument("data", nargs=-1)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file of settings (any key below, dashes as underscores), or a run's config.json to "
                   "train that run again; flags override it.")
@click.option("--preset", type=click.Choice(config_mod.presets()), default=None,
              help="A shipped recipe (settings and a time budget); --config and flags override it.")
@options(config_mod.KEYS, skip=["data"])
@click.option("--progress", type=click.Choice(progress_mod.MODES), default="auto", show_default=True,
              help="Progress display: a live bar (with the rich extra) on a terminal, plain lines, JSON lines, "
                   "or nothing.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the run directory and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Also say why `--device auto` skipped each backend.")
def train(data: tuple[str, ...], config_file: Optional[str], preset: Optional[str], progress: str, quiet: bool, verbose: bool,
          **flags: Any) -> None:
    """Train a minGRU language model on DATA (files, directories or globs).

    Without DATA it trains on the built-in corpus: {default}, so the model learns to write
    Python. Progress shows loss, validation loss, tokens/s and ETA; the run directory gets the
    resolved config, checkpoints (safetensors), metrics.jsonl/csv and samples.txt.

    Ctrl-C stops at the next safe point and saves a checkpoint (a second Ctrl-C quits at once);
    continue with --resume. A resumed run keeps its settings; it may change its budget, cadence
    and device.
    """
    from .. import train as run_training

    overrides = given(flags)
    if data:
        overrides["data"] = list(data)
    if "device" not in overrides and os.environ.get("GRUFINITY_DEVICE"):
        overrides["device"] = os.environ["GRUFINITY_DEVICE"]
    cfg = config_mod.build(overrides, config_file, preset)
    show = progress_mod.make("none" if quiet else progress, verbose=verbose)
    terminated = {"sigterm": False}

    def on_sigint(signum: int, frame: Any) -> None:
        # First Ctrl-C: stop at the next safe point and save. Second: the default action, at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt

    def on_sigterm(signum: int, frame: Any) -> None:
        terminated["sigterm"] = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        outcome = run_training(cfg, show)
    except KeyboardInterrupt as e:
        show.close()
        info = e.args[0] if e.args and isinstance(e.args[0], dict) else None
        if info:
            click.echo(
                f"interrupted at step {info['step']}; checkpoint saved to {info['checkpoint']}\n"
                f"resume with: grufinity train --resume {info['run_dir']}",
                err=True,
            )
        else:
            click.echo("interrupted before training started; nothing was saved", err=True)
        sys.exit(143 if terminated["sigterm"] else 130)
    finally:
        show.close()
    if quiet:
        click.echo(outcome["run_dir"])
    else:
        click.echo(f"run saved to {outcome['run_dir']}", err=True)
        click.echo(f"generate with: grufinity generate {outcome['run_dir']}", err=True)


train.help = (train.help or "").replace("{default}", DEFAULT_CORPUS_DESCRIPTION)
