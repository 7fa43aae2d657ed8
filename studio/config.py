"""Every setting of a session, as frozen dataclasses with validation, presets and JSON round trip.

Sections: `prompt`, `run`, `render`, `camera`, `prior`, `init`, `optim`, `densify`, one per estimator
(`sds`, `ism`, `ssd`), `reg` (regularizers beside the distillation loss), `zoom` (the camera
schedule) and `mesh` (how a mesh is exported). A dotted path names one field (`ism.delta_t`); `confio`
turns strings from the command line, JSON from presets and values from the UI into typed values. A
config is validated once, where it is made (`validate`), and passed down whole.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from guidance.estimators.base import SettingsError
from guidance.estimators.ism import ISMSettings
from guidance.estimators.sds import SDSSettings
from guidance.estimators.ssd import SSDSettings
from renderers.camera import CameraRanges

from . import confio
from .confio import ConfigError
from .mesh import MeshSettings
from .scene import DensifySettings, OptimSettings

PRESETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "presets"
METHODS = ("sds", "ism", "ssd")


@dataclass(frozen=True)
class PromptSettings:
    prompt: str = "a red cube"
    """what to make; with the procedural prior, one of its known prompts"""
    negative: str = ""
    """what to steer away from (the unconditional branch of CFG); empty: the unconditional prompt"""
    view_prompt: Literal["suffix", "interpolate", "off"] = "suffix"
    """view-dependent prompting: append ', front view' etc. by azimuth, interpolate embeddings, or off"""

    def validate(self) -> None:
        if not self.prompt.strip():
            raise ConfigError("prompt.prompt: must not be empty; type what to make, e.g. 'a red cube'")
        if len(self.prompt) > 500 or len(self.negative) > 500:
            raise ConfigError("prompt: prompts are limited to 500 characters")


@dataclass(frozen=True)
class RunSettings:
    method: Literal["sds", "ism", "ssd"] = "sds"
    """gradient estimator: sds (DreamFusion), ism (LucidDreamer), ssd (SteinDreamer)"""
    steps: int = 600
    """planned optimization steps: the session pauses there ("done"; headless runs exit), Continue extends it"""
    seed: int = 0
    """seed of every random draw: init, cameras, timesteps, noise"""
    publish_hz: float = 10.0
    """how often the worker publishes a snapshot for the UI, per second"""
    psnr_every: int = 25
    """procedural prior: evaluate psnr_ref on the held-out ring every this many steps (0: never)"""
    grad_clip: float = 0.0
    """clip the norm of each parameter group's gradient (0: off)"""
    keep_good_every: int = 50
    """keep an in-memory copy of the scene every this many steps; a failed step returns to it (0: only
    at commands that replace the scene)"""
    view_psnr_every: int = 100
    """procedural prior: psnr_ref also at the viewer's resolution every this many steps (0: never)"""
    view_resolution: int = 256
    """procedural prior: render size of that viewer-resolution psnr_ref, in pixels"""
    skip_pause_share: float = 0.5
    """pause when more than this share of the last run.skip_window steps were skipped for non-finite
    gradients (headless runs exit with status 1); 1: never"""
    skip_window: int = 20
    """how many recent steps run.skip_pause_share looks at"""
    checkpoint_every: int = 0
    """write a checkpoint into the run folder every this many steps, so a killed run resumes from it
    (0: only on exit and when asked; batch jobs default to 100)"""
    checkpoint_keep: int = 1
    """how many of those periodic checkpoints to keep: older ones this run wrote are removed (0: keep all)"""

    def validate(self) -> None:
        _check("run.steps", self.steps, 1, 1_000_000)
        _check("run.keep_good_every", self.keep_good_every, 0, 1_000_000)
        _check("run.view_psnr_every", self.view_psnr_every, 0, 100_000)
        _check("run.view_resolution", self.view_resolution, 16, 2048)
        _check("run.seed", self.seed, 0, 2**31 - 1)
        _check("run.publish_hz", self.publish_hz, 0.1, 120.0)
        _check("run.psnr_every", self.psnr_every, 0, 100_000)
        _check("run.grad_clip", self.grad_clip, 0.0, 1e6)
        _check("run.skip_pause_share", self.skip_pause_share, 0.0, 1.0)
        _check("run.skip_window", self.skip_window, 1, 10_000)
        _check("run.checkpoint_every", self.checkpoint_every, 0, 1_000_000)
        _check("run.checkpoint_keep", self.checkpoint_keep, 0, 10_000)


@dataclass(frozen=True)
class RenderSettings:
    resolution: int = 64
    """training render size in pixels (square)"""
    batch: int = 4
    """cameras per step"""
    renderer: Literal["auto", "cpu", "gsplat", "reference"] = "auto"
    """rasterizer: auto picks gsplat with CUDA, else the CPU renderer"""
    background: Literal["white", "black", "random"] = "white"
    """background behind the Gaussians in training renders"""
    random_background_prob: float = 0.0
    """probability per step of replacing the background by a random colour (LucidDreamer uses 0.5)"""

    def validate(self) -> None:
        _check("render.resolution", self.resolution, 8, 2048)
        _check("render.batch", self.batch, 1, 64)
        _check("render.random_background_prob", self.random_background_prob, 0.0, 1.0)


@dataclass(frozen=True)
class PriorSettings:
    model: str = "procedural"
    """'procedural' (built in, offline) or a Stable Diffusion hub id / local folder"""
    s_d: float = 0.1
    """procedural prior: std of each mode around its reference render (its diversity), in [-1, 1] units"""
    objects: str = ""
    """procedural prior: its object library (JSON); empty: assets/objects/objects.json. The geometry test
    bed of one colour and fifteen shapes ("a red shape") is assets/objects/shapes.json"""
    depth_model: str = "Intel/dpt-hybrid-midas"
    """SD only: monocular depth model for SSD's depth baseline (hub id or folder)"""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """SD only: UNet / text encoder precision; auto = bf16 on CUDA (fp16 without bf16), fp32 on CPU"""
    vae_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """SD only: VAE and depth network precision; auto = bf16 on CUDA where supported, else fp32"""
    image_size: int = 512
    """SD only: renders are resized to this before the VAE"""
    sdpa: bool = True
    """SD only: PyTorch's fused attention kernels (off: diffusers' classic attention)"""
    channels_last: Literal["auto", "on", "off"] = "auto"
    """SD only: channels-last memory format for the convolutional networks; auto = on with CUDA"""
    compile: Literal["auto", "on", "off"] = "auto"
    """SD only: torch.compile the UNet (the first steps compile); auto = on with CUDA"""
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    """SD only: replay the compiled UNet as CUDA graphs (needs CUDA and compile); auto = on with both"""
    attention_slicing: bool = False
    """SD only: slice attention to save memory on small GPUs"""
    perp_neg: bool = False
    """SD only: Perp-Neg, the prompt's other views as perpendicular negatives (LucidDreamer, against multiple faces)"""
    perp_neg_w: float = -2.0
    """SD only: Perp-Neg's negative weight, in [-10, 0]"""
    perp_neg_front_decay: float = 2.0
    """SD only: Perp-Neg's fall-off of the front negative with the angle"""
    perp_neg_side_decay: float = 10.0
    """SD only: Perp-Neg's fall-off of the side negative with the angle"""
    lora: str = ""
    """SD only: LoRA weights fused into the UNet (a folder, .safetensors file or hub id); empty: none"""
    lora_scale: float = 1.0
    """SD only: strength of the LoRA, in [0, 4]"""

    def validate(self) -> None:
        if not self.model.strip():
            raise ConfigError("prior.model: give 'procedural' or a Stable Diffusion hub id / folder")
        _check("prior.s_d", self.s_d, 1e-4, 10.0)
        _check("prior.image_size", self.image_size, 64, 2048)
        _check("prior.perp_neg_w", self.perp_neg_w, -10.0, 0.0)
        _check("prior.perp_neg_front_decay", self.perp_neg_front_decay, 0.0, 100.0)
        _check("prior.perp_neg_side_decay", self.perp_neg_side_decay, 0.0, 100.0)
        _check("prior.lora_scale", self.lora_scale, 0.0, 4.0)
        if self.cuda_graphs == "on" and self.compile == "off":
            raise ConfigError("prior.cuda_graphs: the graphs are captured by torch.compile; "
                              "set prior.compile to on or auto, or prior.cuda_graphs to off")


@dataclass(frozen=True)
class InitSettings:
    kind: Literal["ball", "shell", "box", "ply", "mesh", "shap-e"] = "ball"
    """initial Gaussians: random ball, sphere shell, box, a 3DGS / point-cloud PLY (init.path), points on a
    mesh file (init.path: obj, glb, ply mesh...), or on a mesh Shap-E makes from text (init.model)"""
    num: int = 2000
    """number of Gaussians at start (mesh, shap-e: points sampled on the surface; not for ply)"""
    radius: float = 0.6
    """size of the ball / shell / half-size of the box; mesh, shap-e: radius of the ball the mesh is
    scaled into (init.fit), world units"""
    opacity: float = 0.1
    """initial opacity in (0, 1)"""
    sh_degree: int = 0
    """spherical-harmonic degree of the colours (0..3)"""
    path: str = ""
    """the file for kind = ply (a 3DGS or point-cloud .ply) or kind = mesh (.obj, .glb, .gltf, .ply, .stl, .off)"""
    fit: bool = True
    """mesh, shap-e: centre the mesh and scale it into a ball of init.radius (off: keep its coordinates)"""
    up: Literal["auto", "y", "z"] = "auto"
    """mesh: the file's up axis (the studio's is z); auto: y for glb / gltf / obj (their convention), else z"""
    model: str = "openai/shap-e"
    """shap-e: the Shap-E text-to-3D pipeline, a hub id or a local folder (diffusers' ShapEPipeline layout)"""
    prompt: str = ""
    """shap-e: what Shap-E makes; empty: the session's prompt (prompt.prompt)"""
    shap_e_steps: int = 64
    """shap-e: denoising steps of Shap-E's prior"""
    shap_e_guidance: float = 15.0
    """shap-e: classifier-free guidance scale of Shap-E's prior"""

    def validate(self) -> None:
        _check("init.num", self.num, 1, 10_000_000)
        _check("init.radius", self.radius, 1e-3, 100.0)
        _check("init.opacity", self.opacity, 1e-4, 0.9999)
        _check("init.sh_degree", self.sh_degree, 0, 3)
        _check("init.shap_e_steps", self.shap_e_steps, 1, 1000)
        _check("init.shap_e_guidance", self.shap_e_guidance, 0.0, 100.0)
        if self.kind == "ply" and not self.path:
            raise ConfigError("init.path: kind = ply needs the path of a 3DGS .ply file")
        if self.kind == "mesh" and not self.path:
            raise ConfigError("init.path: kind = mesh needs the path of a mesh file (.obj, .glb, .ply, ...)")
        if self.kind == "shap-e" and not self.model.strip():
            raise ConfigError("init.model: kind = shap-e needs a Shap-E pipeline: a hub id (openai/shap-e) or a folder")
        if len(self.prompt) > 500:
            raise ConfigError("init.prompt: prompts are limited to 500 characters")


@dataclass(frozen=True)
class RegSettings:
    """Losses beside the distillation loss, each weight 0 (off) by default; LucidDreamer uses 1, 1, 1."""

    tv_rgb: float = 0.0
    """weight of the total variation of the rendered colours: 2 (mean dh^2 + mean dw^2) of neighbouring pixels"""
    tv_depth: float = 0.0
    """weight of the total variation of the rendered depth (world units), as tv_rgb"""
    mean_scale: float = 0.0
    """weight of the Gaussians' mean size (activated scales, world units): keeps them from growing into blobs"""

    def validate(self) -> None:
        for name in ("tv_rgb", "tv_depth", "mean_scale"):
            _check(f"reg.{name}", getattr(self, name), 0.0, 1e4)


@dataclass(frozen=True)
class ZoomSettings:
    """The camera schedule (LucidDreamer's scale-up): every `every` steps the radius range is multiplied by
    radius_factor (never below radius_min) and the field of view's ends by fovy_factor (within fovy_limit)."""

    every: int = 0
    """steps between zooms (0: off; LucidDreamer: 500)"""
    radius_factor: float = 0.95
    """radius range multiplier per zoom, in [0.5, 1.5]"""
    radius_min: tuple[float, float] = (0.0, 0.0)
    """the nearest each end of the radius range may come, world units"""
    fovy_factor: tuple[float, float] = (1.0, 1.0)
    """multipliers of the field of view's (min, max) per zoom (LucidDreamer: 0.75, 1.1)"""
    fovy_limit: tuple[float, float] = (1.0, 170.0)
    """the field of view's range never leaves these degrees"""

    def validate(self) -> None:
        _check("zoom.every", self.every, 0, 1_000_000)
        _check("zoom.radius_factor", self.radius_factor, 0.5, 1.5)
        for name, lo, hi in (("radius_min", 0.0, 1e3), ("fovy_factor", 0.5, 2.0), ("fovy_limit", 1.0, 170.0)):
            pair = getattr(self, name)
            for i, v in enumerate(pair):
                _check(f"zoom.{name}[{i}]", v, lo, hi)
        if self.fovy_limit[0] > self.fovy_limit[1]:
            raise ConfigError(f"zoom.fovy_limit: need min <= max, got {self.fovy_limit}")

    def apply(self, camera: CameraRanges, step: int) -> CameraRanges:
        """The camera ranges at `step` (0-based)."""
        if self.every <= 0 or step < self.every:
            return camera
        n = step // self.every
        r = tuple(max(lo, v * self.radius_factor**n) for v, lo in zip(camera.radius, self.radius_min))
        f_lo = max(self.fovy_limit[0], min(self.fovy_limit[1], camera.fovy_deg[0] * self.fovy_factor[0] ** n))
        f_hi = min(self.fovy_limit[1], max(self.fovy_limit[0], camera.fovy_deg[1] * self.fovy_factor[1] ** n))
        return replace(camera, radius=(min(r), max(r)), fovy_deg=(min(f_lo, f_hi), max(f_lo, f_hi)))


@dataclass(frozen=True)
class StudioConfig:
    prompt: PromptSettings = field(default_factory=PromptSettings)
    run: RunSettings = field(default_factory=RunSettings)
    render: RenderSettings = field(default_factory=RenderSettings)
    camera: CameraRanges = field(default_factory=CameraRanges)
    prior: PriorSettings = field(default_factory=PriorSettings)
    init: InitSettings = field(default_factory=InitSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    densify: DensifySettings = field(default_factory=DensifySettings)
    sds: SDSSettings = field(default_factory=SDSSettings)
    ism: ISMSettings = field(default_factory=ISMSettings)
    ssd: SSDSettings = field(default_factory=SSDSettings)
    reg: RegSettings = field(default_factory=RegSettings)
    zoom: ZoomSettings = field(default_factory=ZoomSettings)
    mesh: MeshSettings = field(default_factory=MeshSettings)

    def estimator_settings(self, method: str | None = None) -> Any:
        return getattr(self, method or self.run.method)


def _check(name: str, value: float, lo: float, hi: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name}: must lie in [{lo}, {hi}] (a finite number), got {confio.show(value)}")
    if not (lo <= value <= hi):
        raise ConfigError(f"{name}: must lie in [{lo}, {hi}], got {value}")


def validate(cfg: StudioConfig) -> StudioConfig:
    """Validate every section; raise ConfigError naming the field and its allowed range."""
    for f in fields(cfg):
        section = getattr(cfg, f.name)
        try:
            section.validate()
        except SettingsError as e:
            raise ConfigError(str(e)) from None
        except ConfigError:
            raise
        except ValueError as e:  # sections from other packages raise plain ValueError
            raise ConfigError(str(e) if str(e).startswith(f.name) else f"{f.name}: {e}") from None
    return cfg


def with_values(cfg: StudioConfig, values: dict[str, Any]) -> StudioConfig:
    """A validated copy of cfg with dotted paths set; cfg itself is never touched."""
    return validate(confio.set_paths(cfg, values))


def to_json(cfg: StudioConfig) -> str:
    return json.dumps(confio.to_dict(cfg), indent=2, sort_keys=True)


def from_json(text: str | dict, base: StudioConfig | None = None) -> StudioConfig:
    """A validated config from JSON text or its parsed value over `base`; ConfigError for anything else."""
    data = confio.parse_json(text) if isinstance(text, str) else text
    return validate(confio.from_dict(StudioConfig, data, base=base))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


METHOD_PRESETS = {"sds": "sds", "ism": "lucid", "ssd": "stein"}  # the preset that holds each method's defaults


def _preset_data(name: str) -> dict[str, Any]:
    path = PRESETS_DIR / f"{name}.json"
    if not path.exists():
        raise ConfigError(f"preset {name!r}: unknown preset; choose one of {', '.join(preset_names())}")
    data = json.loads(path.read_text())
    data.pop("_comment", None)
    return data


def preset_values(name: str) -> dict[str, Any]:
    """The dotted paths a preset sets, with its (JSON) values: {"ism.delta_t": 50, "run.method": "ism"}."""
    return dict(_preset_items(name))


@functools.lru_cache(maxsize=32)
def _preset_items(name: str) -> tuple[tuple[str, Any], ...]:  # presets are read once (the UIs ask often)
    out: dict[str, Any] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                out[f"{prefix}{key}"] = value

    walk("", _preset_data(name))
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in out.items())


def method_preset_values(method: str) -> dict[str, Any]:
    """The paths of `method`'s own section in its preset (sds -> sds, ism -> lucid, ssd -> stein)."""
    if method not in METHOD_PRESETS:
        raise ConfigError(f"run.method: must be one of {', '.join(METHODS)}, got {method!r}")
    return {p: v for p, v in preset_values(METHOD_PRESETS[method]).items() if p.startswith(method + ".")}


def load_preset(name: str, base: StudioConfig | None = None) -> StudioConfig:
    """A preset from assets/presets/<name>.json laid over `base` (default: the defaults)."""
    try:
        data = _preset_data(name)
    except ConfigError:
        raise ConfigError(f"--preset {name!r}: unknown preset; choose one of {', '.join(preset_names())}") from None
    return from_json(data, base=base or method_defaults())


LIVE_PRESET_SKIPS = ("prompt.prompt", "prompt.negative", "run.steps")  # what a preset picked while running leaves alone


def live_preset_values(name: str) -> dict[str, Any]:
    """A preset's values as applied to a running session: not the prompt, and not the plan (picking
    "sds" at step 900 must not end a run planned for 1200)."""
    return {p: v for p, v in preset_values(name).items() if not p.startswith(LIVE_PRESET_SKIPS)}


def matching_preset(cfg: StudioConfig) -> str | None:
    """The first preset every one of whose live values `cfg` holds, or None."""
    for name in preset_names():
        values = live_preset_values(name)
        try:
            if confio.set_paths(cfg, values) == cfg:
                return name
        except ConfigError:
            continue
    return None


def method_defaults() -> StudioConfig:
    """The dataclass defaults with every estimator's section taken from its method's preset, so that the
    settings of an estimator not yet chosen are the ones that run when it is."""
    values: dict[str, Any] = {}
    for m in METHODS:
        values.update(method_preset_values(m))
    return with_values(StudioConfig(), values)


def default_config(method: str | None = None) -> StudioConfig:
    """The defaults for a method: its preset (sds -> sds, ism -> lucid, ssd -> stein) over
    `method_defaults()`."""
    return load_preset(METHOD_PRESETS[method or "sds"])


def replace_section(cfg: StudioConfig, name: str, section: Any) -> StudioConfig:
    return validate(replace(cfg, **{name: section}))
