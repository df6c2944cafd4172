"""Loaded models shared by all sessions: a model is read-only while generating (each session
brings its own state), so one copy serves every browser. A few are kept, least recently used
first out; a checkpoint is identified by its real path and its trainer.json's inode and time, so
a run deleted and trained again under the same name is never served from a stale copy."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from ..errors import GrufinityError
from ..model import Model, load
from .catalog import one_line
from .errors import WebError

Key = tuple[str, str, int, int]


def checkpoint_key(checkpoint: Path, dtype: Optional[str]) -> Key:
    """Identity of a loaded model: checkpoint directory, dtype and trainer.json's identity."""
    try:
        st = (checkpoint / "trainer.json").stat()
    except OSError as e:
        raise WebError(422, f"checkpoint {checkpoint.name} cannot be read: {one_line(e)}") from None
    return (str(checkpoint), dtype, st.st_ino, st.st_mtime_ns)


class ModelCache:
    def __init__(self, device: str, size: int) -> None:
        self.device = device
        self.size = max(1, size)
        self._models: OrderedDict[Key, Model] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Key, threading.Lock] = {}

    def get(self, checkpoint: Path, dtype: Optional[str]) -> tuple[Key, Model]:
        """The model of ``checkpoint`` as ``dtype`` (loading it once, however many sessions ask
        at the same time). A checkpoint that fails to load is a WebError with the reason."""
        key = checkpoint_key(checkpoint, dtype)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return key, self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._models:
                    return key, self._models[key]
            try:
                model = load(checkpoint, self.device, dtype)
            except (GrufinityError, OSError) as e:
                raise WebError(422, f"cannot load checkpoint {checkpoint.parent.parent.name}/{checkpoint.name}: "
                                    f"{one_line(e)}") from None
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
        return key, model

    def loaded(self) -> list[Any]:
        with self._lock:
            return [{"checkpoint": k[0], "dtype": k[1]} for k in self._models]
