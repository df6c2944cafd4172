"""TensorBoard logs: written by grufinity.train when asked, read back with TensorBoard's own
event reader (the plugin accumulator of its server, which reads every summary as a tensor and
applies restart purges to all of them), continued without duplicate steps by a resumed run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import grufinity
from grufinity import tensorboard as tb
from test_api import tiny_config

accumulator = pytest.importorskip("tensorboard.backend.event_processing.plugin_event_accumulator")
tensor_util = pytest.importorskip("tensorboard.util.tensor_util")
pytest.importorskip("tensorboardX")


def read(run_dir: Path):
    acc = accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def tags(acc, plugin: str) -> set[str]:
    return set(acc.PluginTagToContent(plugin))


def steps(acc, tag: str) -> list[int]:
    return [e.step for e in acc.Tensors(tag)]


def values(acc, tag: str) -> list:
    return [tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)]


def test_tags_and_steps(tmp_path, corpus):
    grufinity.train(tiny_config(corpus, tmp_path, "tb", max_steps=6, eval_every=3, tensorboard=True))
    acc = read(tmp_path / "tb")
    scalars = set(tb.STEP_SCALARS.values()) | set(tb.EVAL_SCALARS.values()) | {"gates/z_mean/block.0"}
    assert tags(acc, "scalars") == scalars
    assert steps(acc, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert steps(acc, "val/loss") == [3, 6]
    # Histograms of every weight and of the update gate, at each evaluation.
    histograms = tags(acc, "histograms")
    assert {"gates/z/block.0", "weights/embedding.weight", "weights/head.weight"} <= histograms
    assert all(t == "gates/z/block.0" or t.startswith("weights/") for t in histograms)
    assert steps(acc, "gates/z/block.0") == [3, 6]
    buckets = values(acc, "gates/z/block.0")[-1]  # rows of [left edge, right edge, count]
    z_mean = float(values(acc, "gates/z_mean/block.0")[-1])
    assert 0 < buckets[0, 0] <= z_mean <= buckets[-1, 1] < 1
    assert tags(acc, "text") == {"sample/text_summary", "config/text_summary"}
    assert steps(acc, "sample/text_summary") == [3, 6]


def test_resume_continues_without_duplicates(tmp_path, corpus):
    cfg = dict(max_steps=12, eval_every=6, tensorboard=True)
    grufinity.train(tiny_config(corpus, tmp_path, "tb", **cfg))
    run = tmp_path / "tb"
    # What a process killed between its logs of steps 7-12 and its checkpoint at step 12
    # leaves: TensorBoard files up to step 12, checkpoints up to step 6.
    for name in ("step-12",):
        for f in (run / "checkpoints" / name).iterdir():
            f.unlink()
        (run / "checkpoints" / name).rmdir()
    for link in ("last", "best"):
        os.remove(run / "checkpoints" / link)
        os.symlink("step-6", run / "checkpoints" / link)
    assert steps(read(run), "train/loss") == list(range(1, 13))

    # It resumes at step 6, logs steps 7-12 again, then a normal resume adds 13-14.
    grufinity.train(tiny_config(corpus, tmp_path, "tb", resume="auto", **cfg))
    grufinity.train(tiny_config(corpus, tmp_path, "tb", resume="auto", **{**cfg, "max_steps": 14}))
    assert len(list((run / "tensorboard").glob("*tfevents*"))) == 3
    acc = read(run)
    assert steps(acc, "train/loss") == list(range(1, 15))
    assert steps(acc, "val/loss") == [6, 12, 14]
    assert steps(acc, "gates/z/block.0") == [6, 12, 14]
    assert steps(acc, "sample/text_summary") == [6, 12, 14]


def test_resume_keeps_the_runs_setting(tmp_path, corpus):
    """A run started with TensorBoard keeps logging when resumed without saying so again."""
    grufinity.train(tiny_config(corpus, tmp_path, "tb", max_steps=3, eval_every=3, tensorboard=True))
    grufinity.train(tiny_config(corpus, tmp_path, "tb", max_steps=6, eval_every=3, resume="auto"))
    assert steps(read(tmp_path / "tb"), "val/loss") == [3, 6]


def test_off_by_default(tmp_path, corpus):
    grufinity.train(tiny_config(corpus, tmp_path, "plain"))
    assert not (tmp_path / "plain" / "tensorboard").exists()


def test_without_the_writer(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    with pytest.raises(grufinity.ConfigError, match=r"pip install 'grufinity\[tensorboard\]'"):
        grufinity.train(tiny_config(corpus, tmp_path, "tb", tensorboard=True))
    assert not (tmp_path / "tb").exists()
    # Runs that do not ask for TensorBoard do not need it.
    assert grufinity.train(tiny_config(corpus, tmp_path, "plain"))["step"] == 3
