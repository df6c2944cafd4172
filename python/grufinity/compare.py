"""What tells runs apart: the config keys whose values differ between them, and each run's best
validation loss, bits/byte, parameters, tokens/s, wall time and steps. As data
(:func:`compare`), a markdown table, CSV or JSON; ``grufinity compare`` also draws it with rich.

>>> from grufinity import compare, runs
>>> print(compare.markdown(compare.compare(runs.expand(["runs/lr-*"]))))
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

from .cli.options import fmt_time
from .config import KEYS, LOCATION_KEYS
from .errors import ConfigError
from .runs import Run, labels

#: The figures of each run: summary key -> column title.
SUMMARY = {
    "best_val_loss": "best val loss",
    "best_val_bpb": "bits/byte",
    "params": "params",
    "tokens_per_sec": "tokens/s",
    "wall_time": "wall time",
    "steps": "steps",
}
FORMATS = ("table", "md", "csv", "json")

_ORDER = {k["name"]: i for i, k in enumerate(KEYS)}


def differences(runs: Sequence[Run]) -> list[str]:
    """The config keys whose values are not the same in all ``runs`` (a key a run lacks counts
    as different), in the schema's order; where a run is (its name, directory) never counts."""
    configs = [r.flat_config() for r in runs]
    keys = {k for c in configs for k in c} - set(LOCATION_KEYS)
    missing = object()
    differ = [k for k in keys if len({json.dumps(c.get(k, missing), default=repr, sort_keys=True) for c in configs}) > 1]
    return sorted(differ, key=lambda k: (_ORDER.get(k, len(_ORDER)), k))


def compare(runs: Sequence[Run]) -> dict[str, Any]:
    """``{"differs": [keys], "runs": [{"run", "path", "config": {key: value}, <summary>}]}``
    where ``config`` holds the differing keys and the summary is :meth:`Run.summary`."""
    if not runs:
        raise ConfigError("no runs to compare")
    differs = differences(runs)
    out = []
    for run, name in zip(runs, labels(runs)):
        flat = run.flat_config()
        out.append({"run": name, "path": str(run.path), "config": {k: flat.get(k) for k in differs}, **run.summary()})
    return {"differs": differs, "runs": out}


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ", ".join(_value(x) for x in v)
    return str(v)


def _figure(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key == "best_val_loss":
        return f"{v:.4f}"
    if key == "best_val_bpb":
        return f"{v:.3f}"
    if key == "wall_time":
        return fmt_time(v)
    return f"{v:,.0f}"


def header(result: dict[str, Any]) -> list[str]:
    return ["run", *result["differs"], *SUMMARY.values()]


def rows(result: dict[str, Any]) -> list[list[str]]:
    """The table as text cells, one row per run (columns as :func:`header`)."""
    return [
        [r["run"], *(_value(r["config"][k]) for k in result["differs"]), *(_figure(k, r[k]) for k in SUMMARY)]
        for r in result["runs"]
    ]


def markdown(result: dict[str, Any]) -> str:
    head = header(result)
    right = ["---"] * (1 + len(result["differs"])) + ["---:"] * len(SUMMARY)
    lines = [head, right, *rows(result)]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def to_csv(result: dict[str, Any]) -> str:
    """Raw values (numbers unformatted, lists joined by spaces), for spreadsheets."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "path", *result["differs"], *SUMMARY])
    for r in result["runs"]:
        cfg = [" ".join(map(str, v)) if isinstance(v, list) else v for v in (r["config"][k] for k in result["differs"])]
        w.writerow([r["run"], r["path"], *cfg, *(r[k] for k in SUMMARY)])
    return buf.getvalue()


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
