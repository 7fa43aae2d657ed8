"""The benchmark scripts still run and print their tables (smallest settings; timings are not checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_render_benchmark_quick_prints_a_table():
    proc = subprocess.run([sys.executable, "benchmarks/render.py", "--quick", "--no-write"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| N | px | pairs evaluated | cpu fwd ms |" in proc.stdout
    cells = r"^\| 1000 \| 64 \| ([\d,]+) \| [\d.]+ \| [\d.]+ \| \d+ \| \d+ \| \d+x \| \d+x \|"
    row = re.search(cells, proc.stdout, re.M)
    assert row, proc.stdout
    assert 0 < int(row.group(1).replace(",", "")) <= 64 * 64 * 1000
    assert "machine:" in proc.stdout
