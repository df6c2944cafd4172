"""Decoding speed on the CPU backend (default: the reference model, dim 256, depth 4).

    python benches/decode_latency.py [--steps 200] [--dim 512 --depth 6]
    python benches/decode_latency.py --pytorch [--models reference,large]

Prints single-stream and batched (8 prompts) tokens/s with f32 and with bf16 weights, and the
time per token after contexts of 1k, 10k and 100k tokens: with a recurrent state it must not
grow with the context. The weights come from a one-step training run (speed does not depend on
what the weights learned).

With --pytorch (needs `pip install '.[bench]'`): greedy decoding tokens/s for 1, 4 and 16
streams, GRUfinity (`generate` / `generate_batch`) against PyTorch + mingru-pytorch decoding the
same architecture (`minLM.forward` with its cached `prev_hiddens`, all streams in one batch), in
f32, bf16 (GRUfinity `dtype="bf16"` / the PyTorch model in bfloat16) and int8 (GRUfinity
`dtype="int8"` / `torch.ao.quantization.quantize_dynamic` on the Linear layers). PyTorch gets the
faster of 1 and 2 threads for each row (one-token steps are small).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import grufinity
from pytorch_decode import DTYPES, STREAMS, pytorch_model, pytorch_rate


def train_model(workdir: Path, dim: int, depth: int) -> Path:
    corpus = workdir / "corpus.txt"
    corpus.write_bytes(bytes(range(32, 127)) * 2000)
    cfg = grufinity.TrainConfig(
        data=[str(corpus)], out_dir=str(workdir), name="ref", dim=dim, depth=depth, batch_size=4, chunk_len=64,
        max_steps=1, max_time=None, eval_every=0, eval_tokens=256, sample_tokens=0, device="cpu",
    )
    grufinity.train(cfg)
    return workdir / "ref"


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


#: The comparison models of benches/compare_pytorch.py.
MODELS = {"small": (128, 4), "reference": (256, 4), "large": (512, 6)}


def grufinity_rate(run: Path, dtype: str, streams: int, steps: int) -> float:
    """Greedy tokens/s over all streams (best of 2)."""
    model = grufinity.load(run, device="cpu", dtype=dtype)
    prompts = [f"prompt {i}: " for i in range(streams)]
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        if streams == 1:
            model.generate(prompts[0], max_new_tokens=steps, temperature=0.0)
        else:
            model.generate_batch(prompts, max_new_tokens=steps, temperature=0.0)
        best = max(best, streams * steps / (time.perf_counter() - start))
    return best


def compare(models: list[str], steps: int) -> None:
    print(f"{'model':<10} {'weights':<7} {'streams':>7} {'GRUfinity tok/s':>16} {'PyTorch tok/s':>14} {'ratio':>6}")
    for name in models:
        dim, depth = MODELS[name]
        with tempfile.TemporaryDirectory() as tmp:
            run = train_model(Path(tmp), dim, depth)
            for dtype in DTYPES:
                theirs_model = pytorch_model(dim, depth, dtype)
                for streams in STREAMS:
                    ours = grufinity_rate(run, dtype, streams, steps)
                    theirs = pytorch_rate(theirs_model, streams, steps)
                    print(f"{name:<10} {dtype:<7} {streams:>7} {ours:>16,.0f} {theirs:>14,.0f} {ours / theirs:>5.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="tokens generated per measurement (per stream)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--pytorch", action="store_true", help="compare 1/4/16 streams with PyTorch + mingru-pytorch")
    ap.add_argument("--models", default="reference,large", help=f"with --pytorch: some of {', '.join(MODELS)}")
    args = ap.parse_args()
    if args.pytorch:
        models = args.models.split(",")
        if unknown := [m for m in models if m not in MODELS]:
            ap.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
        compare(models, args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run = train_model(Path(tmp), args.dim, args.depth)
        for dtype in ("f32", "bf16"):
            model = grufinity.load(run, device="cpu", dtype=dtype)
            model.generate("def ", max_new_tokens=16, temperature=0.0)
            start = time.perf_counter()
            model.generate("def ", max_new_tokens=args.steps, temperature=0.0)
            single = args.steps / (time.perf_counter() - start)
            start = time.perf_counter()
            model.generate_batch([f"prompt {i}: " for i in range(8)], max_new_tokens=args.steps, temperature=0.0)
            batched = 8 * args.steps / (time.perf_counter() - start)
            print(f"{dtype} weights: single stream {single:,.0f} tokens/s | batched x8: {batched:,.0f} tokens/s")
        model = grufinity.load(run, device="cpu")
        print(f"model: {model.num_params:,} parameters (dim {args.dim}, depth {args.depth}), CPU")
        rng = np.random.default_rng(0)

        base = None
        for context in (1_000, 10_000, 100_000):
            state = state_after(model, context, rng)
            per = min(per_token_seconds(model, state, args.steps) for _ in range(3))
            base = base or per
            print(f"after {context:>7,} tokens of context: {per * 1e3:.3f} ms/token ({per / base:.3f}x the 1k figure)")


if __name__ == "__main__":
    main()
