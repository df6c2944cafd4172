"""Reading runs: a run directory's config, metrics, samples and checkpoints, for plots,
comparisons, dashboards and notebooks.

>>> run = grufinity.runs.load("runs/shakespeare")
>>> run.best_val_loss, run.metrics[-1]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Optional

from . import _grufinity
from .errors import CheckpointError, DataNotFoundError


@dataclass
class Run:
    """One run directory, as it was when read."""

    path: Path
    name: str
    #: The resolved config (architecture under ``model``).
    config: dict[str, Any]
    #: One dict per step, evaluation and skipped step (``event`` says which), in order.
    metrics: list[dict[str, Any]]
    #: Complete checkpoints, oldest first: name, step, path, last, best.
    checkpoints: list[dict[str, Any]]
    #: The sample written at each evaluation: (step, text).
    samples: list[tuple[int, str]] = field(default_factory=list)
    #: Whether a process is writing the run now.
    training: bool = False

    def of(self, event: str) -> list[dict[str, Any]]:
        """The metrics rows of one kind: ``step``, ``eval`` or ``skipped``."""
        return [m for m in self.metrics if m.get("event") == event]

    @property
    def best_val_loss(self) -> Optional[float]:
        losses = [m["val_loss"] for m in self.of("eval") if m.get("val_loss") is not None]
        return min(losses) if losses else None

    @property
    def last_step(self) -> int:
        steps = [m["step"] for m in self.metrics if "step" in m]
        return max(steps) if steps else 0

    def dataframe(self) -> Any:
        """The metrics as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.metrics)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written right now
    return rows


def _read_config(path: Path) -> dict[str, Any]:
    """A run's config.json ({} when absent); a damaged one is a CheckpointError naming it."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON, or not UTF-8
        raise CheckpointError(f"{path} is damaged: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is damaged: a JSON {type(config).__name__} instead of an object")
    return config


def _read_samples(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        return []
    out: list[tuple[int, str]] = []
    for block in path.read_text(encoding="utf-8", errors="replace").split("=== step ")[1:]:
        head, _, text = block.partition("\n")
        try:
            step = int(head.split()[0])
        except (ValueError, IndexError):
            continue
        out.append((step, text.rstrip("\n")))
    return out


def is_run(path: str | PathLike[str]) -> bool:
    """Whether ``path`` looks like a run directory (it has a config or checkpoints)."""
    p = Path(path)
    return (p / "config.json").is_file() or (p / "checkpoints").is_dir()


def load(path: str | PathLike[str]) -> Run:
    """Reads the run at ``path`` (a run directory)."""
    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(f"{p}: no such run directory")
    if not is_run(p):
        raise CheckpointError(f"{p} is not a run directory (no config.json or checkpoints/)")
    return Run(
        path=p,
        name=p.name,
        config=_read_config(p / "config.json"),
        metrics=_read_metrics(p / "metrics.jsonl"),
        checkpoints=_grufinity.list_checkpoints(str(p)),
        samples=_read_samples(p / "samples.txt"),
        training=_grufinity.run_is_training(str(p)),
    )


def find(root: str | PathLike[str]) -> list[Path]:
    """The run directories at ``root`` (itself, if it is one, else its children), sorted."""
    r = Path(root)
    if is_run(r):
        return [r]
    if not r.is_dir():
        return []
    return sorted(c for c in r.iterdir() if c.is_dir() and not c.name.startswith(".") and is_run(c))
