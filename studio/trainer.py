"""One training step and the objects it needs, with no threads and no UI.

`Trainer` owns the scene (parameters, optimizers, densification state), renderer, prior, one estimator
per method (so switching back keeps SSD's learned weights), the camera sampler and every generator.
`Session` runs it in a worker thread; tests and benchmarks call `step()` directly.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

import renderers
from guidance.estimators import make_estimator
from guidance.priors import make_prior
from renderers.camera import CameraSampler
from renderers.transfer import to_device

from .config import METHODS, StudioConfig
from .evaluation import RefScore, held_out_cameras, score_against_reference
from .scene import GaussianScene


class StepError(RuntimeError):
    """A step that could not complete; the session pauses and shows it."""


def build_prior(cfg: StudioConfig, device: torch.device):
    p = cfg.prior
    if p.model == "procedural":
        return make_prior("procedural", s_d=p.s_d, renderer=renderers.make_renderer(cfg.render.renderer
                          if cfg.render.renderer != "gsplat" else "auto"), device=device)
    return make_prior(p.model, device=device, dtype=p.dtype, vae_dtype=p.vae_dtype, image_size=p.image_size,
                      sdpa=p.sdpa, channels_last=p.channels_last, compile=p.compile, cuda_graphs=p.cuda_graphs,
                      attention_slicing=p.attention_slicing, view_prompt=cfg.prompt.view_prompt,
                      depth_model=p.depth_model)


class Trainer:
    def __init__(self, cfg: StudioConfig, prior: Any = None):
        self.cfg = cfg
        self.renderer = renderers.make_renderer(cfg.render.renderer)
        self.device = torch.device("cuda" if self.renderer.name == "gsplat" else "cpu")
        self.prior = prior if prior is not None else build_prior(cfg, self.device)
        self.is_procedural = hasattr(self.prior, "reference_images")
        self.estimators = {m: make_estimator(m, getattr(cfg, m), seed=cfg.run.seed) for m in METHODS}
        self.cond = self.prior.embed(cfg.prompt.prompt, cfg.prompt.negative)
        self.iteration = 0
        self.skipped_steps = 0
        self.last_batch = None
        self.last_render = None
        self._new_scene()

    # ----- construction and reseeding -------------------------------------------------------------
    def _new_scene(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.run.seed)  # gsplat's split draws from the global generator
        self.scene = GaussianScene.from_settings(cfg.init, cfg.optim, cfg.densify, seed=cfg.run.seed,
                                                 device=self.device)
        res = cfg.render.resolution
        self.sampler = CameraSampler(cfg.camera, res, res, seed=cfg.run.seed + 1)
        self.bg_generator = torch.Generator().manual_seed(cfg.run.seed + 2)
        for est in self.estimators.values():
            est.reseed(cfg.run.seed)
        self.iteration = 0

    def reset(self) -> None:
        self._new_scene()

    @property
    def estimator(self):
        return self.estimators[self.cfg.run.method]

    # ----- settings ---------------------------------------------------------------------------------
    def apply_config(self, new: StudioConfig) -> None:
        """Bring every object in line with `new` (validated already); settings are replaced whole."""
        old, self.cfg = self.cfg, new
        for m in METHODS:
            self.estimators[m].settings = getattr(new, m)
        if new.camera != old.camera or new.render.resolution != old.render.resolution:
            self.sampler.ranges = new.camera
            self.sampler.width = self.sampler.height = new.render.resolution
        if new.optim != old.optim:
            self.scene.set_optim_settings(new.optim)
        if new.densify != old.densify:
            self.scene.set_densify_settings(new.densify)
        if new.prior != old.prior or new.render.renderer != old.render.renderer:
            if new.render.renderer != old.render.renderer:
                self.renderer = renderers.make_renderer(new.render.renderer)
            self.prior = build_prior(new, self.device)
            self.is_procedural = hasattr(self.prior, "reference_images")
            self.cond = self.prior.embed(new.prompt.prompt, new.prompt.negative)
        elif (new.prompt.prompt, new.prompt.negative) != (old.prompt.prompt, old.prompt.negative):
            self.cond = self.prior.embed(new.prompt.prompt, new.prompt.negative)
        if new.run.seed != old.run.seed:
            self.reseed(new.run.seed)

    def reseed(self, seed: int) -> None:
        """Future draws (cameras, backgrounds, noise, timesteps) follow the new seed; the scene stays."""
        self.cfg = replace(self.cfg, run=replace(self.cfg.run, seed=seed))
        self.sampler.generator.manual_seed(seed + 1)
        self.bg_generator.manual_seed(seed + 2)
        for est in self.estimators.values():
            est.reseed(seed)
        torch.manual_seed(seed)

    # ----- the step ---------------------------------------------------------------------------------
    def backgrounds(self, batch: int) -> torch.Tensor:
        """[B, 3]: the configured background, replaced by a random colour with the set probability."""
        r = self.cfg.render
        base = {"white": 1.0, "black": 0.0, "random": None}[r.background]
        rand = torch.rand(batch, 4, generator=self.bg_generator)  # draw always: keeps streams aligned
        bg = torch.full((batch, 3), base) if base is not None else rand[:, :3]
        swap = rand[:, 3:4] < r.random_background_prob
        return to_device(torch.where(swap, rand[:, :3], bg), self.device)

    def step(self) -> dict[str, Any]:
        """One optimization step (DESIGN.md's data flow). Returns diagnostics as tensors."""
        cfg = self.cfg
        step = self.iteration
        batch = self.sampler.sample(cfg.render.batch)
        cams = batch.cameras.to(self.device)
        batch = replace(batch, cameras=cams)
        bg = self.backgrounds(cfg.render.batch)
        params = self.scene.to_params()
        t0 = time.perf_counter()
        out = self.renderer(params, cams, bg)
        self.scene.pre_backward(step, out.info)
        vc = self.prior.view_cond(self.cond, batch, bg)
        result = self.estimator(self.prior, out, batch, vc, step)
        result.loss.backward()
        bad = self.scene.nonfinite_grads()
        if bad:
            self.scene.zero_grad()
            self.skipped_steps += 1
            self.iteration += 1
            return {"skipped": 1.0, "nonfinite_grads": float(bad)}
        if cfg.run.grad_clip > 0:
            self.scene.clip_grads(cfg.run.grad_clip)
        self.scene.optimizer_step(step)
        self.scene.post_backward(step, out.info)
        self.scene.zero_grad()
        self.iteration += 1
        self.last_batch, self.last_render = batch, out.rgb.detach()
        diag = dict(result.diagnostics)
        diag["loss"] = result.loss.detach()
        diag["step_ms"] = (time.perf_counter() - t0) * 1000.0
        return diag

    # ----- evaluation -------------------------------------------------------------------------------
    def score(self) -> RefScore | None:
        """psnr_ref on the held-out ring (procedural prior only)."""
        if not self.is_procedural:
            return None
        rg = self.cfg.camera
        cams = held_out_cameras(sum(rg.radius) / 2, sum(rg.fovy_deg) / 2, self.cfg.render.resolution)
        cams = replace(cams, cameras=cams.cameras.to(self.device))
        bg = {"white": 1.0, "black": 0.0, "random": 1.0}[self.cfg.render.background]
        return score_against_reference(self.renderer, self.scene.to_params(), self.prior, self.cond, cams,
                                       torch.full((3,), bg, device=self.device))

    # ----- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "scene": self.scene.state_dict(),
            "estimators": {m: e.state_dict() for m, e in self.estimators.items()},
            "sampler_rng": self.sampler.get_state(),
            "bg_rng": self.bg_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scene.load_state_dict(state["scene"])
        for m, s in state["estimators"].items():
            self.estimators[m].load_state_dict(s)
        self.sampler.set_state(state["sampler_rng"])
        self.bg_generator.set_state(state["bg_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.iteration = int(state["iteration"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
