"""Hyperparameter sweeps on Optuna (the ``sweep`` extra): a spec is a normal training config
plus a ``[sweep]`` table of search spaces (:mod:`.spec`); each trial is a normal run directory
in the sweep directory; validation losses go to Optuna's pruner at each evaluation; the study
lives in a database (SQLite in the sweep directory by default, PostgreSQL/MySQL to share it
between machines), so a sweep resumes after any crash and several workers share it.

>>> from grufinity import sweep
>>> s = sweep.Sweep.create(sweep.load("lr.toml"), trials=20)
>>> study = sweep.run(s, workers=2)
>>> study.best_trial.user_attrs["run_dir"]
"""

from .report import summary, write_plots
from .spec import SETTINGS, Space, Spec, load, parse
from .study import Sweep, trial_name
from .workers import run

__all__ = ["SETTINGS", "Space", "Spec", "Sweep", "load", "parse", "run", "summary", "trial_name", "write_plots"]
