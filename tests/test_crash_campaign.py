"""The crash campaign's quick mode (benches/crash_campaign.py --quick): a few kills at random
moments and during checkpoint writes, a Ctrl-C at each event, a double Ctrl-C, full disks and
concurrent writers, each followed by a resume that must lose nothing and leave no debris."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import clean_env

CAMPAIGN = Path(__file__).resolve().parents[1] / "benches" / "crash_campaign.py"


def test_quick_crash_campaign(tmp_path):
    proc = subprocess.run([sys.executable, str(CAMPAIGN), "--quick", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " 0 corrupt of " in summary and "0 bytes of debris, 0 failure(s)" in summary, summary
    # Every scenario ran (the tmpfs ones only where this process may mount one).
    for scenario in ["kill -9 at a random moment", "kill -9 during a checkpoint write", "Ctrl-C at `sample`",
                     "double Ctrl-C", "RLIMIT_FSIZE", "three writers started at once", "one corpus into one cache"]:
        assert scenario in proc.stdout, scenario
