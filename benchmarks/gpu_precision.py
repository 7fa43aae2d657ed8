"""How far the half-precision priors move the distillation gradient, measured against each estimator's own
noise: bf16 (the studio's default on CUDA) and fp16 (the anchors' choice) against fp32.

    .venv/bin/python benchmarks/gpu_precision.py                  # CUDA: SD 2.1-base, 512 px; writes a section
    .venv/bin/python benchmarks/gpu_precision.py --quick --no-write   # CPU smoke run on tiny models (no fp16)

Workload: the random-weight SD 2.1-base UNet and VAE of gpu_iteration.py (benchmarks/configs/), each
precision on its own copy of the same fp32 weights, eager (no compile: the levers are timed elsewhere; this
is about numbers). One fixed render of the initial scene (4 cameras); for each of `--draws` estimator seeds
the same timesteps and noise in every precision. For each estimator and precision p:

- rel. error = rms(g_p - g_fp32) / rms(g_fp32), over draws and entries (g: the latent gradient, [B, 4, 64, 64]);
- noise = rms(g_fp32 - mean over draws of g_fp32) / rms(g_fp32): how much the estimator's own gradient
  moves from one draw of t and noise to the next;
- error / noise: below 1 the precision's change is smaller than what a new draw changes anyway; Adam
  sees a few hundred draws, so an error far below the noise cannot be told apart in training.
- cos: cosine similarity of g_p and g_fp32, averaged over draws.

SDS at CFG 7.5 (LucidDreamer's baseline) and 100 (DreamFusion's), ISM at LucidDreamer's settings.
With random weights the UNet's outputs are not a trained model's: the figures bound arithmetic error on
networks of the real shape, not the error on the released checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import replace

from common import load_average, machine, markdown_table, write_section

import torch  # noqa: E402
from gpu_iteration import FULL, QUICK, build_models, make_prior, workload  # noqa: E402

from studio.config import with_values  # noqa: E402
from studio.trainer import Trainer  # noqa: E402

VARIANTS = (("SDS, CFG 7.5", "sds", {"sds.guidance_scale": 7.5}),
            ("SDS, CFG 100", "sds", {"sds.guidance_scale": 100.0}),
            ("ISM (LucidDreamer)", "ism", {}))
PRECISIONS = (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"))


def gradients(models, scale, device, method: str, values: dict, dtype: str, draws: int) -> torch.Tensor:
    """[draws, B, C, h, w] float32: the estimator's latent gradient for seeds 0..draws-1 on one fixed render,
    the prior in `dtype` on a copy of the fp32 models."""
    own = replace(models, unet=copy.deepcopy(models.unet), vae=copy.deepcopy(models.vae))
    prior = make_prior(own, scale, device, dtype=dtype, vae_dtype=dtype, compile="off")
    cfg = with_values(workload(method, scale), values)
    tr = Trainer(cfg, prior=prior)  # seeded by run.seed: the same scene, cameras and backgrounds in every precision
    batch = tr.sampler.sample(cfg.render.batch)
    batch = replace(batch, cameras=batch.cameras.to(device))
    bg = tr.backgrounds(cfg.render.batch)
    with torch.no_grad():
        out = tr.renderer(tr.scene.to_params(), batch.cameras, bg)
    out = replace(out, rgb=out.rgb.detach().requires_grad_(True))
    vc = tr.prior.view_cond(tr.cond, batch, bg)
    est = tr.estimator
    grads = []
    for seed in range(draws):
        est.reseed(seed)
        r = est(tr.prior, out, batch, vc, 500)
        grads.append(r.grad.detach().float().cpu())
    del tr, prior, own
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return torch.stack(grads)


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def compare(ref: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
    scale = rms(ref)
    noise = rms(ref - ref.mean(dim=0, keepdim=True)) * math.sqrt(ref.shape[0] / max(ref.shape[0] - 1, 1))
    cos = torch.nn.functional.cosine_similarity(ref.flatten(1).double(), g.flatten(1).double(), dim=1)
    err = rms(g - ref)
    return {"rel": err / scale, "noise": noise / scale, "ratio": err / noise if noise > 0 else float("inf"),
            "cos": float(cos.mean()), "nonfinite": int((~torch.isfinite(g)).sum())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models on the CPU, bf16 only (smoke test)")
    ap.add_argument("--draws", type=int, default=None, help="estimator seeds per variant (default 16, quick 4)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        ap.error("no CUDA device here: the full-size workload needs one (run with --quick for the CPU smoke run)")
    draws = args.draws if args.draws is not None else (4 if args.quick else 16)
    if draws < 2:
        ap.error("--draws must be >= 2 (the noise is the spread between draws)")
    scale = replace(QUICK, gaussians=500) if args.quick else replace(FULL, gaussians=20_000)
    device = torch.device("cuda" if cuda and not args.quick else "cpu")
    precisions = [p for p in PRECISIONS if device.type == "cuda" or p[0] != "fp16"]  # no fp16 kernels on CPU
    load = load_average()
    start = time.perf_counter()
    print(f"building {scale.models} models on {device} ...", flush=True)
    models = build_models(scale, device)
    rows = []
    for label, method, values in VARIANTS:
        ref = gradients(models, scale, device, method, values, "float32", draws)
        for name, dtype in precisions[1:]:
            c = compare(ref, gradients(models, scale, device, method, values, dtype, draws))
            rows.append([label, name, f"{c['rel']:.2e}", f"{c['noise']:.2f}", f"**{c['ratio']:.3f}**",
                         f"{c['cos']:.5f}", str(c["nonfinite"])])
            print(f"{label}, {name}: error {c['rel']:.2e} of |g|, noise {c['noise']:.2f}, error/noise "
                  f"{c['ratio']:.3f}, cos {c['cos']:.5f}", flush=True)
    table = markdown_table(["estimator", "precision", "rel. error vs fp32", "noise (draw to draw)",
                            "error / noise", "cos to fp32", "non-finite"], rows)
    host = machine(load)
    print(f"\n{table}\n\nmachine: {host}; {time.perf_counter() - start:.0f} s")
    if args.no_write or args.quick:
        return
    body = (f"## Precision of the prior: bf16 and fp16 against fp32\n\nCommand: `.venv/bin/python "
            f"benchmarks/gpu_precision.py` ({time.strftime('%Y-%m-%d')}); device: {torch.cuda.get_device_name(0)}. "
            f"Machine: {host}. {draws} draws per row, {scale.batch} cameras at {scale.size} px.\n\n"
            f"{__doc__.split(chr(10) * 2, 2)[2].strip()}\n\n{table}\n")
    write_section("gpu-precision", body)
    print("\nwrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
