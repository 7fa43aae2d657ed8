"""The procedural prior: a diffusion model whose noise prediction is exact (DESIGN.md, "The procedural prior").

For prompt y and camera c the clean images are a mixture of isotropic Gaussians around renders r_k(c) of
the reference objects k that the prompt matches (guidance/priors/objects.py), in z units ([-1, 1]):

    p(z | y, c) = sum_k pi_k N(z; r_k(c), s_d^2 I)          pi_k uniform over the prompt's objects

Under x_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps the marginal is again a mixture, so with v_t = ab_t s_d^2 +
1 - ab_t (symbols as in METHODS.md):

    w_k(x_t)   = softmax_k(log pi_k - ||x_t - sqrt(ab_t) r_k||^2 / (2 v_t))          posterior weights
    e(x_t, t)  = sqrt(1 - ab_t) (x_t - sqrt(ab_t) sum_k w_k r_k) / v_t = -sqrt(1 - ab_t) grad log p_t

Each camera's image is its own mixture (the weights are per camera, [B, K]), as DESIGN.md defines it: a
3D scene can be pulled toward different modes from different views. The unconditional branch is the
negative prompt's mixture when one is given, else every object's.

Depth: sum_k w_k depth_k(c), where depth_k is the reference render's expected depth where its alpha > 0.5
and `far_depth` elsewhere (background pixels have no surface; a far constant keeps the map finite and
lets Pearson-style comparisons see the silhouette); disparity is sum_k w_k / depth_k with the same rule.
Both are exact, differentiable functions of x_t (through w_k). Images live in image space: encode is
2 rgb - 1, decode its inverse; C = 3 and h, w are the render's H, W.

For psnr_ref and the mode study, `reference_images` returns the prompt's modes rendered from given
cameras, and `commitment` scores an image against them (mode_metrics.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from renderers.camera import CameraBatch, Cameras

from .base import Cond, PriorError, ViewCond, scaled_linear_alphas_cumprod
from .mode_metrics import ModeCommitment, mode_commitment
from .objects import ObjectLibrary

BRANCHES = ("cfg", "cond", "uncond", "empty")
REF_CACHE_SIZE = 4


@dataclass(frozen=True)
class ProceduralSettings:
    s_d: float = 0.1
    """std of each mode around its reference render (the prior's diversity), z units ([-1, 1]); [1e-4, 10]"""
    far_depth: float = 10.0
    """depth given to background pixels (reference alpha <= 0.5), world units; (0, 1e4]"""
    objects_path: str = ""
    """JSON object library; empty: assets/objects/objects.json"""
    num_train_timesteps: int = 1000
    """T of the scaled-linear schedule; [2, 10000]"""

    def validate(self) -> None:
        if not (isinstance(self.s_d, (int, float)) and 1e-4 <= self.s_d <= 10.0):
            raise PriorError(f"procedural.s_d: must lie in [1e-4, 10] (z units), got {self.s_d!r}")
        if not (0 < self.far_depth <= 1e4):
            raise PriorError(f"procedural.far_depth: must lie in (0, 1e4] world units, got {self.far_depth!r}")
        if not (2 <= int(self.num_train_timesteps) <= 10000):
            raise PriorError(
                f"procedural.num_train_timesteps: must lie in [2, 10000], got {self.num_train_timesteps!r}")


@dataclass(frozen=True)
class ProceduralCond:
    """Cond.data: object indices of the prompt (cond), of CFG's unconditional branch (uncond: the negative
    prompt's objects, every object without one) and of the empty prompt (every object)."""

    cond: tuple[int, ...]
    uncond: tuple[int, ...]
    empty: tuple[int, ...] = ()


@dataclass
class Modes:
    """Mixture components of one branch for B cameras (K objects)."""

    refs: Tensor  # [K, B, 3, H, W] reference renders in z units
    log_pi: Tensor  # [K]
    depth: Tensor  # [K, B, 1, H, W]
    disparity: Tensor  # [K, B, 1, H, W]


@dataclass
class ProceduralView:
    """ViewCond.data: the cameras, the background and reference renders made on demand (per object;
    the CPU renderer makes all that a branch needs in one forward-only call)."""

    cameras: Cameras
    background: Tensor  # [B, 3]
    renders: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)  # k -> rgb, depth, disp
    stacks: dict[tuple[int, ...], Modes] = field(default_factory=dict)


def _cameras_of(cameras: CameraBatch | Cameras) -> Cameras:
    if isinstance(cameras, CameraBatch):
        return cameras.cameras
    if isinstance(cameras, Cameras):
        return cameras
    raise PriorError(f"procedural prior: expected a CameraBatch or Cameras, got {type(cameras).__name__}")


class ProceduralPrior:
    """Exact Gaussian-mixture diffusion prior over renders of reference objects (see the module doc).

    Args:
        settings: ProceduralSettings (validated here); keyword overrides of its fields are accepted too,
            e.g. ProceduralPrior(s_d=0.3).
        renderer: renders the reference objects (renderers.make_renderer(...)); None: the "cpu" backend,
            created on first use.
        device: where the schedule, scenes and renders live (the renderer's device).
    """

    name = "procedural"
    latent_channels = 3

    def __init__(self, settings: ProceduralSettings | None = None, *, renderer=None,
                 device: torch.device | str = "cpu", **overrides):
        known = {f.name for f in fields(ProceduralSettings)}
        unknown = set(overrides) - known
        if unknown:
            raise PriorError(f"procedural prior: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        settings = settings or ProceduralSettings()
        if overrides:
            settings = ProceduralSettings(**{**settings.__dict__, **overrides})
        settings.validate()
        self.settings = settings
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.num_train_timesteps = int(settings.num_train_timesteps)
        self.alphas_cumprod = scaled_linear_alphas_cumprod(self.num_train_timesteps).to(self.device)
        self.library = ObjectLibrary(Path(settings.objects_path) if settings.objects_path else None)
        self._renderer = renderer
        # reference_images results for recent fixed camera sets (the held-out evaluation ring)
        self._ref_cache: OrderedDict[tuple, tuple[Tensor, list[str]]] = OrderedDict()

    @property
    def s_d(self) -> float:
        return float(self.settings.s_d)

    @property
    def renderer(self):
        if self._renderer is None:
            from renderers import make_renderer

            self._renderer = make_renderer("cpu")
        return self._renderer

    @property
    def prompts(self) -> list[str]:
        """Example prompts the library answers (every listed one matches at least one object)."""
        return list(self.library.prompts)

    # ----- prompts and cameras ---------------------------------------------------------------------
    def embed(self, prompt: str, negative: str = "") -> Cond:
        """The prompt's objects and the unconditional branch's (the negative prompt's, else all)."""
        cond = tuple(self.library.match(prompt))
        uncond = tuple(self.library.match(negative))  # the empty negative matches every object
        return Cond(prompt, negative, ProceduralCond(cond, uncond, tuple(self.library.match(""))))

    def object_names(self, cond: Cond) -> list[str]:
        """Names of the prompt's reference objects (the modes), in mode order."""
        return [self.library.names[k] for k in cond.data.cond]

    def view_cond(self, cond: Cond, cameras: CameraBatch | Cameras, background: Tensor) -> ViewCond:
        """Bind to B cameras; the reference objects are rendered (on `background` [B, 3] or [3]) when a
        branch first needs them, once per object."""
        cams = _cameras_of(cameras).to(self.device)
        B = len(cams)
        bg = torch.as_tensor(background, dtype=torch.float32, device=self.device)
        bg = bg.expand(B, 3) if bg.shape == (3,) else bg
        if bg.shape != (B, 3):
            raise PriorError(f"procedural prior: background must be [3] or [B={B}, 3], got {tuple(bg.shape)}")
        return ViewCond(cond, B, ProceduralView(cams, bg.detach()))

    def _render(self, view: ProceduralView, idx: tuple[int, ...]) -> None:
        """Render the objects of idx that view has not rendered yet, all at once where the renderer allows."""
        todo = [k for k in dict.fromkeys(idx) if k not in view.renders]
        if not todo:
            return
        scenes = [self.library.scene(k, self.device) for k in todo]
        if getattr(self.renderer, "name", None) == "cpu":
            # one forward-only pass per distinct geometry (the textured cubes share one), no normals
            from renderers.cpu import render_many_forward

            rgb, alpha, depth = render_many_forward(scenes, view.cameras, view.background)
        else:
            with torch.no_grad():
                outs = [self.renderer(s, view.cameras, view.background) for s in scenes]
            rgb, alpha, depth = (torch.stack([getattr(o, f) for o in outs]) for f in ("rgb", "alpha", "depth"))
        rgb = rgb.permute(0, 1, 4, 2, 3).float()  # [S, B, 3, H, W]
        hit = alpha.permute(0, 1, 4, 2, 3) > 0.5
        depth = torch.where(hit, depth.permute(0, 1, 4, 2, 3).float(),
                            torch.full_like(rgb[:, :, :1], self.settings.far_depth))
        disp = 1.0 / depth.clamp_min(1e-6)
        for i, k in enumerate(todo):
            view.renders[k] = (rgb[i], depth[i], disp[i])

    def modes(self, vc: ViewCond, branch: str) -> Modes:
        """The mixture of branch "cond" (the prompt), "uncond" (CFG's) or "empty" for vc's cameras."""
        if branch not in ("cond", "uncond", "empty"):
            raise ValueError(f"modes: branch must be 'cond', 'uncond' or 'empty', got {branch!r}")
        view: ProceduralView = vc.data
        data: ProceduralCond = vc.cond.data
        idx = {"cond": data.cond, "uncond": data.uncond, "empty": data.empty or data.uncond}[branch]
        if idx not in view.stacks:
            # The unconditional branch is used beside the conditional one (CFG, ISM's inversion then
            # CFG): render both branches' objects in one pass, which shares the cubes' geometry.
            self._render(view, idx if branch == "cond" else idx + vc.cond.data.cond)
            rgb, depth, disp = (torch.stack(x) for x in zip(*(view.renders[k] for k in idx)))
            log_pi = torch.full((len(idx),), -math.log(len(idx)), device=self.device)
            view.stacks[idx] = Modes(2 * rgb - 1, log_pi, depth, disp)
        return view.stacks[idx]

    # ----- image space -----------------------------------------------------------------------------
    def encode(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, H, W] in [0, 1] -> z = 2 rgb - 1 [B, 3, H, W]."""
        assert rgb.dim() == 4 and rgb.shape[1] == 3, f"encode: expected rgb [B, 3, H, W], got {tuple(rgb.shape)}"
        return 2 * rgb - 1

    def decode(self, z: Tensor) -> Tensor:
        """z [B, 3, H, W] -> rgb in [0, 1] (clamped)."""
        assert z.dim() == 4 and z.shape[1] == 3, f"decode: expected z [B, 3, H, W], got {tuple(z.shape)}"
        return ((z + 1) / 2).clamp(0, 1)

    # ----- the exact mixture -----------------------------------------------------------------------
    def _schedule(self, t: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        """(ab_t, v_t), each [B, 1] in x_t's dtype."""
        assert t.shape == (x_t.shape[0],), f"t: expected [B={x_t.shape[0]}], got {tuple(t.shape)}"
        ab = self.alphas_cumprod[t.to(self.alphas_cumprod.device)].to(x_t.device, x_t.dtype)[:, None]
        return ab, ab * self.s_d**2 + 1 - ab

    def _check_x(self, x_t: Tensor, vc: ViewCond) -> None:
        cams = vc.data.cameras
        want = (vc.batch_size, 3, cams.height, cams.width)
        assert tuple(x_t.shape) == want, (
            f"x_t: expected {want} (B, C, H, W of the bound cameras), got {tuple(x_t.shape)}")

    def posterior(self, x_t: Tensor, t: Tensor, vc: ViewCond, branch: str = "cond") -> Tensor:
        """Posterior mode weights w [B, K] of x_t [B, 3, H, W] at t [B] (branch "cond", "uncond", "empty")."""
        self._check_x(x_t, vc)
        m = self.modes(vc, branch)
        ab, v = self._schedule(t, x_t)
        r = m.refs.to(x_t.dtype).flatten(2).transpose(0, 1)  # [B, K, D]
        d2 = ((x_t.flatten(1)[:, None, :] - ab.sqrt()[:, :, None] * r) ** 2).sum(-1)  # [B, K]
        return torch.softmax(m.log_pi.to(x_t.dtype)[None] - d2 / (2 * v), dim=1)

    def _eps(self, x_t: Tensor, t: Tensor, vc: ViewCond, branch: str) -> Tensor:
        w = self.posterior(x_t, t, vc, branch)  # [B, K]
        refs = self.modes(vc, branch).refs.to(x_t.dtype)  # [K, B, 3, H, W]
        mean = torch.einsum("bk,kbchw->bchw", w, refs)
        ab, v = self._schedule(t, x_t)
        ab, v = ab.view(-1, 1, 1, 1), v.view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mean) / v

    def predict_noise(self, x_t: Tensor, t: Tensor, vc: ViewCond, guidance_scale: float | None,
                      *, branch: str = "cfg") -> Tensor:
        """Exact e(x_t, t) [B, 3, H, W] for x_t [B, 3, H, W], t [B] (long); see base.DiffusionPrior."""
        if branch not in BRANCHES:
            raise ValueError(f"predict_noise: branch must be one of {BRANCHES}, got {branch!r}")
        if branch != "cfg":
            return self._eps(x_t, t, vc, branch)
        if guidance_scale is None:
            raise ValueError("predict_noise: branch 'cfg' needs a guidance_scale")
        e_u, e_c = self._eps(x_t, t, vc, "uncond"), self._eps(x_t, t, vc, "cond")
        return e_u + guidance_scale * (e_c - e_u)

    def estimate_depth(self, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
        """sum_k w_k depth_k [B, 1, H, W] over the prompt's modes (larger = farther); differentiable in x_t."""
        w = self.posterior(x_t, t, vc, "cond")
        return torch.einsum("bk,kbchw->bchw", w, self.modes(vc, "cond").depth.to(x_t.dtype))

    def estimate_disparity(self, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
        """sum_k w_k / depth_k [B, 1, H, W] (larger = nearer); differentiable in x_t."""
        w = self.posterior(x_t, t, vc, "cond")
        return torch.einsum("bk,kbchw->bchw", w, self.modes(vc, "cond").disparity.to(x_t.dtype))

    # ----- evaluation support ----------------------------------------------------------------------
    def reference_images(self, cond: Cond | str, cameras: CameraBatch | Cameras,
                         background: Tensor) -> tuple[Tensor, list[str]]:
        """Renders of the prompt's modes: (rgb [K, B, H, W, 3] in [0, 1], the K object names).

        Results for the last few camera sets are kept, so evaluating on a fixed ring renders once."""
        cond = self.embed(cond) if isinstance(cond, str) else cond
        vc = self.view_cond(cond, cameras, background)
        cams: Cameras = vc.data.cameras
        key = (cond.data.cond, cams.width, cams.height,
               *(x.detach().cpu().numpy().tobytes() for x in (cams.viewmats, cams.Ks, vc.data.background)))
        if key not in self._ref_cache:
            refs = self.modes(vc, "cond").refs  # [K, B, 3, H, W]
            self._ref_cache[key] = (((refs + 1) / 2).permute(0, 1, 3, 4, 2).contiguous(), self.object_names(cond))
            while len(self._ref_cache) > REF_CACHE_SIZE:
                self._ref_cache.popitem(last=False)
        return self._ref_cache[key]

    def commitment(self, image: Tensor, cond: Cond | str, cameras: CameraBatch | Cameras,
                   background: Tensor) -> ModeCommitment:
        """mode_commitment (see mode_metrics.py) of image [B, H, W, 3] against the prompt's modes."""
        refs, names = self.reference_images(cond, cameras, background)
        return mode_commitment(image, refs, names)
