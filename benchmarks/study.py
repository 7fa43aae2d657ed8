"""Gradient variance and convergence on ground truth, to a plateau: SDS, ISM, SSD (one and two
coefficients), stratified timesteps, antithetic noise and the Taylor control variate.

    .venv/bin/python benchmarks/study.py --save /tmp/study.jsonl        # full study, docs section + figures
    .venv/bin/python benchmarks/study.py --quick --no-write             # smoke test
    .venv/bin/python benchmarks/study.py --load /tmp/study.jsonl        # table and figures from saved runs

--save appends each finished run as one JSON line and --resume skips the runs a file already holds, so a
study that is stopped loses at most the run in progress; --workers runs that many single-threaded
processes side by side.

Prompts: "a red shape" (assets/objects/shapes.json: fifteen modes of one colour from a ball to a cube,
whose posterior stays soft from t ~ 400, so SSD's depth baseline has a gradient), and the old "a red
cube" (one mode) and "a ball" (two colours, one geometry), where the baseline's gradient is exactly zero.
Each run is a studio Trainer from its method's preset (CFG 7.5 throughout; ISM's warm-up 200 steps),
densification off (the Gaussian count stays at --num for every run, reported), the learning rates'
decay stretched over the whole run (optim.max_steps = --steps), trained with Trainer.step.

psnr_ref is the PSNR of the scene against the nearest reference mode on 4 held-out cameras. Variance is
measured at fixed steps of every run, at that run's scene and one fixed pair of cameras, over
--var-draws draws of t and noise with learned weights frozen: the variance of the gradient w.r.t. the
Gaussians' parameters (guidance.variance.param_space_variance: what the optimizer sees; stratified and
antithetic draws couple the two cameras, which only this measure can see) and the z-space variance.
"ratio to SDS" divides by plain SDS's variance at the same scene, cameras and seed, so that both see
the same t and eps wherever their draws coincide (SSD on SDS's score term draws exactly SDS's). ISM
carries its own weight lam sqrt((1 - ab_t) / ab_t) and t range, so its ratio is also on another scale;
"noise / signal" (variance over the squared norm of the mean gradient, per entry, the mean's own noise
subtracted) is scale-free and comparable across all rows. Variance-only rows are measured at the SDS
runs' scenes: SSD with the paper's phi (c0 0, lam 1, mu 1) and the Taylor term at weight 1 on SDS and
on ISM (ISM's ratio there is to ISM).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

from common import DOCS, ROOT, load_average, machine, markdown_table, small_config, write_section

import torch  # noqa: E402

from guidance.estimators import make_estimator  # noqa: E402
from guidance.variance import param_space_variance, z_space_variance  # noqa: E402
from renderers.camera import CameraSampler  # noqa: E402
from studio.trainer import Trainer  # noqa: E402

SHAPES = "assets/objects/shapes.json"
PROMPTS = {  # key -> (prompt, object library, what it tests)
    "shape": ("a red shape", SHAPES, "15 geometries, one colour"),
    "cube": ("a red cube", "", "one mode"),
    "ball": ("a ball", "", "two colours, one geometry"),
}
VARIANTS = {  # label -> (method, extra settings)
    "SDS": ("sds", {}),
    "SDS stratified t": ("sds", {"sds.t_sampling": "stratified"}),
    "SDS antithetic": ("sds", {"sds.antithetic": True}),
    "SDS Taylor (learned)": ("sds", {"sds.taylor": "learned"}),
    "ISM": ("ism", {}),
    "SSD one coeff. (old default)": ("ssd", {}),
    "SSD two coeff. (learned)": ("ssd", {"ssd.coefficients": "two"}),
}
VARIANCE_ONLY = {  # label -> (method, extra settings, reference method); measured at the SDS runs' scenes
    "SSD paper phi (c0 0, lam 1, mu 1)": ("ssd", {"ssd.c0": 0.0, "ssd.lam": 1.0, "ssd.mu_mode": "fixed", "ssd.mu": 1.0},
                                          "sds"),
    "SDS Taylor (weight 1)": ("sds", {"sds.taylor": "fixed"}, "sds"),
    "ISM Taylor (weight 1)": ("ism", {"ism.taylor": "fixed"}, "ism"),
}
THRESHOLDS = (20.0, 25.0)
VAR_SEED = 12345


def config_for(method: str, extra: dict, prompt_key: str, seed: int, a) -> object:
    prompt, objects, _ = PROMPTS[prompt_key]
    return small_config(method, {"prompt.prompt": prompt, "prior.objects": objects, "run.seed": seed,
                                 "render.resolution": a.res, "render.batch": a.batch, "init.num": a.num,
                                 "densify.enabled": False, "optim.max_steps": a.steps, **extra})


def plain(cfg, method: str):
    """The reference estimator for ratios: plain SDS (iid t, independent noise, no Taylor term) or plain
    ISM, with the run's own guidance settings."""
    if method == "ism":
        return make_estimator("ism", replace(cfg.ism, taylor="off", antithetic=False), seed=0)
    return make_estimator("sds", replace(cfg.sds, t_sampling="iid", antithetic=False, taylor="off"), seed=0)


def measure(tr: Trainer, est, fixed, n: int) -> dict:
    """Parameter- and z-space variance of `est` at the trainer's scene and the fixed cameras."""
    bg = torch.ones(len(fixed.cameras), 3)
    params = [p for p in tr.scene.params.values()]
    vc = tr.prior.view_cond(tr.cond, fixed, bg)

    def render():
        return tr.renderer(tr.scene.to_params(), fixed.cameras, bg)

    with torch.no_grad():
        frozen = render()
    pr = param_space_variance(est, tr.prior, render, params, fixed, vc, n=n, step=tr.iteration, seed=VAR_SEED)
    zr = z_space_variance(est, tr.prior, frozen, fixed, vc, n=n, step=tr.iteration, seed=VAR_SEED)
    signal = float((pr.mean.double() ** 2).mean()) - float(pr.variance) / n  # the mean's own noise removed
    return {"param": float(pr.variance), "z": float(zr.variance),
            "nsr": float(pr.variance) / signal if signal > 0 else float("inf")}


def run_one(job: tuple) -> dict:
    """Train one variant; returns its curves and variance points (JSON-ready)."""
    label, prompt_key, seed, a = job
    method, extra = VARIANTS[label]
    cfg = config_for(method, extra, prompt_key, seed, a)
    tr = Trainer(cfg)
    fixed = CameraSampler(cfg.camera, a.res, a.res, seed=999).sample(2)
    rec = {"label": label, "prompt": prompt_key, "seed": seed, "psnr": [], "var": [], "extra_var": {}, "diag": {}}
    var_steps = set(range(0, a.steps + 1, a.var_every)) | {a.steps}
    elapsed = 0.0
    for step in range(a.steps + 1):
        if step % a.eval_every == 0 or step == a.steps:
            sc = tr.score()
            rec["psnr"].append([step, elapsed, float(sc.psnr), sc.mode_name])
        if step in var_steps:
            own = measure(tr, tr.estimator, fixed, a.var_draws)
            same = label in ("SDS", "ISM")  # the plain estimator is the reference itself: same seed, same draws
            ref = own if same else measure(tr, plain(cfg, "ism" if method == "ism" else "sds"), fixed, a.var_draws)
            rec["var"].append([step, own, ref])
            if label == "SDS":
                for vlabel, (vm, vextra, refm) in VARIANCE_ONLY.items():
                    vcfg = config_for(vm, vextra, prompt_key, seed, a)
                    est = make_estimator(vm, getattr(vcfg, vm), seed=0)
                    base = ref if refm == "sds" else measure(tr, plain(vcfg, "ism"), fixed, a.var_draws)
                    rec["extra_var"].setdefault(vlabel, []).append([step, measure(tr, est, fixed, a.var_draws), base])
        if step == a.steps:
            break
        start = time.perf_counter()
        diag = tr.step()
        elapsed += time.perf_counter() - start
        for k in ("mu", "mu1", "taylor_mu"):
            if k in diag and diag[k] is not None and torch.as_tensor(diag[k]).numel() == 1:
                rec["diag"][k] = float(diag[k])
    rec["seconds"] = elapsed
    rec["steps"] = a.steps
    rec["machine"], rec["workers"] = a.machine, a.workers
    rec["gaussians"] = tr.scene.num_gaussians
    return rec


def _worker_init() -> None:
    torch.set_num_threads(1)
    import numba

    numba.set_num_threads(1)


def first_reach(psnr: list, threshold: float) -> float | None:
    for step, _, value, *_ in psnr:
        if value >= threshold:
            return step
    return None


def mean_std(values: list[float], fmt: str = "{:.1f}") -> str:
    """mean ± std of the finite values; "(k of n)" when some were not finite (a noise / signal whose
    signal estimate was not positive)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    note = f" ({len(finite)} of {len(values)})" if len(finite) < len(values) else ""
    if not finite:
        return "-" + note
    if len(finite) == 1:
        return fmt.format(finite[0]) + note
    return f"{fmt.format(statistics.mean(finite))} ± {fmt.format(statistics.stdev(finite)).lstrip('+')}{note}"


def _ratio(points: list, key: str, late: bool) -> float:
    """Mean over the run's variance points (the second half of training if late, else all) of own / ref."""
    pts = [p for p in points if (p[0] >= points[-1][0] / 2) == late or not late]
    return statistics.mean(p[1][key] / p[2][key] for p in pts if p[2][key] > 0)


def _nsr(points: list) -> float:
    pts = [p for p in points if p[0] >= points[-1][0] / 2]
    return statistics.mean(p[1]["nsr"] for p in pts)


def convergence_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for pk in dict.fromkeys(r["prompt"] for r in runs):
        for label in VARIANTS:
            rs = [r for r in runs if r["prompt"] == pk and r["label"] == label]
            if not rs:
                continue
            final = [r["psnr"][-1][2] for r in rs]
            steps = rs[0]["steps"]
            before = [min(r["psnr"], key=lambda p: abs(p[0] - 2 * steps / 3))[2] for r in rs]
            row = [PROMPTS[pk][0], label, mean_std(final), mean_std([f - b for f, b in zip(final, before)], "{:+.2f}"),
                   mean_std([max(p[2] for p in r["psnr"]) for r in rs])]
            for th in THRESHOLDS:
                hits = [h for h in (first_reach(r["psnr"], th) for r in rs) if h is not None]
                row.append(f"{mean_std(hits, '{:.0f}')} ({len(hits)}/{len(rs)})")
            modes = sorted({r["psnr"][-1][3] for r in rs})
            row += [", ".join(modes) if len(modes) <= 3 else f"{len(modes)} different",
                    "/".join(sorted({str(r["gaussians"]) for r in rs})),
                    mean_std([1e3 * r["seconds"] / r["steps"] for r in rs], "{:.0f}")]
            rows.append(row)
    return rows


CONV_HEADER = ["prompt", "variant", "final psnr_ref dB", "change over the last third dB", "best dB",
               "steps to 20 dB (reached)", "steps to 25 dB (reached)", "final nearest mode", "Gaussians",
               "ms/step"]


def variance_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for pk in dict.fromkeys(r["prompt"] for r in runs):
        entries = []
        for label in VARIANTS:
            rs = [r for r in runs if r["prompt"] == pk and r["label"] == label]
            entries.append((label, [r["var"] for r in rs], "ISM" if VARIANTS[label][0] == "ism" else "SDS", rs))
        sds_runs = [r for r in runs if r["prompt"] == pk and r["label"] == "SDS"]
        for vlabel, (_, _, refm) in VARIANCE_ONLY.items():
            pts = [r["extra_var"][vlabel] for r in sds_runs if vlabel in r["extra_var"]]
            entries.append((vlabel + " *", pts, refm.upper(), sds_runs))
        for label, pts, ref, rs in entries:
            if not pts:
                continue
            mus = [r["diag"] for r in rs if label in VARIANTS]
            learned = "; ".join(f"{k} {mean_std([d[k] for d in mus if k in d], '{:.2f}')}"
                                for k in ("mu", "mu1", "taylor_mu") if any(k in d for d in mus))
            rows.append([PROMPTS[pk][0], label, ref,
                         mean_std([_ratio(p, "param", False) for p in pts], "{:.3f}"),
                         mean_std([_ratio(p, "param", True) for p in pts], "{:.3f}"),
                         mean_std([_ratio(p, "z", True) for p in pts], "{:.3f}"),
                         mean_std([_nsr(p) for p in pts], "{:.3g}"),
                         learned or "-"])
    return rows


VAR_HEADER = ["prompt", "variant", "ratio to", "param-space variance ratio (all points)",
              "param-space ratio (2nd half)", "z-space ratio (2nd half)", "noise / signal (2nd half)",
              "final learned weights"]


def plot(runs: list[dict], path_psnr: Path, path_var: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts = list(dict.fromkeys(r["prompt"] for r in runs))
    for path, key in ((path_psnr, "psnr"), (path_var, "var")):
        fig, axes = plt.subplots(1, len(prompts), figsize=(5.5 * len(prompts), 4), squeeze=False)
        for ax, pk in zip(axes[0], prompts):
            for label in VARIANTS:
                rs = [r for r in runs if r["prompt"] == pk and r["label"] == label]
                if not rs:
                    continue
                n = min(len(r[key]) for r in rs)
                xs = [rs[0][key][i][0] for i in range(n)]
                if key == "psnr":
                    ys = [statistics.mean(r[key][i][2] for r in rs) for i in range(n)]
                else:
                    ys = [statistics.mean(r[key][i][1]["param"] for r in rs) for i in range(n)]
                ax.plot(xs, ys, label=label, lw=1.3)
            if key == "psnr":
                for th in THRESHOLDS:
                    ax.axhline(th, color="grey", ls=":", lw=0.8)
            else:
                ax.set_yscale("log")
            seeds = len({r["seed"] for r in runs if r["prompt"] == pk})
            ax.set(title=f"'{PROMPTS[pk][0]}' ({PROMPTS[pk][2]}), {seeds} seeds", xlabel="step",
                   ylabel="psnr_ref dB" if key == "psnr" else "param-space variance (own)")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)


FINDINGS = "<!-- study-findings: text below this line, to the section's end, is kept when the script reruns -->"


def kept_findings(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    if FINDINGS not in text or "<!-- study:end -->" not in text:
        return ""
    return text[text.index(FINDINGS) + len(FINDINGS): text.index("<!-- study:end -->")].rstrip("\n")


def load_runs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, one prompt, 16 steps at 24 px (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; no docs section, no figures")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--num", type=int, default=1000, help="Gaussians (densification is off)")
    ap.add_argument("--prompts", default=",".join(PROMPTS), help=f"comma-separated keys of {list(PROMPTS)}")
    ap.add_argument("--variants", default="", help="comma-separated labels of VARIANTS to train (default all)")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--var-every", type=int, default=750)
    ap.add_argument("--var-draws", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--save", type=Path, help="append each finished run to this JSON-lines file")
    ap.add_argument("--resume", action="store_true", help="skip the runs the --save file already holds")
    ap.add_argument("--load", type=Path, help="skip training: table and figures from a --save file")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.steps, a.res, a.num, a.eval_every, a.var_every, a.var_draws = 1, 16, 24, 300, 8, 8, 4
        a.prompts = "shape"
    load = load_average()
    a.machine = machine(load)
    if a.load:
        runs = load_runs(a.load)
    else:
        runs = load_runs(a.save) if (a.save and a.resume) else []
        done = {(r["label"], r["prompt"], r["seed"]) for r in runs}
        labels = [v.strip() for v in a.variants.split(",") if v.strip()] or list(VARIANTS)
        unknown = [v for v in labels if v not in VARIANTS]
        if unknown:
            ap.error(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
        jobs = [(label, pk, seed, a) for seed in range(a.seeds) for pk in a.prompts.split(",") for label in labels
                if (label, pk, seed) not in done]
        print(f"{len(jobs)} runs to do ({len(done)} already saved)", flush=True)
        t0 = time.perf_counter()
        pool = mp.get_context("spawn").Pool(a.workers, initializer=_worker_init) if a.workers > 1 else None
        results = pool.imap_unordered(run_one, jobs) if pool else map(run_one, jobs)
        for i, r in enumerate(results):
            runs.append(r)
            if a.save:
                with a.save.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            print(f"[{i + 1}/{len(jobs)} {time.perf_counter() - t0:.0f} s] {PROMPTS[r['prompt']][0]!r} "
                  f"seed {r['seed']} {r['label']}: psnr {r['psnr'][-1][2]:.2f} dB, {r['seconds']:.0f} s", flush=True)
        if pool:
            pool.close()
    conv = markdown_table(CONV_HEADER, convergence_rows(runs), align_left=2)
    var = markdown_table(VAR_HEADER, variance_rows(runs), align_left=3)
    mach = runs[0].get("machine", a.machine)  # the training's machine line when the runs carry it
    workers = runs[0].get("workers", a.workers)
    if workers > 1:
        mach += f"; {workers} worker processes of 1 thread each (torch and numba)"
    print(f"\n{conv}\n\n{var}\n\nmachine: {mach}")
    if a.no_write:
        return
    figs = {"fig_study_psnr_steps.png": ROOT / "docs" / "fig_study_psnr_steps.png",
            "fig_study_variance.png": ROOT / "docs" / "fig_study_variance.png"}
    plot(runs, *figs.values())
    s0 = runs[0]
    seeds = len({r["seed"] for r in runs})
    res = {"steps": s0["steps"]}
    command = (f"`.venv/bin/python benchmarks/study.py --seeds {seeds} --steps {res['steps']} --res {a.res} "
               f"--batch {a.batch} --num {a.num} --var-draws {a.var_draws} --workers {workers} --save runs.jsonl`")
    kept = f"; its runs are in docs/{a.load.name}, which `--load` turns back into this section" if a.load else ""
    body = (f"## Variance and convergence on ground truth\n\nCommand: {command} ({time.strftime('%Y-%m-%d')}{kept}), "
            f"{len(runs)} runs: {seeds} seeds x {len({r['prompt'] for r in runs})} prompts x {len(VARIANTS)} "
            f"variants, {res['steps']} steps each; psnr_ref every {a.eval_every} steps, variance every "
            f"{a.var_every} steps from {a.var_draws} draws. Machine: {mach}. No GPU was lent.\n\n"
            f"{__doc__.split(chr(10) * 2, 3)[3].strip()}\n\n"
            "Mean ± std over seeds; \"steps to X dB\" average the seeds that reached X (count in brackets); "
            "\"change over the last third\" is the final psnr_ref minus its value two thirds into the run "
            "(a plateau is close to 0).\n\n"
            f"{conv}\n\nVariance (rows marked * are measured at the SDS runs' scenes, not trained):\n\n{var}\n\n"
            + " ".join(f"![{n}]({n})" for n in figs) + f"\n\n{FINDINGS}{kept_findings(DOCS)}")
    write_section("study", body)
    print("\nwrote docs/BENCHMARKS.md and docs/fig_study_*.png")


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_NUM_THREADS", "2")
    main()
