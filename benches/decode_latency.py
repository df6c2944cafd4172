"""Decoding speed of the reference model (dim 256, depth 4) on the CPU backend.

    python benches/decode_latency.py [--steps 200]

Prints single-stream and batched (8 prompts) tokens/s, and the time per token after contexts of
1k, 10k and 100k tokens: with a recurrent state it must not grow with the context. The weights
come from a one-step training run (speed does not depend on what the weights learned).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import grufinity


def reference_model(workdir: Path) -> grufinity.Model:
    corpus = workdir / "corpus.txt"
    corpus.write_bytes(bytes(range(32, 127)) * 2000)
    cfg = grufinity.TrainConfig(
        data=[str(corpus)], out_dir=str(workdir), name="ref", dim=256, depth=4, batch_size=4, chunk_len=64,
        max_steps=1, max_time=None, eval_every=0, eval_tokens=256, sample_tokens=0, device="cpu",
    )
    grufinity.train(cfg)
    return grufinity.load(workdir / "ref", device="cpu")


def per_token_seconds(model: grufinity.Model, state: grufinity.State, steps: int) -> float:
    start = time.perf_counter()
    model.generate_bytes(b"", max_new_tokens=steps, temperature=0.0, state=state)
    return (time.perf_counter() - start) / steps


def state_after(model: grufinity.Model, context: int, rng: np.random.Generator) -> grufinity.State:
    state = model.initial_state(1)
    done = 0
    while done < context:
        n = min(4096, context - done)
        _, state = model.forward(rng.integers(32, 127, size=(1, n)), state)
        done += n
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="tokens generated per measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = reference_model(Path(tmp))
        print(f"model: {model.num_params:,} parameters (dim 256, depth 4), CPU")
        rng = np.random.default_rng(0)

        start = time.perf_counter()
        model.generate("def ", max_new_tokens=args.steps, temperature=0.0)
        single = args.steps / (time.perf_counter() - start)
        start = time.perf_counter()
        model.generate_batch([f"prompt {i}: " for i in range(8)], max_new_tokens=args.steps, temperature=0.0)
        batched = 8 * args.steps / (time.perf_counter() - start)
        print(f"single stream: {single:,.0f} tokens/s | batched x8: {batched:,.0f} tokens/s")

        base = None
        for context in (1_000, 10_000, 100_000):
            state = state_after(model, context, rng)
            per = min(per_token_seconds(model, state, args.steps) for _ in range(3))
            base = base or per
            print(f"after {context:>7,} tokens of context: {per * 1e3:.3f} ms/token ({per / base:.3f}x the 1k figure)")


if __name__ == "__main__":
    main()
