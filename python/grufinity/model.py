"""A trained model for inference: :func:`load` gives a :class:`Model`; generation keywords are
the sampling keys of the core (``config.SAMPLING_KEYS``)."""

from __future__ import annotations

import queue
import threading
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from . import _grufinity, devices
from .config import SAMPLING_KEYS
from .errors import ConfigError
from .text import decode_pieces


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


def _bytes(value: Any, what: str) -> bytes:
    """``str`` (as UTF-8) or bytes-like; anything else is a ConfigError naming ``what``."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ConfigError(f"invalid argument `{what}`: must be str or bytes, got {type(value).__name__} {value!r}")


def _state(state: Any) -> Any:
    if state is None:
        return None
    if not isinstance(state, State):
        raise ConfigError(f"invalid argument `state`: must be a grufinity.State, got {type(state).__name__}")
    return state._inner


def _callback(fn: Any, what: str) -> Any:
    if fn is not None and not callable(fn):
        raise ConfigError(f"invalid argument `{what}`: must be callable, got {type(fn).__name__}")
    return fn


_SAMPLING_HELP = "\n".join(f"    ``{k['name']}`` (default {k['default']!r}): {k['help']}" for k in SAMPLING_KEYS)


class Model:
    """A trained minGRU language model (see :func:`load`)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        #: The checkpoint's trainer state: step, tokens, best validation loss, config...
        self.trainer_state: dict[str, Any] = inner.trainer
        #: The resolved training config (architecture under ``model``).
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

    @property
    def tokenizer(self) -> str:
        """The tokenizer's kind: byte, char or bpe."""
        return self._inner.tokenizer

    @property
    def dtype(self) -> str:
        return self._inner.dtype

    def encode(self, text: str | bytes) -> list[int]:
        return self._inner.encode(_bytes(text, "text"))

    def decode(self, tokens: list[int]) -> str:
        return bytes(self._inner.decode([int(t) for t in tokens])).decode("utf-8", errors="replace")

    def initial_state(self, batch: int = 1) -> State:
        return State(self._inner.initial_state(batch))

    def forward(self, tokens: Any, state: Optional[State] = None) -> tuple[np.ndarray, State]:
        """``tokens``: integer array ``[B, T]`` (or ``[T]``) → (logits float32 ``[B, T, V]``,
        state after the last token)."""
        arr = np.asarray(tokens)
        if arr.dtype.kind not in "iu":
            raise ConfigError(f"invalid argument `tokens`: must be integer token ids, got an array of {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ConfigError(f"invalid argument `tokens`: must be [T] or [B, T], got shape {arr.shape}")
        logits, st = self._inner.forward(np.ascontiguousarray(arr, dtype=np.int64), _state(state))
        return logits, State(st)

    def check_sampling(self, **sampling: Any) -> None:
        """Raises ConfigError if the sampling keywords (as :meth:`generate_bytes`) are invalid."""
        _grufinity.Model.sample_logits([0.0] * self.vocab_size, sampling, [], 0)

    def save_state(self, state: State) -> bytes:
        """``state`` as bytes (safetensors tagged with this model's config) to continue later."""
        return bytes(self._inner.state_to_bytes(_state(state)))

    def load_state(self, data: bytes) -> State:
        """A state saved by :meth:`save_state`; DataError unless saved by a model of this config."""
        return State(self._inner.state_from_bytes(_bytes(data, "data")))

    def generate_bytes(
        self,
        prompt: str | bytes = b"",
        *,
        state: Optional[State] = None,
        on_piece: Optional[Callable[[bytes], Optional[bool]]] = None,
        **sampling: Any,
    ) -> tuple[bytes, State]:
        """Generates after ``prompt`` (continuing ``state`` if given: the prompt is fed after it,
        and with the same ``seed`` the sampler continues, so generating in pieces equals
        generating at once). Returns the new bytes and the state after them.
        ``on_piece(bytes)`` sees the output as it is produced; returning False stops.

        Sampling keywords (checked by the core; a bad one raises ConfigError naming it):

        {sampling}
        """
        stop = sampling.get("stop")
        if isinstance(stop, bytes):
            sampling["stop"] = stop.decode("utf-8", errors="replace")
        elif isinstance(stop, (list, tuple)):
            sampling["stop"] = [s.decode("utf-8", errors="replace") if isinstance(s, bytes) else s for s in stop]
        cb = _callback(on_piece, "on_piece")
        out, st, finish = self._inner.generate(
            _bytes(prompt, "prompt"), sampling, _state(state), None if cb is None else (lambda b: cb(bytes(b)))
        )
        return bytes(out), State(st, finish)

    def generate(self, prompt: str | bytes = b"", **kw: Any) -> str:
        """Generated text after ``prompt`` (not including it). Keywords as :meth:`generate_bytes`."""
        out, _ = self.generate_bytes(prompt, **kw)
        return out.decode("utf-8", errors="replace")

    def generate_batch(self, prompts: list[str | bytes], **sampling: Any) -> list[str]:
        """Generated text after each of ``prompts`` (not including them), computed together: one
        forward per step for all rows. Item ``i`` equals ``generate(prompts[i], **sampling)``."""
        if isinstance(prompts, (str, bytes)):
            raise ConfigError("invalid argument `prompts`: expected a list of prompts, not one string")
        outs = self._inner.generate_batch([_bytes(p, "prompts") for p in prompts], sampling)
        return [bytes(o).decode("utf-8", errors="replace") for o in outs]

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

        def produced() -> Iterator[bytes]:
            while (piece := pieces.get()) is not done:
                yield piece

        yield from decode_pieces(produced())
        worker.join()
        if failure:
            raise failure[0]

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

    def evaluate(
        self,
        text: str | bytes,
        *,
        rows: int = 1,
        chunk_len: Optional[int] = None,
        reset_every: int = 0,
        progress: Optional[Callable[[int, int], Optional[bool]]] = None,
    ) -> dict[str, Any]:
        """Loss on ``text`` with the state carried throughout, in chunks of ``chunk_len`` tokens
        (default: the run's): loss (nats/token), bits per byte, perplexity, tokens.
        ``progress(done, total)`` is called as it goes; False stops."""
        return self._inner.evaluate(_bytes(text, "text"), rows, chunk_len, reset_every, _callback(progress, "progress"))

    def inspect(self, text: str | bytes) -> dict[str, Any]:
        """Per token of ``text``: ``tokens``, ``pieces`` (the bytes of each), ``surprise``
        (``-log p`` in nats; None for the first token) and ``gates`` (per block, the mean update
        gate z at each token: near 1 the minGRU overwrites its memory, near 0 it keeps it)."""
        return self._inner.inspect(_bytes(text, "text"))


Model.generate_bytes.__doc__ = (Model.generate_bytes.__doc__ or "").replace("{sampling}", _SAMPLING_HELP.strip())


def load(path: str | PathLike[str], device: Optional[str] = None, dtype: Optional[str] = None) -> Model:
    """Loads a run directory (its best checkpoint, else its last) or a checkpoint directory, on
    ``device`` (default: the training setting's default, auto).

    ``dtype="bf16"`` rounds the weight matrices to bfloat16: on the CPU, decoding then reads half
    the bytes per token (faster once the model outgrows the CPU caches), at a small cost in loss
    that ``Model.evaluate`` measures (it sees the same rounded weights).
    """
    if not isinstance(path, (str, PathLike)):
        raise ConfigError(f"invalid argument `path`: must be a path, got {type(path).__name__} {path!r}")
    if device is not None and not isinstance(device, str):
        raise ConfigError(f"invalid argument `device`: must be a string such as 'auto' or 'cpu', got {device!r}")
    if dtype is not None and not isinstance(dtype, str):
        raise ConfigError(f"invalid argument `dtype`: must be a string, got {dtype!r}")
    resolved, _ = devices.resolve(device)
    return Model(_grufinity.Model.load(str(path), resolved, dtype))
