"""Rendering speed: the fast CPU rasterizer against the dense reference.

    .venv/bin/python benchmarks/render.py            # full table, written to docs/BENCHMARKS.md
    .venv/bin/python benchmarks/render.py --quick --no-write

Scenes look like a 3DGS object at initialization: N points uniform in the unit ball, isotropic scales
sqrt(mean squared distance to the 3 nearest neighbours) as 3DGS sets them, identity rotations, opacity
0.1, SH degree 0; one camera at distance 3 (fov 45 deg) looking at the ball. Times are medians after
warm-up; "forward" is the forward of a training step (parameters require grad), "fwd+bwd" adds a loss
on rgb and depth and its backward to every parameter. Pairs are the Gaussian-pixel pairs the CPU
forward actually evaluates: per 16-pixel row of a tile, only the pixels where a listed Gaussian can
reach alpha >= 1/255, until the pixel terminates; the reference evaluates all H * W * N. The reference
runs only where its measured peak memory (~72 bytes per pixel-Gaussian pair, forward + backward) stays
under --ref-mem-gb. The machine is shared with other jobs (see the load average): three full runs
differed by up to a third on the cpu times and up to 2x on the reference's. OpenMP threads wait passively
(OMP_WAIT_POLICY=PASSIVE, set here before torch loads): with the default spin-waiting, on the busy
machine the same 4k-Gaussian 64 px render took 6 to 9 times longer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# OpenMP (torch's libgomp, also numba's "omp" layer) spin-waits at barriers by default, which starves the
# working threads on a busy machine; it reads this once, when torch loads it. See tests/conftest.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from renderers import GaussianParams, orbit  # noqa: E402
from renderers.camera import Cameras  # noqa: E402
from renderers.cpu import count_pairs, render_cpu  # noqa: E402
from renderers.reference import render_reference  # noqa: E402

from common import machine, median_ms, write_section  # noqa: E402  (benchmarks/ is sys.path[0])

REF_BYTES_PER_PAIR = 72  # measured peak RSS of a reference forward + backward, per pixel-Gaussian pair
TARGET = (4000, 64, 30.0, 60.0)  # N, pixels, minimum speed-up and maximum ms of the cpu fwd+bwd


def init_scene(n: int, seed: int = 0) -> GaussianParams:
    """n Gaussians as 3DGS initializes them from a point cloud filling the unit ball."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = dirs * torch.rand(n, 1, generator=g) ** (1 / 3)
    d2 = torch.cat([torch.cdist(chunk, means).square().topk(4, largest=False).values[:, 1:]
                    for chunk in means.split(2048)])  # [n, 3] squared distances to 3 neighbours
    scale = d2.mean(-1).clamp_min(1e-14).sqrt()
    params = GaussianParams(
        means=means, quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1), scales=scale[:, None].repeat(1, 3),
        opacities=torch.full((n,), 0.1), sh=0.5 * torch.randn(n, 1, 3, generator=g),
    )
    for t in (params.means, params.quats, params.scales, params.opacities, params.sh):
        t.requires_grad_(True)
    return params


def time_renderer(render, params: GaussianParams, cams: Cameras, warmup: int, repeats: int) -> tuple[float, float]:
    """(forward ms, forward + backward ms)."""
    bg = torch.ones(3)

    def forward():
        return render(params, cams, bg)

    def forward_backward():
        out = forward()
        (out.rgb.sum() + 0.1 * out.depth.sum()).backward()
        for t in (params.means, params.quats, params.scales, params.opacities, params.sh):
            t.grad = None

    return median_ms(forward, warmup, repeats), median_ms(forward_backward, warmup, repeats)


def run(cases: list[tuple[int, int]], warmup: int, repeats: int, ref_repeats: int, ref_mem_gb: float) -> list[dict]:
    rows = []
    for n, size in cases:
        params = init_scene(n)
        cams = orbit(30.0, 20.0, 3.0, 45.0, size, size)
        pairs, isects = count_pairs(params, cams)
        cpu_f, cpu_fb = time_renderer(render_cpu, params, cams, warmup, repeats)
        row = dict(n=n, size=size, pairs=pairs, isects=isects, cpu_f=cpu_f, cpu_fb=cpu_fb, ref_f=None, ref_fb=None)
        if REF_BYTES_PER_PAIR * size * size * n <= ref_mem_gb * 2**30:
            row["ref_f"], row["ref_fb"] = time_renderer(render_reference, params, cams, 1, ref_repeats)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


HEADER = ("| N | px | pairs evaluated | cpu fwd ms | cpu fwd+bwd ms | ref fwd ms | ref fwd+bwd ms "
          "| speed-up fwd | speed-up fwd+bwd | cpu Mpairs/s | ref Mpairs/s (dense) |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def format_row(r: dict) -> str:
    cells = [f"{r['n']}", f"{r['size']}", f"{r['pairs']:,}", f"{r['cpu_f']:.1f}", f"{r['cpu_fb']:.1f}"]
    if r["ref_f"] is None:
        cells += ["-", "-", "-", "-"]
    else:
        cells += [f"{r['ref_f']:.0f}", f"{r['ref_fb']:.0f}", f"{r['ref_f'] / r['cpu_f']:.0f}x",
                  f"{r['ref_fb'] / r['cpu_fb']:.0f}x"]
    cells.append(f"{r['pairs'] / (r['cpu_f'] * 1e-3) / 1e6:.0f}")
    cells.append("-" if r["ref_f"] is None else f"{r['size'] ** 2 * r['n'] / (r['ref_f'] * 1e-3) / 1e6:.0f}")
    return "| " + " | ".join(cells) + " |"


def target_line(rows: list[dict]) -> str:
    n, size, min_speedup, max_ms = TARGET
    for r in rows:
        if (r["n"], r["size"]) == (n, size) and r["ref_fb"] is not None:
            speedup = r["ref_fb"] / r["cpu_fb"]
            met = speedup >= min_speedup and r["cpu_fb"] < max_ms
            return (f"Target ({n} Gaussians, {size}x{size}, one camera, fwd+bwd >= {min_speedup:.0f}x the "
                    f"reference and < {max_ms:.0f} ms): cpu {r['cpu_fb']:.1f} ms, {speedup:.0f}x -> "
                    f"{'met' if met else 'NOT met'}.")
    return "Target case (4000 Gaussians, 64 px, with the reference) not in this run."


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small case (smoke test, well under a minute)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per cpu measurement (median)")
    ap.add_argument("--ref-mem-gb", type=float, default=4.0, help="skip the reference above this estimated peak")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    cases = [(1000, 64)] if args.quick else [(n, s) for s in (64, 128, 256) for n in (1000, 4000, 16000)]
    repeats, ref_repeats = (3, 1) if args.quick else (args.repeats, 3)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(HEADER, flush=True)
    rows = run(cases, warmup=2, repeats=repeats, ref_repeats=ref_repeats, ref_mem_gb=args.ref_mem_gb)
    host = machine(load)
    print(f"\n{target_line(rows)}\nmachine: {host}")
    if args.no_write:
        return
    command = "`.venv/bin/python benchmarks/render.py" + (" --quick`" if args.quick else "`")
    table = (f"## Rendering\n\nCommand: {command} ({time.strftime('%Y-%m-%d')}). Machine: {host}.\n\n"
             f"{__doc__.split(chr(10) * 2, 2)[2].strip()}\n\n{HEADER}\n" + "\n".join(format_row(r) for r in rows)
             + f"\n\n{target_line(rows)}")
    write_section("render", table, ROOT / "docs" / "BENCHMARKS.md")
    print(f"\nwrote {ROOT / 'docs' / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
