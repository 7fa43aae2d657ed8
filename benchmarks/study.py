"""Gradient variance and convergence on ground truth: SDS, ISM and SSD (mu = 0, fixed 1, learned).

    .venv/bin/python benchmarks/study.py                      # full study, docs section + figures
    .venv/bin/python benchmarks/study.py --quick --no-write   # smoke test
    .venv/bin/python benchmarks/study.py --load runs.json     # re-make table and figures from saved runs

With the procedural prior the scores are exact and the answer is known, so psnr_ref (PSNR of the scene
against the nearest reference mode on 4 held-out cameras) measures convergence. Each run is a studio
Trainer from its method's preset (CFG 7.5 throughout; ISM's warm-up 200 steps; SSD on an SDS score
term with the depth baseline), trained with Trainer.step. Two variance measures: "est. var" is the
estimator's own diagnostic (spread of g over the batch's cameras, which mixes noise with view
differences); "indep. var" is guidance.variance.z_space_variance: n draws of noise and timestep at the
current scene and one fixed pair of cameras, learned mu frozen, mean ||g - mean g||^2 per entry of z.
ISM's g carries its own weight lam sqrt((1 - ab_t) / ab_t), so its variance is on a different scale
from the SDS family's (SDS and the three SSD rows share w(t) = 1 - ab_t and are directly comparable).
Seconds are training wall-clock (evaluation excluded) on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import DOCS, ROOT, load_average, machine, markdown_table, small_config, write_section

import torch  # noqa: E402

from guidance.variance import z_space_variance  # noqa: E402
from renderers.camera import CameraSampler  # noqa: E402
from studio.trainer import Trainer  # noqa: E402

VARIANTS = {  # label -> (method, extra settings)
    "SDS": ("sds", {}),
    "ISM": ("ism", {}),
    "SSD mu=0": ("ssd", {"ssd.mu_mode": "fixed", "ssd.mu": 0.0}),
    "SSD mu=1 fixed": ("ssd", {"ssd.mu_mode": "fixed", "ssd.mu": 1.0}),
    "SSD mu learned": ("ssd", {"ssd.mu_mode": "learned", "ssd.mu": 1.0}),
}
PROMPTS = {"a red cube": "single mode", "a ball": "two colour modes"}
THRESHOLDS = (20.0, 25.0)


def independent_variance(tr: Trainer, fixed_batch, n: int) -> float:
    """z-space variance over n noise/timestep draws at the current scene and the fixed cameras."""
    bg = torch.ones(len(fixed_batch.cameras), 3)
    out = tr.renderer(tr.scene.to_params().detach(), fixed_batch.cameras, bg)
    vc = tr.prior.view_cond(tr.cond, fixed_batch, bg)
    rep = z_space_variance(tr.estimator, tr.prior, out, fixed_batch, vc, n=n, step=tr.iteration, seed=12345)
    return float(rep.variance)


def run_one(label: str, prompt: str, seed: int, a: argparse.Namespace) -> dict:
    """Train one variant; returns its curves (lists of [step, value] and [seconds, value])."""
    method, extra = VARIANTS[label]
    cfg = small_config(method, {"prompt.prompt": prompt, "run.seed": seed, "render.resolution": a.res,
                                "render.batch": a.batch, "init.num": a.num, **extra})
    tr = Trainer(cfg)
    fixed = CameraSampler(cfg.camera, a.res, a.res, seed=999).sample(2)
    rec = {"label": label, "prompt": prompt, "seed": seed, "est_var": [], "indep_var": [], "psnr": []}
    elapsed = 0.0
    for step in range(a.steps + 1):
        if step % a.eval_every == 0:
            rec["psnr"].append([step, elapsed, float(tr.score().psnr)])
        if step % a.var_every == 0:
            rec["indep_var"].append([step, independent_variance(tr, fixed, a.var_draws)])
        if step == a.steps:
            break
        start = time.perf_counter()
        diag = tr.step()
        elapsed += time.perf_counter() - start
        rec["est_var"].append([step, float(diag.get("grad_var", float("nan")))])
    rec["seconds"] = elapsed
    return rec


def first_reach(psnr: list, threshold: float) -> tuple[float, float] | None:
    """(step, seconds) of the first evaluation at or above threshold, None if never."""
    for step, sec, value in psnr:
        if value >= threshold:
            return step, sec
    return None


def mean_std(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def summary_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for prompt in dict.fromkeys(r["prompt"] for r in runs):
        for label in VARIANTS:
            rs = [r for r in runs if r["prompt"] == prompt and r["label"] == label]
            if not rs:
                continue
            row = [prompt, label, mean_std([r["psnr"][-1][2] for r in rs]),
                   mean_std([max(p[2] for p in r["psnr"]) for r in rs])]
            for th in THRESHOLDS:
                hits = [h for h in (first_reach(r["psnr"], th) for r in rs) if h is not None]
                row += [f"{mean_std([h[0] for h in hits], '{:.0f}')} ({len(hits)}/{len(rs)})",
                        mean_std([h[1] for h in hits])]
            half = lambda xs: xs[len(xs) // 2:]  # noqa: E731 -- the second half of training
            row.append(mean_std([statistics.mean(v for _, v in half(r["est_var"])) for r in rs], "{:.3g}"))
            row.append(mean_std([statistics.mean(v for _, v in half(r["indep_var"])) for r in rs], "{:.3g}"))
            row.append(mean_std([1e3 * r["seconds"] / len(r["est_var"]) for r in rs], "{:.0f}"))
            rows.append(row)
    return rows


HEADER = ["prompt", "variant", "final psnr_ref dB", "best dB", "steps to 20 dB (reached)", "s to 20 dB",
          "steps to 25 dB (reached)", "s to 25 dB", "est. var (2nd half)", "indep. var (2nd half)", "ms/step"]


def _mean_curve(runs: list[dict], key: str, xcol: int, ycol: int, smooth: int = 1) -> tuple[list, list]:
    """Mean over seeds of column ycol against the mean of column xcol, optionally moving-averaged."""
    series = [r[key] for r in runs]
    n = min(len(s) for s in series)
    xs = [statistics.mean(s[i][xcol] for s in series) for i in range(n)]
    ys = [statistics.mean(s[i][ycol] for s in series) for i in range(n)]
    if smooth > 1:
        ys = [statistics.mean(ys[max(0, i - smooth + 1): i + 1]) for i in range(n)]
    return xs, ys


def plot(runs: list[dict], key: str, xcol: int, ycol: int, xlabel: str, ylabel: str, path: Path,
         logy: bool = False, smooth: int = 1) -> None:
    """One panel per prompt, one line per variant (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts = list(dict.fromkeys(r["prompt"] for r in runs))
    fig, axes = plt.subplots(1, len(prompts), figsize=(5.5 * len(prompts), 4), squeeze=False)
    for ax, prompt in zip(axes[0], prompts):
        for label in VARIANTS:
            rs = [r for r in runs if r["prompt"] == prompt and r["label"] == label]
            if rs:
                ax.plot(*_mean_curve(rs, key, xcol, ycol, smooth), label=label, lw=1.4)
        if key == "psnr":
            for th in THRESHOLDS:
                ax.axhline(th, color="grey", ls=":", lw=0.8)
        ax.set(title=f"'{prompt}' ({PROMPTS.get(prompt, '')}), {len(set(r['seed'] for r in runs))} seeds",
               xlabel=xlabel, ylabel=ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


FIGURES = {  # file -> (key, x column, y column, x label, y label, log y, smoothing)
    "fig_study_est_var.png": ("est_var", 0, 1, "step", "estimator's grad_var (10-step mean)", True, 10),
    "fig_study_indep_var.png": ("indep_var", 0, 1, "step", "independent z-space variance", True, 1),
    "fig_study_psnr_steps.png": ("psnr", 0, 2, "step", "psnr_ref dB", False, 1),
    "fig_study_psnr_seconds.png": ("psnr", 1, 2, "training seconds", "psnr_ref dB", False, 1),
}


FINDINGS = "<!-- study-findings: text below this line, to the section's end, is kept when the script reruns -->"


def kept_findings(path: Path) -> str:
    """The hand-written reading of the results that follows FINDINGS in the current section, if any."""
    text = path.read_text() if path.exists() else ""
    if FINDINGS not in text or "<!-- study:end -->" not in text:
        return ""
    return text[text.index(FINDINGS) + len(FINDINGS): text.index("<!-- study:end -->")].rstrip("\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, one prompt, 20 steps at 24 px (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; no docs section, no figures")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--num", type=int, default=1000, help="initial Gaussians")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--var-every", type=int, default=50)
    ap.add_argument("--var-draws", type=int, default=8)
    ap.add_argument("--save", type=Path, help="also write the raw runs to this JSON file")
    ap.add_argument("--load", type=Path, help="skip training: table and figures from a --save file")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.steps, a.res, a.num, a.eval_every, a.var_every, a.var_draws = 1, 20, 24, 300, 10, 10, 4
    load = load_average()
    if a.load:
        saved = json.loads(a.load.read_text())
        runs, settings = saved["runs"], saved["settings"]
    else:
        prompts = ["a red cube"] if a.quick else list(PROMPTS)
        runs = []
        for prompt in prompts:
            for seed in range(a.seeds):
                for label in VARIANTS:
                    runs.append(run_one(label, prompt, seed, a))
                    r = runs[-1]
                    print(f"{prompt!r} seed {seed} {label}: psnr {r['psnr'][-1][2]:.2f} dB, {r['seconds']:.1f} s",
                          flush=True)
        settings = {k: getattr(a, k) for k in ("seeds", "steps", "res", "batch", "num", "eval_every",
                                                "var_every", "var_draws")}
        settings["machine"] = machine(load)
        if a.save:
            a.save.write_text(json.dumps({"settings": settings, "runs": runs}))
    table = markdown_table(HEADER, summary_rows(runs), align_left=2)
    print(f"\n{table}\n\nmachine: {settings['machine']}")
    if a.no_write:
        return
    for name, (key, xc, yc, xl, yl, logy, smooth) in FIGURES.items():
        plot(runs, key, xc, yc, xl, yl, ROOT / "docs" / name, logy, smooth)
    s = settings
    command = (f"`.venv/bin/python benchmarks/study.py --seeds {s['seeds']} --steps {s['steps']} --res {s['res']} "
               f"--batch {s['batch']} --num {s['num']}`")
    figs = " ".join(f"![{n}]({n})" for n in FIGURES)
    body = (f"## Variance and convergence on ground truth\n\nCommand: {command} ({time.strftime('%Y-%m-%d')}): "
            f"{s['seeds']} seeds x {len(set(r['prompt'] for r in runs))} prompts x {len(VARIANTS)} variants, "
            f"{s['steps']} steps at {s['res']} px, batch {s['batch']}, {s['num']} initial Gaussians; psnr_ref every "
            f"{s['eval_every']} steps, independent variance every {s['var_every']} steps from {s['var_draws']} "
            f"draws. Machine: {s['machine']}. No GPU was lent.\n\n{__doc__.split(chr(10) * 2, 2)[2].strip()}\n\n"
            f"Mean ± std over seeds; \"steps/s to X dB\" average the seeds that reached X (count in brackets).\n\n"
            f"{table}\n\n{figs}\n\n{FINDINGS}{kept_findings(DOCS)}")
    write_section("study", body)
    print("\nwrote docs/BENCHMARKS.md and docs/fig_study_*.png")


if __name__ == "__main__":
    main()
