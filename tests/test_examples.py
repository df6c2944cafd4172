"""Every example in examples/ runs, with tiny settings (``--tiny``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env, write_corpus

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def test_every_example_is_listed():
    assert SCRIPTS == ["bpe.py", "generation.py", "long_context.py", "quickstart.py"]
    readme = (EXAMPLES / "README.md").read_text()
    for name in [*SCRIPTS, "train.rs"]:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("script", SCRIPTS)
def test_python_example_runs(script, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--tiny", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=clean_env(),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    if script == "long_context.py":
        assert "pieces equal one generation: True" in proc.stdout, proc.stdout
        diff = float(proc.stdout.split("whole vs chunked:")[1].split()[0])
        assert diff < 1e-4


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo")
def test_rust_example_runs(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    root = EXAMPLES.parent
    proc = subprocess.run(
        ["cargo", "run", "--quiet", "--release", "--manifest-path", str(root / "Cargo.toml"), "-p", "grufinity",
         "--example", "train", "--", str(corpus), "3", "32", "1"],
        capture_output=True, text=True, timeout=900, env=clean_env(), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint:" in proc.stdout and "\nThe " in proc.stdout, proc.stdout
