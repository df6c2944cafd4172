"""Optional extras: the heavy tools (TensorBoard, matplotlib, Optuna, rich) are imported only
by the features that use them, and a missing one is a one-line error naming the extra that
installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Imports ``module`` or raises MissingExtraError: ``{feature} needs {module}: pip install
    'grufinity[{extra}]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{feature} needs {module.split('.')[0]}: pip install 'grufinity[{extra}]'") from None


def has(module: str) -> bool:
    """Whether ``module`` can be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
