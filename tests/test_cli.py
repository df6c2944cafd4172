"""End-to-end tests of the ``grufinity`` command line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    TINY,
    clean_env,
    grufinity_exe,
    read_jsonl,
    read_safetensors,
    run_cli,
    write_corpus,
)

CHECKPOINT_FILES = (
    "model.safetensors",
    "optimizer.safetensors",
    "state.safetensors",
    "trainer.json",
    "tokenizer.json",
)


def assert_clean_error(proc: subprocess.CompletedProcess, *, code: int | None = None) -> str:
    """Non-zero exit, exactly one stderr line starting with ``error:``, no traceback."""
    assert proc.returncode != 0, f"expected failure, got 0\nstdout={proc.stdout!r}\nstderr={proc.stderr!r}"
    if code is not None:
        assert proc.returncode == code
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every regular file below ``root`` plus the targets of symlinks."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def step_events(run_dir: Path) -> list[dict]:
    return [e for e in read_jsonl(run_dir / "metrics.jsonl") if e.get("event") == "step"]


def last_checkpoint_step(run_dir: Path) -> int:
    return json.loads((run_dir / "checkpoints" / "last" / "trainer.json").read_text())["step"]


# ---------------------------------------------------------------- train: end to end


def test_train_exits_zero(trained):
    proc = trained["proc"]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "step 1" in proc.stderr


def test_train_writes_run_files(trained):
    run_dir = trained["run_dir"]
    assert trained["proc"].returncode == 0, trained["proc"].stderr
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"]["dim"] == 32
    assert cfg["model"]["depth"] == 1
    assert cfg["batch_size"] == 2
    assert cfg["chunk_len"] == 16
    assert cfg["name"] == "r1"

    events = read_jsonl(run_dir / "metrics.jsonl")
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for e in steps:
        assert np.isfinite(e["loss"])

    csv_lines = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert csv_lines[0].split(",")[:2] == ["event", "step"]
    assert sum(1 for line in csv_lines[1:] if line.startswith("step,")) == 3


@pytest.mark.parametrize("link", ["last", "best"])
def test_checkpoint_links(trained, link):
    ckpts = trained["run_dir"] / "checkpoints"
    p = ckpts / link
    assert p.is_symlink()
    target = p.resolve()
    assert target.parent == ckpts.resolve()
    assert target.name.startswith("step-")
    int(target.name[len("step-"):])
    for f in CHECKPOINT_FILES:
        assert (target / f).is_file(), f"{target / f} missing"
    assert json.loads((target / "trainer.json").read_text())["step"] == 3


def test_checkpoint_model_is_valid_safetensors(trained):
    tensors = read_safetensors(trained["run_dir"] / "checkpoints" / "last" / "model.safetensors")
    assert tensors
    assert tensors["embedding.weight"].shape == (256, 32)
    for name, t in tensors.items():
        assert t.dtype == np.float32
        assert np.all(np.isfinite(t)), name


# ---------------------------------------------------------------- generate / eval / info


def test_generate_prints_prompt_and_text(trained):
    proc = run_cli("generate", trained["run_dir"], "-p", "The ", "-n", "20", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("The ")
    assert len(proc.stdout.rstrip("\n")) > len("The ")
    assert "Traceback" not in proc.stderr


def test_generate_same_seed_same_output(trained):
    a = run_cli("generate", trained["run_dir"], "-p", "The ", "-n", "20", "--seed", "1")
    b = run_cli("generate", trained["run_dir"], "-p", "The ", "-n", "20", "--seed", "1")
    assert a.returncode == 0 and b.returncode == 0
    assert a.stdout == b.stdout


def test_generate_greedy_is_deterministic(trained):
    a = run_cli("generate", trained["run_dir"], "-p", "The ", "-n", "20", "--temperature", "0", "--seed", "1")
    b = run_cli("generate", trained["run_dir"], "-p", "The ", "-n", "20", "--temperature", "0", "--seed", "2")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    assert a.stdout.startswith("The ")


def test_generate_from_checkpoint_dir(trained):
    ckpt = trained["run_dir"] / "checkpoints" / "last"
    proc = run_cli("generate", ckpt, "-p", "The ", "-n", "5", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("The ")


def test_eval_json(trained):
    proc = run_cli("eval", trained["run_dir"], trained["corpus"], "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    for key in ("loss", "bits_per_byte", "perplexity"):
        assert key in r
        assert np.isfinite(r[key]) and r[key] > 0
    assert r["perplexity"] == pytest.approx(np.exp(r["loss"]), rel=1e-6)


def test_eval_text(trained):
    proc = run_cli("eval", trained["run_dir"], trained["corpus"])
    assert proc.returncode == 0, proc.stderr
    assert "bits/byte" in proc.stdout


def test_info(trained):
    proc = run_cli("info", trained["run_dir"])
    assert proc.returncode == 0, proc.stderr
    assert "parameters:" in proc.stdout
    assert "dim=32" in proc.stdout
    assert "3 steps" in proc.stdout


# ---------------------------------------------------------------- errors


def test_error_missing_corpus(tmp_path):
    proc = run_cli("train", tmp_path / "missing.txt", *TINY, "--max-steps", "3", "--out-dir", tmp_path, "--name", "x")
    assert_clean_error(proc)
    assert not (tmp_path / "x").exists()


def test_error_empty_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    proc = run_cli("train", empty, *TINY, "--max-steps", "3", "--out-dir", tmp_path, "--name", "x")
    assert_clean_error(proc)


def test_error_directory_without_files(tmp_path):
    d = tmp_path / "nothing"
    d.mkdir()
    proc = run_cli("train", d, *TINY, "--max-steps", "3", "--out-dir", tmp_path / "runs", "--name", "x")
    assert_clean_error(proc)


def test_error_unknown_device(tmp_path, corpus):
    proc = run_cli("train", corpus, *TINY, "--max-steps", "3", "--out-dir", tmp_path, "--name", "x", "--device", "tpu")
    line = assert_clean_error(proc)
    assert "tpu" in line


def test_error_cuda_unavailable_does_not_fall_back(tmp_path, corpus):
    proc = run_cli("train", corpus, *TINY, "--max-steps", "3", "--out-dir", tmp_path, "--name", "x", "--device", "cuda")
    line = assert_clean_error(proc)
    assert "cuda" in line
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_error_generate_missing_checkpoint(tmp_path):
    proc = run_cli("generate", tmp_path / "no-such-run", "-n", "5")
    assert_clean_error(proc)


def test_error_generate_top_p_out_of_range(trained):
    proc = run_cli("generate", trained["run_dir"], "-n", "5", "--top-p", "1.5")
    line = assert_clean_error(proc)
    assert "top_p" in line or "top-p" in line


def test_error_generate_negative_temperature(trained):
    proc = run_cli("generate", trained["run_dir"], "-n", "5", "--temperature", "-1")
    line = assert_clean_error(proc)
    assert "temperature" in line


def test_error_unknown_toml_key(tmp_path, corpus):
    cfg = tmp_path / "c.toml"
    cfg.write_text("bogus_key = 1\n")
    proc = run_cli("train", corpus, *TINY, "--max-steps", "3", "--out-dir", tmp_path, "--name", "x", "--config", cfg)
    line = assert_clean_error(proc)
    assert "bogus_key" in line


def test_error_wrong_type_in_toml(tmp_path, corpus):
    cfg = tmp_path / "c.toml"
    cfg.write_text('dim = "big"\n')
    proc = run_cli("train", corpus, *TINY[2:], "--max-steps", "3", "--out-dir", tmp_path, "--name", "x", "--config", cfg)
    line = assert_clean_error(proc)
    assert "dim" in line


def test_error_val_fraction_zero(tmp_path, corpus):
    proc = run_cli("train", corpus, *TINY, "--max-steps", "3", "--out-dir", tmp_path, "--name", "x", "--val-fraction", "0")
    line = assert_clean_error(proc)
    assert "val_fraction" in line or "val-fraction" in line


def test_error_corpus_smaller_than_batch(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("The quick brown fox. " * 15)  # 315 bytes < 8 x 64
    proc = run_cli(
        "train", small, "--dim", "32", "--depth", "1", "--batch-size", "8", "--chunk-len", "64",
        "--max-steps", "3", "--out-dir", tmp_path, "--name", "x",
    )
    assert_clean_error(proc)


def test_error_existing_run_without_resume(tmp_path, corpus):
    out = tmp_path / "runs"
    first = run_cli("train", corpus, *TINY, "--max-steps", "2", "--out-dir", out, "--name", "dup", "--progress", "none")
    assert first.returncode == 0, first.stderr
    before = tree_digest(out / "dup" / "checkpoints")
    assert any(k.endswith("model.safetensors") for k in before)
    second = run_cli("train", corpus, *TINY, "--max-steps", "3", "--out-dir", out, "--name", "dup", "--progress", "none")
    line = assert_clean_error(second)
    assert "resume" in line
    assert tree_digest(out / "dup" / "checkpoints") == before


def test_typo_flag_is_usage_error(tmp_path, corpus):
    proc = run_cli("train", corpus, "--max-stpes", "3", "--out-dir", tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "No such option" in proc.stderr
    assert "--max-steps" in proc.stderr


# ---------------------------------------------------------------- resume


def test_resume_continues(tmp_path, corpus):
    out = tmp_path / "runs"
    a = run_cli("train", corpus, *TINY, "--max-steps", "3", "--log-every", "1", "--out-dir", out, "--name", "r2",
                "--progress", "none")
    assert a.returncode == 0, a.stderr
    b = run_cli("train", "--resume", out / "r2", "--max-steps", "6", "--log-every", "1", "--progress", "plain")
    assert b.returncode == 0, b.stderr
    run_dir = out / "r2"
    assert last_checkpoint_step(run_dir) == 6
    steps = [e["step"] for e in step_events(run_dir)]
    assert len(steps) == len(set(steps)), f"duplicated step events: {steps}"
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_alone_keeps_the_runs_cadence_and_budget(tmp_path, corpus):
    """`--resume RUN` with no other flag continues with the run's own log cadence and budget."""
    out = tmp_path / "runs"
    a = run_cli("train", corpus, *TINY, "--max-steps", "3", "--log-every", "1", "--out-dir", out, "--name", "r3",
                "--progress", "none")
    assert a.returncode == 0, a.stderr
    # Stop at step 3 of a 5-step budget by editing nothing: instead resume a run whose budget is
    # already met, then one with a new budget only.
    b = run_cli("train", "--resume", out / "r3", "--progress", "plain")
    assert b.returncode == 0, b.stderr
    assert last_checkpoint_step(out / "r3") == 3, "the saved budget (3 steps) was kept"
    c = run_cli("train", "--resume", out / "r3", "--max-steps", "5", "--progress", "plain")
    assert c.returncode == 0, c.stderr
    assert [e["step"] for e in step_events(out / "r3")] == [1, 2, 3, 4, 5], "log_every 1 was kept"


def test_exact_resume(tmp_path, corpus):
    """A run interrupted at step 3 and resumed to 6 equals an uninterrupted 6-step run, bitwise."""
    out = tmp_path / "runs"
    common = [*TINY, "--log-every", "1", "--seed", "4242", "--out-dir", out, "--progress", "none"]
    a = run_cli("train", corpus, *common, "--max-steps", "6", "--name", "A")
    assert a.returncode == 0, a.stderr
    b1 = run_cli("train", corpus, *common, "--max-steps", "3", "--name", "B")
    assert b1.returncode == 0, b1.stderr
    b2 = run_cli("train", "--resume", out / "B", *common, "--max-steps", "6")
    assert b2.returncode == 0, b2.stderr

    ckpt_a = out / "A" / "checkpoints" / "step-6"
    ckpt_b = out / "B" / "checkpoints" / "step-6"
    ta = read_safetensors(ckpt_a / "model.safetensors")
    tb = read_safetensors(ckpt_b / "model.safetensors")
    assert sorted(ta) == sorted(tb)
    differing = [k for k in ta if ta[k].shape != tb[k].shape or not np.array_equal(ta[k], tb[k])]
    assert not differing, f"tensors differ after resume: {differing}"

    loss_a = {e["step"]: e["loss"] for e in step_events(out / "A")}
    loss_b = {e["step"]: e["loss"] for e in step_events(out / "B")}
    for s in (4, 5, 6):
        assert s in loss_a and s in loss_b, (sorted(loss_a), sorted(loss_b))
        assert loss_a[s] == loss_b[s], f"step {s}: {loss_a[s]} != {loss_b[s]}"


# ---------------------------------------------------------------- signals


def _start_long_run(tmp_path: Path, corpus: Path, name: str):
    out = tmp_path / "runs"
    stdout = open(tmp_path / f"{name}.out", "w")
    stderr = open(tmp_path / f"{name}.err", "w")
    proc = subprocess.Popen(
        [grufinity_exe(), "train", str(corpus), *TINY, "--max-steps", "100000", "--log-every", "1",
         "--out-dir", str(out), "--name", name, "--progress", "plain"],
        stdout=stdout,
        stderr=stderr,
        env=clean_env(),
    )
    return proc, out / name, (stdout, stderr)


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, timeout: float = 60) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training exited before it was signalled"
        if metrics.exists() and '"event":"step"' in metrics.read_text().replace(" ", ""):
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no step event appeared in metrics.jsonl")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_checkpoint(tmp_path, corpus, sig, code):
    name = f"sig{code}"
    proc, run_dir, files = _start_long_run(tmp_path, corpus, name)
    try:
        _wait_for_step(proc, run_dir)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in files:
            f.close()
    err = (tmp_path / f"{name}.err").read_text(errors="replace")
    assert rc == code, err[-2000:]
    assert "Traceback" not in err
    assert "resume with" in err
    last = run_dir / "checkpoints" / "last"
    assert last.is_symlink()
    target = last.resolve()
    for f in CHECKPOINT_FILES:
        assert (target / f).is_file(), f"{target / f} missing"
    step = json.loads((target / "trainer.json").read_text())["step"]
    assert step >= 1
    assert target.name == f"step-{step}"
    assert step < 100000


def test_python_dash_m_runs_the_same_cli(tmp_path: Path) -> None:
    import sys

    proc = subprocess.run([sys.executable, "-m", "grufinity", "--help"], capture_output=True, text=True, env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: grufinity [OPTIONS] COMMAND"), proc.stdout
