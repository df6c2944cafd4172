"""``grufinity compare``: what differs between runs, and how they did (the logic is
:mod:`grufinity.compare`)."""

from __future__ import annotations

import click

from ..extras import has
from . import main


def print_rich(renderable: object) -> None:
    """Prints a rich table on stdout; piped, at its natural width rather than squeezed into
    80 columns."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=100_000)
    console.print(renderable)


def print_table(result: dict) -> None:
    """The comparison as a rich table on stdout: differing settings, then the figures."""
    from rich.table import Table

    from .. import compare as compare_mod

    table = Table(title=f"{len(result['runs'])} runs; settings that differ: "
                        + (", ".join(result["differs"]) or "none"), title_justify="left")
    for i, name in enumerate(compare_mod.header(result)):
        figure = i > len(result["differs"])
        table.add_column(name, justify="right" if figure else "left", style="bold" if i == 0 else None,
                         no_wrap=figure, overflow="fold")
    for row in compare_mod.rows(result):
        table.add_row(*row)
    print_rich(table)


@main.command(context_settings={"max_content_width": 110})
@click.argument("runs", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "md", "csv", "json"]), default="table",
              show_default=True, help="table: drawn with rich when installed, else markdown; csv and json hold raw numbers.")
def compare(runs: tuple[str, ...], fmt: str) -> None:
    """Compare RUNS (run directories, directories of runs, or globs such as 'runs/lr-*'): the
    settings whose values differ between them, then each run's best validation loss, bits per
    byte, parameters, training tokens/s, wall time and steps.

    \b
    grufinity compare runs/a runs/b
    grufinity compare 'sweeps/lr/trial-*' --format csv > trials.csv
    """
    from .. import compare as compare_mod
    from .. import runs as runs_mod

    result = compare_mod.compare([runs_mod.load(p) for p in runs_mod.expand(runs)])
    if fmt == "table" and has("rich"):
        print_table(result)
    elif fmt in ("table", "md"):
        click.echo(compare_mod.markdown(result))
    elif fmt == "csv":
        click.echo(compare_mod.to_csv(result), nl=False)
    else:
        click.echo(compare_mod.to_json(result))
