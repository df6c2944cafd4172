"""A sweep spec: a normal training config (TOML) plus a ``[sweep]`` table of search spaces and
sweep settings. Everything is checked when the spec is read, so a typo fails at once with one
line naming the key, not after an hour of trials.

.. code-block:: toml

    data = "input.txt"
    dim = 128
    max_steps = 2000        # the budget of each trial
    eval_every = 200        # each evaluation is reported to the pruner

    [sweep]
    lr = {low = 1e-4, high = 1e-2, log = true}   # a range: float or integer, like the setting
    depth = [2, 3, 4]                           # a list: one of these values
    trials = 30                                 # sweep settings (see SETTINGS)
    pruner = "median"
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import KEYS, TrainConfig
from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The sweep settings a ``[sweep]`` table may hold: name -> (type, default, choices, help).
SETTINGS: dict[str, tuple[type, Any, tuple[str, ...], str]] = {
    "trials": (int, 20, (), "finished trials (complete or pruned) the study should reach"),
    "study": (str, None, (), "study name (default: the spec file's name)"),
    "storage": (str, None, (), "Optuna storage URL (default: SQLite in the sweep directory)"),
    "dir": (str, None, (), "sweep directory, holding a run directory per trial (default: sweeps/<study>)"),
    "sampler": (str, "tpe", ("tpe", "random", "grid"), "how parameters are chosen (grid: every combination of lists)"),
    "sampler_seed": (int, None, (), "seed of the sampler, for a repeatable sequence of trials"),
    "pruner": (str, "median", ("median", "hyperband", "none"), "how bad trials are stopped early"),
    "pruner_startup_trials": (int, 5, (), "trials finished before the median pruner prunes"),
    "pruner_warmup_steps": (int, 0, (), "training steps before the median pruner judges a trial"),
    "heartbeat": (int, 10, (), "seconds between a running trial's heartbeats; one silent for twice this is failed"),
}

#: Training keys each trial gets from the sweep (its directory and name).
SET_BY_SWEEP = ("out_dir", "name", "resume")

#: Training keys that say where and how visibly a trial runs, not what it finds.
NOT_RESULTS = ("device", "cache_dir", "tensorboard", "log_every", "save_every", "keep_last", "sample_prompt",
               "sample_tokens")

_KINDS = {k["name"]: k["kind"] for k in KEYS}
_RANGE_KEYS = ("low", "high", "log", "step")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Space:
    """The values one training key takes: ``choices``, or a range ``low``..``high`` (``log``
    spaced, or on a grid of ``step``)."""

    key: str
    choices: Optional[tuple[Any, ...]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None

    def suggest(self, trial: Any) -> Any:
        """This key's value for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if _KINDS[self.key] == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> Any:
        """As written in a spec (for comparing specs)."""
        if self.choices is not None:
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass
class Spec:
    """A parsed spec: ``config`` (training keys shared by every trial), ``space`` (the swept
    keys) and ``settings`` (every key of :data:`SETTINGS`, defaults filled in)."""

    config: dict[str, Any]
    space: dict[str, Space]
    settings: dict[str, Any]
    source: str = "spec"
    name: str = "sweep"

    def trial_config(self, params: dict[str, Any], out_dir: Path, name: str) -> TrainConfig:
        """The config of one trial: the shared settings, the trial's parameters, its place."""
        return TrainConfig(**{**self.config, **params, "out_dir": str(out_dir), "name": name})

    def fingerprint(self) -> dict[str, Any]:
        """What makes trials of two runs of the sweep comparable: the search space and the
        shared settings that change results (not the device, logging or the number of trials,
        so a study may continue on another machine)."""
        config = {k: v for k, v in self.config.items() if k not in NOT_RESULTS}
        return json.loads(json.dumps({"config": config, "space": {k: s.describe() for k, s in self.space.items()}}))


def load(path: str | Path) -> Spec:
    """Reads and checks the spec file at ``path`` (ConfigError naming the file and key)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep spec {path} does not exist")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"sweep spec {path} is not valid TOML: {e}") from None
    return parse(doc, source=str(path), name=p.stem)


def parse(doc: dict[str, Any], source: str = "spec", name: str = "sweep") -> Spec:
    """Checks a spec given as a dict (a TOML document)."""
    doc = dict(doc)
    table = doc.pop("sweep", None)
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: needs a [sweep] table of search spaces, e.g. lr = {{low = 1e-4, high = 1e-2, log = true}}")
    for key in SET_BY_SWEEP:
        if key in doc:
            raise ConfigError(f"{source}: `{key}` is set by the sweep for each trial (<dir>/trial-NNNN); "
                              "choose the directory with [sweep] dir")
    _check_config(doc, source)
    settings = {k: v[1] for k, v in SETTINGS.items()}
    space: dict[str, Space] = {}
    for key, value in table.items():
        where = f"{source}: [sweep] {key}"
        if isinstance(value, (list, dict)) and key not in SETTINGS:
            space[key] = _space(key, value, doc, where)
        else:
            settings[key] = _setting(key, value, where)
    if not space:
        raise ConfigError(f"{source}: [sweep] has no search space: add a list (dim = [64, 128]) "
                          "or a range (lr = {low = 1e-4, high = 1e-2, log = true})")
    if settings["sampler"] == "grid" and any(s.choices is None for s in space.values()):
        ranged = next(k for k, s in space.items() if s.choices is None)
        raise ConfigError(f"{source}: [sweep] sampler = \"grid\" needs lists of values; {ranged} is a range")
    return Spec(config=doc, space=space, settings=settings, source=source, name=name)


def _check_config(values: dict[str, Any], source: str) -> None:
    try:
        TrainConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _setting(key: str, value: Any, where: str) -> Any:
    if key not in SETTINGS:
        if key in _KINDS:
            raise ConfigError(f"{where}: a search space is a list of values or a {{low, high}} table, got {value!r}; "
                              "a fixed value goes above the [sweep] table")
        raise ConfigError(f"{where}: neither a training setting nor a sweep setting ({', '.join(SETTINGS)})")
    kind, _, choices, _ = SETTINGS[key]
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string, got {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
    minimum = {"trials": 1, "heartbeat": 1, "pruner_startup_trials": 0, "pruner_warmup_steps": 0}.get(key)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}, got {value}")
    if key in ("study", "dir", "storage") and not value.strip():
        raise ConfigError(f"{where}: must not be empty")
    return value


def _space(key: str, value: Any, config: dict[str, Any], where: str) -> Space:
    if key not in _KINDS:
        raise ConfigError(f"{where}: not a training setting (grufinity train --help lists them)")
    if key in SET_BY_SWEEP:
        raise ConfigError(f"{where}: is set by the sweep for each trial and cannot be searched")
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: the list of values is empty")
        for v in value:
            if not isinstance(v, (str, int, float, bool)):
                raise ConfigError(f"{where}: values must be numbers, strings or booleans, got {v!r}")
            _check_value(key, v, config, where)
        if len({json.dumps(v) for v in value}) != len(value):
            raise ConfigError(f"{where}: lists a value twice")
        return Space(key, choices=tuple(value))
    unknown = set(value) - set(_RANGE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} in the range (use low, high, log, step)")
    kind = _KINDS[key]
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: a {{low, high}} range needs a number setting; `{key}` takes a list of choices")
    low, high, log, step = value.get("low"), value.get("high"), value.get("log", False), value.get("step")
    if not (_number(low) and _number(high)):
        raise ConfigError(f"{where}: a range needs numbers low and high, got low = {low!r}, high = {high!r}")
    if kind == "int" and not all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ())):
        raise ConfigError(f"{where}: `{key}` is an integer setting: low, high and step must be integers")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got low = {low}, high = {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    if step is not None and (not _number(step) or step <= 0 or log):
        raise ConfigError(f"{where}: step must be a number > 0, and cannot go with log = true")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where}: low and high must be finite")
    _check_value(key, low, config, where)
    _check_value(key, high, config, where)
    return Space(key, low=low, high=high, log=log, step=step)


def _check_value(key: str, value: Any, config: dict[str, Any], where: str) -> None:
    # The core checks each value in the context of the rest of the config (types, ranges and
    # combinations), exactly as it will check the trial's config.
    try:
        TrainConfig(**{**config, key: value})
    except ConfigError as e:
        raise ConfigError(f"{where} = {value!r}: {e}") from None
