"""Validation loss against wall-clock time on tiny Shakespeare (byte tokens, last 10% held out).

    python benches/quality_per_time.py shakespeare-5min      # the 5-minute recipe
    python benches/quality_per_time.py shakespeare-1h        # the 60-minute recipe

Trains one of the shipped presets (python/grufinity/presets/, `grufinity train --preset NAME`)
with `grufinity train` on the CPU (the whole validation tail at every evaluation, evaluation
time counted in the budget, no samples), then prints the loss-vs-time curve, the
first time each target loss was reached, and writes the curve to OUT/quality-<recipe>.csv.
Issue 8's references: PyTorch + mingru-pytorch (dim 256, depth 4, batch 16, chunk 256, AdamW
lr 1e-3) reaches about 1.56 nats/byte after 10 minutes on a 2-core machine; nanoGPT's 10.7M
parameter GPU model reaches 1.47.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from grufinity.config import presets

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"

COMMON = ["--device", "cpu", "--sample-tokens", "0"]
TARGETS = (1.56, 1.47)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", choices=presets(), help="a preset of grufinity train --preset")
    ap.add_argument("--budget", type=float, default=None,
                    help="wall-clock seconds of training, evaluations included (default: the preset's)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(ROOT / "benches"), help="folder for quality-<recipe>.csv")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        print(f"error: corpus {args.data} not found (pass --data)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        budget = ["--max-time", str(args.budget)] if args.budget else []
        cmd = ["grufinity", "train", args.data, "--out-dir", tmp, "--name", args.recipe, "--preset", args.recipe,
               *budget, "--progress", "plain", *COMMON]
        print("$", shlex.join(cmd), flush=True)
        proc = subprocess.run([sys.executable, "-m", "grufinity", *cmd[1:]])
        if proc.returncode != 0:
            print(f"error: training exited with {proc.returncode}", file=sys.stderr)
            return 2
        events = [json.loads(line) for line in (Path(tmp) / args.recipe / "metrics.jsonl").read_text().splitlines()]

    curve = []
    for e in events:  # the end-of-run evaluation repeats the last one when they fall on the same step
        if e.get("event") == "eval" and not (curve and curve[-1][1] == e["step"]):
            curve.append((e["elapsed"], e["step"], e["tokens"], e["val_loss"]))
    out = Path(args.out) / f"quality-{args.recipe}.csv"
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
