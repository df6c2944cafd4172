"""`grufinity average RUN --last K` and `grufinity.runs.average`: the mean of the newest
checkpoints' weights as a checkpoint that generate/eval/load take; bad arguments named."""

from __future__ import annotations

import numpy as np
import pytest

import grufinity
from conftest import TINY, read_safetensors, run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("avg")
    proc = run_cli("train", corpus, *TINY, "--max-steps", "4", "--save-every", "1", "--keep-last", "4",
                   "--name", "r", "--out-dir", out, "--progress", "plain")
    assert proc.returncode == 0, proc.stderr
    return out / "r"


def test_average_cli_writes_a_checkpoint_that_generate_and_eval_take(run_dir, corpus):
    proc = run_cli("average", run_dir, "--last", "3")
    assert proc.returncode == 0, proc.stderr
    ckpt = run_dir / "checkpoints" / "average-last-3"
    assert f"of steps 2, 3, 4 into {ckpt}" in proc.stdout
    parts = [read_safetensors(run_dir / "checkpoints" / f"step-{s}" / "model.safetensors") for s in (2, 3, 4)]
    mean = read_safetensors(ckpt / "model.safetensors")
    for name, values in mean.items():
        np.testing.assert_allclose(values, np.mean([p[name] for p in parts], axis=0), atol=1e-6)
    gen = run_cli("generate", ckpt, "-p", "the ", "-n", "5", "--seed", "1")
    assert gen.returncode == 0, gen.stderr
    ev = run_cli("eval", ckpt, corpus, "--json")
    assert ev.returncode == 0, ev.stderr


@pytest.mark.parametrize("last, message", [
    ("1", "error: invalid config `last`: got 1; average at least 2 checkpoints"),
    ("9", "has 4 checkpoint(s) (steps 1, 2, 3, 4); train with a larger --keep-last"),
])
def test_average_cli_bad_counts_are_one_line(run_dir, last, message):
    proc = run_cli("average", run_dir, "--last", last)
    assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_average_api(run_dir, tmp_path):
    done = grufinity.runs.average(run_dir, 2)
    assert done["steps"] == [3, 4] and done["files"] == ["model.safetensors"]
    assert grufinity.load(done["path"]).generate("the ", max_new_tokens=3, seed=1)
    with pytest.raises(grufinity.ConfigError, match="invalid argument `last`: must be an integer"):
        grufinity.runs.average(run_dir, "2")  # type: ignore[arg-type]
    with pytest.raises(grufinity.CheckpointError, match="has no checkpoints to average"):
        grufinity.runs.average(tmp_path, 2)
