"""Cost of the procedural prior per training step: view_cond + one CFG predict_noise.

Two paths on the same cameras, interleaved step by step so that machine load hits both alike:
"per object" renders each reference object with a plain renderer call (what the prior does with any
renderer other than "cpu"), "batched" is the CPU renderer's `render_many_forward` (one projection, one
compositing pass per distinct geometry, forward only). Their noise predictions must agree.

    python benchmarks/prior_step.py [--prompt "a red cube"] [--size 64] [--batch 4] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidance.priors import ProceduralPrior  # noqa: E402
from renderers import make_renderer  # noqa: E402
from renderers.camera import CameraRanges, CameraSampler  # noqa: E402


class PerObject:
    """The cpu renderer under another name, so that the prior renders object by object."""

    name = "cpu-per-object"

    def __init__(self):
        self.inner = make_renderer("cpu")

    def __call__(self, params, cameras, background):
        return self.inner(params, cameras, background)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default="a red cube")
    ap.add_argument("--negative", default="")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    priors = {"per object": ProceduralPrior(renderer=PerObject()), "batched": ProceduralPrior()}
    conds = {k: p.embed(args.prompt, args.negative) for k, p in priors.items()}
    sampler = CameraSampler(CameraRanges(), args.size, args.size, seed=0)
    g = torch.Generator().manual_seed(0)
    bg = torch.ones(args.batch, 3)
    wall: dict[str, list[float]] = {k: [] for k in priors}
    cpu: dict[str, list[float]] = {k: [] for k in priors}
    for step in range(args.steps + 3):  # 3 warm-up steps (numba's first calls)
        cams = sampler.sample(args.batch)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
        t = torch.randint(20, 980, (args.batch,), generator=g)
        eps = {}
        for k, prior in priors.items():
            w0, c0 = time.perf_counter(), time.process_time()
            eps[k] = prior.predict_noise(x, t, prior.view_cond(conds[k], cams, bg), 7.5)
            if step >= 3:
                wall[k].append(time.perf_counter() - w0)
                cpu[k].append(time.process_time() - c0)
        torch.testing.assert_close(eps["batched"], eps["per object"], rtol=0, atol=1e-4)
    n_obj = len(set(conds["batched"].data.cond + conds["batched"].data.uncond))
    print(f"prompt {args.prompt!r} ({n_obj} objects), B={args.batch}, {args.size} px, {args.steps} steps, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'path':<12} {'wall median ms':>15} {'wall min ms':>12} {'cpu median ms':>14}")
    for k in priors:
        print(f"{k:<12} {1e3 * statistics.median(wall[k]):>15.1f} {1e3 * min(wall[k]):>12.1f} "
              f"{1e3 * statistics.median(cpu[k]):>14.1f}")


if __name__ == "__main__":
    main()
