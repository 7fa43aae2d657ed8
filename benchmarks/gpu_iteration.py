"""The real-scale GPU path, by stage: Stable Diffusion 2.1-base and gsplat at LucidDreamer's schedule,
against the arithmetic floor of its network work.

    .venv/bin/python benchmarks/gpu_iteration.py               # CUDA; writes the "gpu" section of docs/BENCHMARKS.md
    .venv/bin/python benchmarks/gpu_iteration.py --levers      # and each speed lever turned off alone (ISM)
    .venv/bin/python benchmarks/gpu_iteration.py --quick --no-write   # CPU smoke run on tiny models

Workload (issue 8): the SD 2.1-base UNet and VAE and the DPT-hybrid depth network built from the
architecture configs in benchmarks/configs/ with random weights (timing does not depend on them), a
CLIP-sized random text embedding (77 x 1024), gsplat rendering 100k Gaussians at 512 px, 4 cameras a
step; SDS, ISM (dS = 200, at most 3 inversion calls) and SSD (depth baseline through the DPT). Each
method runs the studio's own Trainer with the studio's defaults for the prior (every lever "auto", so on
with CUDA).

Stages ("sample" ... "densify", see iteration.py) are timed with a clock that synchronizes the GPU at
every boundary, which removes the overlap between the CPU's launches and the GPU's work; "step" in the
stage table is the median of those synchronized steps. "pipelined step" is the real figure: plain Trainer.step calls with one
synchronize at the end. FLOPs are counted with torch.utils.flop_counter over one step's estimator call
and backward on the eager path (the networks' convolutions, matmuls and attention; gsplat's own kernels
have no FLOP formula and are not counted); the floor is those FLOPs at the dense bf16 matmul rate
measured in the same run, so "x floor" = pipelined step / floor. Host syncs are counted with
torch.cuda.set_sync_debug_mode("warn") over one step.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any

from common import TimedPrior, cuda_clock, load_average, machine, markdown_table, small_config, write_section

import torch  # noqa: E402
from iteration import STAGES, timed_step  # noqa: E402
from random_models import TEXT_WIDTH, RandomText, build_dpt, build_scheduler, build_unet, build_vae  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from guidance.priors import accel as A  # noqa: E402
from guidance.priors.depth import MonocularDepth  # noqa: E402
from guidance.priors.stable_diffusion import StableDiffusionPrior, StableDiffusionSettings  # noqa: E402
from studio.trainer import Trainer  # noqa: E402

METHODS = (("SDS", "sds"), ("ISM", "ism"), ("SSD", "ssd"))
LEVERS = (  # (label, prior settings) for --levers: the default, each lever off alone, all off
    ("all levers on (studio default)", {}),
    ("fp32 UNet, VAE and DPT", {"dtype": "float32", "vae_dtype": "float32"}),
    ("fp16 instead of bf16", {"dtype": "float16", "vae_dtype": "float16"}),
    ("classic attention (no SDPA)", {"sdpa": False}),
    ("no channels-last", {"channels_last": "off"}),
    ("compile without CUDA graphs", {"cuda_graphs": "off"}),
    ("no compile (eager)", {"compile": "off"}),
    ("all off: plain fp32 eager", {"dtype": "float32", "vae_dtype": "float32", "sdpa": False,
                                   "channels_last": "off", "compile": "off"}),
)


@dataclass(frozen=True)
class Scale:
    models: str  # "full" or "tiny"
    renderer: str
    size: int  # render px
    image_size: int  # what the VAE sees
    gaussians: int
    batch: int
    warmup: int
    repeats: int
    matmul_n: int


FULL = Scale("full", "gsplat", 512, 512, 100_000, 4, warmup=8, repeats=20, matmul_n=8192)
QUICK = Scale("tiny", "cpu", 64, 64, 2_000, 2, warmup=1, repeats=2, matmul_n=256)


@dataclass
class Models:
    unet: Any
    vae: Any
    scheduler: Any
    text: RandomText
    dpt: Any
    dpt_io: tuple  # (input size, mean, std)


def build_models(scale: Scale, device: torch.device) -> Models:
    dpt, io = build_dpt(scale.models, device=device)
    return Models(build_unet(scale.models, device=device), build_vae(scale.models, device=device), build_scheduler(),
                  RandomText(77, TEXT_WIDTH[scale.models]), dpt, io)


def make_prior(m: Models, scale: Scale, device: torch.device, **overrides) -> StableDiffusionPrior:
    """The studio's SD prior around the random models, with prior settings `overrides` on the defaults."""
    settings = replace(StableDiffusionSettings(image_size=scale.image_size), **overrides)
    ac = A.resolve(settings, device)
    depth = MonocularDepth(m.dpt, m.dpt_io[0], m.dpt_io[1], m.dpt_io[2], device, ac.vae_dtype, ac.channels_last)
    return StableDiffusionPrior.from_modules(m.unet, m.vae, m.scheduler, m.text, name="random SD 2.1-base",
                                             settings=settings, device=device, depth=depth)


def workload(method: str, scale: Scale):
    """The studio config of the workload for `method` (LucidDreamer's ISM schedule: dS 200, 3 inversions)."""
    return small_config(method, {
        "render.renderer": scale.renderer, "render.resolution": scale.size, "render.batch": scale.batch,
        "init.num": scale.gaussians, "prior.model": "random SD 2.1-base (benchmarks/configs)",
        "prior.image_size": scale.image_size, "ism.delta_s": 200, "ism.inv_steps": 3})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, n: int, dtype=torch.bfloat16, repeats: int = 20) -> float:
    """Dense matmul throughput in FLOP/s for [n, n] @ [n, n] in `dtype` (the floor's yardstick)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


class NullTracker:
    """Stands in for FlopCounterMode's module tracker: every FLOP is counted under "Global"."""

    parents = {"Global"}
    is_bw = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def count_flops(tr: Trainer) -> dict[str, float]:
    """FLOPs of one step's estimator call and backward, total and for the UNet, VAE and depth network."""
    cfg, step = tr.cfg, tr.iteration
    batch = tr.sampler.sample(cfg.render.batch)
    batch = replace(batch, cameras=batch.cameras.to(tr.device))
    bg = tr.backgrounds(cfg.render.batch)
    out = tr.renderer(tr.scene.to_params(), batch.cameras, bg)
    vc = tr.prior.view_cond(tr.cond, batch, bg)
    counter = FlopCounterMode(display=False)
    if tr.cfg.run.method == "ssd":
        # The per-module tracker's backward hooks break torch.autograd.grad (SSD's grad of phi w.r.t. x_t:
        # "A leaf node was passed to _will_engine_execute_node"); count SSD without the breakdown.
        counter.mod_tracker = NullTracker()
    with counter:
        tr.estimator(tr.prior, out, batch, vc, step).loss.backward()
    tr.scene.zero_grad()
    by_module = counter.get_flop_counts()

    def total(prefix: str) -> float:
        return float(sum(sum(ops.values()) for name, ops in by_module.items() if name.split(".")[0] == prefix))

    nan = float("nan")
    tracked = not isinstance(counter.mod_tracker, NullTracker)
    return {"total": float(counter.get_total_flops()), "unet": total("UNet2DConditionModel") if tracked else nan,
            "vae": total("AutoencoderKL") if tracked else nan,
            "depth": total("DPTForDepthEstimation") if tracked else nan}


def count_syncs(tr: Trainer) -> int:
    """Host syncs in one Trainer.step (CUDA only; CUDA's sync debug mode warns at each)."""
    if tr.device.type != "cuda":
        return -1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            tr.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure(prior: StableDiffusionPrior, method: str, scale: Scale, stages: bool = True) -> dict[str, Any]:
    """Warm up (compiles, graph captures), then stage medians, the pipelined step, peak memory and the
    host syncs of one step."""
    device = prior.device
    clock = cuda_clock if device.type == "cuda" else time.perf_counter
    timed = TimedPrior(prior, clock)
    tr = Trainer(workload(method, scale), prior=timed)
    start = time.perf_counter()
    for _ in range(scale.warmup):
        tr.step()
    synchronize(device)
    warm_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r: dict[str, Any] = {"warmup_s": warm_s}
    if stages:
        samples = [timed_step(tr, timed, clock) for _ in range(scale.repeats)]
        r.update({k: statistics.median(s[k] for s in samples) for k in samples[0]})
    steps = []
    for _ in range(scale.repeats):
        t0 = time.perf_counter()
        tr.step()
        synchronize(device)
        steps.append(1e3 * (time.perf_counter() - t0))
    r["pipelined"] = statistics.median(steps)
    r["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    r["syncs"] = count_syncs(tr) if stages else -1
    r["gaussians"] = tr.scene.num_gaussians
    return r


def gigabytes(x: float) -> str:
    return "-" if x != x else f"{x:.1f}"  # nan: no CUDA allocator to ask


def stage_rows(results: dict[str, dict], flops: dict[str, dict], rate: float) -> list[list[str]]:
    rows = []
    sds = results["SDS"]["pipelined"]
    for label, r in results.items():
        floor_ms = 1e3 * flops[label]["total"] / rate
        rows.append([label] + [f"{r[s]:.1f}" for s in STAGES] + [
            f"{r['calls']:.0f}", f"**{r['pipelined']:.1f}**", f"{r['pipelined'] / sds:.2f}x",
            f"{flops[label]['total'] / 1e9:,.0f}", f"{floor_ms:.1f}", f"{r['pipelined'] / floor_ms:.1f}x",
            gigabytes(r["peak_gb"]), str(r["syncs"]) if r["syncs"] >= 0 else "-"])
    return rows


TARGETS_MS = {"SDS": 50.0, "ISM": 90.0}  # pipelined step; SSD: at most 1.25 x SDS; peak memory 16 GB each
SSD_OVER_SDS = 1.25
PEAK_GB = 16.0


def target_rows(results: dict[str, dict]) -> list[list[str]]:
    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    rows = [[f"{m} step <= {ms:.0f} ms", f"{results[m]['pipelined']:.1f} ms", met(results[m]["pipelined"] <= ms)]
            for m, ms in TARGETS_MS.items()]
    ratio = results["SSD"]["pipelined"] / results["SDS"]["pipelined"]
    rows.append([f"SSD <= {SSD_OVER_SDS} x SDS", f"{ratio:.2f} x", met(ratio <= SSD_OVER_SDS)])
    peak = max(r["peak_gb"] for r in results.values())
    rows.append([f"peak memory <= {PEAK_GB:.0f} GB", f"{gigabytes(peak)} GB", met(peak <= PEAK_GB) if peak == peak else "-"])
    return rows


STAGE_HEADER = (["method"] + [f"{s} ms" for s in STAGES] + [
    "UNet calls", "pipelined step ms", "vs SDS", "GFLOP / step", "floor ms", "x floor", "peak GB", "host syncs"])


def lever_rows(results: list[tuple[str, dict]]) -> list[list[str]]:
    base = results[0][1]["pipelined"]
    return [[label, f"{r['pipelined']:.1f}", f"{r['pipelined'] / base:.2f}x", gigabytes(r["peak_gb"]),
             f"{r['warmup_s']:.0f}"] for label, r in results]


LEVER_HEADER = ["ISM variant", "pipelined step ms", "vs all on", "peak GB", "warm-up s (compile)"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, CPU renderer, a few steps (smoke test)")
    ap.add_argument("--levers", action="store_true", help="also time ISM with each speed lever off alone")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per variant (median)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        ap.error("no CUDA device here: the full-size workload needs one (run with --quick for the CPU smoke run)")
    scale = QUICK if args.quick else FULL
    if args.repeats is not None:
        if args.repeats < 1:
            ap.error("--repeats must be >= 1")
        scale = replace(scale, repeats=args.repeats)
    device = torch.device("cuda" if cuda and not args.quick else "cpu")
    load = load_average()
    torch._dynamo.config.cache_size_limit = 64  # the levers recompile the same UNet under other settings
    print(f"building {scale.models} models on {device} ...", flush=True)
    models = build_models(scale, device)
    rate = matmul_rate(device, scale.matmul_n)
    print(f"bf16 matmul: {rate / 1e12:.1f} TFLOP/s", flush=True)
    results, flops = {}, {}
    for label, method in METHODS:
        torch._dynamo.reset()
        prior = make_prior(models, scale, device)
        results[label] = measure(prior, method, scale)
        eager = make_prior(models, scale, device, compile="off")
        flops[label] = count_flops(Trainer(workload(method, scale), prior=eager))
        print(f"{label}: pipelined step {results[label]['pipelined']:.1f} ms ({prior.accel.describe()})", flush=True)
    table = markdown_table(STAGE_HEADER, stage_rows(results, flops, rate))
    table += "\n\nAgainst the targets (issue 16, H100 / H200, 4 x 512 px, 100k Gaussians):\n\n" + markdown_table(
        ["target", "measured", "met"], target_rows(results))
    print(f"\n{table}")
    host = machine(load)
    write = not (args.no_write or not cuda or args.quick)
    f = flops["ISM"]
    body = (f"## The real-scale GPU path (SD 2.1-base + gsplat)\n\nCommand: `.venv/bin/python benchmarks/gpu_iteration.py"
            f"{' --levers' if args.levers else ''}` ({time.strftime('%Y-%m-%d')}); device: "
            f"{torch.cuda.get_device_name(0) if cuda else 'none'}, measured dense bf16 matmul {rate / 1e12:.0f} TFLOP/s. "
            f"Machine: {host}. {scale.warmup} warm-up + {scale.repeats} timed steps per row; "
            f"{results['ISM']['gaussians']:,} Gaussians at the end. ISM's FLOPs: UNet {f['unet'] / 1e12:.2f} T, "
            f"VAE {f['vae'] / 1e12:.2f} T per step.\n\n{__doc__.split(chr(10) * 2, 2)[2].strip()}\n\n{table}\n")
    if write:  # now, so that a lever run cut short still leaves the stage table
        write_section("gpu", body)
        print("\nwrote the stage table into docs/BENCHMARKS.md", flush=True)
    if args.levers:
        rows = []
        for label, overrides in LEVERS:
            if device.type != "cuda" and (overrides.get("dtype") == "float16" or "compile" in overrides
                                          or "cuda_graphs" in overrides):
                continue  # fp16 has no CPU kernels; compile and graphs are off on CPU already
            torch._dynamo.reset()
            prior = make_prior(models, scale, device, **overrides)
            rows.append((label, measure(prior, "ism", scale, stages=False)))
            print(f"ISM, {label}: {rows[-1][1]['pipelined']:.1f} ms ({prior.accel.describe()})", flush=True)
        levers = markdown_table(LEVER_HEADER, lever_rows(rows))
        print(f"\n{levers}")
        body += f"\nEach speed lever turned off alone (ISM, the same workload):\n\n{levers}\n"
        if write:
            write_section("gpu", body)
            print("\nwrote the lever table into docs/BENCHMARKS.md")
    print(f"\nmachine: {host}")


if __name__ == "__main__":
    main()
