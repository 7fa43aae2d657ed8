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


def test_gpu_iteration_quick_runs_every_method_and_lever_on_tiny_models():
    """The GPU benchmark's harness on CPU (tiny random models from benchmarks/configs): every method's
    stage row and the lever table appear, with the stages adding up to the synchronized step (with two
    timed steps each median is a mean, so they add up exactly, to rounding)."""
    proc = subprocess.run([sys.executable, "benchmarks/gpu_iteration.py", "--quick", "--no-write", "--levers"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {m: re.search(rf"^\| {m} \| (.*) \|$", proc.stdout, re.M) for m in ("SDS", "ISM", "SSD")}
    assert all(rows.values()), proc.stdout
    for method, row in rows.items():
        cells = [c.strip() for c in row.group(1).split("|")]
        stages = [float(c) for c in cells[:10]]
        step, calls = float(cells[10]), int(cells[11])
        assert abs(sum(stages) - step) <= 0.02 * step + 0.5, (method, stages, step)
        assert calls == 1 if method != "ISM" else 2 <= calls <= 5, (method, calls)
        assert float(cells[15]) > 0, f"{method}: no FLOPs counted (the floor is 0 ms)"
    assert "| all levers on (studio default) |" in proc.stdout and "| classic attention (no SDPA) |" in proc.stdout
    assert "fp16 instead of bf16" not in proc.stdout  # no fp16 kernels on CPU: skipped, not failed


def test_gpu_iteration_needs_cuda_without_quick():
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, "benchmarks/gpu_iteration.py", "--no-write"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr and "--quick" in proc.stderr


def test_gpu_precision_quick_compares_bf16_with_fp32_on_tiny_models():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_precision.py", "--quick", "--no-write", "--draws", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in ("SDS, CFG 7.5", "SDS, CFG 100", "ISM (LucidDreamer)"):
        row = re.search(rf"^\| {re.escape(variant)} \| bf16 \| (.*) \|$", proc.stdout, re.M)
        assert row, proc.stdout
        rel, noise, ratio, cos, nonfinite = (c.strip().strip("*") for c in row.group(1).split("|"))
        # bf16 keeps 8 bits of mantissa: the gradient moves, but stays the same direction
        assert 1e-4 < float(rel) < 0.5 and float(cos) > 0.9 and int(nonfinite) == 0, row.group(0)
        assert abs(float(ratio) - float(rel) / float(noise)) <= 0.01 + 0.05 * float(ratio), row.group(0)


def test_gpu_precision_compare_matches_closed_forms():
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_precision import compare

    g = torch.Generator().manual_seed(0)
    ref = 3.0 + torch.randn(4000, 2, 8, generator=g)  # draws around a mean of 3 with unit spread
    exact = compare(ref, ref)
    assert exact["rel"] == 0 and exact["ratio"] == 0 and abs(exact["cos"] - 1) < 1e-12
    c = compare(ref, ref + 0.1)  # a constant offset of 0.1: error rms 0.1, noise 1, |ref| rms sqrt(10)
    assert abs(c["rel"] - 0.1 / 10**0.5) < 2e-3 and abs(c["noise"] - 1 / 10**0.5) < 0.02
    assert abs(c["ratio"] - 0.1) < 3e-3
    bad = ref.clone()
    bad[0, 0, 0] = float("nan")
    assert compare(ref, bad)["nonfinite"] == 1
