"""Cost of one training iteration, by stage, for SDS, ISM (several inversion strides) and SSD.

    .venv/bin/python benchmarks/iteration.py            # table, written to docs/BENCHMARKS.md
    .venv/bin/python benchmarks/iteration.py --quick --no-write

Each variant builds a studio Trainer from its method's preset (procedural prior, CPU renderer, default
64 px, batch 4, 2000 Gaussians) and runs Trainer.step's stages itself, in the same order and with the
same objects, timing each with perf_counter: "sample" (cameras, backgrounds, parameters), "render",
"view_cond" (prior.view_cond: view-dependent conditioning; the procedural prior only records the
views here and renders its references lazily, see below), "encode" (prior.encode, inside the
estimator), "prior" (every predict_noise call; "calls" counts them per step, the CFG call as one),
"baseline" (SSD's prior.estimate_disparity/estimate_depth calls), "estimator rest" (the estimator's
own arithmetic: the estimator call minus the three before), "backward", "optimizer" (Adam step),
"densify" (pre/post backward bookkeeping and zero_grad) and the whole "step".
The prior is wrapped (common.TimedPrior) to time and count its calls; studio/ is not changed. Medians
over the timed steps, after warm-up steps; the ISM presets' warm-up anneals t from 0.98 down, so its
inversion path (calls per step) is longest early on. With the procedural prior, most of "prior" is its
first predict_noise of a step, which renders every reference mode of the prompt at the batch's new
cameras (view_cond only records them) and caches them for the step's later calls; so ISM's extra calls
cost far less than the first one here. With Stable Diffusion every call is a UNet pass, and the ratio to
SDS should follow the call count instead (not measured: no GPU was lent). The machine was shared with
other jobs (load average above), so single rows can be off by a third; compare ratios, not digits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from common import TimedPrior, load_average, machine, markdown_table, small_config, write_section

import torch  # noqa: E402

from studio.trainer import Trainer, build_prior  # noqa: E402

STAGES = ("sample", "render", "view_cond", "encode", "prior", "baseline", "estimator rest", "backward", "optimizer",
          "densify", "step")


def variants(quick: bool) -> list[tuple[str, str, dict]]:
    """(label, method, extra dotted settings)."""
    if quick:
        return [("SDS", "sds", {}), ("ISM dS=200 (default)", "ism", {}), ("SSD (learned mu)", "ssd", {})]
    return [
        ("SDS", "sds", {}),
        ("ISM dS=200, 5 inv (default)", "ism", {}),
        ("ISM dS=400, 3 inv", "ism", {"ism.delta_s": 400, "ism.inv_steps": 3}),
        ("ISM dS=100, 10 inv", "ism", {"ism.delta_s": 100, "ism.inv_steps": 10}),
        ("ISM dS=50, 20 inv", "ism", {"ism.delta_s": 50, "ism.inv_steps": 20}),
        ("SSD (learned mu)", "ssd", {}),
    ]


def timed_step(tr: Trainer, prior: TimedPrior, clock=time.perf_counter) -> dict[str, float]:
    """Trainer.step's stages (studio/trainer.py), each timed by `clock` (use the prior's clock: on CUDA
    one that synchronizes); returns ms per stage and prior call counts."""
    ms: dict[str, float] = {}
    prior.reset_counters()
    cfg, step = tr.cfg, tr.iteration
    t_start = t0 = clock()
    batch = tr.sampler.sample(cfg.render.batch)
    batch = replace(batch, cameras=batch.cameras.to(tr.device))
    bg = tr.backgrounds(cfg.render.batch)
    params = tr.scene.to_params()
    t1 = clock()
    out = tr.renderer(params, batch.cameras, bg)
    t2 = clock()
    tr.scene.pre_backward(step, out.info)
    vc = tr.prior.view_cond(tr.cond, batch, bg)
    t3 = clock()
    result = tr.estimator(tr.prior, out, batch, vc, step)
    t4 = clock()
    result.loss.backward()
    t5 = clock()
    if cfg.run.grad_clip > 0:
        tr.scene.clip_grads(cfg.run.grad_clip)
    tr.scene.optimizer_step(step)
    t6 = clock()
    tr.scene.post_backward(step, out.info)
    tr.scene.zero_grad()
    tr.iteration += 1
    t7 = clock()
    sec = prior.seconds
    ms["sample"], ms["render"], ms["backward"], ms["optimizer"] = (t1 - t0, t2 - t1, t5 - t4, t6 - t5)
    ms["encode"], ms["prior"] = sec["encode"], sec["predict_noise"]
    ms["baseline"] = sec["estimate_disparity"] + sec["estimate_depth"]
    ms["estimator rest"] = (t4 - t3) - ms["encode"] - ms["prior"] - ms["baseline"]
    ms["view_cond"] = sec["view_cond"]
    ms["densify"] = (t3 - t2) - sec["view_cond"] + (t7 - t6)
    ms["step"] = t7 - t_start
    ms = {k: 1e3 * v for k, v in ms.items()}
    ms["calls"] = float(prior.calls["predict_noise"])
    return ms


def run_variant(method: str, extra: dict, base: dict, warmup: int, repeats: int) -> dict[str, float]:
    cfg = small_config(method, {**base, **extra})
    prior = TimedPrior(build_prior(cfg, torch.device("cpu")))
    tr = Trainer(cfg, prior=prior)
    samples = [timed_step(tr, prior) for _ in range(warmup + repeats)][warmup:]
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]} | {
        "calls_mean": statistics.mean(s["calls"] for s in samples), "n": tr.scene.num_gaussians}


def format_rows(results: list[tuple[str, dict]]) -> list[list[str]]:
    sds = results[0][1]["step"]
    rows = []
    for label, r in results:
        rows.append([label] + [f"{r[s]:.1f}" for s in STAGES] + [f"{r['calls_mean']:.1f}", f"{r['step'] / sds:.2f}x"])
    return rows


HEADER = ["variant"] + [f"{s} ms" for s in STAGES] + ["prior calls/step", "step / SDS"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 variants at 32 px, batch 1, a few steps (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    ap.add_argument("--repeats", type=int, default=15, help="timed steps per variant (median)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    base = {"render.resolution": 32, "render.batch": 1, "init.num": 500} if args.quick else {}
    warmup, repeats = (2, 3) if args.quick else (5, args.repeats)
    load = load_average()
    results = []
    # A discarded pass first: whichever variant ran first measured its prior ~35% slower than the same
    # variant run again (process warm-up past the per-variant warm-up steps).
    _, method, extra = variants(args.quick)[0]
    run_variant(method, extra, base, warmup + repeats, 1)
    for label, method, extra in variants(args.quick):
        results.append((label, run_variant(method, extra, base, warmup, repeats)))
        print(f"{label}: step {results[-1][1]['step']:.1f} ms", flush=True)
    table = markdown_table(HEADER, format_rows(results))
    host = machine(load)
    print(f"\n{table}\n\nmachine: {host}")
    if args.no_write:
        return
    res = results[0][1]
    command = "`.venv/bin/python benchmarks/iteration.py" + (" --quick`" if args.quick else "`")
    body = (f"## Cost of one iteration, by stage\n\nCommand: {command} ({time.strftime('%Y-%m-%d')}), "
            f"{warmup} warm-up + {repeats} timed steps per variant, {int(res['n'])} Gaussians. Machine: {host}. "
            f"No GPU was lent to this session: everything ran on the CPU renderer with the procedural prior.\n\n"
            f"{__doc__.split(chr(10) * 2, 2)[2].strip()}\n\n{table}")
    write_section("iteration", body)
    print("\nwrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
