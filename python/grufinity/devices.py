"""Device selection with crash isolation.

A GPU driver that cannot run GRUfinity's kernels may crash the process instead of reporting an
error (seen: Mesa 22's lavapipe segfaults compiling a compute pipeline). So before a GPU backend
is used, its self-check runs once in a child process; only a device that passed there is used
in this one, and a crash becomes a reason like any other. What a request means, and which GPUs
``auto`` tries, is the core's to say.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys

from typing import Optional

from . import _grufinity
from .config import key
from .errors import DeviceError

_PROBE = "import sys, grufinity._grufinity as g; print(g.select_device(sys.argv[1])[1])"


@functools.lru_cache(maxsize=None)
def probe(request: str, timeout: float = 120.0) -> tuple[bool, str]:
    """Runs the self-check of ``request`` in a child process: (works, detail or reason)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, request], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False, f"its self-check did not finish within {timeout:.0f} s"
    if proc.returncode == 0:
        return True, proc.stdout.strip()
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return False, f"its driver crashed during the self-check ({name})"
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    last = lines[-1] if lines else "self-check failed"
    marker = "is not available: "
    return False, last.split(marker, 1)[1] if marker in last else last


def resolve(request: Optional[str]) -> tuple[str, list[tuple[str, str]]]:
    """The device to hand to the core for ``request`` (None: the default, auto), and the GPUs
    ``auto`` skipped with why. An explicit GPU request that fails its self-check raises
    DeviceError; a malformed request raises ConfigError."""
    if request is None:
        request = key("device")["default"]
    if request.strip().lower() == "auto":
        skipped = []
        for candidate in _grufinity.auto_devices():
            ok, why = probe(candidate)
            if ok:
                return candidate, skipped
            skipped.append((candidate, why))
        return "cpu", skipped
    name, gpu = _grufinity.parse_device(request)
    if gpu:
        ok, why = probe(name)
        if not ok:
            raise DeviceError(f"device `{request}` is not available: {why}")
    return name, []
