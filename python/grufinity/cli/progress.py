"""How a training run looks on the terminal: a live progress bar drawn by ``rich`` (loss,
validation loss, tokens/s, ETA) on a terminal when it is installed, plain lines otherwise (at
most one step line every few seconds, so piped logs stay short), JSON lines for machines, or
nothing."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional

import click

from ..text import printable
from .options import fmt_time

#: Seconds between step lines in plain mode (on a terminal, and off one).
PLAIN_INTERVAL = {True: 2.0, False: 10.0}

MODES = ("auto", "bar", "plain", "json", "none")


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def make(mode: str, verbose: bool = False) -> "Progress":
    """The renderer for ``mode`` (``auto``: a bar on a terminal with rich, else plain lines)."""
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() and _has_rich() else "plain"
    if mode == "bar" and not _has_rich():
        mode = "plain"
    if mode == "bar":
        return RichProgress(verbose)
    if mode == "json":
        return JsonProgress(verbose)
    if mode == "none":
        return Progress(verbose)
    return PlainProgress(verbose)


class Progress:
    """Shows nothing (``--progress none`` and ``--quiet``); the base of the others."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.total: Optional[int] = None
        self.max_time: Optional[float] = None
        self.val: Optional[float] = None

    def __call__(self, e: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    # ------------------------------------------------------------ shared text

    def fraction(self, e: dict[str, Any]) -> Optional[float]:
        """How much of the budget a step event has used (by steps or by time)."""
        parts = []
        if self.total:
            parts.append(e["step"] / self.total)
        if self.max_time:
            parts.append(e["elapsed"] / self.max_time)
        return min(max(parts), 1.0) if parts else None

    def eta(self, e: dict[str, Any]) -> Optional[float]:
        done = self.fraction(e)
        if not done:
            return None
        return e["elapsed"] / done - e["elapsed"]

    def step_text(self, e: dict[str, Any]) -> str:
        total = f"/{self.total}" if self.total else ""
        val = f" | val {self.val:.4f}" if self.val is not None else ""
        return (
            f"step {e['step']}{total} | loss {e['loss']:.4f}{val} | lr {e['lr']:.2e} | "
            f"{e['tokens_per_sec']:,.0f} tok/s | {fmt_time(e['elapsed'])} elapsed, ETA {fmt_time(self.eta(e))}"
        )

    def lines(self, e: dict[str, Any]) -> list[str]:
        """The lines an event prints (besides step lines)."""
        kind = e["event"]
        if kind == "data":
            return [f"data: {e['message']}"] if e["message"] else []
        if kind == "start":
            self.total, self.max_time = e["total_steps"], e["max_time"]
            budget = []
            if self.total:
                budget.append(f"{self.total} steps")
            if self.max_time:
                budget.append(fmt_time(self.max_time))
            if e.get("branched_from"):
                where = f"new run branched from {e['branched_from']} at step {e['step']}"
            elif e["resumed_from"]:
                where = f"resuming {e['resumed_from']} at step {e['step']}"
            else:
                where = "new run"
            out = [f"run: {e['run_dir']} ({where})"]
            if e["data"]:
                out.append(f"data: {e['data']}")
            if self.verbose:
                out += [f"device: skipped {backend}: {why}" for backend, why in e.get("device_skipped", [])]
            out += [f"data: {m}" for m in e.get("data_log") or [] if m]
            if e.get("debris_removed"):
                out.append(f"cleaned up {e['debris_removed']:,} bytes left by an interrupted checkpoint write")
            out.append(
                f"model: {e['params']:,} parameters | train {e['train_tokens']:,} tokens, "
                f"val {e['val_tokens']:,} | device: {e['device_reason']} | budget: {' or '.join(budget) or 'none'}"
                + (f" | {e['precision']}" if e.get("precision", "f32") != "f32" else "")
            )
            return out
        if kind == "eval":
            self.val = e["val_loss"]
            mark = " (best)" if e["best"] else ""
            return [
                f"eval step {e['step']}: val loss {e['val_loss']:.4f} nats/token, "
                f"{e['val_bpb']:.3f} bits/byte, ppl {e['val_ppl']:.2f}{mark}"
            ]
        if kind == "sample":
            text = printable(e["text"].strip("\n"))[:300]
            return ["sample: " + text.replace("\n", "\n        ")]
        if kind == "skipped":
            return [
                f"step {e['step']}: loss or gradients not finite, update skipped; lr multiplier now "
                f"{e['lr_scale']:.3g} ({e['consecutive']} skipped in a row)"
            ]
        if kind == "done":
            return [
                f"done: {e['step']} steps, {e['tokens']:,} tokens in {fmt_time(e['elapsed'])}"
                + (f", val loss {e['val_loss']:.4f}" if e.get("val_loss") is not None else "")
                + (" (stopped early: no new best validation loss)" if e.get("reason") == "early_stop" else "")
            ]
        return []


class PlainProgress(Progress):
    """Plain lines on stderr: every event line, and a step line at most every few seconds."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__(verbose)
        self.interval = PLAIN_INTERVAL[sys.stderr.isatty()]
        self.last_step_line = -float("inf")

    def __call__(self, e: dict[str, Any]) -> None:
        if e["event"] == "step":
            now = time.monotonic()
            if now - self.last_step_line >= self.interval or e["step"] == self.total:
                self.last_step_line = now
                click.echo(self.step_text(e), err=True)
            return
        for line in self.lines(e):
            click.echo(line, err=True)


class JsonProgress(Progress):
    """Every event as one JSON line on stdout."""

    def __call__(self, e: dict[str, Any]) -> None:
        click.echo(json.dumps(e))


class RichProgress(Progress):
    """A live bar on stderr, drawn by rich; event lines scroll above it."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__(verbose)
        from rich.console import Console
        from rich.progress import BarColumn, Progress as Bar, TaskProgressColumn, TextColumn

        self.console = Console(stderr=True, highlight=False)
        self.bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            transient=False,
        )
        self.task: Optional[int] = None

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, e: dict[str, Any]) -> None:
        if e["event"] == "step":
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task("step", total=1.0, stats="")
            total = f"/{self.total}" if self.total else ""
            val = f"  val {self.val:.4f}" if self.val is not None else ""
            stats = (
                f"loss {e['loss']:.4f}{val}  lr {e['lr']:.1e}  {e['tokens_per_sec']:,.0f} tok/s  "
                f"{fmt_time(e['elapsed'])} elapsed  ETA {fmt_time(self.eta(e))}"
            )
            self.bar.update(self.task, completed=self.fraction(e) or 0.0, description=f"step {e['step']}{total}", stats=stats)
            return
        for line in self.lines(e):
            self._print(line)

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()
            self.task = None
