"""The training configuration: one flat set of keys shared by the CLI flags (dashes as
underscores), TOML config files and :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Keys whose value is one of a fixed set of words.
CHOICES = {
    "schedule": ("constant", "linear", "cosine", "plateau"),
    "on_nan": ("stop", "skip"),
    "ff_kind": ("gelu", "swiglu"),
    "progress": ("auto", "bar", "plain", "json", "none"),
}

#: Keys that describe the architecture (sent to the core as the nested ``model`` object).
MODEL_KEYS = ("dim", "depth", "expansion", "ff_mult", "ff_kind", "conv_kernel", "tie_embeddings", "dropout")


@dataclass
class TrainConfig:
    """Every knob of a training run. ``grufinity train --help`` documents each one."""

    data: list[str] = field(default_factory=list)
    out_dir: str = "runs"
    name: Optional[str] = None
    device: str = "auto"
    seed: int = 1337
    # model
    dim: int = 128
    depth: int = 3
    params: Optional[str] = None
    expansion: float = 1.5
    ff_mult: float = 4.0
    ff_kind: str = "gelu"
    conv_kernel: int = 0
    tie_embeddings: bool = False
    dropout: float = 0.0
    tokenizer: str = "byte"
    vocab_size: Optional[int] = None
    # data
    doc_separator: bool = False
    reset_at_doc: bool = False
    cache_dir: Optional[str] = None
    batch_size: int = 16
    chunk_len: int = 128
    val_fraction: float = 0.1
    # optimisation
    lr: float = 3e-3
    warmup: int = 50
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    early_stop_patience: int = 0
    on_nan: str = "stop"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0
    accum: int = 1
    # budgets
    max_steps: Optional[int] = None
    max_tokens: Optional[int] = None
    max_time: Optional[float] = 180.0
    epochs: Optional[float] = None
    # evaluation, checkpoints, logging
    eval_every: int = 100
    eval_tokens: int = 65536
    save_every: int = 0
    keep_last: int = 3
    log_every: int = 10
    sample_prompt: str = "def "
    sample_tokens: int = 200
    resume: Optional[str] = None
    progress: str = "auto"

    def to_core_json(self, data_files: list[Path], data_description: str, name: str) -> str:
        """The JSON the Rust core takes (architecture nested under ``model``)."""
        from . import _grufinity

        _check_values(self)
        d = dataclasses.asdict(self)
        model = {k: d.pop(k) for k in MODEL_KEYS}
        budget = d.pop("params")
        for k in ("resume", "progress"):
            d.pop(k)
        if budget is not None:
            model = json.loads(_grufinity.size_model(json.dumps(model), str(budget)))
        d["model"] = model
        # Paths the user typed may start with ~; the core takes them literally.
        for key in ("cache_dir", "tokenizer"):
            if d.get(key) and str(d[key]).startswith("~"):
                d[key] = str(Path(d[key]).expanduser())
        d["data"] = [str(p) for p in data_files]
        d["data_description"] = data_description
        d["name"] = name
        return _grufinity.resolve_config(json.dumps(d))


def _check_values(config: TrainConfig) -> None:
    """Catches, naming the key, what the core would reject without naming it: a word outside
    its choices, a negative count (the config may be built directly, without :func:`build`)."""
    for key, choices in CHOICES.items():
        value = getattr(config, key)
        if value not in choices:
            raise ConfigError(f"config `{key}` must be one of {', '.join(choices)}, got {value!r}")
    for key, t in _field_types().items():
        value = getattr(config, key)
        if t in (int, Optional[int]) and isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"config `{key}` must be >= 0, got {value!r}")


def _field_types() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def coerce(key: str, value: Any) -> Any:
    """Checks ``value`` against the type of ``key``; ints are accepted where floats are wanted."""
    types = _field_types()
    if key not in types:
        known = ", ".join(sorted(types))
        raise ConfigError(f"unknown config key `{key}` (known keys: {known})")
    t = types[key]
    optional = get_origin(t) is Union and type(None) in get_args(t)
    if optional:
        if value is None:
            return None
        t = next(a for a in get_args(t) if a is not type(None))
    if get_origin(t) is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config `{key}` must be a list of strings, got {value!r}")
        return value
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is str and key == "params" and isinstance(value, int):
        return str(value)
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ConfigError(f"config `{key}` must be {t.__name__}, got {type(value).__name__} {value!r}")
    if t is int and value < 0:  # every integer setting is a count, a size or a seed
        raise ConfigError(f"config `{key}` must be >= 0, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"config `{key}` must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


def load_toml(path: str) -> dict[str, Any]:
    """Reads a TOML config; every key must be a known one with the right type."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return {k: coerce(k, v) for k, v in raw.items()}


def build(overrides: dict[str, Any], config_file: Optional[str] = None) -> TrainConfig:
    """Defaults, then the TOML file, then ``overrides`` (CLI flags): later wins."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_toml(config_file))
    values.update({k: coerce(k, v) for k, v in overrides.items()})
    return TrainConfig(**values)
