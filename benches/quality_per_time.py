"""Validation loss against wall-clock time on tiny Shakespeare (byte tokens, last 10% held out).

    python benches/quality_per_time.py shakespeare-5min      # the 5-minute recipe
    python benches/quality_per_time.py shakespeare-1h        # the recipe for up to an hour
    python benches/quality_per_time.py shakespeare-1h --train-args "--ema 0.999" --keep runs/q1h
    python benches/quality_per_time.py shakespeare-1h --report runs/q1h   # analyse a kept run again
    python benches/quality_per_time.py shakespeare-1h --data ../shared/data/shakespeare-works/works.txt

Trains one of the shipped presets (python/grufinity/presets/, `grufinity train --preset NAME`)
with `grufinity train` on the CPU (the whole validation tail at every evaluation, evaluation
time counted in the budget, no samples), then prints the loss-vs-time curve, the
first time each target loss was reached, and writes the curve to OUT/quality-<recipe>.csv.

Then it measures what limits the result: tokens seen (and epochs of the training text), time
per step, and the loss of the final weights on the validation tail against the loss on as many
bytes of the training text (no dropout: the overfitting gap); with `--ema` also the raw weights
against the average, and the mean of the run's kept checkpoints (`grufinity average`).

Issue 8's references: PyTorch + mingru-pytorch (dim 256, depth 4, batch 16, chunk 256, AdamW
lr 1e-3) reaches about 1.56 nats/byte after 10 minutes on a 2-core machine; nanoGPT's 10.7M
parameter GPU model reaches 1.47.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grufinity
from grufinity import runs
from grufinity.config import presets

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"

COMMON = ["--device", "cpu", "--sample-tokens", "0"]
TARGETS = (1.56, 1.47)


def train(args: argparse.Namespace, out_dir: Path, name: str) -> bool:
    budget = ["--max-time", str(args.budget)] if args.budget else []
    cmd = ["grufinity", "train", args.data, "--out-dir", str(out_dir), "--name", name, "--preset", args.recipe,
           *budget, "--progress", "plain", *COMMON, *shlex.split(args.train_args)]
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.run([sys.executable, "-m", "grufinity", *cmd[1:]])
    if proc.returncode != 0:
        print(f"error: training exited with {proc.returncode}", file=sys.stderr)
    return proc.returncode == 0


def events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def report_curve(evs: list[dict[str, Any]], out: Path) -> None:
    curve = []
    for e in evs:  # the end-of-run evaluation repeats the last one when they fall on the same step
        if e.get("event") == "eval" and not (curve and curve[-1][1] == e["step"]):
            curve.append((e["elapsed"], e["step"], e["tokens"], e["val_loss"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["elapsed_s", "step", "tokens", "val_loss_nats_per_byte"])
        w.writerows([f"{s:.1f}", step, tokens, f"{loss:.4f}"] for s, step, tokens, loss in curve)
    print(f"\n{'elapsed':>9} {'step':>7} {'tokens':>12} {'val loss':>9}")
    for s, step, tokens, loss in curve:
        print(f"{s:8.0f}s {step:7d} {tokens:12,d} {loss:9.4f}")
    best = min(loss for *_, loss in curve)
    for target in TARGETS:
        hit = next((s for s, *_, loss in curve if loss <= target), None)
        print(f"target {target}: " + (f"reached after {hit:.0f} s" if hit is not None else f"not reached (best {best:.4f})"))
    print(f"wrote {out}")


def loss(checkpoint: Path, text: bytes, rows: int, raw: bool = False) -> float:
    """Nats/byte of the checkpoint on ``text`` in ``rows`` contiguous regions (the training
    loop's validation layout); ``raw``: the trained weights, not their moving average."""
    with tempfile.TemporaryDirectory() as tmp:
        if raw and (checkpoint / "ema.safetensors").exists():
            checkpoint = Path(shutil.copytree(checkpoint, Path(tmp) / "raw"))
            (checkpoint / "ema.safetensors").unlink()
        return grufinity.load(checkpoint, "cpu").evaluate(text, rows=rows)["loss"]


def report_limits(run: Path, evs: list[dict[str, Any]]) -> None:
    cfg = json.loads((run / "config.json").read_text())
    text = Path(cfg["data"][0]).read_bytes()  # one file, byte tokens: bytes = tokens
    n_val = round(len(text) * cfg["val_fraction"])  # as the training split (data::batcher::split_point)
    train_text, val_text = text[: len(text) - n_val], text[len(text) - n_val :]
    steps = [e for e in evs if e.get("event") == "step"]
    last = steps[-1]
    step_time = statistics.median(e["step_time"] for e in steps[len(steps) // 10 :])
    print(f"\ntokens seen {last['tokens']:,} = {last['tokens'] / len(train_text):.1f} epochs of the training text; "
          f"{last['step']} steps, median {step_time * 1000:.0f} ms/step "
          f"({cfg['batch_size'] * cfg['chunk_len'] / step_time:,.0f} tokens/s while stepping)")
    rows = cfg["batch_size"]
    head = train_text[:n_val]
    best = (run / "checkpoints" / "best").resolve()
    print(f"\n{'weights':<34} {'val':>7} {'train':>7} {'gap':>7}   (nats/byte; train = first {n_val:,} training bytes)")
    candidates = [(f"best ({best.name})", best, False)]
    if (best / "ema.safetensors").exists():
        candidates.append((f"best ({best.name}), raw (no EMA)", best, True))
    kept = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-") and not p.is_symlink()]
    if len(kept) >= 2:
        averaged = runs.average(run, len(kept))
        candidates.append((f"average of steps {','.join(map(str, averaged['steps']))}", Path(averaged["path"]), False))
    for label, ckpt, raw in candidates:
        v, t = loss(ckpt, val_text, rows, raw), loss(ckpt, head, rows, raw)
        print(f"{label:<34} {v:7.4f} {t:7.4f} {v - t:7.4f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", choices=presets(), help="a preset of grufinity train --preset")
    ap.add_argument("--budget", type=float, default=None,
                    help="wall-clock seconds of training, evaluations included (default: the preset's)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(ROOT / "benches"),
                    help="folder for quality-<recipe>.csv (quality-<recipe>-<corpus folder>.csv for another --data)")
    ap.add_argument("--train-args", default="", help="more `grufinity train` flags, e.g. \"--ema 0.999\"")
    ap.add_argument("--keep", default=None, help="train into this run directory and keep it (default: a temporary one)")
    ap.add_argument("--report", default=None, metavar="RUN", help="report on this finished run instead of training")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        print(f"error: corpus {args.data} not found (pass --data)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        if args.report:
            run = Path(args.report)
        else:
            run = Path(args.keep) if args.keep else Path(tmp) / args.recipe
            if not train(args, run.parent, run.name):
                return 2
        evs = events(run)
        # The tiny Shakespeare curve keeps its name; another corpus's is named after it too.
        corpus = "" if Path(args.data).resolve() == DEFAULT_DATA.resolve() else f"-{Path(args.data).parent.name}"
        report_curve(evs, Path(args.out) / f"quality-{args.recipe}{corpus}.csv")
        report_limits(run, evs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
