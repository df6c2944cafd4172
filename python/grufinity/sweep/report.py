"""A sweep's results: the best trials with their run directories, counts by state, and Optuna's
own plots (parameter importances, optimisation history, learning curves of every trial) written
as PNGs into the sweep directory."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..extras import require
from .study import Sweep, shown_url

#: Optuna's matplotlib plots the report writes: file name -> function name.
PLOTS = {
    "importance.png": "plot_param_importances",
    "history.png": "plot_optimization_history",
    "intermediate.png": "plot_intermediate_values",
}


def summary(sweep: Sweep, top: int = 5) -> dict[str, Any]:
    """``{"study", "storage", "directory", "counts": {state: n}, "best": [trial dicts]}``; each
    trial dict holds number, value, params, steps and run_dir (complete trials, best first)."""
    study = sweep.study()  # first: it says which extra is missing
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    best = [
        {"number": t.number, "value": t.value, "params": t.params, "steps": t.user_attrs.get("steps"),
         "run_dir": t.user_attrs.get("run_dir"), "host": t.user_attrs.get("host")}
        for t in complete[:top]
    ]
    return {"study": sweep.name, "storage": shown_url(sweep.storage), "directory": str(sweep.directory),
            "counts": counts, "best": best}


def write_plots(sweep: Sweep) -> tuple[list[Path], list[str]]:
    """Writes :data:`PLOTS` into the sweep directory; returns the files written and, for each
    plot that cannot be drawn yet (too few trials), why."""
    require("matplotlib", "sweep", "the sweep report's plots")
    import matplotlib

    matplotlib.use("Agg")  # files only; Optuna draws through pyplot
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    study = sweep.study()
    written, notes = [], []
    for file, name in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib plots are marked experimental
                ax = getattr(vis, name)(study)
        except (ValueError, RuntimeError) as e:
            notes.append(f"{file}: not drawn: {str(e).splitlines()[0]}")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        path = sweep.directory / file
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written, notes
