"""The runs a server may show: only run directories under its root, found by listing the root
(a name from a request is looked up in that listing, never joined to a path), and only files
whose real path stays inside the run (a symlink out of it is refused)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .. import _grufinity, runs
from ..errors import GrufinityError
from .errors import WebError, not_found, refused

#: What a request may name as a checkpoint.
CHECKPOINT_NAME = re.compile(r"^(best|last|step-\d{1,12})$")
#: Files of a run the server reads.
RUN_FILES = ("config.json", "metrics.jsonl", "samples.txt", "checkpoints")
#: Points per curve sent to the page (long runs log tens of thousands of steps).
CURVE_POINTS = 600


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (resolved) is ``root`` or below it."""
    return path == root or root in path.parents


class Catalog:
    """The runs under ``root`` (a directory of runs, or one run)."""

    def __init__(self, root: str | Path) -> None:
        given = Path(root).expanduser()
        if not given.is_dir():
            raise GrufinityError(f"{root}: no such directory (give the directory your runs are in, or one run)")
        self.root = given.resolve()

    def runs(self) -> dict[str, Path]:
        """Run name → real path, for every run whose real path stays under the root."""
        out: dict[str, Path] = {}
        for path in runs.find(self.root):
            real = path.resolve()
            if inside(real, self.root):
                out[path.name] = real
        return out

    def run_path(self, name: Any) -> Path:
        """The run called ``name``, with every file the server reads checked to stay inside it."""
        if not isinstance(name, str) or not name or len(name) > 255:
            raise not_found("give the name of a run")
        path = self.runs().get(name)
        if path is None:
            raise not_found(f"no run named {name!r} under {self.root}")
        for entry in RUN_FILES:
            f = path / entry
            if (f.exists() or f.is_symlink()) and not inside(f.resolve(), path):
                raise refused(f"{name}/{entry} points outside the run; refused")
        return path

    def load(self, name: Any) -> runs.Run:
        path = self.run_path(name)
        try:
            return runs.load(path)
        except (GrufinityError, OSError, ValueError) as e:
            raise WebError(422, f"run {name!r} cannot be read: {one_line(e)}") from None

    def checkpoint(self, name: Any, which: Any) -> Path:
        """The checkpoint directory ``which`` (best, last, step-N) of run ``name``: only a
        complete one (the trainer renames a checkpoint into place when it is whole), and only
        when it and every file in it stay inside the run."""
        run = self.run_path(name)
        if not isinstance(which, str) or not CHECKPOINT_NAME.match(which):
            raise not_found(f"no checkpoint named {which!r}: choose best, last or step-N")
        try:
            if which in ("best", "last"):
                path = Path(_grufinity.resolve_checkpoint(str(run), which))
            else:
                found = [c for c in _grufinity.list_checkpoints(str(run)) if c["name"] == which]
                if not found:
                    raise not_found(f"run {name!r} has no complete checkpoint {which}")
                path = Path(found[0]["path"])
        except GrufinityError as e:
            raise WebError(422, f"run {name!r}: {one_line(e)}") from None
        real = path.resolve()
        if not inside(real, run) or any(not inside(f.resolve(), run) for f in real.iterdir()):
            raise refused(f"checkpoint {which} of run {name!r} points outside the run; refused")
        return real

    def summaries(self) -> list[dict[str, Any]]:
        """One line per run for the run pickers, newest first; a run that cannot be read is
        listed with its error instead of hiding it (or failing the whole list)."""
        out = []
        for name, path in self.runs().items():
            try:
                run = self.load(name)
            except WebError as e:
                out.append({"name": name, "error": e.message, "checkpoints": [], "mtime": 0})
                continue
            out.append({
                "name": name,
                "training": run.training,
                "step": run.last_step,
                "best_val_loss": finite(run.best_val_loss),
                "model": model_text(run.config.get("model") or {}),
                "data": run.config.get("data_description"),
                "checkpoints": [c["name"] for c in run.checkpoints],
                "mtime": mtime(path),
            })
        return sorted(out, key=lambda r: (-r["mtime"], r["name"]))

    def detail(self, name: Any) -> dict[str, Any]:
        """Everything the runs view shows of one run."""
        run = self.load(name)
        steps = run.of("step")
        evals = [e for e in run.of("eval") if e.get("val_loss") is not None]
        return {
            "name": run.name,
            "training": run.training,
            "step": run.last_step,
            "best_val_loss": finite(run.best_val_loss),
            "config": run.config,
            "curves": {
                "loss": curve(steps, "loss"),
                "lr": curve(steps, "lr"),
                "val_loss": [[e["step"], finite(e["val_loss"])] for e in evals],
                "tokens_per_sec": curve(steps, "tokens_per_sec"),
            },
            "skipped": len(run.of("skipped")),
            "samples": [{"step": s, "text": t} for s, t in reversed(run.samples)],
            "checkpoints": [{k: c[k] for k in ("name", "step", "last", "best")} for c in run.checkpoints],
        }


def curve(rows: list[dict[str, Any]], key: str, points: int = CURVE_POINTS) -> list[list[float]]:
    """``[[step, value], ...]`` of ``key``, averaged over equal buckets of steps when there are
    more than ``points`` rows (so a 10,000-step run draws as fast as a 100-step one)."""
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if len(pairs) <= points:
        return [[s, v] for s, v in pairs]
    size = len(pairs) / points
    out = []
    for i in range(points):
        bucket = pairs[int(i * size) : int((i + 1) * size)]
        out.append([bucket[-1][0], sum(v for _, v in bucket) / len(bucket)])
    return out


def model_text(model: dict[str, Any]) -> str:
    return " · ".join(f"{k} {model[k]}" for k in ("dim", "depth") if k in model)


def finite(x: Any) -> Any:
    """JSON has no NaN or infinity: those become None."""
    return x if not isinstance(x, float) or math.isfinite(x) else None


def mtime(path: Path) -> float:
    try:
        return max((path / f).stat().st_mtime for f in ("metrics.jsonl", "config.json") if (path / f).exists())
    except (OSError, ValueError):
        return 0.0


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
