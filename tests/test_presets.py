"""`grufinity train --preset NAME`: the shipped recipes are valid configs, flags override them,
and an unknown name lists the choices."""

from __future__ import annotations

import pytest

from conftest import run_cli
from grufinity import config


@pytest.mark.parametrize("name", config.presets())
def test_every_preset_is_a_valid_config_with_a_time_budget(name):
    cfg = config.build({}, preset=name)
    assert cfg.max_time and cfg.max_time >= 300
    assert config.build({"lr": 1e-4}, preset=name).lr == 1e-4


def test_the_documented_presets_ship():
    assert {"shakespeare-5min", "shakespeare-1h"} <= set(config.presets())


def test_preset_trains_with_flags_overriding_it(tmp_path, corpus):
    proc = run_cli("train", corpus, "--preset", "shakespeare-5min", "--dim", "16", "--depth", "1", "--batch-size", "2",
                   "--chunk-len", "16", "--max-steps", "2", "--eval-every", "0", "--val-fraction", "0.2",
                   "--out-dir", tmp_path, "--name", "p", "--progress", "plain")
    assert proc.returncode == 0, proc.stderr
    resolved = (tmp_path / "p" / "config.json").read_text()
    assert '"lr": 0.004' in resolved and '"dim": 16' in resolved, resolved


def test_unknown_preset_lists_the_choices(tmp_path):
    proc = run_cli("train", "--preset", "shakespeare", "--out-dir", tmp_path)
    assert proc.returncode == 2 and "shakespeare-1h" in proc.stderr and "shakespeare-5min" in proc.stderr, proc.stderr
