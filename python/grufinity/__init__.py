"""GRUfinity: train and run minGRU language models.

Quick start::

    import grufinity
    cfg = grufinity.TrainConfig(data=["input.txt"], max_steps=500)
    result = grufinity.train(cfg)
    model = grufinity.load(result["run_dir"])
    print(model.generate("ROMEO:", max_new_tokens=200))
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

from . import _grufinity, corpus, devices, runs, tensorboard
from .config import TrainConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    DeviceError,
    GrufinityError,
    GrufinityIOError,
    MissingExtraError,
    RunBusyError,
    TrainingDivergedError,
)
from .model import Model, State, load

__version__ = _grufinity.__version__


def train(
    config: TrainConfig,
    on_event: Optional[Callable[[dict[str, Any]], Optional[bool]]] = None,
) -> dict[str, Any]:
    """Trains as ``config`` says and returns the outcome (``run_dir``, ``checkpoint``, ``step``,
    ``interrupted``, ``final_val_loss``). ``on_event`` receives every event as a dict (``event``
    is one of data, start, step, eval, histograms, sample, skipped, saved, done); returning
    False stops the run at the next safe point (after the step, or inside an evaluation), with a
    checkpoint. Ctrl-C does the same and raises KeyboardInterrupt.

    ``config.resume``: ``"auto"`` continues ``out_dir/name`` if it has a checkpoint, a path
    continues that run or checkpoint. Without ``data``, a new run trains on the built-in corpus.

    ``config.tensorboard`` (or a resumed run that had it on) also writes TensorBoard logs to
    ``<run_dir>/tensorboard`` (:mod:`grufinity.tensorboard`; needs the ``tensorboard`` extra).
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"invalid argument `config`: must be a grufinity.TrainConfig, got {type(config).__name__}")
    if on_event is not None and not callable(on_event):
        raise ConfigError(f"invalid argument `on_event`: must be callable, got {type(on_event).__name__}")
    values = config.values()
    auto = values["device"].strip().lower() == "auto"
    device, skipped = devices.resolve(values["device"])
    values["device"] = device
    if not values["data"]:
        if _grufinity.starts_fresh(values):
            values["data"] = [str(f) for f in corpus.default_corpus()]
            values["data_description"] = values["data_description"] or corpus.DEFAULT_CORPUS_DESCRIPTION
    else:
        files = corpus.resolve(values["data"])
        values["data"] = [str(f) for f in files]
        values["data_description"] = values["data_description"] or corpus.describe(files)

    logger = tensorboard.TensorBoardLogger(requested=values["tensorboard"])

    def callback(event: dict[str, Any]) -> bool:
        if event["event"] == "start" and auto:
            event["device_reason"] = "auto: " + event["device_reason"]
            event["device_skipped"] = [list(s) for s in skipped] + event.get("device_skipped", [])
        logger(event)
        if logger.warning:
            warnings.warn(logger.warning, RuntimeWarning, stacklevel=3)
            logger.warning = None
        return on_event is None or on_event(event) is not False

    try:
        return _grufinity.train(values, callback)
    finally:
        logger.close()


__all__ = [
    "TrainConfig",
    "Model",
    "State",
    "train",
    "load",
    "runs",
    "GrufinityError",
    "ConfigError",
    "MissingExtraError",
    "DataError",
    "DataNotFoundError",
    "CheckpointError",
    "DeviceError",
    "TrainingDivergedError",
    "RunBusyError",
    "GrufinityIOError",
]
