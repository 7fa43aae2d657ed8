"""Scaling of render and step time with the Gaussian count and with the resolution (log-log fits).

    .venv/bin/python benchmarks/scaling.py            # table + fig_scaling.png, written to docs/
    .venv/bin/python benchmarks/scaling.py --quick --no-write

Each point builds a studio Trainer (SDS preset, procedural prior, CPU renderer, batch 1, a ball of N
Gaussians with 3DGS's nearest-neighbour scales) and times, as medians after one warm-up: "render" the
renderer's forward + backward of one freshly drawn training camera (loss on rgb), and "step" a whole
Trainer.step (camera draw, render, the prior's reference renders and score, backward, Adam). The exponent is the
slope of a least-squares line through log(time) against log(N) or log(pixels per side); "upper" fits
only the upper half of the points, where fixed per-call overheads matter less. The machine was shared
with other jobs (load average above); two full runs differed by up to 2x on single points, so read the
slopes, not single cells.
"""

from __future__ import annotations

import argparse
import math
import time

from common import ROOT, load_average, machine, markdown_table, median_ms, small_config, write_section

import torch  # noqa: E402

from studio.trainer import Trainer  # noqa: E402


def measure(n: int, res: int, repeats: int) -> dict:
    cfg = small_config("sds", {"init.num": n, "render.resolution": res, "render.batch": 1})
    tr = Trainer(cfg)
    bg = torch.ones(1, 3)

    def render_fwd_bwd() -> None:
        batch = tr.sampler.sample(1)  # a fresh training camera each time, as the step draws them
        params = tr.scene.to_params()
        tr.renderer(params, batch.cameras, bg).rgb.sum().backward()
        tr.scene.zero_grad()

    render = median_ms(render_fwd_bwd, 1, repeats)
    step = median_ms(tr.step, 1, repeats)
    return {"n": tr.scene.num_gaussians, "res": res, "render": render, "step": step}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(ys) on log(xs)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def exponents(rows: list[dict], x: str) -> dict[str, tuple[float, float]]:
    """{'render'|'step': (slope over all points, slope over the upper half)}."""
    xs = [r[x] for r in rows]
    upper = min(len(rows) // 2, len(rows) - 2)  # at least two points in the upper fit
    return {k: (slope(xs, [r[k] for r in rows]), slope(xs[upper:], [r[k] for r in rows][upper:]))
            for k in ("render", "step")}


def plot(by_n: list[dict], by_res: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, rows, x, xlabel in ((axes[0], by_n, "n", "Gaussians N"), (axes[1], by_res, "res", "pixels per side")):
        fits = exponents(rows, x)
        for k, marker in (("render", "o"), ("step", "s")):
            ax.loglog([r[x] for r in rows], [r[k] for r in rows], marker=marker,
                      label=f"{k} (slope {fits[k][0]:.2f}, upper {fits[k][1]:.2f})")
        ax.set(xlabel=xlabel, ylabel="ms (median)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_title(f"{by_n[0]['res']} px, batch 1")
    axes[1].set_title(f"{by_res[0]['n']} Gaussians, batch 1")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two counts and two resolutions (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; no docs section, no figure")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    counts = [1000, 4000] if a.quick else [1000, 3000, 10000, 30000, 100000]
    sizes = [32, 64] if a.quick else [64, 128, 256, 512]
    fixed_n, fixed_res = (1000, 64) if a.quick else (4000, 64)
    repeats = 2 if a.quick else a.repeats
    load = load_average()
    by_n, by_res = [], []
    for n in counts:
        by_n.append(measure(n, fixed_res, repeats))
        print(by_n[-1], flush=True)
    for res in sizes:
        by_res.append(measure(fixed_n, res, repeats))
        print(by_res[-1], flush=True)
    header = ["sweep", "N", "px", "render fwd+bwd ms", "step ms"]
    rows = [["N", r["n"], r["res"], f"{r['render']:.1f}", f"{r['step']:.1f}"] for r in by_n]
    rows += [["px", r["n"], r["res"], f"{r['render']:.1f}", f"{r['step']:.1f}"] for r in by_res]
    en, er = exponents(by_n, "n"), exponents(by_res, "res")
    fits = (f"Fitted exponents (time ~ x^k; all points / upper half): render vs N {en['render'][0]:.2f} / "
            f"{en['render'][1]:.2f}, step vs N {en['step'][0]:.2f} / {en['step'][1]:.2f}; render vs pixels per side "
            f"{er['render'][0]:.2f} / {er['render'][1]:.2f}, step vs pixels per side {er['step'][0]:.2f} / "
            f"{er['step'][1]:.2f} (2 would be proportional to the pixel count).")
    host = machine(load)
    print(f"\n{markdown_table(header, rows)}\n\n{fits}\nmachine: {host}")
    if a.no_write:
        return
    plot(by_n, by_res, ROOT / "docs" / "fig_scaling.png")
    command = "`.venv/bin/python benchmarks/scaling.py" + (" --quick`" if a.quick else "`")
    body = (f"## Scaling with Gaussian count and resolution\n\nCommand: {command} ({time.strftime('%Y-%m-%d')}), "
            f"{repeats} timed repeats per point. Machine: {host}. No GPU was lent: CPU renderer only.\n\n"
            f"{__doc__.split(chr(10) * 2, 2)[2].strip()}\n\n{markdown_table(header, rows)}\n\n{fits}\n\n"
            f"![scaling](fig_scaling.png)")
    write_section("scaling", body)
    print("\nwrote docs/BENCHMARKS.md and docs/fig_scaling.png")


if __name__ == "__main__":
    main()
