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
from guidance.priors import PriorError, make_prior
from guidance.priors.objects import LibraryError
from renderers.camera import CameraSampler
from renderers.transfer import to_device
from renderers.types import RenderOutput

from .config import METHODS, StudioConfig
from .evaluation import RefScore, held_out_cameras, score_against_reference
from .scene import GaussianScene
from .strategy import check_device


class StepError(RuntimeError):
    """A step or a settings change that could not complete; the message says what to do."""


def device_of(renderer: Any) -> torch.device:
    """Where a renderer's scene must live: gsplat renders on CUDA, every other backend on the CPU."""
    return torch.device("cuda" if renderer.name == "gsplat" else "cpu")


def build_prior(cfg: StudioConfig, device: torch.device):
    p = cfg.prior
    if p.model == "procedural":
        try:
            return make_prior("procedural", s_d=p.s_d, objects_path=p.objects, renderer=renderers.make_renderer(
                cfg.render.renderer if cfg.render.renderer != "gsplat" else "auto"), device=device)
        except LibraryError as e:
            if p.objects:
                raise PriorError(f"prior.objects: {e}") from None
            raise
    return make_prior(p.model, device=device, dtype=p.dtype, vae_dtype=p.vae_dtype, image_size=p.image_size,
                      sdpa=p.sdpa, channels_last=p.channels_last, compile=p.compile, cuda_graphs=p.cuda_graphs,
                      attention_slicing=p.attention_slicing, view_prompt=cfg.prompt.view_prompt,
                      depth_model=p.depth_model, perp_neg=p.perp_neg, perp_neg_w=p.perp_neg_w,
                      perp_neg_front_decay=p.perp_neg_front_decay, perp_neg_side_decay=p.perp_neg_side_decay,
                      lora=p.lora, lora_scale=p.lora_scale)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """2 (mean of squared vertical differences + mean of squared horizontal ones) of images x [B, H, W, C]
    (LucidDreamer's tv_loss, per image and channel, averaged over the batch)."""
    dh = (x[:, 1:] - x[:, :-1]).square().mean()
    dw = (x[:, :, 1:] - x[:, :, :-1]).square().mean()
    return 2 * (dh + dw)


def regularizers(reg: Any, out: RenderOutput, params: Any) -> torch.Tensor | None:
    """reg.tv_rgb TV(rgb) + reg.tv_depth TV(depth) + reg.mean_scale mean(scales); None when all are off."""
    terms = []
    if reg.tv_rgb > 0:
        terms.append(reg.tv_rgb * total_variation(out.rgb))
    if reg.tv_depth > 0:
        terms.append(reg.tv_depth * total_variation(out.depth))
    if reg.mean_scale > 0 and params.scales.numel():
        terms.append(reg.mean_scale * params.scales.mean())
    return sum(terms) if terms else None


class Trainer:
    """Args:
        cfg: a validated config
        prior: a prior to use instead of building one from cfg.prior (tests; a new Trainer sharing the
            old one's prior after a reset or a load)
        renderer: likewise, a renderer to reuse
        state: a `state_dict()` to start from (a checkpoint) instead of a new scene from cfg.init
    """

    def __init__(self, cfg: StudioConfig, prior: Any = None, renderer: Any = None,
                 state: dict[str, Any] | None = None):
        self.cfg = cfg
        self.renderer = renderer if renderer is not None else renderers.make_renderer(cfg.render.renderer)
        self.device = device_of(self.renderer)
        self.prior = prior if prior is not None else build_prior(cfg, self.device)
        self.is_procedural = hasattr(self.prior, "reference_images")
        self.estimators = {m: make_estimator(m, getattr(cfg, m), seed=cfg.run.seed) for m in METHODS}
        self.cond = self.prior.embed(cfg.prompt.prompt, cfg.prompt.negative)
        self.iteration = 0
        self.skipped_steps = 0
        self.updating = False  # True while a step changes the scene (a failure then leaves it half-updated)
        self.last_batch = None
        self.last_render = None
        self.last_output: RenderOutput | None = None  # view 0 of the last step's render (previews)
        self._new_streams()
        if state is None:
            torch.manual_seed(cfg.run.seed)  # gsplat's split draws from the global generator
            self.scene = GaussianScene.from_settings(cfg.init, cfg.optim, cfg.densify, seed=cfg.run.seed,
                                                     device=self.device, prompt=cfg.prompt.prompt)
        else:
            self.load_state_dict(state)

    def derive(self, cfg: StudioConfig, state: dict[str, Any] | None = None) -> "Trainer":
        """A fresh Trainer for `cfg` (from `state` if given) that reuses this one's prior and renderer where
        cfg allows (a reset, a load): building it changes nothing here, so a failure leaves this trainer
        as it was."""
        same_prior = cfg.prior == self.cfg.prior and cfg.render.renderer == self.cfg.render.renderer
        renderer = self.renderer if cfg.render.renderer == self.cfg.render.renderer else None
        return Trainer(cfg, prior=self.prior if same_prior else None, renderer=renderer, state=state)

    # ----- construction and reseeding -------------------------------------------------------------
    def _new_streams(self) -> None:
        cfg = self.cfg
        res = cfg.render.resolution
        self.sampler = CameraSampler(cfg.camera, res, res, seed=cfg.run.seed + 1)
        self.bg_generator = torch.Generator().manual_seed(cfg.run.seed + 2)
        for est in self.estimators.values():
            est.reseed(cfg.run.seed)
        self.iteration = 0

    @property
    def estimator(self):
        return self.estimators[self.cfg.run.method]

    # ----- settings ---------------------------------------------------------------------------------
    def apply_config(self, new: StudioConfig) -> None:
        """Bring every object in line with `new` (validated already); settings are replaced whole.

        A transaction: everything that can fail (building a renderer or prior, embedding the prompt,
        checking the densifier's device) happens before anything is changed, and if a later assignment
        fails anyway every object goes back to what it was."""
        old = self.cfg
        renderer, prior, cond = self.renderer, self.prior, self.cond
        if new.render.renderer != old.render.renderer:
            renderer = renderers.make_renderer(new.render.renderer)
            if device_of(renderer) != self.device:
                raise StepError(f"render.renderer: {new.render.renderer} renders on {device_of(renderer)} and "
                                f"the scene lives on {self.device}; restart with --renderer {new.render.renderer}")
        if new.prior != old.prior or new.render.renderer != old.render.renderer:
            prior = build_prior(new, self.device)
            cond = prior.embed(new.prompt.prompt, new.prompt.negative)
        elif (new.prompt.prompt, new.prompt.negative) != (old.prompt.prompt, old.prompt.negative):
            cond = prior.embed(new.prompt.prompt, new.prompt.negative)
        if new.densify != old.densify:
            check_device(new.densify, self.device)
        saved = self.memento()
        try:
            self.cfg, self.renderer, self.prior, self.cond = new, renderer, prior, cond
            self.is_procedural = hasattr(prior, "reference_images")
            for m in METHODS:
                self.estimators[m].settings = getattr(new, m)
            if new.camera != old.camera or new.render.resolution != old.render.resolution:
                self.sampler.ranges = new.camera
                self.sampler.width = self.sampler.height = new.render.resolution
            if new.optim != old.optim:
                self.scene.set_optim_settings(new.optim)
            if new.densify != old.densify:
                self.scene.set_densify_settings(new.densify)
            if new.run.seed != old.run.seed:
                self.reseed(new.run.seed)
        except BaseException:
            self.restore(saved)
            raise

    def memento(self) -> dict[str, Any]:
        """What apply_config may change, by reference or as small states (not the scene's tensors, which
        no settings change touches): `restore` puts it back."""
        sc = self.scene
        return {
            "attrs": {k: getattr(self, k) for k in ("cfg", "renderer", "prior", "cond", "is_procedural")},
            "settings": {m: e.settings for m, e in self.estimators.items()},
            "rngs": {m: e.state_dict() for m, e in self.estimators.items()},
            "sampler": (self.sampler.ranges, self.sampler.width, self.sampler.height, self.sampler.get_state()),
            "bg_rng": self.bg_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "scene": (sc.optim_settings, [dict(o.param_groups[0]) for o in sc.optimizers.values()],
                      sc.densifier.settings, sc.densifier.strategy, sc.densifier.state),
        }

    def restore(self, m: dict[str, Any]) -> None:
        for k, v in m["attrs"].items():
            setattr(self, k, v)
        for name, est in self.estimators.items():
            est.settings = m["settings"][name]
            est.load_state_dict(m["rngs"][name])
        self.sampler.ranges, self.sampler.width, self.sampler.height, sampler_rng = m["sampler"]
        self.sampler.set_state(sampler_rng)
        self.bg_generator.set_state(m["bg_rng"])
        torch.set_rng_state(m["torch_rng"])
        sc = self.scene
        sc.optim_settings, groups, sc.densifier.settings, sc.densifier.strategy, sc.densifier.state = m["scene"]
        for opt, group in zip(sc.optimizers.values(), groups):
            opt.param_groups[0].update(group)

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
        self.sampler.ranges = cfg.zoom.apply(cfg.camera, step)  # the camera schedule (zoom.*), by step
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
        reg = regularizers(cfg.reg, out, params)
        (result.loss if reg is None else result.loss + reg).backward()
        bad = self.scene.nonfinite_grads()
        if bad:
            self.scene.zero_grad()
            self.skipped_steps += 1
            self.iteration += 1
            return {"skipped": 1.0, "nonfinite_grads": float(bad)}
        if cfg.run.grad_clip > 0:
            self.scene.clip_grads(cfg.run.grad_clip)
        self.updating = True
        self.scene.optimizer_step(step)
        self.scene.post_backward(step, out.info)
        self.scene.zero_grad()
        self.iteration += 1
        self.updating = False
        self.last_batch, self.last_render = batch, out.rgb.detach()
        self.last_output = RenderOutput(rgb=out.rgb[:1].detach(), alpha=out.alpha[:1].detach(),
                                        depth=out.depth[:1].detach(), normal=out.normal[:1].detach())
        diag = dict(result.diagnostics)
        diag["loss"] = result.loss.detach()
        if reg is not None:
            diag["reg"] = reg.detach()
        diag["step_ms"] = (time.perf_counter() - t0) * 1000.0
        return diag

    # ----- evaluation -------------------------------------------------------------------------------
    def score(self, size: int | None = None) -> RefScore | None:
        """psnr_ref on the held-out ring (procedural prior only), rendered at `size` pixels (default: the
        training resolution; the viewer's resolution shows what 64 px training hides)."""
        if not self.is_procedural:
            return None
        rg = self.cfg.camera
        cams = held_out_cameras(sum(rg.radius) / 2, sum(rg.fovy_deg) / 2, size or self.cfg.render.resolution)
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
        """Restore what state_dict saved. The scene is a new object, built before anything is replaced."""
        sc = state["scene"]
        scene = GaussianScene(sc["params"], extent=sc["extent"], optim=self.cfg.optim, densify=self.cfg.densify,
                              device=self.device)
        scene.load_state_dict(sc)
        self.scene = scene
        unknown = sorted(set(state["estimators"]) - set(self.estimators))
        if unknown:
            raise StepError(f"trainer state: estimator state for {', '.join(unknown)}, which this studio does "
                            f"not have (it has {', '.join(self.estimators)})")
        for m, s in state["estimators"].items():
            self.estimators[m].load_state_dict(s)
        self.sampler.set_state(state["sampler_rng"])
        self.bg_generator.set_state(state["bg_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.iteration = int(state["iteration"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
