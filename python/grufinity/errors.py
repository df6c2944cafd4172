"""Exception classes. Every error GRUfinity raises is a :class:`GrufinityError`; the subclasses
also derive from the matching built-in so ``except ValueError`` and friends keep working."""


class GrufinityError(Exception):
    """Base class of every GRUfinity error."""


class ConfigError(GrufinityError, ValueError):
    """A configuration value is invalid (the message names the key)."""


class MissingExtraError(ConfigError, ImportError):
    """A feature needs an optional extra that is not installed (the message says which)."""


class DataError(GrufinityError, ValueError):
    """The corpus or input text cannot be used as given."""


class DataNotFoundError(GrufinityError, FileNotFoundError):
    """A file or directory that was asked for does not exist."""


class CheckpointError(GrufinityError):
    """A checkpoint is missing, incomplete, truncated or of another model."""


class DeviceError(GrufinityError, RuntimeError):
    """The requested device cannot be used."""


class TrainingDivergedError(GrufinityError, ArithmeticError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunBusyError(GrufinityError, RuntimeError):
    """Another process is writing the run (the message names it)."""


class GrufinityIOError(GrufinityError, OSError):
    """Reading or writing a file failed (disk full, permissions...)."""


__all__ = [
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
