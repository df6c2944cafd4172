"""Encoding throughput of the token store: MB/s for the byte and BPE tokenizers.

Usage (after ``pip install .``)::

    python benches/encode_throughput.py [FILE] [--vocab-size 4096] [--threads 1,2]

FILE defaults to ../shared/data/shakespeare-works/works.txt (relative to the repository root).
Each measurement encodes into a fresh temporary cache, so nothing is reused between them; the
BPE tokenizer is trained once per measurement and its training time is reported apart. A last
run shows what a cache hit costs (hashing the sources, opening the memory map).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from grufinity import _grufinity

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "shakespeare-works" / "works.txt"


def measure(path: Path, tokenizer: str, vocab_size: int | None, threads: int | None, cache: str) -> dict:
    if threads:
        os.environ["GRUFINITY_ENCODE_THREADS"] = str(threads)
    else:
        os.environ.pop("GRUFINITY_ENCODE_THREADS", None)
    options = {"tokenizer": tokenizer, "vocab_size": vocab_size, "cache_dir": cache}
    start = time.perf_counter()
    s = _grufinity.data_stats([str(path)], options, 0, None)
    wall = time.perf_counter() - start
    header = s["store"]["header"]
    return {"tokens": s["tokens"], "bytes": s["bytes"], "encode_s": header["encode_seconds"],
            "tokenizer_s": s["store"]["tokenizer_seconds"], "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default=str(DEFAULT))
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="comma-separated encoder thread counts")
    args = ap.parse_args()
    path = Path(args.file)
    if not path.is_file():
        print(f"skipped: {path} is absent", file=sys.stderr)
        return 0
    mb = path.stat().st_size / 1e6
    print(f"file: {path} ({mb:.2f} MB), {os.cpu_count()} CPUs")
    threads = sorted({int(t) for t in args.threads.split(",") if t})
    for tokenizer, vocab in (("byte", None), ("bpe", args.vocab_size)):
        for n in threads:
            with tempfile.TemporaryDirectory() as cache:
                r = measure(path, tokenizer, vocab, n, cache)
                extra = ""
                if tokenizer == "bpe":
                    extra = f" | training the tokenizer: {r['tokenizer_s']:.1f} s ({mb / max(r['tokenizer_s'], 1e-9):.1f} MB/s)"
                print(
                    f"{tokenizer:>4} (vocab {vocab or 256}), {n} thread(s): encode {mb / max(r['encode_s'], 1e-9):8.1f} MB/s "
                    f"({r['encode_s']:.2f} s, {r['tokens']:,} tokens, {r['bytes'] / r['tokens']:.2f} bytes/token){extra}"
                )
                if n == threads[-1]:
                    hit = measure(path, tokenizer, vocab, n, cache)
                    print(f"{tokenizer:>4}: cache hit in {hit['wall_s']:.2f} s (hash sources, map tokens, count stats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
