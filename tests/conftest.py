"""Shared fixtures for the GRUfinity test suite.

Every training run here is tiny (dim 32, depth 1, 2 x 16 tokens per step, a few steps) so the
whole suite runs in well under two minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import atexit
import tempfile

import numpy as np
import pytest

# Token caches of the whole test session go to a temporary directory, not ~/.cache (set before
# any test runs; CLI subprocesses inherit it through clean_env()).
_SESSION_CACHE = tempfile.mkdtemp(prefix="grufinity-test-cache-")
os.environ["GRUFINITY_CACHE"] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, True)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A stitch in time saves nine.",
    "The rain in Spain stays mainly in the plain.",
    "All that glitters is not gold.",
    "The early bird catches the worm.",
    "Where there is a will, there is a way.",
]

#: Flags that keep a CLI training run tiny.
TINY = [
    "--dim", "32",
    "--depth", "1",
    "--batch-size", "2",
    "--chunk-len", "16",
    "--eval-every", "0",
    "--eval-tokens", "256",
    "--sample-tokens", "10",
]


def grufinity_exe() -> str:
    """The ``grufinity`` console script of the environment running the tests."""
    candidate = Path(sys.executable).parent / "grufinity"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("grufinity")
    if found is None:  # pragma: no cover
        pytest.skip("the grufinity executable is not installed")
    return found


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GRUFINITY_DEVICE", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: Any, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs ``grufinity ARGS`` and returns the completed process (text, errors replaced)."""
    return subprocess.run(
        [grufinity_exe(), *[str(a) for a in args]],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=clean_env(),
        cwd=cwd,
    )


def write_corpus(path: Path, repeats: int = 40) -> Path:
    """A few KB of repeated English sentences."""
    lines = []
    for i in range(repeats):
        lines.append(" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(3)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parses a safetensors file by hand: u64 LE header length, JSON header, raw LE data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    data = raw[8 + n :]
    dtypes = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1", "F16": "<f2"}
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=np.dtype(dtypes[meta["dtype"]]))
        tensors[name] = arr.reshape(meta["shape"])
    return tensors


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus) -> dict[str, Any]:
    """One tiny CLI run, trained once and reused by the generate/eval/info tests."""
    out_dir = tmp_path_factory.mktemp("runs")
    proc = run_cli(
        "train", corpus, *TINY, "--max-steps", "3", "--log-every", "1",
        "--name", "r1", "--out-dir", out_dir, "--progress", "plain",
    )
    return {"proc": proc, "out_dir": out_dir, "run_dir": out_dir / "r1", "corpus": corpus}
