"""Memory over a long training run: resident set size (RSS) against optimiser steps.

    python benches/rss_flatness.py [--steps 10000] [--dim 64 --depth 2] [DATA]

Runs `grufinity train` in a child process and reads the child's RSS from /proc at every logged
step. Carried TBPTT state is detached between chunks, so no autodiff graph may survive a step and
RSS must stay flat: the script reports the growth from the 10% mark (after the first evaluation
and checkpoint have allocated their buffers) to the end, and fails (exit 1) above --max-growth.
The default model (dim 64, depth 2, batch 16, chunk 64) is small so that 10,000 steps take a few
minutes on 2 cores; every size is a flag. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="corpus (default: tiny Shakespeare)")
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk-len", type=int, default=64)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--max-growth", type=float, default=5.0, help="percent allowed from the 10%% mark to the end")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        print(f"error: corpus {args.data} not found (pass a path)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grufinity", "train", args.data, "--out-dir", tmp, "--name", "rss",
            "--device", "cpu", "--dim", str(args.dim), "--depth", str(args.depth),
            "--batch-size", str(args.batch_size), "--chunk-len", str(args.chunk_len),
            "--max-steps", str(args.steps), "--eval-every", str(args.steps // 10), "--eval-tokens", "16384",
            "--log-every", str(args.log_every), "--sample-tokens", "0", "--progress", "json",
        ]
        print(" ".join(cmd[2:]), flush=True)
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        samples: list[tuple[int, float]] = []
        assert child.stdout is not None
        for line in child.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "step":
                try:
                    samples.append((event["step"], rss_mib(child.pid)))
                except (FileNotFoundError, RuntimeError):
                    break
                if len(samples) % 20 == 0:
                    print(f"  step {samples[-1][0]:6d}  RSS {samples[-1][1]:7.1f} MiB", flush=True)
        if child.wait() != 0:
            print(f"error: training exited with {child.returncode}", file=sys.stderr)
            return 2

    mark = next(rss for step, rss in samples if step >= args.steps // 10)
    end = samples[-1][1]
    peak = max(rss for _, rss in samples)
    growth = 100.0 * (end - mark) / mark
    print(
        f"{args.steps:,} steps (dim {args.dim}, depth {args.depth}, batch {args.batch_size}, chunk {args.chunk_len}): "
        f"RSS {mark:.1f} MiB at step {args.steps // 10:,}, {end:.1f} MiB at the end, peak {peak:.1f} MiB; "
        f"growth {growth:+.2f}% (limit {args.max_growth}%)"
    )
    return 0 if growth <= args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
