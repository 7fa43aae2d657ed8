"""The iteration, study and scaling benchmarks still run in --quick mode and print their tables
(timings and PSNR values are not checked: only that every variant produced a finite, well-formed row)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str) -> str:
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--no-write"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "machine:" in proc.stdout
    return proc.stdout


def table_rows(out: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in out.splitlines() if re.match(rf"^\| {re.escape(first_cell)}", line)]


def test_iteration_quick_table_has_every_stage_and_ratio():
    out = run_quick("iteration.py")
    assert "| variant | sample ms | render ms |" in out
    rows = {r[0]: r for r in table_rows(out, "") if r[0] in ("SDS", "ISM dS=200 (default)", "SSD (learned mu)")}
    assert set(rows) == {"SDS", "ISM dS=200 (default)", "SSD (learned mu)"}, out
    assert rows["SDS"][-1] == "1.00x"
    for r in rows.values():
        assert all(math.isfinite(float(c)) for c in r[1:-1]), r
    # ISM makes more prior calls per step than SDS's single CFG call
    assert float(rows["ISM dS=200 (default)"][-2]) > float(rows["SDS"][-2]) == 1.0


def test_study_quick_prints_one_row_per_variant():
    out = run_quick("study.py")
    rows = table_rows(out, "a red cube")
    assert [r[1] for r in rows] == ["SDS", "ISM", "SSD mu=0", "SSD mu=1 fixed", "SSD mu learned"], out
    for r in rows:
        assert 0.0 < float(r[2]) < 100.0, r  # final psnr_ref in dB
        assert float(r[9]) >= 0.0, r  # independent variance


@pytest.fixture(scope="module")
def scaling_out() -> str:
    return run_quick("scaling.py")


@pytest.mark.parametrize("sweep", ["N", "px"])
def test_scaling_quick_prints_both_sweeps_and_exponents(scaling_out, sweep):
    rows = table_rows(scaling_out, sweep)
    assert len(rows) == 2 and all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows), scaling_out
    assert re.search(r"render vs N -?[\d.]+ / -?[\d.]+", scaling_out), scaling_out


def test_default_run_quick_reports_the_plan_and_twice_the_plan():
    out = run_quick("default_run.py")
    rows = table_rows(out, "defaults")
    assert [r[1] for r in rows] == ["40", "80"], out
    for r in rows:
        assert int(r[2].replace(",", "")) <= 20_000 and all(math.isfinite(float(c)) for c in r[3:5]), r
