"""The ``grufinity`` command line."""

from __future__ import annotations

import codecs
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from . import config as config_mod
from .corpus import DEFAULT_CORPUS_DESCRIPTION
from .errors import GrufinityError

_DEBUG = False


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns every GrufinityError (and OSError) into a one-line message, unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (GrufinityError, OSError) as e:
            if _DEBUG:
                raise
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grufinity")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """Train and run minGRU language models.

    \b
    grufinity train                 train on the built-in corpus (Python's standard library)
    grufinity train my.txt          train on your own text
    grufinity generate runs/NAME    write text with a trained model
    """
    global _DEBUG
    _DEBUG = debug


# ---------------------------------------------------------------- train

def _fmt_time(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Renders trainer events: a live line on a terminal, plain lines otherwise, JSON lines for
    machines, nothing but errors with --quiet."""

    def __init__(self, mode: str, verbose: bool = False) -> None:
        self.verbose = verbose
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.total: Optional[int] = None
        self.max_time: Optional[float] = None
        self.val: Optional[float] = None
        self.live = False

    def _line(self, text: str) -> None:
        if self.live:
            click.echo("\r\x1b[2K", nl=False, err=True)
            self.live = False
        click.echo(text, err=True)

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        if self.mode == "json":
            click.echo(json.dumps(e))
            return
        if self.mode == "none":
            return
        if kind == "data":  # live, for a large corpus
            self.data_live = True
            if e["message"]:
                self._line(f"data: {e['message']}")
            return
        if kind == "start":
            self.total, self.max_time = e["total_steps"], e["max_time"]
            budget = []
            if self.total:
                budget.append(f"{self.total} steps")
            if self.max_time:
                budget.append(f"{_fmt_time(self.max_time)}")
            where = f"resuming {e['resumed_from']} at step {e['step']}" if e["resumed_from"] else "new run"
            self._line(f"run: {e['run_dir']} ({where})")
            if e["data"]:
                self._line(f"data: {e['data']}")
            if self.verbose:
                for backend, why in e.get("device_skipped", []):
                    self._line(f"device: skipped {backend}: {why}")
            if not getattr(self, "data_live", False):
                for message in e.get("data_log") or []:
                    self._line(f"data: {message}")
            self._line(
                f"model: {e['params']:,} parameters | train {e['train_tokens']:,} tokens, "
                f"val {e['val_tokens']:,} | device: {e['device_reason']} | budget: {' or '.join(budget) or 'none'}"
            )
        elif kind == "step":
            eta = None
            if self.total and e["tokens_per_sec"] > 0:
                done = e["step"] / self.total
                eta = e["elapsed"] / max(done, 1e-9) - e["elapsed"] if done > 0 else None
            if self.max_time:
                t_left = self.max_time - e["elapsed"]
                eta = t_left if eta is None else min(eta, t_left)
            total = f"/{self.total}" if self.total else ""
            val = f" | val {self.val:.4f}" if self.val is not None else ""
            text = (
                f"step {e['step']}{total} | loss {e['loss']:.4f}{val} | lr {e['lr']:.2e} | "
                f"{e['tokens_per_sec']:,.0f} tok/s | {_fmt_time(e['elapsed'])} elapsed, ETA {_fmt_time(eta)}"
            )
            if self.mode == "bar":
                click.echo("\r\x1b[2K" + text, nl=False, err=True)
                self.live = True
            else:
                self._line(text)
        elif kind == "eval":
            self.val = e["val_loss"]
            mark = " (best)" if e["best"] else ""
            self._line(
                f"eval step {e['step']}: val loss {e['val_loss']:.4f} nats/token, "
                f"{e['val_bpb']:.3f} bits/byte, ppl {e['val_ppl']:.2f}{mark}"
            )
        elif kind == "sample":
            text = e["text"].strip("\n")
            self._line("sample: " + text[:300].replace("\n", "\n        "))
        elif kind == "skipped":
            self._line(
                f"step {e['step']}: loss or gradients not finite, update skipped; lr multiplier now "
                f"{e['lr_scale']:.3g} ({e['consecutive']} skipped in a row)"
            )
        elif kind == "done":
            self._line(
                f"done: {e['step']} steps, {e['tokens']:,} tokens in {_fmt_time(e['elapsed'])}"
                + (f", val loss {e['val_loss']:.4f}" if e.get("val_loss") is not None else "")
                + (" (stopped early: no new best validation loss)" if e.get("reason") == "early_stop" else "")
            )


#: Settings a resumed run keeps from its checkpoint unless given again.
RESUME_INHERITS = ("eval_every", "eval_tokens", "save_every", "keep_last", "log_every", "sample_tokens",
                   "early_stop_patience", "on_nan")
BUDGETS = ("max_steps", "max_tokens", "max_time", "epochs")


def _inherit_from_resumed_run(cfg: config_mod.TrainConfig, explicit: set[str]) -> None:
    """`--resume` alone continues with the run's own cadence and budget; flags given now win."""
    from . import resume_checkpoint

    ckpt = resume_checkpoint(cfg)
    if ckpt is None:
        return
    saved = json.loads((ckpt / "trainer.json").read_text())["config"]
    for key in RESUME_INHERITS:
        if key not in explicit and key in saved:
            setattr(cfg, key, saved[key])
    if not any(k in explicit for k in BUDGETS):
        for key in BUDGETS:
            setattr(cfg, key, saved[key])


def _opt(name: str, type_: Any, help_: str, **kw: Any):
    return click.option(name, type=type_, default=None, help=help_, **kw)


TRAIN_OPTIONS = [
    _opt("--config", click.Path(dir_okay=False), "TOML file of settings (any key below); flags override it."),
    _opt("--out-dir", str, "Parent directory of runs.  [default: runs]"),
    _opt("--name", str, "Run name: the run goes to OUT_DIR/NAME.  [default: run-DATE-TIME]"),
    _opt("--device", str, "auto, cpu, cuda[:N], vulkan[:N]; or set GRUFINITY_DEVICE.  [default: auto]"),
    _opt("--seed", int, "Random seed; a CPU run with the same seed is reproducible.  [default: 1337]"),
    _opt("--dim", int, "Model width.  [default: 128]"),
    _opt("--depth", int, "Number of minGRU blocks.  [default: 3]"),
    _opt("--params", str, "Size the model by parameter budget instead, e.g. 5M (picks dim and depth)."),
    _opt("--expansion", float, "minGRU inner width / dim.  [default: 1.5]"),
    _opt("--ff-mult", float, "Feed-forward width / dim.  [default: 4]"),
    _opt("--ff-kind", click.Choice(["gelu", "swiglu"]), "Feed-forward variant.  [default: gelu]"),
    _opt("--conv-kernel", int, "Causal depthwise conv taps before each minGRU, 0 = off.  [default: 0]"),
    _opt("--tie-embeddings/--no-tie-embeddings", bool, "Share embedding and output head weights."),
    _opt("--dropout", float, "Dropout probability.  [default: 0]"),
    _opt("--tokenizer", str, "byte, char (vocabulary from the corpus), bpe (byte-level BPE trained on the corpus), "
         "or a tokenizer.json / run directory to reuse.  [default: byte]"),
    _opt("--vocab-size", int, "Vocabulary size of a bpe tokenizer trained on the corpus.  [default: 4096]"),
    _opt("--doc-separator/--no-doc-separator", bool, "Insert a separator token between corpus files (documents)."),
    _opt("--reset-at-doc/--no-reset-at-doc", bool, "Reset a stream's carried state after it crosses a document boundary "
         "(needs --doc-separator)."),
    _opt("--cache-dir", str, "Token cache directory; or set GRUFINITY_CACHE.  [default: ~/.cache/grufinity/tokens]"),
    _opt("--batch-size", int, "Parallel streams (rows) per step.  [default: 16]"),
    _opt("--chunk-len", int, "Tokens per stream per step (TBPTT length).  [default: 128]"),
    _opt("--val-fraction", float, "Tail of the corpus held out for validation.  [default: 0.1]"),
    _opt("--lr", float, "Peak learning rate.  [default: 3e-3]"),
    _opt("--warmup", int, "Linear warmup steps.  [default: 50]"),
    _opt("--schedule", click.Choice(["constant", "linear", "cosine", "plateau"]),
         "Decay after warmup; plateau: constant, reduced when the validation loss stops improving.  [default: cosine]"),
    _opt("--min-lr-ratio", float, "Final lr as a fraction of --lr (the floor of plateau reductions).  [default: 0.1]"),
    _opt("--plateau-patience", int, "plateau: evaluations without a new best before the lr is reduced.  [default: 3]"),
    _opt("--plateau-factor", float, "plateau: what each reduction multiplies the lr by.  [default: 0.5]"),
    _opt("--weight-decay", float, "AdamW decoupled weight decay (matrices only).  [default: 0.1]"),
    _opt("--beta1", float, "AdamW beta1.  [default: 0.9]"),
    _opt("--beta2", float, "AdamW beta2.  [default: 0.99]"),
    _opt("--eps", float, "AdamW epsilon.  [default: 1e-8]"),
    _opt("--grad-clip", float, "Clip the global gradient norm to this, 0 = off.  [default: 1.0]"),
    _opt("--accum", int, "Chunks accumulated per optimiser step.  [default: 1]"),
    _opt("--on-nan", click.Choice(["stop", "skip"]), "A non-finite loss or gradient: stop the run, or skip the step and "
         "halve the lr (stopping after 5 in a row).  [default: stop]"),
    _opt("--max-steps", int, "Stop after this many steps."),
    _opt("--max-tokens", int, "Stop after this many training tokens."),
    _opt("--max-time", float, "Stop after this many seconds.  [default: 180 when no other budget]"),
    _opt("--epochs", float, "Stop after this many passes over the training split."),
    _opt("--eval-every", int, "Steps between evaluations, 0 = only at the end.  [default: 100]"),
    _opt("--eval-tokens", int, "Validation tokens per evaluation, 0 = all.  [default: 65536]"),
    _opt("--save-every", int, "Steps between extra checkpoints, 0 = at evaluations only.  [default: 0]"),
    _opt("--keep-last", int, "Step checkpoints to keep (the best is always kept).  [default: 3]"),
    _opt("--early-stop-patience", int, "Stop after this many evaluations without a new best validation loss, "
         "0 = never.  [default: 0]"),
    _opt("--log-every", int, "Steps between progress lines.  [default: 10]"),
    _opt("--sample-prompt", str, "Prompt of the sample written at each evaluation.  [default: 'def ']"),
    _opt("--sample-tokens", int, "Length of that sample, 0 = none.  [default: 200]"),
    _opt("--resume", str, "Continue a run: 'auto' (the run named by --name, if it exists) or a run/checkpoint path."),
    _opt("--progress", click.Choice(["auto", "bar", "plain", "json", "none"]), "Progress display.  [default: auto]"),
]


def _with_options(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f

    return deco


@main.command(context_settings={"max_content_width": 110})
@click.argument("data", nargs=-1)
@_with_options(TRAIN_OPTIONS)
@click.option("-q", "--quiet", is_flag=True, help="Print only the run directory and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Also say why `--device auto` skipped each backend.")
def train(data: tuple[str, ...], config: Optional[str], quiet: bool, verbose: bool, **flags: Any) -> None:
    """Train a minGRU language model on DATA (files, directories or globs).

    Without DATA it trains on the built-in corpus: {default}, so the model learns to write
    Python. Progress shows loss, validation loss, tokens/s and ETA; the run directory gets the
    resolved config, checkpoints (safetensors), metrics.jsonl/csv and samples.txt.

    Ctrl-C stops after the current step and saves a checkpoint (a second Ctrl-C quits at once);
    continue with --resume.
    """
    from . import train as run_training

    overrides = {k: v for k, v in flags.items() if v is not None}
    if data:
        overrides["data"] = list(data)
    if "device" not in overrides and os.environ.get("GRUFINITY_DEVICE"):
        overrides["device"] = os.environ["GRUFINITY_DEVICE"]
    budgets = BUDGETS
    explicit = set(overrides) | (set(config_mod.load_toml(config)) if config else set())
    cfg = config_mod.build(overrides, config)
    if any(k in explicit for k in budgets if k != "max_time") and "max_time" not in explicit:
        cfg.max_time = None  # the default time budget only applies when no other is given
    _inherit_from_resumed_run(cfg, explicit)
    progress = Progress("none" if quiet else cfg.progress, verbose=verbose)

    terminated = {"sigterm": False}

    def on_sigint(signum: int, frame: Any) -> None:
        # First Ctrl-C: stop after this step and save. Second: the default action, at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt

    def on_sigterm(signum: int, frame: Any) -> None:
        terminated["sigterm"] = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        outcome = run_training(cfg, progress)
    except KeyboardInterrupt as e:
        progress.live and click.echo("", err=True)
        info = {}
        if e.args and isinstance(e.args[0], str) and e.args[0].startswith("{"):
            info = json.loads(e.args[0])
        if info:
            click.echo(
                f"interrupted at step {info['step']}; checkpoint saved to {info['checkpoint']}\n"
                f"resume with: grufinity train --resume {info['run_dir']}",
                err=True,
            )
        else:
            click.echo("interrupted before training started; nothing was saved", err=True)
        sys.exit(143 if terminated["sigterm"] else 130)
    if quiet:
        click.echo(outcome["run_dir"])
    else:
        click.echo(f"run saved to {outcome['run_dir']}", err=True)
        click.echo(f"generate with: grufinity generate {outcome['run_dir']}", err=True)


train.help = train.help.replace("{default}", DEFAULT_CORPUS_DESCRIPTION)


# ---------------------------------------------------------------- data

@main.group()
def data() -> None:
    """Inspect corpora: tokenizers, token caches, statistics."""


@data.command("stats")
@click.argument("paths", nargs=-1, required=True)
@click.option("--tokenizer", default="byte", show_default=True,
              help="byte, char, bpe, or a tokenizer.json / run directory.")
@click.option("--vocab-size", type=click.IntRange(min=1), default=None, help="Vocabulary size of a bpe tokenizer trained on PATHS.  [default: 4096]")
@click.option("--doc-separator", is_flag=True, help="Insert a separator token between files.")
@click.option("--cache-dir", default=None, help="Token cache directory; or set GRUFINITY_CACHE.")
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True, help="Most frequent tokens to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_stats(paths: tuple[str, ...], tokenizer: str, vocab_size: Optional[int], doc_separator: bool,
               cache_dir: Optional[str], top: int, as_json: bool) -> None:
    """Bytes, tokens, vocabulary usage, most frequent tokens and line lengths of PATHS (files,
    directories or globs). Encodes through the token cache, so a later `train` reuses it."""
    from . import _grufinity, corpus

    files = corpus.resolve(list(paths))
    options = {
        "tokenizer": str(Path(tokenizer).expanduser()) if tokenizer.startswith("~") else tokenizer,
        "vocab_size": vocab_size,
        "doc_separator": doc_separator,
        "cache_dir": str(Path(cache_dir).expanduser()) if cache_dir else None,
    }

    def on_event(event_json: str) -> bool:
        message = json.loads(event_json)["message"]
        if message and not as_json:
            click.echo(f"data: {message}", err=True)
        return True

    s = json.loads(_grufinity.data_stats([str(f) for f in files], json.dumps(options), top, on_event))
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


# ---------------------------------------------------------------- generate

def _device(device: Optional[str]) -> str:
    return device or os.environ.get("GRUFINITY_DEVICE") or "auto"


def _unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` in a command-line string become newline, tab, backslash."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class _TextOut:
    """Writes generated bytes to stdout as text, split only at UTF-8 character boundaries."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, piece: bytes) -> None:
        text = self.decoder.decode(piece)
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()

    def close(self) -> None:
        tail = self.decoder.decode(b"", final=True)
        if tail:
            sys.stdout.write(tail)
        sys.stdout.flush()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: Decoding options shared by `generate` and `chat`.
DTYPE_HELP = ("Weight matrices as bfloat16 (bf16): about half the time per generated token on the CPU for "
              "models larger than its caches, at a small loss cost (measure it with `eval --dtype bf16`).")

SAMPLING_OPTIONS = [
    click.option("-t", "--temperature", type=float, default=0.8, show_default=True, help="Sampling temperature, 0 = greedy."),
    click.option("--top-k", type=int, default=0, show_default=True, help="Sample from the k most likely tokens, 0 = off."),
    click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass, 1 = off."),
    click.option("--min-p", type=float, default=0.0, show_default=True, help="Drop tokens below min-p x the top probability."),
    click.option("--repetition-penalty", type=float, default=1.0, show_default=True, help="Penalise tokens already seen, 1 = off."),
    click.option("--no-repeat-ngram-size", type=int, default=0, show_default=True,
                 help="Never repeat an n-gram of this many tokens (prompt included), 0 = off."),
    click.option("--min-new-tokens", type=int, default=0, show_default=True,
                 help="Tokens to write before a stop string or --eos may end the output."),
    click.option("--stop", "stop", multiple=True, metavar="TEXT",
                 help="End the output when it ends with TEXT (left out of the output); repeatable. "
                      "\\n and \\t are understood."),
    click.option("--eos", type=int, default=None, help="End-of-sequence token id (the byte tokenizer has none)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Sampler seed."),
    click.option("--device", type=str, default=None, help="auto, cpu, cuda[:N], vulkan[:N]."),
    click.option("--dtype", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
                 help=DTYPE_HELP),
]


@main.command()
@click.argument("run", type=str)
@click.option("-p", "--prompt", default=None, help="Text to continue.  [default: the run's sample prompt]")
@click.option("--prompt-file", type=click.Path(exists=True, dir_okay=False), help="Read the prompt from a file.")
@click.option("-n", "--max-new-tokens", type=int, default=500, show_default=True, help="Tokens to generate.")
@_with_options(SAMPLING_OPTIONS)
@click.option("--beams", type=int, default=1, show_default=True,
              help="Beam search width, 1 = off (beam search is deterministic and prints at the end).")
@click.option("--length-penalty", type=float, default=0.0, show_default=True,
              help="Beam score = log-probability / length^this, 0 = plain sum.")
@click.option("--continue", "continue_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Continue the text whose state FILE holds (if it exists), then save the new state there: "
                   "a long text written piece by piece equals one written at once.")
def generate(run: str, prompt: Optional[str], prompt_file: Optional[str], device: Optional[str], dtype: str,
             continue_file: Optional[str], **sampling: Any) -> None:
    """Write text with the model in RUN (a run directory or a checkpoint), streamed to stdout."""
    from . import load

    sampling["stop"] = [_unescape(s) for s in sampling["stop"]]
    model = load(run, _device(device), dtype)
    model.check_sampling(**sampling)  # before anything is printed
    state = None
    state_path = Path(continue_file) if continue_file else None
    if state_path is not None and state_path.exists():
        try:
            state = model.load_state(state_path.read_bytes())
        except GrufinityError as e:
            raise type(e)(f"{state_path}: {e}") from e
    if prompt_file:
        prompt = Path(prompt_file).read_text(encoding="utf-8", errors="replace")
    if prompt is None:
        prompt = "" if state is not None else model.config.get("sample_prompt", "")
    out = _TextOut()
    sys.stdout.write(prompt)
    sys.stdout.flush()
    try:
        _, state = model.generate_bytes(prompt, state=state, on_piece=out, **sampling)
    except KeyboardInterrupt:
        out.close()
        sys.stdout.write("\n")
        sys.exit(130)
    out.close()
    if state_path is not None:
        _write_atomically(state_path, model.save_state(state))
    else:
        sys.stdout.write("\n")


# ---------------------------------------------------------------- chat

CHAT_HELP = """commands:
  /reset        forget the conversation (start from a fresh state)
  /temp X       set the temperature (0 = greedy)
  /topk N       sample from the N most likely tokens (0 = off)
  /help         show this help
  /quit         leave (so does Ctrl-D)"""


@main.command()
@click.argument("run", type=str)
@click.option("-n", "--max-new-tokens", type=int, default=200, show_default=True, help="Most tokens per reply.")
@_with_options(SAMPLING_OPTIONS)
def chat(run: str, device: Optional[str], dtype: str, **sampling: Any) -> None:
    """Talk with the model in RUN: each line you type is fed to the model (with its newline) and
    the model's continuation is printed, until a stop string (default: a newline). Every turn
    continues the same recurrent state, so the whole conversation is the context.

    \b
    /reset  /temp X  /topk N  /help  /quit   (Ctrl-D also quits)

    Reads standard input line by line, so it also takes a script from a pipe.
    """
    from . import load

    sampling["stop"] = [_unescape(s) for s in sampling["stop"]] or ["\n"]
    model = load(run, _device(device), dtype)
    model.check_sampling(**sampling)
    interactive = sys.stdin.isatty()

    def note(text: str) -> None:
        click.echo(text, err=True)

    if interactive:
        note(f"chatting with {model.checkpoint} ({model.num_params:,} parameters); /help for commands, Ctrl-D to quit")
    state = None
    while True:
        try:
            if interactive:
                line = input("> ")
            else:
                line = sys.stdin.readline()
                if line == "":
                    break
                line = line.rstrip("\r\n")
        except EOFError:
            if interactive:
                note("")
            break
        except KeyboardInterrupt:
            note("")
            sys.exit(130)
        command = line.strip()
        if command.startswith("/"):
            name, _, arg = command.partition(" ")
            arg = arg.strip()
            if name in ("/quit", "/exit"):
                break
            if name == "/help":
                note(CHAT_HELP)
            elif name == "/reset":
                state = None
                note("(state reset)")
            elif name in ("/temp", "/topk"):
                key, kind = ("temperature", float) if name == "/temp" else ("top_k", int)
                try:
                    value = kind(arg)
                    model.check_sampling(**{**sampling, key: value})
                except (ValueError, GrufinityError) as e:
                    message = str(e) if isinstance(e, GrufinityError) else f"{name} needs a number, got {arg!r}"
                    note(f"error: {message}")
                    continue
                sampling[key] = value
                note(f"({key} = {value})")
            else:
                note(f"unknown command {name}; /help lists the commands")
            continue
        out = _TextOut()
        try:
            _, state = model.generate_bytes(line + "\n", state=state, on_piece=out, **sampling)
        except KeyboardInterrupt:
            note("(interrupted)")
        out.close()
        sys.stdout.write("\n")
        sys.stdout.flush()


# ---------------------------------------------------------------- eval / info

@main.command(name="eval")
@click.argument("run", type=str)
@click.argument("data", nargs=-1, required=True)
@click.option("--chunk-len", type=click.IntRange(min=1), default=256, show_default=True, help="Tokens per forward call.")
@click.option("--reset-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Reset the state every N tokens (0 = carry it through the whole text).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--device", type=str, default=None, help="auto, cpu, cuda[:N], vulkan[:N].")
@click.option("--dtype", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True, help=DTYPE_HELP)
def eval_cmd(run: str, data: tuple[str, ...], chunk_len: int, reset_every: int, as_json: bool, device: Optional[str],
             dtype: str) -> None:
    """Loss of the model in RUN on DATA (files, directories or globs), with carried state."""
    from . import corpus, load

    model = load(run, _device(device), dtype)
    files = corpus.resolve(list(data))
    text = b"".join(p.read_bytes() for p in files)
    r = model.evaluate(text, chunk=chunk_len, reset_every=reset_every)
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
    from . import load

    model = load(run, "cpu")
    ts = model.trainer_state
    cfg = ts["config"]
    modules = model.module_params()
    tensors = model.tensor_stats()
    if as_json:
        click.echo(json.dumps({
            "checkpoint": str(model.checkpoint), "parameters": model.num_params, "model": cfg["model"],
            "tokenizer": ts["tokenizer"], "step": ts["step"], "tokens": ts["tokens"],
            "best_val_loss": ts.get("best_val_loss"), "modules": modules, "tensors": tensors,
        }))
        return
    click.echo(f"checkpoint: {model.checkpoint}")
    click.echo(f"parameters: {model.num_params:,}")
    click.echo("model: " + ", ".join(f"{k}={v}" for k, v in cfg["model"].items()))
    click.echo(f"tokenizer: {ts['tokenizer']['kind']}")
    best = ts.get("best_val_loss")
    click.echo(
        f"trained: {ts['step']} steps, {ts['tokens']:,} tokens, {_fmt_time(ts['elapsed'])}"
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
    from . import _grufinity
    from .devices import probe, resolve

    for name, ok, detail in _grufinity.list_devices(False):
        if name.startswith("vulkan"):
            ok, detail = probe(name)
        click.echo(f"{name:8} {'available' if ok else 'unavailable'}: {detail}")
    picked, _ = resolve("auto")
    click.echo(f"auto picks: {picked}")


if __name__ == "__main__":  # pragma: no cover
    main()
