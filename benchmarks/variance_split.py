"""Where SDS's variance comes from, and what a per-timestep control variate can reach: the share of the
gradient's variance that is within one timestep (the noise's) against between timesteps (t's), at a
trained scene, and the within-t variance of the Taylor term and SSD's baselines relative to SDS's.

    .venv/bin/python benchmarks/variance_split.py              # docs section "variance-split"
    .venv/bin/python benchmarks/variance_split.py --quick --no-write

For each prompt of the study (benchmarks/study.py) SDS trains --steps steps (densification off, the
study's settings); at the final scene and the study's fixed pair of cameras, the parameter-space variance
(guidance.variance.param_space_variance, --draws draws) is measured for SDS over its whole t range
(total), and at each of --ts fixed timesteps for SDS, SDS with the Taylor term at weight 1, SSD with the
old default phi (c0 1, lam 0.1, mu 1) and SSD with the paper's phi (c0 0, lam 1, mu 1). A control variate
acts only within a timestep: SDS's between-t share (total minus the mean within-t variance, over total)
is out of its reach.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from common import load_average, machine, markdown_table, write_section
from study import PROMPTS, config_for, measure


from guidance.estimators import make_estimator  # noqa: E402
from renderers.camera import CameraSampler  # noqa: E402
from studio.trainer import Trainer  # noqa: E402

ROWS = {  # label -> (method, settings edit at a fixed t)
    "SDS": ("sds", {}),
    "SDS Taylor (weight 1)": ("sds", {"taylor": "fixed"}),
    "SSD old phi (c0 1, lam 0.1, mu 1)": ("ssd", {"mu_mode": "fixed", "mu": 1.0}),
    "SSD paper phi (c0 0, lam 1, mu 1)": ("ssd", {"c0": 0.0, "lam": 1.0, "mu_mode": "fixed", "mu": 1.0}),
}


def at_t(cfg, method: str, edit: dict, t: int):
    s = getattr(cfg, method)
    f = t / 1000
    return make_estimator(method, replace(s, t_range=(f, f), **edit), seed=0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one prompt, 20 steps, 3 timesteps, 4 draws")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--ts", default="50,200,350,500,650,800,950")
    ap.add_argument("--prompts", default=",".join(PROMPTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.res, a.num, a.draws, a.ts, a.prompts = 20, 24, 300, 4, "100,500,900", "shape"
    load = load_average()
    ts = [int(x) for x in a.ts.split(",")]
    rows = []
    for pk in a.prompts.split(","):
        t0 = time.perf_counter()
        cfg = config_for("sds", {}, pk, 0, a)
        tr = Trainer(cfg)
        for _ in range(a.steps):
            tr.step()
        fixed = CameraSampler(cfg.camera, a.res, a.res, seed=999).sample(2)
        total = measure(tr, make_estimator("sds", cfg.sds, seed=0), fixed, a.draws)["param"]
        ssd_cfg = config_for("ssd", {}, pk, 0, a)
        within = {label: [measure(tr, at_t(ssd_cfg if m == "ssd" else cfg, m, edit, t), fixed, a.draws)["param"]
                          for t in ts] for label, (m, edit) in ROWS.items()}
        sds_within = statistics.mean(within["SDS"])
        psnr = float(tr.score().psnr)
        rows.append([PROMPTS[pk][0], f"{psnr:.1f}", f"{total:.3g}", f"{sds_within / total:.2f}",
                     f"{max(0.0, 1 - sds_within / total):.2f}"]
                    + [f"{statistics.mean(within[label]) / sds_within:.3f}" for label in list(ROWS)[1:]]
                    + [" / ".join(f"{w / s:.2f}" for w, s in zip(within["SDS Taylor (weight 1)"], within["SDS"]))])
        print(f"{PROMPTS[pk][0]!r}: {time.perf_counter() - t0:.0f} s", flush=True)
    header = (["prompt", "psnr_ref dB at the scene", "SDS total variance", "within-t share", "between-t share"]
              + [f"{label}: within-t variance / SDS's" for label in list(ROWS)[1:]]
              + [f"Taylor / SDS at t = {', '.join(map(str, ts))}"])
    table = markdown_table(header, rows)
    mach = machine(load)
    print(f"\n{table}\n\nmachine: {mach}")
    if a.no_write:
        return
    command = (f"`.venv/bin/python benchmarks/variance_split.py --steps {a.steps} --res {a.res} --batch {a.batch} "
               f"--num {a.num} --draws {a.draws} --ts {a.ts}`")
    body = (f"## Where the variance comes from\n\nCommand: {command} ({time.strftime('%Y-%m-%d')}). Machine: {mach}. "
            f"No GPU was lent.\n\n{__doc__.split(chr(10) * 2, 2)[2].strip()}\n\n"
            "The within-t ratios average the variance over the timesteps before dividing (so the large-t "
            "variances weigh most); the last column gives the Taylor term's ratio at each t.\n\n" + table)
    write_section("variance-split", body)
    print("\nwrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
