"""``grufinity plot`` and ``grufinity compare`` on two real tiny runs that differ only in lr."""

from __future__ import annotations

import json
import struct

import pytest

import grufinity
from grufinity import runs
from conftest import run_cli
from test_api import tiny_config
from test_cli import assert_clean_error


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("lr-runs")
    for name, lr in (("lr-a", 3e-3), ("lr-b", 1e-2)):
        grufinity.train(tiny_config(corpus, out, name, lr=lr, max_steps=8, eval_every=4))
    return out


def png_size(path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", raw[16:24])


def test_plot_writes_png_of_requested_size(two_runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    proc = run_cli("plot", two_runs / "lr-a", two_runs / "lr-b", "-o", out, "--size", "640x480",
                   "--metrics", "loss,val_loss,lr", "--x", "tokens", "--no-show")
    assert proc.returncode == 0, proc.stderr
    assert "lr-a, lr-b" in proc.stderr
    assert out.stat().st_size > 10_000  # drawn curves, not an empty canvas
    assert png_size(out) == (640, 480)


def test_plot_from_python_with_glob(two_runs, tmp_path):
    pytest.importorskip("matplotlib")
    from grufinity import plot

    out = plot.save([str(two_runs / "lr-*")], tmp_path / "p.png", size=(300, 200), x="time")
    assert png_size(out) == (300, 200)


def test_plot_errors_are_one_line(two_runs, tmp_path):
    pytest.importorskip("matplotlib")
    line = assert_clean_error(run_cli("plot", two_runs / "lr-a", "--metrics", "loss,bogus", "-o", tmp_path / "x.png"))
    assert "bogus" in line and "val_loss" in line
    assert "WIDTHxHEIGHT" in assert_clean_error(run_cli("plot", two_runs / "lr-a", "--size", "big"))
    assert "no run directory" in assert_clean_error(run_cli("plot", tmp_path / "nothing-*"))
    assert not (tmp_path / "x.png").exists()


def test_compare_names_exactly_lr(two_runs):
    proc = run_cli("compare", two_runs / "lr-*", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["differs"] == ["lr"]
    assert [r["run"] for r in result["runs"]] == ["lr-a", "lr-b"]
    assert [r["config"]["lr"] for r in result["runs"]] == [3e-3, 1e-2]
    for r in result["runs"]:
        assert r["steps"] == 8 and r["params"] == 29440 and r["best_val_loss"] > 0 and r["tokens_per_sec"] > 0
        assert r["best_val_loss"] == runs.load(r["path"]).best_val_loss

    md = run_cli("compare", two_runs, "--format", "md").stdout.splitlines()
    assert md[0] == "| run | lr | best val loss | bits/byte | params | tokens/s | wall time | steps |"
    assert md[2].startswith("| lr-a | 0.003 |")
    csv_lines = run_cli("compare", two_runs, "--format", "csv").stdout.splitlines()
    assert csv_lines[0].startswith("run,path,lr,best_val_loss,")
    table = run_cli("compare", two_runs).stdout
    assert "lr-a" in table and "0.01" in table


def test_compare_errors(tmp_path):
    assert "no run directory" in assert_clean_error(run_cli("compare", tmp_path / "missing"))
