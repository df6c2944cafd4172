"""``grufinity sweep`` on Optuna with tiny trials: specs checked up front, a 3-trial sweep whose
best trial trains again identically from its run directory, pruning of an obviously bad trial,
two worker processes sharing one study (SQLite, and PostgreSQL when GRUFINITY_TEST_POSTGRES
names a server), a sweep killed with SIGKILL that resumes, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import grufinity
from grufinity import runs, sweep
from conftest import clean_env, grufinity_exe, run_cli
from test_cli import assert_clean_error

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

TINY = dict(dim=32, depth=1, batch_size=2, chunk_len=16, max_steps=20, eval_every=5, eval_tokens=256,
            sample_tokens=10, log_every=5, device="cpu")


def write_spec(path: Path, corpus: Path, sweep_lines: list[str], **config) -> Path:
    values = {**TINY, "data": str(corpus), **config}
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(lines + ["", "[sweep]", *sweep_lines]) + "\n", encoding="utf-8")
    return path


def load_study(directory: Path, name: str, storage: str | None = None):
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{directory / 'study.db'}")


def states(study) -> list[str]:
    return [t.state.name for t in study.trials]


@pytest.mark.parametrize("lines, message", [
    ([], "needs a [sweep] table"),
    (["[sweep]", "trials = 3"], "no search space"),
    (["[sweep]", "lrr = [1, 2]"], "[sweep] lrr: not a training setting"),
    (["[sweep]", "lr = {low = 1e-4, hgh = 1e-2}"], "unknown key 'hgh'"),
    (["[sweep]", "lr = {low = 1e-2, high = 1e-4}"], "low must be below high"),
    (["[sweep]", "lr = {low = 0, high = 1, log = true}"], "log range needs low > 0"),
    (["[sweep]", "lr = [0.1, -1]"], "[sweep] lr = -1: invalid config `lr`"),
    (["[sweep]", "dim = {low = 16.5, high = 64}"], "integer setting"),
    (["[sweep]", "schedule = [\"cosine\", \"bogus\"]"], "invalid config `schedule`"),
    (["[sweep]", "lr = [1e-3]", "pruner = \"mean\""], "[sweep] pruner: must be one of median"),
    (["[sweep]", "lr = [1e-3]", "dim = 64"], "[sweep] dim: a search space is a list"),
    (["name = \"x\"", "[sweep]", "lr = [1e-3]"], "`name` is set by the sweep"),
    (["dimm = 3", "[sweep]", "lr = [1e-3]"], "invalid config `dimm`"),
])
def test_spec_errors_name_the_key(lines, message):
    import sys

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    with pytest.raises(grufinity.ConfigError) as e:
        sweep.parse(tomllib.loads("\n".join(lines)), source="s.toml")
    assert message in str(e.value) and str(e.value).startswith("s.toml: ")
    assert "\n" not in str(e.value)


def test_cli_spec_error_is_one_line(tmp_path, corpus):
    spec = write_spec(tmp_path / "bad.toml", corpus, ["lr = {low = 1e-2, high = 1e-4}"])
    assert "low must be below high" in assert_clean_error(run_cli("sweep", spec, "--dir", tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_three_trials_and_best_reproducible(tmp_path, corpus):
    spec = write_spec(tmp_path / "lr.toml", corpus, ["lr = {low = 1e-3, high = 3e-2, log = true}", "sampler_seed = 7"])
    proc = run_cli("sweep", spec, "--trials", "3", "--dir", tmp_path / "sw", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = load_study(tmp_path / "sw", "lr")
    assert states(study) == ["COMPLETE"] * 3
    assert sorted(p.name for p in (tmp_path / "sw").glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]

    best = study.best_trial
    run = runs.load(best.user_attrs["run_dir"])
    assert run.best_val_loss == best.value and run.config["lr"] == best.params["lr"]
    # Train it again from its run directory alone: the same numbers.
    proc = run_cli("train", "--config", run.path / "config.json", "--name", "again", "--out-dir", tmp_path / "r", "-q")
    assert proc.returncode == 0, proc.stderr
    assert runs.load(tmp_path / "r" / "again").best_val_loss == best.value

    proc = run_cli("sweep", spec, "--dir", tmp_path / "sw", "--report", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 complete" in proc.stdout and f"trial-{best.number:04d}" in proc.stdout
    for png in ("importance.png", "history.png", "intermediate.png"):
        assert (tmp_path / "sw" / png).stat().st_size > 5000


def test_obviously_bad_trial_is_pruned_with_its_checkpoint(tmp_path, corpus):
    spec = sweep.load(write_spec(tmp_path / "p.toml", corpus, [
        "lr = {low = 1e-3, high = 100.0, log = true}", "pruner_startup_trials = 1"]))
    s = sweep.Sweep.create(spec, trials=2, directory=tmp_path / "sw")
    study = sweep.run(s, enqueue=[{"lr": 1e-2}, {"lr": 50.0}], log=lambda m: None)
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE and bad.state == TrialState.PRUNED
    assert bad.params["lr"] == 50.0
    # Stopped at its first evaluation, with a checkpoint there.
    assert list(bad.intermediate_values) == [5] and bad.intermediate_values[5] > good.intermediate_values[5]
    run = runs.load(bad.user_attrs["run_dir"])
    assert run.last_step == 5 and run.checkpoints[-1]["step"] == 5


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_workers_share_one_study(tmp_path, corpus, backend):
    storage = None
    if backend == "postgres":
        storage = os.environ.get("GRUFINITY_TEST_POSTGRES")
        if not storage:
            pytest.skip("set GRUFINITY_TEST_POSTGRES to a PostgreSQL URL (.ci/postgres.sh starts one)")
    name = f"two-{uuid.uuid4().hex[:8]}"
    spec = write_spec(tmp_path / "w.toml", corpus, ["lr = {low = 1e-3, high = 3e-2, log = true}"], max_steps=60)
    args = ["sweep", spec, "--trials", "4", "--workers", "2", "--study", name, "--dir", tmp_path / "sw"]
    proc = run_cli(*args, *(["--storage", storage] if storage else []), cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "2 workers started" in proc.stderr
    study = load_study(tmp_path / "sw", name, storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == 4
    assert states(study) == ["COMPLETE"] * 4
    dirs = [t.user_attrs["run_dir"] for t in study.trials]
    assert len(set(dirs)) == 4 and all(runs.load(d).last_step == 60 for d in dirs)


def start_sweep(spec: Path, directory: Path) -> subprocess.Popen:
    return subprocess.Popen([grufinity_exe(), "sweep", str(spec), "--dir", str(directory)], cwd=spec.parent,
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_running(directory: Path, name: str, proc: subprocess.Popen, timeout: float = 60):
    """The first running trial once it has a checkpoint (it is really training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        # Only look into the database once a trial trains (the sweep has made it by then).
        if list(directory.glob("trial-*/checkpoints/step-*")):
            for t in load_study(directory, name).trials:
                run_dir = Path(t.user_attrs.get("run_dir", directory / "none"))
                if t.state == TrialState.RUNNING and list((run_dir / "checkpoints").glob("step-*")):
                    return t
        time.sleep(0.2)
    raise AssertionError("no trial started")


def slow_spec(tmp_path: Path, corpus: Path) -> Path:
    # Trials of a second each, checkpointed often, with a fast heartbeat so that a dead one is
    # noticed within two seconds.
    return write_spec(tmp_path / "slow.toml", corpus,
                      ["lr = {low = 1e-3, high = 3e-2, log = true}", "trials = 2", "heartbeat = 1"],
                      max_steps=None, max_time=1.0, eval_every=100)


def test_sigkill_then_resume(tmp_path, corpus):
    spec, directory = slow_spec(tmp_path, corpus), tmp_path / "sw"
    proc = start_sweep(spec, directory)
    killed = wait_for_running(directory, "slow", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = states(load_study(directory, "slow"))
    assert before.count("RUNNING") == 1  # as the dead process left it

    proc = run_cli("sweep", spec, "--dir", directory, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{before.count('COMPLETE')} of 2 trials finished, 1 running" in proc.stderr
    study = load_study(directory, "slow")
    assert study.trials[killed.number].state == TrialState.FAIL  # failed, not lost or running forever
    assert sorted(states(study)) == ["COMPLETE", "COMPLETE", "FAIL"]
    assert len({t.number for t in study.trials}) == 3
    assert runs.load(killed.user_attrs["run_dir"]).checkpoints  # its run directory stays


def test_ctrl_c_stops_the_trial_with_a_checkpoint(tmp_path, corpus):
    spec, directory = slow_spec(tmp_path, corpus), tmp_path / "sw"
    proc = start_sweep(spec, directory)
    trial = wait_for_running(directory, "slow", proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "running the same command again" in err and "Traceback" not in err
    t = load_study(directory, "slow").trials[trial.number]
    assert t.state == TrialState.FAIL and t.user_attrs["error"].startswith("interrupted at step")
    run = runs.load(t.user_attrs["run_dir"])
    assert run.checkpoints[-1]["step"] == run.last_step


def test_report_before_any_sweep_is_one_line(tmp_path, corpus):
    spec = write_spec(tmp_path / "r.toml", corpus, ["lr = [1e-3, 1e-2]"])
    assert "run the sweep first" in assert_clean_error(run_cli("sweep", spec, "--report", "--dir", tmp_path / "none"))
    assert not (tmp_path / "none").exists()


def test_a_study_refuses_another_spec(tmp_path, corpus):
    first = sweep.load(write_spec(tmp_path / "s.toml", corpus, ["lr = [1e-3, 1e-2]"]))
    sweep.Sweep.create(first, directory=tmp_path / "sw").study(create=True)
    # Logging and device may change between runs of a sweep; what decides results may not.
    same = sweep.load(write_spec(tmp_path / "s.toml", corpus, ["lr = [1e-3, 1e-2]"], log_every=1, device="auto"))
    sweep.Sweep.create(same, directory=tmp_path / "sw").study()
    other = sweep.load(write_spec(tmp_path / "s.toml", corpus, ["lr = [1e-3, 3e-3]"], max_steps=30))
    with pytest.raises(grufinity.ConfigError, match=r"another spec \(max_steps, \[sweep\] lr differ\)"):
        sweep.Sweep.create(other, directory=tmp_path / "sw").study()
