"""Training curves of one or more runs as a PNG, drawn with matplotlib (the ``plot`` extra):
one panel per metric, one colour per run (named in the legend), training metrics smoothed the
way TensorBoard does it with the raw values faint behind.

>>> from grufinity import plot, runs
>>> plot.save(runs.expand(["runs/lr-*"]), "curves.png", metrics=["loss", "val_loss"], x="tokens")
"""

from __future__ import annotations

import math
from os import PathLike
from pathlib import Path
from typing import Any, Optional, Sequence

from . import runs as runs_mod
from .errors import ConfigError
from .extras import require
from .runs import Run

#: The x axes: name -> metrics key.
X_AXES = {"step": "step", "tokens": "tokens", "time": "elapsed"}

#: Panel titles of the metrics runs log (any other numeric key can be plotted by name).
LABELS = {
    "loss": "training loss (nats/token)",
    "val_loss": "validation loss (nats/token)",
    "val_bpb": "validation bits/byte",
    "val_bpt": "validation bits/token",
    "val_ppl": "validation perplexity",
    "lr": "learning rate",
    "grad_norm": "gradient norm",
    "tokens_per_sec": "training tokens/s",
    "step_time": "step time (s)",
}
DEFAULT_METRICS = ("loss", "val_loss")
#: Training metrics drawn as they are: a schedule has no noise to smooth away.
UNSMOOTHED = {"lr"}
YSCALES = ("auto", "linear", "log")

#: Auto y scale: log when the values are positive and span at least this ratio.
LOG_RATIO = 10.0


def parse_size(text: str) -> tuple[int, int]:
    """``"1200x800"`` -> (1200, 800) pixels."""
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) < 50 or max(size) > 20000:
        raise ConfigError(f"invalid size {text!r}: give WIDTHxHEIGHT in pixels, each 50 to 20000 (e.g. 1200x800)")
    return size


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing (the first points are not pulled
    towards zero); ``weight`` 0 returns the values."""
    if weight <= 0:
        return list(values)
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = avg * weight + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def series(run: Run, metric: str, x: str = "step") -> tuple[list[float], list[float]]:
    """The (x, y) points of ``metric`` in ``run``: validation metrics (``val_*``) from its
    evaluations, the others from its logged steps; missing and non-finite values skipped."""
    rows = run.of("eval") if metric.startswith("val_") else run.of("step")
    key = X_AXES[x]
    points = [(r[key], r[metric]) for r in rows if isinstance(r.get(metric), (int, float)) and r.get(key) is not None]
    points = [(a, b) for a, b in points if math.isfinite(b)]
    return [a for a, _ in points], [b for _, b in points]


def _check(runs: Sequence[Run], metrics: Sequence[str], x: str, yscale: str) -> None:
    if not runs:
        raise ConfigError("no runs to plot")
    if x not in X_AXES:
        raise ConfigError(f"invalid x axis {x!r}: choose one of {', '.join(X_AXES)}")
    if yscale not in YSCALES:
        raise ConfigError(f"invalid y scale {yscale!r}: choose one of {', '.join(YSCALES)}")
    if not metrics:
        raise ConfigError("no metrics to plot")
    logged = sorted({k for r in runs for m in r.metrics for k, v in m.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)} - set(X_AXES.values()) - {"epoch", "best"})
    for metric in metrics:
        if not any(series(r, metric, x)[1] for r in runs):
            known = ", ".join(logged) or "nothing yet"
            raise ConfigError(f"metric {metric!r} is in none of the runs (they log: {known})")


def _time_unit(runs: Sequence[Run]) -> tuple[float, str]:
    longest = max((m.get("elapsed") or 0 for r in runs for m in r.metrics), default=0)
    if longest >= 3 * 3600:
        return 3600.0, "time (h)"
    if longest >= 600:
        return 60.0, "time (min)"
    return 1.0, "time (s)"


def figure(
    runs: Sequence[Run],
    metrics: Sequence[str] = DEFAULT_METRICS,
    x: str = "step",
    smoothing: float = 0.6,
    size: tuple[int, int] = (1200, 500),
    dpi: int = 100,
    yscale: str = "auto",
    title: Optional[str] = None,
) -> Any:
    """A matplotlib Figure of exactly ``size`` pixels at ``dpi``: one panel per metric (two per
    row), each run in its own colour. ``smoothing`` (0 to <1) applies to training metrics but
    the learning rate; validation metrics are drawn as measured, with markers."""
    require("matplotlib", "plot", "plotting")
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    _check(runs, metrics, x, yscale)
    if not 0 <= smoothing < 1:
        raise ConfigError(f"invalid smoothing {smoothing}: must be at least 0 and below 1")
    cols = min(len(metrics), 2)
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    scale, xlabel = _time_unit(runs) if x == "time" else (1.0, x)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, metric in zip(axes, metrics):
        ys_all: list[float] = []
        for run, name, color in zip(runs, runs_mod.labels(runs), colors):
            xs, ys = series(run, metric, x)
            if not ys:
                continue
            xs = [v / scale for v in xs]
            ys_all += ys
            if metric.startswith("val_"):
                ax.plot(xs, ys, color=color, marker="o", markersize=3, label=name)
            elif smoothing > 0 and len(ys) > 2 and metric not in UNSMOOTHED:
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(xs, smooth(ys, smoothing), color=color, label=name)
            else:
                ax.plot(xs, ys, color=color, label=name)
        positive = ys_all and min(ys_all) > 0
        if yscale == "log" or (yscale == "auto" and positive and max(ys_all) / min(ys_all) >= LOG_RATIO):
            if not positive:
                raise ConfigError(f"metric {metric!r} has values <= 0: it cannot use a log scale")
            ax.set_yscale("log")
        ax.set_title(LABELS.get(metric, metric))
        ax.set_xlabel(xlabel)
        if x == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1.4M rather than a 1e6 offset
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def save(
    runs: Sequence[Run | str | PathLike[str]],
    path: str | PathLike[str],
    **options: Any,
) -> Path:
    """Draws :func:`figure` of ``runs`` (Run objects or run paths/globs) and writes it as a PNG
    at ``path``; returns the path."""
    loaded: list[Run] = []
    for r in runs:
        loaded += [r] if isinstance(r, Run) else [runs_mod.load(p) for p in runs_mod.expand([r])]
    fig = figure(loaded, **options)
    out = Path(path)
    fig.savefig(out, dpi=options.get("dpi", 100), format="png")
    return out
