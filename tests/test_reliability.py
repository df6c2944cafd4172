"""Reliability: stopping at every event, one writer per run, every bad value named, debris,
branching from older checkpoints, deterministic checkpoint bytes, what a terminal is shown."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import grufinity
from conftest import TINY, clean_env, grufinity_exe, read_jsonl, run_cli, write_corpus
from test_cli import assert_clean_error, tree_digest

#: A pid above Linux's largest (pid_max <= 2^22): a process that cannot be alive.
DEAD_PID = 4194305


def config(corpus: Path, out: Path, name: str, **kw) -> grufinity.TrainConfig:
    values = dict(data=[str(corpus)], out_dir=str(out), name=name, device="cpu", dim=32, depth=1, batch_size=2,
                  chunk_len=16, eval_every=2, eval_tokens=64, sample_tokens=5, log_every=1, max_steps=50)
    values.update(kw)
    return grufinity.TrainConfig(**values)


def last_step(run_dir: Path) -> int:
    return json.loads((run_dir / "checkpoints" / "last" / "trainer.json").read_text())["step"]


# ---------------------------------------------------------------- stopping at every event


@pytest.mark.parametrize("kind, step", [("start", 0), ("step", 1), ("eval", 2), ("sample", 2), ("saved", 2)])
def test_false_from_on_event_stops_at_every_event(tmp_path, corpus, kind, step):
    seen = []

    def stop_at_first(e):
        seen.append(e["event"])
        return e["event"] != kind

    r = grufinity.train(config(corpus, tmp_path, kind), stop_at_first)
    assert r["interrupted"], r
    assert r["step"] == step
    assert last_step(Path(r["run_dir"])) == step
    assert seen[-1] == "done"
    if kind == "eval":
        assert "sample" not in seen, "the sample after a stopping evaluation is skipped"


@pytest.mark.parametrize("kind", ["step", "eval", "sample", "saved"])
def test_keyboard_interrupt_from_on_event_stops_with_a_checkpoint(tmp_path, corpus, kind):
    def interrupt(e):
        if e["event"] == kind:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        grufinity.train(config(corpus, tmp_path, kind), interrupt)
    outcome = info.value.args[0]
    assert outcome["interrupted"] and outcome["step"] <= 2
    assert last_step(Path(outcome["run_dir"])) == outcome["step"]


def interrupt_when(tmp_path, args: list[str], when) -> tuple[int, float, str]:
    """Runs `grufinity train ARGS --progress json`, sends SIGINT at the first event for which
    `when(event)` holds; returns the exit code, the seconds it took to stop, and stderr."""
    err = open(tmp_path / "err.txt", "w")
    proc = subprocess.Popen([grufinity_exe(), "train", *args, "--progress", "json", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=err, text=True, env=clean_env())
    try:
        for line in proc.stdout:
            if when(json.loads(line)):
                break
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
        waited = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        err.close()
    return rc, waited, (tmp_path / "err.txt").read_text()


def test_ctrl_c_during_an_evaluation_stops_the_run(tmp_path):
    # A corpus whose validation tail takes a second or more to evaluate.
    corpus = tmp_path / "big.txt"
    rng = np.random.default_rng(0)
    corpus.write_bytes(bytes(rng.integers(97, 123, size=3_000_000, dtype=np.uint8)))
    out = tmp_path / "runs"
    rc, waited, err = interrupt_when(
        tmp_path,
        [str(corpus), "--dim", "64", "--depth", "2", "--batch-size", "4", "--chunk-len", "32", "--eval-every", "3",
         "--eval-tokens", "0", "--sample-tokens", "0", "--log-every", "1", "--max-time", "120",
         "--out-dir", str(out), "--name", "e"],
        lambda e: e["event"] == "step" and e["step"] == 3,  # the evaluation at step 3 starts now
    )
    assert rc == 130, err[-2000:]
    assert waited < 20, f"took {waited:.1f} s to stop"
    assert last_step(out / "e") == 3
    assert "resume with" in err


def test_ctrl_c_during_data_preparation_stops_at_once_and_caches_nothing(tmp_path):
    # A corpus large enough for live data events (36 MB, over LARGE_INPUT) whose BPE tokenizer
    # takes many seconds to train on 2 cores.
    corpus = tmp_path / "big.txt"
    words = np.array([w.encode() for w in "the of and to in is was that for it with as his on be".split()])
    rng = np.random.default_rng(1)
    corpus.write_bytes(b" ".join(rng.choice(words, size=10_000_000)))
    cache = tmp_path / "cache"
    rc, waited, err = interrupt_when(
        tmp_path,
        [str(corpus), "--tokenizer", "bpe", "--vocab-size", "300", "--dim", "16", "--depth", "1", "--max-steps", "1",
         "--cache-dir", str(cache), "--out-dir", str(tmp_path / "runs"), "--name", "enc"],
        lambda e: e["event"] == "data" and e["done"] > 0,  # the tokenizer is being trained
    )
    assert rc == 130, err[-2000:]
    assert waited < 10, f"took {waited:.1f} s to stop"
    assert not list(cache.glob("*")), f"something was cached: {[p.name for p in cache.glob('*')]}"


# ---------------------------------------------------------------- one writer per run


def test_a_second_writer_is_refused_naming_the_first(tmp_path, corpus):
    out = tmp_path / "runs"
    first = subprocess.Popen(
        [grufinity_exe(), "train", str(corpus), *TINY, "--max-steps", "100000", "--save-every", "1", "--log-every", "1",
         "--out-dir", str(out), "--name", "w", "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=clean_env(),
    )
    try:
        for line in first.stdout:
            if json.loads(line)["event"] == "saved":
                break
        second = run_cli("train", "--resume", "auto", "--name", "w", "--out-dir", out, "--max-steps", "5")
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    line = assert_clean_error(second)
    assert f"process {first.pid}" in line and "being written" in line, line
    assert first.returncode == 130, "the first writer went on until it was stopped"


# ---------------------------------------------------------------- values named


@pytest.mark.parametrize("args, key", [
    (["--lr", "nan"], "lr"), (["--lr", "inf"], "lr"), (["--max-time", "inf"], "max_time"),
    (["--dropout", "nan"], "dropout"), (["--dim", "-5"], "dim"), (["--dim", "0"], "dim"),
])
def test_non_finite_and_out_of_range_flags_are_named(tmp_path, corpus, args, key):
    line = assert_clean_error(run_cli("train", corpus, "--out-dir", tmp_path, "--name", "x", *args))
    assert f"`{key}`" in line, line
    assert "line 1 column" not in line


def test_sampling_nan_is_named(trained):
    line = assert_clean_error(run_cli("generate", trained["run_dir"], "--temperature", "nan", "-n", "3"))
    assert "`temperature`" in line and "finite" in line


@pytest.mark.parametrize("kw, key", [
    (dict(dim="64"), "dim"), (dict(name=5), "name"), (dict(data=[123]), "data"), (dict(lr=float("nan")), "lr"),
    (dict(max_steps=1.5), "max_steps"), (dict(on_nan="explode"), "on_nan"), (dict(bogus=1), "bogus"),
])
def test_python_config_values_are_named(kw, key):
    with pytest.raises(grufinity.ConfigError, match=f"`{key}`"):
        grufinity.TrainConfig(**kw)


def test_paths_are_accepted_as_strings_and_path_objects(tmp_path):
    c = grufinity.TrainConfig(data=str(tmp_path / "a.txt"), out_dir=tmp_path / "runs", cache_dir=tmp_path)
    assert c.data == [str(tmp_path / "a.txt")]
    assert c.out_dir == str(tmp_path / "runs")


def test_api_misuse_is_a_grufinity_error(trained):
    model = grufinity.load(trained["run_dir"], "cpu")
    for call, arg in [
        (lambda: grufinity.train(None), "config"),
        (lambda: grufinity.train(grufinity.TrainConfig(), on_event="x"), "on_event"),
        (lambda: grufinity.load(trained["run_dir"], device=7), "device"),
        (lambda: model.generate(123), "prompt"),
        (lambda: model.forward(np.array([1.5, 2.0])), "tokens"),
        (lambda: model.forward(np.array([-1])), "tokens"),
        (lambda: model.generate("a", top_k=-1), "top_k"),
        (lambda: model.generate("a", state="s"), "state"),
    ]:
        with pytest.raises(grufinity.GrufinityError, match=f"`{arg}`"):
            call()


# ---------------------------------------------------------------- debris, bad files, branching


def test_debris_of_a_killed_writer_is_removed_at_start(tmp_path, corpus):
    r = grufinity.train(config(corpus, tmp_path, "d", max_steps=2, eval_every=0))
    ckpts = Path(r["run_dir"]) / "checkpoints"
    stale = ckpts / f".tmp-step-9-{DEAD_PID}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 5000)
    events = []
    grufinity.train(config(corpus, tmp_path, "d", resume="auto", max_steps=3, eval_every=0), events.append)
    assert not stale.exists()
    assert events[0]["event"] == "start" and events[0]["debris_removed"] == 5000


@pytest.mark.parametrize("damage, expected", [
    ("tokenizer-garbage", "tokenizer.json"), ("tokenizer-missing", "tokenizer.json"),
    ("trainer-garbage", "trainer.json is unreadable"),
])
def test_damaged_checkpoint_files_are_named(tmp_path, corpus, damage, expected):
    r = grufinity.train(config(corpus, tmp_path, "c", max_steps=2, eval_every=0))
    ckpt = Path(r["checkpoint"])
    what, how = damage.split("-")
    path = ckpt / f"{what}.json"
    if how == "garbage":
        path.write_text("{not json")
    else:
        path.unlink()
    line = assert_clean_error(run_cli("generate", ckpt, "-n", "3"))
    assert expected in line, line


def test_resuming_an_older_checkpoint_refuses_in_place_and_branches_with_a_new_name(tmp_path, corpus):
    r = grufinity.train(config(corpus, tmp_path, "o", max_steps=4, eval_every=0, save_every=1, keep_last=10))
    run_dir = Path(r["run_dir"])
    before = tree_digest(run_dir)
    older = run_dir / "checkpoints" / "step-2"
    line = assert_clean_error(run_cli("train", "--resume", older, "--max-steps", "6"))
    assert "step 2" in line and "--name" in line, line
    assert tree_digest(run_dir) == before, "the refused resume changed the run"
    events = []
    b = grufinity.train(config(corpus, tmp_path, "o-branch", resume=str(older), max_steps=6, eval_every=0), events.append)
    assert Path(b["run_dir"]).name == "o-branch" and b["step"] == 6
    assert events[0]["branched_from"] == str(run_dir.resolve())
    assert [e["step"] for e in read_jsonl(Path(b["run_dir"]) / "metrics.jsonl") if e["event"] == "step"] == [3, 4, 5, 6]
    assert tree_digest(run_dir) == before, "branching changed the original run"


def test_resume_refuses_to_change_what_defines_the_run(tmp_path, corpus):
    grufinity.train(config(corpus, tmp_path, "k", max_steps=2, eval_every=0))
    with pytest.raises(grufinity.ConfigError, match="`dim`.*cannot be changed when resuming"):
        grufinity.train(config(corpus, tmp_path, "k", resume="auto", dim=64, max_steps=3))


def test_checkpoint_bytes_are_deterministic(tmp_path, corpus):
    a = Path(grufinity.train(config(corpus, tmp_path, "a", max_steps=3, eval_every=0))["checkpoint"])
    b = Path(grufinity.train(config(corpus, tmp_path, "b", max_steps=3, eval_every=0))["checkpoint"])
    for name in ("model.safetensors", "optimizer.safetensors", "state.safetensors", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# ---------------------------------------------------------------- what a terminal is shown


def test_the_sample_starts_from_the_validation_text(tmp_path, corpus):
    r = grufinity.train(config(corpus, tmp_path, "s", max_steps=2, sample_tokens=8))
    text = corpus.read_bytes()
    start = len(text) - round(len(text) * 0.1)
    sample = (Path(r["run_dir"]) / "samples.txt").read_text().split("\n", 1)[1]
    assert sample.startswith(text[start:start + 32].decode())


def test_binary_samples_are_escaped_on_the_terminal(tmp_path):
    data = tmp_path / "binary.bin"
    rng = np.random.default_rng(1)
    data.write_bytes(bytes(rng.integers(0, 256, size=20_000, dtype=np.uint8)))
    proc = run_cli("train", data, *TINY, "--eval-every", "2", "--sample-tokens", "50", "--max-steps", "2",
                   "--out-dir", tmp_path, "--name", "b", "--progress", "plain")
    assert proc.returncode == 0, proc.stderr
    sample = [l for l in proc.stderr.splitlines() if l.startswith("sample:")]
    assert sample and "\\x" in sample[0]
    assert not any(c in proc.stderr for c in "\x00\x1b\x07")


def test_a_tiny_corpus_gets_advice_that_can_help(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("a")
    line = assert_clean_error(run_cli("train", one, "--out-dir", tmp_path, "--name", "t"))
    assert "val-fraction" not in line and "more text" in line, line
