"""Reading runs: a run directory's config, metrics, samples and checkpoints, for plots,
comparisons, dashboards and notebooks.

>>> run = grufinity.runs.load("runs/shakespeare")
>>> run.best_val_loss, run.metrics[-1]
>>> grufinity.train(run.train_config(name="again"))   # the same run once more
"""

from __future__ import annotations

import glob
import json
import math
import statistics
import struct
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Optional

from . import _grufinity
from .errors import CheckpointError, ConfigError, DataNotFoundError, MissingExtraError



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
        try:
            import pandas as pd
        except ImportError:
            raise MissingExtraError("Run.dataframe() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.metrics)

    @property
    def num_params(self) -> Optional[int]:
        """Parameters of the model, from the newest checkpoint's weights file (its header only)."""
        if not self.checkpoints:
            return None
        return _count_params(Path(self.checkpoints[-1]["path"]) / "model.safetensors")

    def flat_config(self) -> dict[str, Any]:
        """The config as one level of training keys (those of :class:`grufinity.TrainConfig`);
        what is not a training key, such as the model's resolved vocabulary size, keeps its
        section as a prefix (``model.vocab_size``)."""
        from .config import KEYS

        model_keys = {k["name"] for k in KEYS if k["section"] == "model"}
        out = {k: v for k, v in self.config.items() if not isinstance(v, dict)}
        for section, values in self.config.items():
            if isinstance(values, dict):
                for k, v in values.items():
                    out[k if section == "model" and k in model_keys else f"{section}.{k}"] = v
        return out

    def train_config(self, **overrides: Any) -> Any:
        """A :class:`grufinity.TrainConfig` that trains this run again from scratch: its
        settings and seed, not its place (default ``out_dir``, a new name), updated with
        ``overrides``."""
        from .config import TrainConfig, from_run_config

        return TrainConfig(**{**from_run_config(self.config), **overrides})

    def summary(self) -> dict[str, Any]:
        """The figures that tell runs apart: best validation loss (nats/token) and its bits per
        byte, parameters, median training tokens/s, wall time (s), steps and tokens."""
        evals = [m for m in self.of("eval") if m.get("val_loss") is not None]
        best = min(evals, key=lambda m: m["val_loss"]) if evals else None
        speeds = [m["tokens_per_sec"] for m in self.of("step") if m.get("tokens_per_sec")]
        last = self.metrics[-1] if self.metrics else {}
        return {
            "best_val_loss": best["val_loss"] if best else None,
            "best_val_bpb": best.get("val_bpb") if best else None,
            "params": self.num_params,
            "tokens_per_sec": statistics.median(speeds) if speeds else None,
            "wall_time": last.get("elapsed"),
            "steps": self.last_step,
            "tokens": last.get("tokens"),
        }


def _count_params(weights: Path) -> Optional[int]:
    # A safetensors file starts with the length of its JSON header, which lists every tensor's
    # shape: counting from it needs no model and no reading of the weights.
    try:
        with weights.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


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


def average(path: str | PathLike[str], last: int) -> dict[str, Any]:
    """Averages the weights of the ``last`` newest checkpoints of the run at ``path`` into
    ``RUN/checkpoints/average-last-K/`` (a checkpoint ``grufinity.load`` takes). Returns its
    ``path``, the ``steps`` averaged and the weight ``files``."""
    if isinstance(last, bool) or not isinstance(last, int):
        raise ConfigError(f"invalid argument `last`: must be an integer, got {last!r}")
    return _grufinity.average_checkpoints(str(Path(path)), last)


def find(root: str | PathLike[str]) -> list[Path]:
    """The run directories at ``root`` (itself, if it is one, else its children), sorted."""
    r = Path(root)
    if is_run(r):
        return [r]
    if not r.is_dir():
        return []
    return sorted(c for c in r.iterdir() if c.is_dir() and not c.name.startswith(".") and is_run(c))


def expand(patterns: Iterable[str | PathLike[str]]) -> list[Path]:
    """The run directories that ``patterns`` name, in order and each once: a run directory, a
    directory of runs (its runs), or a glob of either (``runs/lr-*``). A pattern that names no
    run is a DataNotFoundError."""
    out: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        found = [run for m in matches for run in find(m)]
        if not found:
            raise DataNotFoundError(f"{text}: no run directory {'matches' if glob.has_magic(text) else 'there'}")
        out += [r for r in found if r not in out]
    return out


def labels(runs: Iterable[Run]) -> list[str]:
    """Names to show for ``runs``: their names, or their paths when names repeat (the trials of
    two sweeps)."""
    runs = list(runs)
    names = [r.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]
