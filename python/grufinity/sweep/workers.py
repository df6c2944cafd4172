"""Running a sweep in this process or in K worker processes that share its study.

Workers are separate processes (not threads): each trains one trial at a time with its share of
the CPU cores, and a worker that dies takes only its own trial with it. Stopping is graceful:
Ctrl-C (or SIGTERM) stops each running trial at its next safe point, with a checkpoint, and the
trial is marked failed; the next run of the sweep continues the study.
"""

from __future__ import annotations

import os
import signal
import sys
from functools import partial
from typing import Any, Iterable, Optional

from ..errors import GrufinityError
from .study import Log, Sweep, shown_url


def echo(message: str, prefix: str = "") -> None:
    print(prefix + message, file=sys.stderr, flush=True)


def quiet_optuna() -> None:
    """Optuna's own per-trial log lines (and tracebacks of failed trials) repeat what the sweep
    reports in one line each."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def run(sweep: Sweep, workers: int = 1, log: Log = echo, enqueue: Iterable[dict[str, Any]] = ()) -> Any:
    """Creates or continues the study, queues ``enqueue`` (parameter dicts to try first, once
    each), and trains until it holds ``sweep.trials`` finished trials; returns the study."""
    sweep.preflight()
    study = sweep.study(create=True)
    sweep.check_directory(study)
    for params in enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    finished, running = sweep.counts(study)
    log(f"study {sweep.name!r} in {shown_url(sweep.storage)}: {finished} of {sweep.trials} trials finished"
        + (f", {running} running" if running else "") + f"; trials in {sweep.directory}/")
    if workers == 1:
        sweep.work(log)
    else:
        _spawn(sweep, workers, log)
    return study


def _threads(workers: int) -> Optional[str]:
    if os.environ.get("RAYON_NUM_THREADS"):
        return None  # the user's choice
    return str(max(1, (os.cpu_count() or 1) // workers))


def _spawn(sweep: Sweep, workers: int, log: Log) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked Rust thread pools
    threads = _threads(workers)
    procs = [ctx.Process(target=_worker_main, args=(sweep, k), name=f"grufinity-sweep-{k}") for k in range(workers)]
    saved = os.environ.get("RAYON_NUM_THREADS")
    try:
        if threads:
            os.environ["RAYON_NUM_THREADS"] = threads  # inherited by the workers as they start
        for p in procs:
            p.start()
    finally:
        if threads:
            os.environ.pop("RAYON_NUM_THREADS", None) if saved is None else os.environ.update(RAYON_NUM_THREADS=saved)
    each = f", {threads} thread{'s' * (threads != '1')} each" if threads else ""
    log(f"{workers} workers started{each}")
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        # Workers ignore SIGINT; SIGTERM asks each to stop its trial at a safe point.
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        raise
    codes = [p.exitcode for p in procs]
    if any(c == 130 for c in codes):
        raise KeyboardInterrupt
    failed = sum(c != 0 for c in codes)
    if failed:
        raise GrufinityError(f"{failed} of {workers} workers failed (their messages are above)")


def _die_with_parent() -> None:
    # Linux: a worker gets SIGTERM (a graceful stop) when the sweep process dies, even by
    # SIGKILL, instead of training on unsupervised.
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the worker at once
    raise KeyboardInterrupt


def _worker_main(sweep: Sweep, worker: int) -> None:
    prefix = f"[worker {worker}] "
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the sweep process, which stops us
    signal.signal(signal.SIGTERM, _stop)
    quiet_optuna()
    try:
        sweep.work(partial(echo, prefix=prefix), worker)
    except KeyboardInterrupt:
        sys.exit(130)
    except (GrufinityError, OSError) as e:
        echo(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", prefix)
        sys.exit(1)
