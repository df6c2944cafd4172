"""What the examples share: their command line (a corpus path, ``--tiny``) and tiny settings."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import grufinity

#: Settings that make a run take seconds (``--tiny``, used by CI).
TINY: dict[str, Any] = dict(dim=32, depth=1, batch_size=2, chunk_len=16, max_steps=5, eval_every=0,
                            eval_tokens=256, sample_tokens=0)


def parse(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("corpus", nargs="?", help="text file or directory to train on (default: built-in corpus)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model for a few steps (for a quick check)")
    parser.add_argument("--out-dir", default=None, help="where runs go (default: a temporary directory)")
    args = parser.parse_args()
    if args.out_dir is None:
        args.out_dir = tempfile.mkdtemp(prefix="grufinity-example-")
    if args.corpus is None and args.tiny:
        # A small slice of the built-in corpus keeps the tokenizer and the cache quick too.
        args.corpus = [str(p) for p in grufinity.corpus.default_corpus(max_bytes=200_000)]
    elif args.corpus is not None:
        args.corpus = [args.corpus]
    return args


def settings(args: argparse.Namespace, name: str, **kw: Any) -> dict[str, Any]:
    """Keywords of a TrainConfig for this example's run ``name``."""
    values: dict[str, Any] = dict(out_dir=args.out_dir, name=name, data=args.corpus or [])
    if args.tiny:
        values.update(TINY)
    values.update(kw)
    return values


def run_dir(result: dict[str, Any]) -> Path:
    return Path(result["run_dir"])
