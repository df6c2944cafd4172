"""TensorBoard logs of a training run, written from its events by ``tensorboardX`` (the
``tensorboard`` extra) into ``<run_dir>/tensorboard``: view them with
``tensorboard --logdir runs``.

What is logged, at the optimiser step as TensorBoard's step:

- every logged step: ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_sec``,
  ``train/step_time``;
- every evaluation: ``val/loss`` (nats/token), ``val/bits_per_byte``, ``val/bits_per_token``,
  ``val/perplexity``, the sample as text (``sample``), histograms of every weight
  (``weights/<parameter>``) and of each block's minGRU update gate z over the first validation
  chunk (``gates/z/block.<i>``), and each gate's mean as a scalar (``gates/z_mean/block.<i>``):
  how much of its state a block replaces per token;
- at the start of a run, its resolved config as text (``config``).

A resumed run appends a new file to the same directory, starting with a restart marker at the
step after its checkpoint: TensorBoard drops whatever a killed process had logged past that
checkpoint, and the curves continue without duplicate steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .errors import MissingExtraError
from .extras import has
from .text import printable

#: Scalars of step and eval events: event key -> tag.
STEP_SCALARS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_sec": "train/tokens_per_sec",
    "step_time": "train/step_time",
}
EVAL_SCALARS = {
    "val_loss": "val/loss",
    "val_bpb": "val/bits_per_byte",
    "val_bpt": "val/bits_per_token",
    "val_ppl": "val/perplexity",
}
GATE_PREFIX = "gates/z/"
GATE_MEAN_PREFIX = "gates/z_mean/"

MISSING = "tensorboard = true needs the TensorBoard writer: pip install 'grufinity[tensorboard]'"


def available() -> bool:
    """Whether the writer (tensorboardX) is installed."""
    return has("tensorboardX")


def require() -> None:
    """Raises a one-line MissingExtraError (a ConfigError) naming the extra when the writer is
    missing."""
    if not available():
        raise MissingExtraError(MISSING)


def log_dir(run_dir: str | Path) -> Path:
    """Where a run's TensorBoard files go."""
    return Path(run_dir) / "tensorboard"


def _markdown_block(text: str) -> str:
    # TensorBoard renders text as markdown: indenting every line makes it a code block, so
    # generated text keeps its line breaks and nothing in it is read as markup.
    return "\n".join("    " + line for line in text.splitlines()) or "    "


class TensorBoardLogger:
    """Writes a run's events (see :func:`grufinity.train`'s ``on_event``) as TensorBoard
    summaries. The writer opens at the ``start`` event, which names the run directory and the
    step the run starts from, and closes at ``done`` or :meth:`close`.

    ``requested``: whether the caller asked for TensorBoard. A resumed run keeps the setting
    saved in its config unless it is given again, so the run's own ``config.json`` decides once
    the run has started; the writer must be installed when it was requested.
    """

    def __init__(self, requested: bool = True, flush_secs: int = 30) -> None:
        if requested:
            require()
        self.requested = requested
        self.flush_secs = flush_secs
        self.writer: Any = None
        self.warning: Optional[str] = None

    def _enabled(self, run_dir: Path) -> bool:
        try:
            saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("tensorboard", False)
        except (OSError, ValueError):
            saved = False
        if (self.requested or saved) and not available():
            # Only reachable when the setting came from the resumed run, not from this call.
            self.warning = f"{run_dir}: no TensorBoard logs for this session: {MISSING}"
            return False
        return self.requested or bool(saved)

    def _open(self, e: dict[str, Any]) -> None:
        run_dir = Path(e["run_dir"])
        if not self._enabled(run_dir):
            return
        from tensorboardX import SummaryWriter  # only now: runs without TensorBoard need no writer

        # Every session starts with a restart marker (SessionLog.START) at the first step it
        # trains: TensorBoard takes a run's first marker as its beginning and each later one as
        # a restart, dropping what an earlier process logged from that step on (past the
        # checkpoint it died after).
        purge = e["step"] + 1
        # tensorboardX names a file by the second and host only, and truncates an existing one:
        # a session that starts within the same second as the previous one would erase its
        # logs. A sequence number keeps names unique and in order (TensorBoard reads by name).
        out = log_dir(run_dir)
        seq = len(list(out.glob("*tfevents*"))) if out.is_dir() else 0
        self.writer = SummaryWriter(str(out), purge_step=purge, flush_secs=self.flush_secs,
                                    filename_suffix=f".{seq:04d}")
        config_file = run_dir / "config.json"
        if config_file.is_file():
            self.writer.add_text("config", _markdown_block(config_file.read_text(encoding="utf-8")), e["step"])

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "start":
            self.close()
            self._open(e)
            return
        w = self.writer
        if w is None:
            return
        if kind == "step":
            for key, tag in STEP_SCALARS.items():
                w.add_scalar(tag, e[key], e["step"])
        elif kind == "eval":
            for key, tag in EVAL_SCALARS.items():
                if e.get(key) is not None:
                    w.add_scalar(tag, e[key], e["step"])
        elif kind == "histograms":
            for h in e["histograms"]:
                w.add_histogram_raw(
                    h["name"], h["min"], h["max"], h["num"], h["sum"], h["sum_squares"],
                    h["bucket_limits"], h["bucket_counts"], e["step"],
                )
                if h["name"].startswith(GATE_PREFIX) and h["num"]:
                    w.add_scalar(GATE_MEAN_PREFIX + h["name"][len(GATE_PREFIX):], h["sum"] / h["num"], e["step"])
        elif kind == "sample":
            w.add_text("sample", _markdown_block(printable(e["text"])), e["step"])
        elif kind == "saved":
            w.flush()  # what TensorBoard shows is at least as far as the newest checkpoint
        elif kind == "done":
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
