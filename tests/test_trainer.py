"""The trainer's policies from the outside: reduce-on-plateau, early stopping, non-finite
steps, metrics files, config precedence and rejection, failed checkpoint writes."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import grufinity
from grufinity import config as config_mod
from conftest import TINY, clean_env, read_jsonl, read_safetensors, run_cli
from test_cli import assert_clean_error, tree_digest

#: These tests are about the training loop, not device selection.
CPU = ["--device", "cpu"]

NEW_FLAGS = {
    "--schedule": "cosine",
    "--plateau-patience": "3",
    "--plateau-factor": "0.5",
    "--early-stop-patience": "0",
    "--on-nan": "stop",
}


def train(tmp_path: Path, corpus: Path, name: str, *args) -> subprocess.CompletedProcess:
    return run_cli("train", corpus, *TINY, *CPU, "--out-dir", tmp_path / "runs", "--name", name, *args)


def all_finite(ckpt: Path) -> bool:
    return all(bool((abs(t) < math.inf).all()) for t in read_safetensors(ckpt / "model.safetensors").values())


def checkpoints(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / "checkpoints").glob("step-*") if (p / "trainer.json").is_file()]


# ---------------------------------------------------------------- flags, keys, fields


def test_new_flags_are_documented_with_defaults():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for flag, default in NEW_FLAGS.items():
        assert flag in text, flag
        after = text[text.index(flag):]
        own = after[: after.index(" --", len(flag))]  # up to the next option
        assert f"[default: {default}]" in own, (flag, own)
    assert "plateau" in text


@pytest.mark.parametrize("flag", list(NEW_FLAGS))
def test_every_new_flag_is_a_config_field_and_toml_key(flag, tmp_path):
    key = flag[2:].replace("-", "_")
    fields = {f.name: f.default for f in config_mod.dataclasses.fields(config_mod.TrainConfig)}
    assert key in fields
    assert str(fields[key]) == NEW_FLAGS[flag]
    value = {"schedule": '"plateau"', "on_nan": '"skip"', "plateau_factor": "0.25"}.get(key, "7")
    toml = tmp_path / "c.toml"
    toml.write_text(f"{key} = {value}\n")
    assert str(getattr(config_mod.build({}, str(toml)), key)) == value.strip('"')


def test_cli_flags_override_the_toml_file(tmp_path, corpus):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'schedule = "plateau"\nplateau_patience = 4\nplateau_factor = 0.25\non_nan = "skip"\n'
        "early_stop_patience = 9\nlr = 0.001\n"
    )
    cfg = config_mod.build({"plateau_patience": 2, "lr": 0.002}, str(toml))
    assert (cfg.schedule, cfg.plateau_patience, cfg.plateau_factor, cfg.on_nan) == ("plateau", 2, 0.25, "skip")
    assert (cfg.early_stop_patience, cfg.lr) == (9, 0.002)

    proc = train(tmp_path, corpus, "prec", "--config", toml, "--max-steps", "2", "--plateau-patience", "2",
                 "--on-nan", "stop", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "runs" / "prec" / "config.json").read_text())
    assert saved["schedule"] == "plateau"
    assert saved["plateau_patience"] == 2, "the flag wins over the file"
    assert saved["plateau_factor"] == 0.25, "the file wins over the default"
    assert saved["on_nan"] == "stop"
    assert saved["early_stop_patience"] == 9
    trainer = json.loads((tmp_path / "runs" / "prec" / "checkpoints" / "last" / "trainer.json").read_text())
    assert trainer["plateau"]["scale"] == 1.0 and trainer["bad_steps"] == 0


@pytest.mark.parametrize(
    "toml, key",
    [
        ('plateau_factor = "half"', "plateau_factor"),
        ("plateau_patience = 1.5", "plateau_patience"),
        ('on_nan = "explode"', "on_nan"),
        ('schedule = "sometimes"', "schedule"),
        ("early_stop_patience = -1", "early_stop_patience"),
        ("early_stop_patience = true", "early_stop_patience"),
        ("plateau_factor = 1.5", "plateau_factor"),
        ("plateau_patience = 0", "plateau_patience"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(tmp_path, corpus, toml, key):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    proc = train(tmp_path, corpus, "bad", "--config", path, "--max-steps", "2")
    line = assert_clean_error(proc)
    assert f"`{key}`" in line, line
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()


@pytest.mark.parametrize("args, key", [
    (["--plateau-factor", "0"], "plateau_factor"),
    (["--early-stop-patience", "-2"], "early_stop_patience"),
])
def test_bad_flag_values_are_rejected_naming_the_key(tmp_path, corpus, args, key):
    line = assert_clean_error(train(tmp_path, corpus, "bad", *args, "--max-steps", "2"))
    assert f"`{key}`" in line, line


def test_bad_choice_via_python_config_names_the_key(tmp_path, corpus):
    with pytest.raises(grufinity.ConfigError, match="`on_nan`"):
        grufinity.TrainConfig(data=[str(corpus)], out_dir=str(tmp_path), name="x", on_nan="explode", max_steps=1)


def test_wrong_flag_choice_is_a_usage_error(tmp_path, corpus):
    proc = train(tmp_path, corpus, "bad", "--on-nan", "explode", "--max-steps", "2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--on-nan" in proc.stderr


# ---------------------------------------------------------------- metrics files


def test_metrics_files_contents(tmp_path, corpus):
    proc = train(tmp_path, corpus, "m", "--max-steps", "4", "--eval-every", "2", "--log-every", "1",
                 "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "runs" / "m"

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = ["event", "step", "tokens", "lr", "loss", "grad_norm", "tokens_per_sec", "elapsed",
              "val_loss", "val_bpb", "val_ppl"]
    assert rows[0] == header
    assert all(len(r) == len(header) for r in rows), rows
    records = [dict(zip(header, r)) for r in rows[1:]]
    steps = [r for r in records if r["event"] == "step"]
    evals = [r for r in records if r["event"] == "eval"]
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in evals] == [2, 4]
    for r in steps:
        assert int(r["tokens"]) == int(r["step"]) * 2 * 16
        assert float(r["lr"]) > 0 and math.isfinite(float(r["loss"])) and float(r["grad_norm"]) >= 0
        assert float(r["tokens_per_sec"]) > 0 and float(r["elapsed"]) >= 0
        assert r["val_loss"] == r["val_bpb"] == r["val_ppl"] == ""
    for r in evals:
        assert r["lr"] == r["loss"] == r["grad_norm"] == ""
        loss, bpb, ppl = float(r["val_loss"]), float(r["val_bpb"]), float(r["val_ppl"])
        assert ppl == pytest.approx(math.exp(loss), rel=1e-3)
        assert bpb == pytest.approx(loss / math.log(2), rel=1e-3), "byte tokenizer: one byte per token"

    events = read_jsonl(run_dir / "metrics.jsonl")
    required = {
        "step": {"step", "epoch", "tokens", "lr", "loss", "grad_norm", "tokens_per_sec", "elapsed"},
        "eval": {"step", "tokens", "val_loss", "val_bpb", "val_bpt", "val_ppl", "best", "elapsed"},
    }
    assert {e["event"] for e in events} == set(required)
    for e in events:
        assert required[e["event"]] <= set(e), e
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert [e["val_loss"] for e in events if e["event"] == "eval"] == pytest.approx([float(r["val_loss"]) for r in evals], abs=1e-5)


# ---------------------------------------------------------------- plateau and early stopping


def test_plateau_schedule_runs_and_checkpoints_its_state(tmp_path, corpus):
    proc = train(tmp_path, corpus, "p", "--schedule", "plateau", "--plateau-patience", "1", "--plateau-factor",
                 "0.5", "--lr", "0.3", "--warmup", "0", "--eval-every", "1", "--max-steps", "8", "--log-every", "1",
                 "--min-lr-ratio", "0.01", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "runs" / "p"
    events = read_jsonl(run_dir / "metrics.jsonl")
    lrs = [e["lr"] for e in events if e["event"] == "step"]
    trainer = json.loads((run_dir / "checkpoints" / "last" / "trainer.json").read_text())
    plateau = trainer["plateau"]
    assert set(plateau) == {"scale", "best", "bad_evals", "evals_since_best"}
    # Every step's lr is 0.3 times a power of 0.5 that only goes down, and the saved scale is
    # the last one in force.
    scales = [lr / 0.3 for lr in lrs]
    for s in scales:
        assert math.log2(s) == pytest.approx(round(math.log2(s)), abs=1e-9), scales
    assert scales == sorted(scales, reverse=True)
    assert plateau["scale"] <= scales[-1] + 1e-12


def test_early_stopping_ends_the_run_and_says_why(tmp_path, corpus):
    proc = train(tmp_path, corpus, "es", "--lr", "1e-12", "--warmup", "0", "--eval-every", "1",
                 "--early-stop-patience", "2", "--max-steps", "50", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = [e for e in events if e["event"] == "done"]
    assert len(done) == 1 and done[0]["reason"] == "early_stop", done
    assert done[0]["step"] < 50
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["best"] for e in evals[-2:]] == [False, False]
    assert evals[-1]["step"] == done[0]["step"]

    plain = train(tmp_path, corpus, "es2", "--lr", "1e-12", "--warmup", "0", "--eval-every", "1",
                  "--early-stop-patience", "1", "--max-steps", "50", "--progress", "plain")
    assert plain.returncode == 0, plain.stderr
    assert "stopped early" in plain.stderr


# ---------------------------------------------------------------- non-finite steps

DIVERGE = ["--lr", "1e6", "--warmup", "0", "--save-every", "1", "--keep-last", "100", "--max-steps", "60"]


def test_divergence_stops_with_one_line_and_finite_checkpoints(tmp_path, corpus):
    proc = train(tmp_path, corpus, "nan", *DIVERGE, "--progress", "none")
    line = assert_clean_error(proc)
    assert "--lr" in line and "checkpoint" in line, line
    run_dir = tmp_path / "runs" / "nan"
    saved = checkpoints(run_dir)
    assert saved, "checkpoints were written before the divergence"
    for ckpt in saved:
        assert all_finite(ckpt), ckpt
    assert all_finite(run_dir / "checkpoints" / "last")


def test_divergence_with_skip_halves_the_lr_then_gives_up(tmp_path, corpus):
    proc = train(tmp_path, corpus, "skip", *DIVERGE, "--on-nan", "skip", "--progress", "plain")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "update skipped" in proc.stderr
    run_dir = tmp_path / "runs" / "skip"
    skipped = [e for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "skipped"]
    assert [e["consecutive"] for e in skipped[-5:]] == [1, 2, 3, 4, 5]
    scales = [e["lr_scale"] for e in skipped[-5:]]
    assert scales == [scales[0] * 0.5**i for i in range(5)]
    for ckpt in checkpoints(run_dir):
        assert all_finite(ckpt), ckpt
    trainer = json.loads((run_dir / "checkpoints" / "last" / "trainer.json").read_text())
    assert trainer["plateau"]["scale"] < 1.0


# ---------------------------------------------------------------- failed checkpoint write

FAIL_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, resource, signal, sys
    from pathlib import Path

    import grufinity
    from grufinity.cli import main

    report, args = Path(sys.argv[1]), sys.argv[2:]
    real_train = grufinity.train

    def train(cfg, on_event=None):
        def callback(e):
            if e["event"] == "saved" and not report.exists():
                files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(e["path"]).iterdir()}
                report.write_text(json.dumps({"path": e["path"], "files": files}))
                # From now on no file may grow past 4 KiB: the next checkpoint cannot be written.
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            return on_event(e) if on_event else None

        return real_train(cfg, callback)

    grufinity.train = train
    sys.argv = ["grufinity", *args]
    main()
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, corpus):
    script = tmp_path / "fail.py"
    script.write_text(FAIL_SCRIPT)
    report = tmp_path / "report.json"
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, str(script), str(report), "train", str(corpus), *TINY, *CPU, "--save-every", "1",
         "--max-steps", "4", "--out-dir", str(out), "--name", "f", "--progress", "none"],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )
    line = assert_clean_error(proc)
    assert "step-2" in line and "previous checkpoint step-1 is intact" in line, line
    first = json.loads(report.read_text())
    ckpt = Path(first["path"])
    assert ckpt.name == "step-1"
    digest = tree_digest(ckpt)
    assert digest == first["files"], "the first checkpoint is unchanged"
    links = out / "f" / "checkpoints"
    assert (links / "last").resolve() == ckpt.resolve()
    assert not (links / "step-2").exists()
    assert not [p for p in links.iterdir() if p.name.startswith(".tmp")], "no half-written directory left"
    # The run continues from the intact checkpoint.
    resumed = run_cli("train", "--resume", out / "f", *CPU, "--max-steps", "2", "--progress", "none")
    assert resumed.returncode == 0, resumed.stderr
