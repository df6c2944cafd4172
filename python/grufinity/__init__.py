"""GRUfinity: train and run minGRU language models.

Quick start::

    import grufinity
    cfg = grufinity.TrainConfig(data=["input.txt"], max_steps=500)
    result = grufinity.train(cfg)
    model = grufinity.load(result["run_dir"])
    print(model.generate("ROMEO:", max_new_tokens=200))
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from . import _grufinity, corpus, devices
from .config import TrainConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    DeviceError,
    GrufinityError,
    GrufinityIOError,
    TrainingDivergedError,
)

__version__ = _grufinity.__version__


def default_run_name() -> str:
    """``run-YYYYmmdd-HHMMSS`` in local time."""
    return time.strftime("run-%Y%m%d-%H%M%S")


def resume_checkpoint(config: TrainConfig) -> Optional[Path]:
    """The checkpoint ``config.resume`` names: ``"auto"`` gives ``out_dir/name``'s last checkpoint
    if there is one (else None: a fresh run), a path gives that run's last checkpoint or that
    checkpoint itself."""
    if not config.resume:
        return None
    if config.resume == "auto":
        if not config.name:
            raise ConfigError("config `resume`: `auto` needs a run --name to look for")
        candidate = Path(config.out_dir) / config.name / "checkpoints" / "last"
        return candidate if (candidate / "trainer.json").exists() else None
    p = Path(config.resume)
    if not p.exists():
        raise DataNotFoundError(f"{p}: no such run or checkpoint to resume")
    ckpt = p / "checkpoints" / "last" if (p / "checkpoints" / "last").exists() else p
    if not (ckpt / "trainer.json").exists():
        raise CheckpointError(f"{p} has no complete checkpoint to resume")
    return ckpt


def train(
    config: TrainConfig,
    on_event: Optional[Callable[[dict[str, Any]], Optional[bool]]] = None,
) -> dict[str, Any]:
    """Trains as ``config`` says and returns the outcome (``run_dir``, ``checkpoint``, ``step``,
    ``interrupted``, ``final_val_loss``). ``on_event`` receives every event as a dict (``event``
    is one of start, step, eval, sample, saved, done); returning False stops the run after the
    current step, with a checkpoint. Ctrl-C does the same and raises KeyboardInterrupt.

    ``config.resume``: ``"auto"`` continues ``out_dir/name`` if it has a checkpoint, a path
    continues that run or checkpoint.
    """
    name = config.name or default_run_name()
    resume_path = resume_checkpoint(config)
    if resume_path is None:
        files = corpus.resolve(config.data) if config.data else corpus.default_corpus()
        description = corpus.describe(files) if config.data else corpus.DEFAULT_CORPUS_DESCRIPTION
    else:
        files, description = [], ""
    device, skipped = devices.resolve(config.device)
    core_json = dataclasses.replace(config, device=device).to_core_json(files, description, name)

    def callback(event_json: str) -> bool:
        if on_event is None:
            return True
        event = json.loads(event_json)
        if event["event"] == "start" and config.device.strip().lower() == "auto":
            event["device_reason"] = "auto: " + event["device_reason"]
            event["device_skipped"] = skipped + event.get("device_skipped", [])
        return on_event(event) is not False

    out = _grufinity.train(core_json, str(resume_path) if resume_path else None, callback)
    return json.loads(out)


class State:
    """Recurrent state of a model (for one or several rows). Pass it back to continue.

    After a generation, ``finish`` says why it ended: ``"length"``, ``"eos"``, ``"stop"`` or
    ``"cancelled"`` (None for states that did not come from a generation). Save one with
    :meth:`Model.save_state` and restore it with :meth:`Model.load_state`.
    """

    def __init__(self, inner: Any, finish: Optional[str] = None) -> None:
        self._inner = inner
        self.finish = finish

    @property
    def batch(self) -> int:
        return self._inner.batch

    @property
    def tokens_seen(self) -> int:
        """Tokens this state has consumed (prompt and generated) since it was initial."""
        return self._inner.tokens_seen


#: Integer sampling keywords and the smallest value each accepts.
_SAMPLING_INTS = {"max_new_tokens": 0, "min_new_tokens": 0, "top_k": 0, "no_repeat_ngram_size": 0, "beams": 1, "seed": 0}


class Model:
    """A trained minGRU language model."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.trainer_state: dict[str, Any] = json.loads(inner.trainer_json)
        self.config: dict[str, Any] = self.trainer_state["config"]

    @property
    def checkpoint(self) -> Path:
        return Path(self._inner.checkpoint)

    @property
    def num_params(self) -> int:
        return self._inner.num_params

    @property
    def vocab_size(self) -> int:
        return self._inner.vocab_size

    def encode(self, text: str | bytes) -> list[int]:
        return self._inner.encode(text.encode() if isinstance(text, str) else text)

    def decode(self, tokens: list[int]) -> str:
        return bytes(self._inner.decode(list(tokens))).decode("utf-8", errors="replace")

    def initial_state(self, batch: int = 1) -> State:
        return State(self._inner.initial_state(batch))

    def forward(self, tokens: np.ndarray, state: Optional[State] = None) -> tuple[np.ndarray, State]:
        """``tokens``: int array ``[B, T]`` (or ``[T]``) → (logits float32 ``[B, T, V]``, state)."""
        arr = np.asarray(tokens, dtype=np.int64)
        if arr.ndim == 1:
            arr = arr[None, :]
        logits, st = self._inner.forward(np.ascontiguousarray(arr), state._inner if state else None)
        return logits, State(st)

    def _sampling(self, **kw: Any) -> str:
        values = {k: v for k, v in kw.items() if v is not None}
        for key, low in _SAMPLING_INTS.items():
            v = values.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ConfigError(f"invalid config `{key}`: must be an integer >= {low}")
        stop = values.get("stop")
        if isinstance(stop, (str, bytes)):
            stop = [stop]
        if stop is not None:
            values["stop"] = [s.decode("utf-8", errors="replace") if isinstance(s, bytes) else str(s) for s in stop]
        return json.dumps(values)

    def check_sampling(self, **kw: Any) -> None:
        """Raises ConfigError if the sampling keywords (as :meth:`generate_bytes`) are invalid."""
        _grufinity.Model.sample_logits([0.0] * self.vocab_size, self._sampling(**kw), [], 0)

    def save_state(self, state: State) -> bytes:
        """``state`` as bytes (safetensors tagged with this model's config) to continue later."""
        return bytes(self._inner.state_to_bytes(state._inner))

    def load_state(self, data: bytes) -> State:
        """A state saved by :meth:`save_state`; DataError unless saved by a model of this config."""
        return State(self._inner.state_from_bytes(bytes(data)))

    def generate_bytes(
        self,
        prompt: str | bytes = b"",
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        min_new_tokens: int = 0,
        stop: str | list[str] | None = None,
        eos: Optional[int] = None,
        beams: int = 1,
        length_penalty: float = 0.0,
        seed: int = 0,
        state: Optional[State] = None,
        on_piece: Optional[Callable[[bytes], Optional[bool]]] = None,
    ) -> tuple[bytes, State]:
        """Generates after ``prompt`` (continuing ``state`` if given: the prompt is fed after it,
        and with the same ``seed`` the sampler continues, so generating in pieces equals
        generating at once). Returns the new bytes and the state after them.

        ``stop``: a string or list of strings; generation ends when the output ends with one,
        which is left out of the result (the state has consumed it). ``eos``: end-of-sequence
        token id (the byte tokenizer has none). ``min_new_tokens``: tokens before ``eos`` or a
        stop string may end it. ``no_repeat_ngram_size``: never repeat an n-gram of that many
        tokens. ``beams`` > 1: deterministic beam search (temperature, top-k/p, min-p and seed do
        not apply), scored by the summed log-probability / length**``length_penalty``.
        ``on_piece(bytes)`` sees the output as it is produced; returning False stops.
        """
        data = prompt.encode() if isinstance(prompt, str) else bytes(prompt)
        sampling = self._sampling(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            min_p=min_p, repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
            min_new_tokens=min_new_tokens, stop=stop, eos=eos, beams=beams, length_penalty=length_penalty,
            seed=seed,
        )
        cb = None if on_piece is None else (lambda b: on_piece(bytes(b)))
        out, st, finish = self._inner.generate(data, sampling, state._inner if state else None, cb)
        return bytes(out), State(st, finish)

    def generate_batch(self, prompts: list[str | bytes], **kw: Any) -> list[str]:
        """Generated text after each of ``prompts`` (not including them), computed together: one
        forward per step for all rows. Item ``i`` equals ``generate(prompts[i], **kw)``.
        Keywords as :meth:`generate_bytes` (without ``state`` and ``on_piece``)."""
        if isinstance(prompts, (str, bytes)):
            raise ConfigError("invalid config `prompts`: expected a list of prompts, not one string")
        unknown = set(kw) - set(_GENERATE_KEYWORDS)
        if unknown:
            raise TypeError(f"generate_batch() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        data = [p.encode() if isinstance(p, str) else bytes(p) for p in prompts]
        sampling = self._sampling(**{**_GENERATE_KEYWORDS, **kw})
        outs = self._inner.generate_batch(data, sampling)
        return [bytes(o).decode("utf-8", errors="replace") for o in outs]

    def generate(self, prompt: str | bytes = b"", **kw: Any) -> str:
        """Generated text after ``prompt`` (not including it). Keywords as :meth:`generate_bytes`."""
        out, _ = self.generate_bytes(prompt, **kw)
        return out.decode("utf-8", errors="replace")

    def stream(self, prompt: str | bytes = b"", **kw: Any) -> Iterator[str]:
        """Yields the generated text piece by piece while it is produced, split only at UTF-8
        character boundaries; the pieces join to exactly what :meth:`generate` returns."""
        pieces: queue.Queue[Any] = queue.Queue()
        done = object()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.generate_bytes(prompt, on_piece=pieces.put, **kw)
            except BaseException as e:  # handed to the consumer
                failure.append(e)
            finally:
                pieces.put(done)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while (piece := pieces.get()) is not done:
            text = decoder.decode(piece)
            if text:
                yield text
        worker.join()
        if failure:
            raise failure[0]
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def parameters(self) -> dict[str, np.ndarray]:
        """Every parameter by name (``blocks.0.mingru.to_hz.weight`` ...) as a float32 array."""
        return dict(self._inner.parameters())

    def tensor_stats(self) -> list[dict[str, Any]]:
        """Per parameter tensor: name, shape, size, mean, std, min, max (sorted by name)."""
        out = []
        for name, arr in sorted(self.parameters().items()):
            a = arr.astype(np.float64)
            empty = a.size == 0
            out.append({
                "name": name,
                "shape": list(arr.shape),
                "size": int(a.size),
                "mean": float(a.mean()) if not empty else 0.0,
                "std": float(a.std()) if not empty else 0.0,
                "min": float(a.min()) if not empty else 0.0,
                "max": float(a.max()) if not empty else 0.0,
            })
        return out

    def module_params(self) -> dict[str, int]:
        """Parameter count per top-level module (``embedding``, ``blocks.0``, ..., ``norm``,
        ``head``), in model order."""
        counts: dict[str, int] = {}
        for name, arr in self.parameters().items():
            parts = name.split(".")
            key = ".".join(parts[:2]) if parts[0] == "blocks" and len(parts) > 2 else parts[0]
            counts[key] = counts.get(key, 0) + int(arr.size)

        def order(key: str) -> tuple[int, int, str]:
            first = key.split(".")[0]
            rank = {"embedding": 0, "blocks": 1, "norm": 2, "head": 3}.get(first, 4)
            index = int(key.split(".")[1]) if first == "blocks" and key.split(".")[1].isdigit() else 0
            return (rank, index, key)

        return {k: counts[k] for k in sorted(counts, key=order)}

    def evaluate(self, text: str | bytes, *, rows: int = 1, chunk: int = 256, reset_every: int = 0) -> dict[str, Any]:
        """Loss on ``text`` with the state carried throughout: nats/token, bits per byte, perplexity."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        return json.loads(self._inner.evaluate(data, rows, chunk, reset_every))


#: The keywords of :meth:`Model.generate_batch` and their defaults (as :meth:`Model.generate_bytes`).
_GENERATE_KEYWORDS: dict[str, Any] = dict(
    max_new_tokens=256, temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
    no_repeat_ngram_size=0, min_new_tokens=0, stop=None, eos=None, beams=1, length_penalty=0.0, seed=0,
)


def load(path: str | Path, device: str = "auto", dtype: str = "f32") -> Model:
    """Loads a run directory (its best checkpoint, else its last) or a checkpoint directory.

    ``dtype="bf16"`` rounds the weight matrices to bfloat16: on the CPU, decoding then reads half
    the bytes per token (faster once the model outgrows the CPU caches), at a small cost in loss
    that ``Model.evaluate`` measures (it sees the same rounded weights).
    """
    if dtype not in ("f32", "bf16"):
        raise ConfigError(f"dtype: expected 'f32' or 'bf16', got {dtype!r}")
    resolved, _ = devices.resolve(device)
    return Model(_grufinity.Model.load(str(path), resolved, dtype))


__all__ = [
    "TrainConfig",
    "Model",
    "State",
    "train",
    "load",
    "GrufinityError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "CheckpointError",
    "DeviceError",
    "TrainingDivergedError",
    "GrufinityIOError",
]
