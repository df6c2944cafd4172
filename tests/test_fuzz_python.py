"""Fuzzing of what Python users hand GRUfinity (hypothesis): TOML config files, TrainConfig
keywords, sampling keywords, saved generation states (`Model.load_state`) and a run's
config.json (`grufinity.runs.load`). Every input is accepted or refused with a GrufinityError
of one line; any other exception fails.

A few dozen examples per target by default. For the long runs, GRUFINITY_FUZZ_SECS=600 runs
each target for that long (in repeated hypothesis runs) and prints the example count:

    GRUFINITY_FUZZ_SECS=600 python -m pytest -q -s tests/test_fuzz_python.py
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grufinity
from grufinity import config as config_mod

FUZZ_SECS = float(os.environ.get("GRUFINITY_FUZZ_SECS", "0"))
EXAMPLES = 40


def fuzz(name: str, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]) -> None:
    """Runs `check` on EXAMPLES examples of `strategy`, or for GRUFINITY_FUZZ_SECS seconds."""
    count = 0

    @settings(max_examples=EXAMPLES if not FUZZ_SECS else 1000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(value: Any) -> None:
        nonlocal count
        count += 1
        check(value)

    started = time.monotonic()
    one()
    while time.monotonic() - started < FUZZ_SECS:
        one()
    print(f"fuzz {name}: {count} examples in {time.monotonic() - started:.0f} s")


def accepted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(...)`, or None when it refuses with a one-line GrufinityError (any other exception
    propagates and fails the test)."""
    try:
        return fn(*args, **kwargs)
    except grufinity.GrufinityError as e:
        message = str(e).strip()
        assert message and "\n" not in message, f"not a one-line message: {message!r}"
        return None


# ---------------------------------------------------------------- values users write

TRICKY_KEYS = ["self", "values", "model", "__class__", "", " ", "dim ", "Dim", "max-steps", "data.0"]
KEYS = st.sampled_from([k["name"] for k in config_mod.KEYS]) | st.sampled_from(TRICKY_KEYS) | st.text(max_size=12)
SAMPLING_KEYS = st.sampled_from([k["name"] for k in config_mod.SAMPLING_KEYS]) | st.sampled_from(TRICKY_KEYS)

ODD_VALUES = [Path("runs"), Path("/"), np.int64(3), np.uint8(255), np.float32(1.5), np.float64("nan"), np.array([1, 2]),
              np.bool_(True), b"bytes", bytearray(b"x"), object(), 1j, float("inf"), -0.0, 2**200, "~/x", "", "\x00"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
           | st.sampled_from(ODD_VALUES))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=5)


def test_train_config_keywords():
    fuzz("TrainConfig keywords", st.dictionaries(KEYS, VALUES, max_size=5),
         lambda kw: accepted(grufinity.TrainConfig, **kw))


# ---------------------------------------------------------------- TOML files


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)  # a TOML basic string (or, with surrogates, a TOML error: also a case)


TOML_SCALARS = (st.booleans() | st.integers() | st.floats() | st.text(max_size=16) | st.dates() | st.datetimes()
                | st.times())
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=5)
TOML_DOCUMENTS = st.one_of(
    st.dictionaries(KEYS, TOML_VALUES, max_size=6).map(
        lambda d: "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in d.items())),
    st.text(max_size=200),
    st.binary(max_size=200),
)


def test_toml_config_files(tmp_path):
    path = tmp_path / "run.toml"

    def check(doc: str | bytes) -> None:
        if isinstance(doc, bytes):
            path.write_bytes(doc)
        else:
            path.write_text(doc, encoding="utf-8", errors="surrogatepass")
        accepted(config_mod.build, {}, path)

    fuzz("TOML config files", TOML_DOCUMENTS, check)


# ---------------------------------------------------------------- sampling and saved states


@pytest.fixture(scope="module")
def model(trained) -> grufinity.Model:
    assert trained["proc"].returncode == 0, trained["proc"].stderr
    return grufinity.load(trained["run_dir"], "cpu")


def test_sampling_keywords(model):
    def check(kw: dict[str, Any]) -> None:
        if accepted(config_mod.check_sampling, dict(kw)) is None:
            return
        # Generation itself, kept short.
        short = dict(kw)
        if not isinstance(short.get("max_new_tokens"), (int, np.integer)) or short["max_new_tokens"] > 8:
            short["max_new_tokens"] = 8
        short.pop("min_new_tokens", None)
        accepted(model.generate, "The ", **short)

    fuzz("sampling keywords", st.dictionaries(SAMPLING_KEYS, VALUES, max_size=5), check)


@st.composite
def damaged(draw: Any, original: bytes) -> bytes:
    """`original` with a few bit flips, overwritten bytes, insertions, cuts or truncations."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["flip", "set", "insert", "cut", "truncate"]))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, ord("9"), ord('"'), ord("{")]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


def test_saved_generation_states(model):
    _, state = model.generate_bytes("The quick", max_new_tokens=4, seed=1)
    saved = model.save_state(state)

    def check(data: bytes) -> None:
        loaded = accepted(model.load_state, data)
        if loaded is not None:
            accepted(model.generate, "", state=loaded, max_new_tokens=3, seed=2)

    fuzz("saved generation states", damaged(saved) | st.binary(max_size=64), check)


# ---------------------------------------------------------------- a run's config.json


def test_run_config_json(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run_dir"], run, ignore=shutil.ignore_patterns(".lock"))
    original = (run / "config.json").read_bytes()

    def check(data: bytes) -> None:
        (run / "config.json").write_bytes(data)
        accepted(grufinity.runs.load, run)

    fuzz("run config.json", damaged(original) | st.binary(max_size=64), check)
