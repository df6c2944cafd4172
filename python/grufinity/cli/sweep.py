"""``grufinity sweep``: hyperparameter search on Optuna (the logic is :mod:`grufinity.sweep`)."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any, Optional

import click

from ..extras import has
from . import main
from .compare import print_rich

EXAMPLE = """\b
spec (a training config plus a [sweep] table):
    data = "input.txt"
    max_steps = 2000                  # budget of each trial
    eval_every = 200                  # each evaluation feeds the pruner
    [sweep]
    lr = {low = 1e-4, high = 1e-2, log = true}
    dim = [128, 192, 256]
    trials = 30                       # settings: trials, study, storage, dir, sampler
                                      # (tpe, random, grid), sampler_seed, pruner (median,
                                      # hyperband, none), pruner_startup_trials,
                                      # pruner_warmup_steps, heartbeat"""


def _interrupted(sweep: Any) -> None:
    try:
        finished, _ = sweep.counts(sweep.study())
        done = f" ({finished} of {sweep.trials} trials finished)"
    except Exception:  # the message matters more than the count
        done = ""
    click.echo(f"interrupted: running trials stopped with their checkpoints and are marked failed{done}\n"
               "continue the study by running the same command again", err=True)


def print_summary(result: dict[str, Any]) -> None:
    from ..sweep.study import params_text

    counts = ", ".join(f"{n} {state}" for state, n in sorted(result["counts"].items())) or "no trials"
    click.echo(f"study {result['study']!r} in {result['storage']}: {counts}")
    if not result["best"]:
        return
    head = ["trial", "best val loss", "steps", "parameters", "run directory"]
    rows = [[str(t["number"]), f"{t['value']:.4f}", str(t["steps"] or "-"), params_text(t["params"]),
             t["run_dir"] or "-"] for t in result["best"]]
    if has("rich"):
        from rich.table import Table

        table = Table(title="best trials", title_justify="left")
        for i, h in enumerate(head):
            table.add_column(h, justify="right" if i < 3 else "left", overflow="fold")
        for row in rows:
            table.add_row(*row)
        print_rich(table)
    else:
        click.echo("best trials:")
        for row in rows:
            click.echo("  " + " | ".join(row))
    best = result["best"][0]
    if best["run_dir"]:
        click.echo(f"train the best again: grufinity train --config {best['run_dir']}/config.json --name NAME")


@main.command(context_settings={"max_content_width": 110}, epilog=EXAMPLE)
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Finished trials (complete or pruned) the study should hold; running the sweep again "
                   "continues up to this number.  [default: the spec's trials, else 20]")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage shared by all workers, e.g. postgresql://user:password@host/db "
                   "(pip install 'grufinity[postgres]') or mysql+pymysql://...  [default: sqlite:///DIR/study.db]")
@click.option("--study", "study_name", default=None, help="Study name.  [default: the spec file's name]")
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help="Sweep directory: a run directory per trial, the SQLite study, the report's plots.  "
                   "[default: sweeps/STUDY]")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes sharing the study on this machine, each with its share of the cores. "
                   "For several machines, run the same command on each with one --storage.")
@click.option("--report", is_flag=True,
              help="Train nothing: print the best trials and write importance.png, history.png and "
                   "intermediate.png into the sweep directory.")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Best trials to list.")
def sweep(spec: str, trials: Optional[int], storage: Optional[str], study_name: Optional[str],
          directory: Optional[str], workers: int, report: bool, top: int) -> None:
    """Search hyperparameters with Optuna: train trials of SPEC (a TOML training config with a
    [sweep] table of search spaces), each a run directory in the sweep directory, stopping bad
    ones early (median pruner on the validation loss at each evaluation). The study lives in a
    database, so an interrupted or killed sweep continues where it was when run again; a trial
    that was running when its process died is marked failed and redone.

    \b
    grufinity sweep lr.toml --trials 30
    grufinity sweep lr.toml --workers 2             # two processes, one study
    grufinity sweep lr.toml --report                # best trials and plots
    """
    from .. import sweep as sweep_mod
    from ..sweep.workers import quiet_optuna

    sweeper = sweep_mod.Sweep.create(sweep_mod.load(spec), trials=trials, storage=storage, study=study_name,
                                     directory=directory)
    if report:
        print_summary(sweep_mod.summary(sweeper, top))
        written, notes = sweep_mod.write_plots(sweeper)
        for note in notes:
            click.echo(note, err=True)
        if written:
            click.echo("wrote " + ", ".join(str(p) for p in written), err=True)
        return

    def on_signal(signum: int, frame: Any) -> None:
        # First Ctrl-C or SIGTERM: stop the running trials at a safe point. Second: at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # Raised inside a database read, the interrupt makes SQLAlchemy log a traceback while it
        # closes the cursor; the one-line summary below says what happened.
        logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        quiet_optuna()
    except ImportError:
        pass  # Sweep.study reports the missing extra in one line
    try:
        sweep_mod.run(sweeper, workers=workers, log=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        _interrupted(sweeper)
        sys.exit(130)
    print_summary(sweep_mod.summary(sweeper, top))
    click.echo(f"more: grufinity sweep {spec} --report   grufinity compare {sweeper.directory}", err=True)
