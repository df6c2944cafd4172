"""Commands that look at models, data and devices: ``eval``, ``info``, ``devices``,
``data stats``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional

import click

from .. import _grufinity
from . import main
from ..config import KEYS
from .generate import load_options
from .options import device_or_env, fmt_time, given, options


@main.command(name="eval")
@click.argument("run", type=str)
@click.argument("data", nargs=-1, required=True)
@click.option("--chunk-len", type=int, default=None, help="Tokens per forward call.  [default: the run's chunk_len]")
@click.option("--reset-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Reset the state every N tokens (0 = carry it through the whole text).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@load_options
def eval_cmd(run: str, data: tuple[str, ...], chunk_len: Optional[int], reset_every: int, as_json: bool,
             device: Optional[str], dtype: Optional[str]) -> None:
    """Loss of the model in RUN on DATA (files, directories or globs), with carried state.
    Shows progress on a terminal for long texts; Ctrl-C stops."""
    from .. import corpus
    from ..model import load

    model = load(run, device_or_env(device), dtype)
    files = corpus.resolve(list(data))
    text = b"".join(p.read_bytes() for p in files)
    shown = {"last": time.monotonic()}
    live = sys.stderr.isatty() and not as_json

    def progress(done: int, total: int) -> bool:
        now = time.monotonic()
        if live and total and now - shown["last"] > 0.5:
            shown["last"] = now
            click.echo(f"\revaluating: {100 * done / total:.0f}% of {total:,} tokens", nl=False, err=True)
        return True

    try:
        r = model.evaluate(text, chunk_len=chunk_len, reset_every=reset_every, progress=progress)
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        sys.exit(130)
    if live:
        click.echo("\r\x1b[2K", nl=False, err=True)
    if as_json:
        click.echo(json.dumps(r))
    else:
        click.echo(
            f"loss {r['loss']:.4f} nats/token | {r['bits_per_byte']:.4f} bits/byte | "
            f"perplexity {r['perplexity']:.3f} | {r['tokens']:,} tokens"
        )


@main.command()
@click.argument("run", type=str)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (config, trainer state, modules, tensors).")
def info(run: str, as_json: bool) -> None:
    """Config, size, training state and per-tensor statistics of the model in RUN."""
    from ..model import load

    model = load(run, "cpu")
    ts = model.trainer_state
    cfg = ts["config"]
    modules = model.module_params()
    tensors = model.tensor_stats()
    if as_json:
        click.echo(json.dumps({
            "checkpoint": str(model.checkpoint), "parameters": model.num_params, "model": cfg["model"],
            "tokenizer": model.tokenizer, "step": ts["step"], "tokens": ts["tokens"],
            "best_val_loss": ts.get("best_val_loss"), "modules": modules, "tensors": tensors,
        }))
        return
    click.echo(f"checkpoint: {model.checkpoint}")
    click.echo(f"parameters: {model.num_params:,}")
    click.echo("model: " + ", ".join(f"{k}={v}" for k, v in cfg["model"].items()))
    click.echo(f"tokenizer: {model.tokenizer}")
    best = ts.get("best_val_loss")
    click.echo(
        f"trained: {ts['step']} steps, {ts['tokens']:,} tokens, {fmt_time(ts['elapsed'])}"
        + (f", best val loss {best:.4f} at step {ts['best_step']}" if best is not None else "")
    )
    total = sum(modules.values()) or 1
    click.echo("parameters by module:")
    width = max(len(k) for k in modules) if modules else 0
    for name, n in modules.items():
        click.echo(f"  {name:<{width}}  {n:>12,}  {100 * n / total:5.1f}%")
    click.echo("tensors:")
    shapes = {t["name"]: "x".join(str(d) for d in t["shape"]) for t in tensors}
    nw = max((len(t["name"]) for t in tensors), default=4)
    sw = max((len(s) for s in shapes.values()), default=5)
    click.echo(f"  {'name':<{nw}}  {'shape':<{sw}}  {'mean':>10}  {'std':>10}  {'min':>10}  {'max':>10}")
    for t in tensors:
        click.echo(
            f"  {t['name']:<{nw}}  {shapes[t['name']]:<{sw}}  {t['mean']:>10.4g}  {t['std']:>10.4g}  "
            f"{t['min']:>10.4g}  {t['max']:>10.4g}"
        )


@main.command()
def devices() -> None:
    """List the backends of this build, whether each works here, and what `auto` picks.

    GPU self-checks run in a child process, so a driver that crashes is reported, not fatal."""
    from ..devices import probe, resolve

    for name, ok, detail in _grufinity.list_devices(False):
        if _grufinity.parse_device(name)[1]:
            ok, detail = probe(name)
        click.echo(f"{name:8} {'available' if ok else 'unavailable'}: {detail}")
    picked, _ = resolve("auto")
    click.echo(f"auto picks: {picked}")


@main.group()
def data() -> None:
    """Inspect corpora: tokenizers, token caches, statistics."""


@data.command("stats")
@click.argument("paths", nargs=-1, required=True)
@options(KEYS, only=["tokenizer", "vocab_size", "doc_separator", "cache_dir"])
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True, help="Most frequent tokens to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_stats(paths: tuple[str, ...], top: int, as_json: bool, **flags: Any) -> None:
    """Bytes, tokens, vocabulary usage, most frequent tokens and line lengths of PATHS (files,
    directories or globs) under a tokenizer, as `train` would see them. Encodes through the
    token cache, so a later `train` reuses it."""
    from .. import corpus

    files = corpus.resolve(list(paths))
    options = given(flags)

    def on_event(event: dict[str, Any]) -> bool:
        if event["message"] and not as_json:
            click.echo(f"data: {event['message']}", err=True)
        return True

    s = _grufinity.data_stats([str(f) for f in files], options, top, on_event)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    lines = s["lines"]
    click.echo(f"files: {s['files']:,}  bytes: {s['bytes']:,}")
    click.echo(
        f"tokens: {s['tokens']:,} ({s['tokenizer']}, {s['bytes_per_token']:.3f} bytes/token)"
        + (f", {s['unknown']:,} unknown characters" if s["unknown"] else "")
    )
    click.echo(
        f"vocabulary: {s['used_tokens']:,} of {s['vocab_size']:,} token ids used "
        f"({100 * s['used_tokens'] / max(s['vocab_size'], 1):.1f}%)"
    )
    click.echo(
        f"lines: {lines['count']:,}, bytes per line: mean {lines['mean']:.1f}, min {lines['min']}, "
        f"median {lines['p50']}, p90 {lines['p90']}, p99 {lines['p99']}, max {lines['max']}"
    )
    width = max((len(f"{upper:,}") for upper, _ in lines["histogram"]), default=1)
    peak = max((n for _, n in lines["histogram"]), default=1)
    lower = 0
    for upper, n in lines["histogram"]:
        label = f"{lower:,}" if lower == upper else f"{lower:,}-{upper:,}"
        click.echo(f"  {label:>{2 * width + 1}} | {'#' * max(1, round(30 * n / peak))} {n:,}")
        lower = upper + 1
    if s["top"]:
        click.echo("most frequent tokens:")
        for i, t in enumerate(s["top"], 1):
            click.echo(f"  {i:>3}. {t['text']!r:<20} id {t['id']:<6} {t['count']:>12,}  {100 * t['fraction']:.2f}%")
    click.echo(f"tokens cached at {s['store']['path']}")
