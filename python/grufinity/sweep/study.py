"""Running a sweep: an Optuna study in a database (SQLite in the sweep directory by default, or
any URL Optuna's RDB storage takes), each trial a normal run directory ``<dir>/trial-NNNN``.

The study is the single source of truth, so a sweep is resumable and shareable as Optuna makes
it: running the sweep again continues the study; workers (processes, or machines sharing a
PostgreSQL/MySQL database) take trials from it until it holds the requested number of finished
(complete or pruned) trials. Running trials send heartbeats; a trial whose worker died (SIGKILL,
power loss) stops sending them and is marked failed by the next worker that looks (Optuna's
``fail_stale_trials``), so it is never counted as running forever.
"""

from __future__ import annotations

import math
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ConfigError, GrufinityError, GrufinityIOError, MissingExtraError, TrainingDivergedError
from ..extras import has, require
from .spec import NOT_RESULTS, Spec

#: Consecutive failed trials after which a worker stops (a broken spec or disk, not bad luck).
MAX_FAILURES = 3

#: Seconds between looks at the study while the last trials run in other workers.
WAIT_POLL = 1.0

Log = Callable[[str], None]


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def sqlite_url(directory: Path) -> str:
    return "sqlite:///" + str((directory / "study.db").resolve())


def _with_driver(url: str) -> str:
    # A plain postgresql:// URL means a different default driver in each SQLAlchemy version:
    # name the one that is installed.
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        for module in ("psycopg", "psycopg2"):
            if has(module):
                return f"postgresql+{module}://{rest}"
    return url


def shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by the storage itself
        return url


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class _AskLock:
    """Makes "count the trials, then start one" atomic between the workers of one machine, so
    that together they never start more trials than asked for (Optuna creates a trial without
    looking at how many there are). Workers on different machines can still overshoot by one
    trial each at the very end."""

    def __init__(self, path: Path) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows): no lock, at most a trial too many
            self.fcntl = None
            return
        self.fcntl = fcntl
        self.file = open(path, "a+")
        self.held = False

    def acquire(self) -> None:
        if self.fcntl:
            self.fcntl.flock(self.file, self.fcntl.LOCK_EX)
            self.held = True

    def release(self) -> None:
        if self.fcntl and self.held:
            self.fcntl.flock(self.file, self.fcntl.LOCK_UN)
            self.held = False


@dataclass
class Sweep:
    """One sweep: its spec, study name, directory, storage URL and target number of finished
    trials. Build it with :meth:`create`, run it with :func:`grufinity.sweep.run`, read it
    with :meth:`study` or :func:`grufinity.sweep.summary`."""

    spec: Spec
    name: str
    directory: Path
    storage: str
    trials: int

    @classmethod
    def create(cls, spec: Spec, trials: Optional[int] = None, storage: Optional[str] = None,
               study: Optional[str] = None, directory: Optional[str | Path] = None) -> "Sweep":
        """Fills what is not given from the spec's ``[sweep]`` settings, then the defaults."""
        s = spec.settings
        name = study or s["study"] or spec.name
        where = Path(directory or s["dir"] or Path("sweeps") / name)
        if trials is not None and trials < 1:
            raise ConfigError(f"invalid trials {trials}: must be at least 1")
        count = trials or s["trials"]
        if s["sampler"] == "grid":
            count = min(count, math.prod(len(sp.choices or ()) for sp in spec.space.values()))
        return cls(spec, name, where, storage or s["storage"] or sqlite_url(where), count)

    # ------------------------------------------------------------------ storage and study

    def _storage(self, create: bool) -> Any:
        optuna = require("optuna", "sweep", "grufinity sweep")
        import sqlalchemy.exc

        kwargs: dict[str, Any] = {}
        if self.storage.startswith("sqlite"):
            if not create and self.storage == sqlite_url(self.directory) and not (self.directory / "study.db").is_file():
                raise ConfigError(f"no sweep in {self.directory} (no study.db): run the sweep first")
            self.directory.mkdir(parents=True, exist_ok=True)
            # Workers wait for each other's writes instead of failing with "database is locked".
            kwargs = {"connect_args": {"timeout": 60}}
        where = f"storage {shown_url(self.storage)}"
        try:
            for attempt in range(3):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        return optuna.storages.RDBStorage(_with_driver(self.storage), engine_kwargs=kwargs,
                                                          heartbeat_interval=self.spec.settings["heartbeat"])
                except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as e:
                    # Processes opening a new database at once race to create its tables and
                    # schema version ("already exists", "UNIQUE constraint failed"): the loser
                    # finds them made on a retry.
                    if attempt == 2 or not any(m in str(e) for m in ("already exists", "UNIQUE", "duplicate key")):
                        raise
                    time.sleep(0.5)
        except ImportError as e:
            missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "for it"
            raise MissingExtraError(f"{where} needs the database driver {missing}: for PostgreSQL pip install "
                                    "'grufinity[postgres]'; for MySQL pip install pymysql and use mysql+pymysql://") from None
        except sqlalchemy.exc.ArgumentError as e:
            raise ConfigError(f"invalid {where}: {str(e).splitlines()[0]}") from None
        except sqlalchemy.exc.SQLAlchemyError as e:
            reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise GrufinityIOError(f"{where}: {reason}") from None

    def _sampler(self, worker: int, existing: int) -> Any:
        import numpy as np
        import optuna

        s = self.spec.settings
        # A seeded sampler restarts its random sequence in every process: mixing in the worker
        # and the number of trials so far keeps workers and resumed sweeps from repeating the
        # parameters of earlier trials, while a sweep run the same way repeats exactly.
        seed = None
        if s["sampler_seed"] is not None:
            seed = int(np.random.SeedSequence([s["sampler_seed"], worker, existing]).generate_state(1)[0])
        if s["sampler"] == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s["sampler"] == "grid":
            grid = {k: list(sp.choices or ()) for k, sp in self.spec.space.items()}
            return optuna.samplers.GridSampler(grid, seed=seed)
        # constant_liar: running trials count as bad guesses, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    def _pruner(self) -> Any:
        import optuna

        s = self.spec.settings
        if s["pruner"] == "none":
            return optuna.pruners.NopPruner()
        if s["pruner"] == "hyperband":
            return optuna.pruners.HyperbandPruner()
        return optuna.pruners.MedianPruner(n_startup_trials=s["pruner_startup_trials"],
                                           n_warmup_steps=s["pruner_warmup_steps"])

    def study(self, create: bool = False, worker: int = 0) -> Any:
        """The Optuna study (created when ``create`` and missing). A study made from another
        spec (shared config or search space) is refused, so its trials stay comparable."""
        storage = self._storage(create)  # first: it says which extra is missing
        import optuna

        args = dict(study_name=self.name, storage=storage, pruner=self._pruner())
        if create:
            study = optuna.create_study(direction="minimize", load_if_exists=True, **args)
        else:
            try:
                study = optuna.load_study(**args)
            except KeyError:
                raise ConfigError(f"no study {self.name!r} in {shown_url(self.storage)}: run the sweep first") from None
        study.sampler = self._sampler(worker, len(study.get_trials(deepcopy=False)))
        fingerprint = self.spec.fingerprint()
        saved = study.user_attrs.get("spec")
        if saved is None and create:
            study.set_user_attr("spec", fingerprint)
        changed = _spec_changes(saved, fingerprint) if saved is not None else []
        if changed:
            raise ConfigError(f"study {self.name!r} in {shown_url(self.storage)} was made from another spec "
                              f"({', '.join(changed)} differ{'s' * (len(changed) == 1)}); "
                              "give another --study or restore the spec")
        return study

    def preflight(self) -> None:
        """Fails now, not once per trial, on what every trial would fail on: missing data, or
        TensorBoard asked for without its writer."""
        from .. import corpus, tensorboard

        data = self.spec.config.get("data")
        if data:
            corpus.resolve([data] if isinstance(data, str) else data)
        if self.spec.config.get("tensorboard"):
            tensorboard.require()

    def counts(self, study: Any) -> tuple[int, int]:
        """(finished, running) trials: finished are complete or pruned."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return len(trials) - running, running

    def check_directory(self, study: Any) -> None:
        """Refuses a directory holding trial directories the study does not know (another
        study's), instead of failing every trial on a name that is taken."""
        known = {trial_name(t.number) for t in study.get_trials(deepcopy=False)}
        stray = sorted(p.name for p in self.directory.glob("trial-*") if p.is_dir() and p.name not in known)
        if stray:
            raise ConfigError(f"{self.directory} holds {stray[0]}, which study {self.name!r} in "
                              f"{shown_url(self.storage)} does not know: use another --dir or --study")

    # ------------------------------------------------------------------ running

    def work(self, log: Log = print, worker: int = 0) -> None:
        """Runs trials in this process until the study holds ``trials`` finished ones; waits
        while the last ones run elsewhere (taking over any that go stale)."""
        import optuna
        from optuna.trial import TrialState

        study = self.study(worker=worker)
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = _AskLock(self.directory / ".ask.lock")
        failures, waiting = 0, False
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            lock.acquire()
            try:
                finished, running = self.counts(study)
                if finished >= self.trials:
                    return
                if finished + running >= self.trials:
                    if not waiting:
                        log(f"waiting for {running} running trial(s) of other workers "
                            f"(one without a heartbeat for {2 * self.spec.settings['heartbeat']}s is failed and redone)")
                        waiting = True
                    lock.release()
                    time.sleep(WAIT_POLL)
                    continue
                waiting = False
                ended: list[Any] = []
                study.optimize(_objective(self, log, lock), n_trials=1, catch=(GrufinityError,),
                               callbacks=[lambda s, t: ended.append(t)])
            finally:
                lock.release()
            trial = ended[0] if ended else None
            if trial is not None:
                _log_end(study, trial, log)
            if trial is not None and trial.state == TrialState.FAIL:
                failures += 1
                if failures >= MAX_FAILURES:
                    raise GrufinityError(f"{failures} trials in a row failed, the last with: "
                                         f"{trial.user_attrs.get('error', 'an error')}")
            else:
                failures = 0


def _spec_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two spec fingerprints (:meth:`Spec.fingerprint`)."""
    old_config = {k: v for k, v in saved["config"].items() if k not in NOT_RESULTS}
    changed = [k for k in sorted(set(old_config) | set(now["config"])) if old_config.get(k) != now["config"].get(k)]
    return changed + [f"[sweep] {k}" for k in sorted(set(saved["space"]) | set(now["space"]))
                      if saved["space"].get(k) != now["space"].get(k)]


def _objective(sweep: Sweep, log: Log, lock: _AskLock) -> Callable[[Any], float]:
    """One trial: a training run reporting each validation loss to the pruner; a pruned trial
    stops at that evaluation, with its checkpoint. Its value is the run's best validation loss."""
    import optuna

    from .. import train

    def objective(trial: Any) -> float:
        lock.release()  # the trial exists: other workers may count it and start theirs
        params = {k: space.suggest(trial) for k, space in sweep.spec.space.items()}
        name = trial_name(trial.number)
        trial.set_user_attr("run_dir", str(sweep.directory / name))
        trial.set_user_attr("host", socket.gethostname())
        log(f"trial {trial.number}: {params_text(params)} -> {sweep.directory / name}")
        seen: dict[str, Any] = {}

        def on_event(e: dict[str, Any]) -> bool:
            if e["event"] == "eval":
                loss = e.get("val_loss")
                if loss is None or not math.isfinite(loss):
                    seen["pruned"] = e  # nothing to learn from a trial whose loss is not a number
                    return False
                trial.report(loss, e["step"])
                if trial.should_prune():
                    seen["pruned"] = e
                    return False
            elif e["event"] == "done":
                seen["done"] = e
            return True

        try:
            train(sweep.spec.trial_config(params, sweep.directory, name), on_event)
        except TrainingDivergedError as e:
            # A diverged trial is a result (this region is bad), not a broken worker: pruned.
            trial.set_user_attr("diverged", str(e))
            raise optuna.TrialPruned(str(e)) from None
        except GrufinityError as e:
            trial.set_user_attr("error", str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        except KeyboardInterrupt as e:
            info = e.args[0] if e.args and isinstance(e.args[0], dict) else {}
            where = f" at step {info['step']}, checkpoint {info['checkpoint']}" if info.get("checkpoint") else ""
            trial.set_user_attr("error", f"interrupted{where}")
            raise
        if "pruned" in seen:
            trial.set_user_attr("steps", seen["pruned"]["step"])
            raise optuna.TrialPruned(f"pruned at step {seen['pruned']['step']}")
        done = seen.get("done") or {}
        trial.set_user_attr("steps", done.get("step"))
        value = done.get("best_val_loss", done.get("val_loss"))
        if value is None:
            raise GrufinityError(f"{name} ended without a validation loss")
        return float(value)

    return objective


def _log_end(study: Any, t: Any, log: Log) -> None:
    from optuna.trial import TrialState

    if t.state == TrialState.COMPLETE:
        best = study.best_trial
        log(f"trial {t.number}: best val loss {t.value:.4f} after {t.user_attrs.get('steps')} steps"
            f" (best so far: trial {best.number}, {best.value:.4f})")
    elif t.state == TrialState.PRUNED:
        if "diverged" in t.user_attrs:
            log(f"trial {t.number}: pruned: {t.user_attrs['diverged']}")
        else:
            step = t.last_step
            value = t.intermediate_values.get(step) if step is not None else None
            log(f"trial {t.number}: pruned at step {step}" + (f" (val loss {value:.4f})" if value is not None else ""))
    else:
        log(f"trial {t.number}: failed: {t.user_attrs.get('error', 'see the messages above')}")
