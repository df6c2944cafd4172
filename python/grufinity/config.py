"""The training settings, declared once in the Rust core (type, default, range or choices,
help) and generated here: the :class:`TrainConfig` dataclass, the CLI flags (dashes for
underscores) and the keys of TOML config files all come from :data:`KEYS`.

Every value is checked by the core when a :class:`TrainConfig` is made, so a wrong type, a
value out of range or an unknown key is a :class:`~grufinity.errors.ConfigError` naming the key
and the value.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional

from . import _grufinity
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Every training key as the core declares it: name, section, kind, optional, default,
#: choices, min / max (``[value, inclusive]``) and help.
KEYS: list[dict[str, Any]] = _grufinity.config_schema("train")

#: Every sampling key (``Model.generate`` keywords, ``generate`` / ``chat`` flags), likewise.
SAMPLING_KEYS: list[dict[str, Any]] = _grufinity.config_schema("sampling")

#: How a model is loaded (``load(dtype=...)``, ``--dtype``), likewise.
LOAD_KEYS: list[dict[str, Any]] = _grufinity.config_schema("load")


def key(name: str, keys: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """The key called ``name`` (a training key unless ``keys`` is given)."""
    return next(k for k in (KEYS if keys is None else keys) if k["name"] == name)

_TYPES: dict[str, Any] = {
    "int": int, "float": float, "bool": bool, "str": str, "path": str, "paths": list[str], "strs": list[str],
    "choice": str,
}


def annotation(key: dict[str, Any]) -> Any:
    """The Python type of a key."""
    t = _TYPES[key["kind"]]
    return Optional[t] if key["optional"] else t


def _field(key: dict[str, Any]) -> Any:
    default = key["default"]
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=default: list(d), metadata={"help": key["help"]})
    return dataclasses.field(default=default, metadata={"help": key["help"]})


def _flatten(nested: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in nested.items() if not isinstance(v, dict)}
    for key in KEYS:
        if key["section"]:
            out[key["name"]] = nested[key["section"]][key["name"]]
    return out


def _init(self: Any, /, **values: Any) -> None:
    """Checks ``values`` with the core (types, ranges, unknown keys, combinations) and stores
    them normalised (paths as strings, a single path as a list of one)."""
    checked = _flatten(_grufinity.check_config(values))
    for key in KEYS:
        object.__setattr__(self, key["name"], checked[key["name"]])


def _values(self: Any) -> dict[str, Any]:
    """The settings as a dict of keys."""
    return {key["name"]: getattr(self, key["name"]) for key in KEYS}


def _changed(self: Any) -> dict[str, Any]:
    """The settings that differ from the defaults."""
    return {k: v for k, v in _values(self).items() if v != _DEFAULTS[k]}


_DEFAULTS = {key["name"]: key["default"] for key in KEYS}

_DOC = """Every knob of a training run, as keywords (``TrainConfig(data=["input.txt"], dim=256)``).

The same keys are the flags of ``grufinity train`` (dashes for underscores) and the keys of a
TOML config file; ``grufinity train --help`` documents each with its default. Values are
checked when the config is made: a wrong one raises ConfigError naming the key.
"""

TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [(key["name"], annotation(key), _field(key)) for key in KEYS],
    init=False,
    namespace={"__init__": _init, "values": _values, "changed": _changed, "__doc__": _DOC},
)
TrainConfig.__module__ = __name__


def defaults() -> dict[str, Any]:
    """Every key's default."""
    return dict(_DEFAULTS)


def load_toml(path: str | Path) -> dict[str, Any]:
    """The keys of a TOML config file (flat ``key = value`` lines); checked when the config is
    built."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


#: Keys that say where a run is, not how it trains.
LOCATION_KEYS = ("out_dir", "name", "resume", "data_description")


def from_run_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The training keys of a run's ``config.json`` (architecture under ``model``), without
    where the run is: what trains the same run again (give it a name)."""
    out = {}
    for key in KEYS:
        source = resolved.get(key["section"], {}) if key["section"] else resolved
        if key["name"] in source and key["name"] not in LOCATION_KEYS:
            out[key["name"]] = source[key["name"]]
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """The keys of a TOML config file, or of a run's ``config.json`` (see
    :func:`from_run_config`)."""
    p = Path(path)
    if p.suffix != ".json":
        return load_toml(p)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return from_run_config(json.loads(p.read_text(encoding="utf-8")))
    except (ValueError, AttributeError) as e:
        raise ConfigError(f"config file {path} is not a run's config.json: {e}") from None


#: The folder of the recipes that ship with the package (``--preset NAME``: NAME.toml).
PRESET_DIR = Path(__file__).resolve().parent / "presets"


def presets() -> list[str]:
    """The names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_file(name: str) -> Path:
    """The TOML file of preset ``name``; a ConfigError naming the choices when there is none."""
    if name not in presets():
        raise ConfigError(f"invalid argument `preset`: no preset {name!r}; choose from {', '.join(presets())}")
    return PRESET_DIR / f"{name}.toml"


def build(overrides: dict[str, Any], config_file: Optional[str | Path] = None, preset: Optional[str] = None) -> Any:
    """A :class:`TrainConfig` from the defaults, then the preset, then the config file (TOML,
    or a run's config.json), then ``overrides`` (CLI flags): later wins. An error in a file
    names the file."""
    values: dict[str, Any] = {}
    for file in [preset_file(preset) if preset else None, config_file]:
        if file:
            values.update(load_file(file))
            try:
                TrainConfig(**values)
            except ConfigError as e:
                raise ConfigError(f"config file {file}: {e}") from None
    values.update(overrides)
    return TrainConfig(**values)


def check_sampling(values: dict[str, Any]) -> dict[str, Any]:
    """Sampling keywords checked by the core (ConfigError naming a bad one), completed with the
    defaults."""
    return _grufinity.check_sampling(values)
