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
    rows = table_rows(out, "a red shape")
    conv, var = [r for r in rows if len(r) == 10], [r for r in rows if len(r) == 8]
    trained = ["SDS", "SDS stratified t", "SDS antithetic", "SDS Taylor (learned)", "ISM",
               "SSD one coeff. (old default)", "SSD two coeff. (learned)"]
    assert [r[1] for r in conv] == trained, out
    for r in conv:
        assert 0.0 < float(r[2]) < 100.0, r  # final psnr_ref in dB
        assert r[8] == "300", r  # densification off: every run keeps its Gaussians
    assert [r[1] for r in var][:len(trained)] == trained and len(var) == len(trained) + 3, out
    by_label = {r[1]: r for r in var}
    assert by_label["SDS"][3] == "1.000" and by_label["ISM"][2] == "ISM"
    for r in var:
        assert all(float(c) >= 0.0 for c in r[3:7]), r  # variance ratios and noise / signal


def test_variance_split_quick_prints_the_shares_and_ratios():
    out = run_quick("variance_split.py")
    (row,) = table_rows(out, "a red shape")
    within, between = float(row[3]), float(row[4])
    assert 0.0 <= within <= 1.0 and 0.0 <= between <= 1.0, row
    assert all(float(c) >= 0.0 for c in row[5:8]), row
    assert len(row[8].split(" / ")) == 3, row  # the Taylor ratio at each of the quick run's timesteps


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
