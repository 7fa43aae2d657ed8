"""The procedural prior's reference objects: primitives described as data, turned into Gaussian scenes.

assets/objects/objects.json lists objects; each has a name, tags, `requires` tags and primitives
(box, sphere, superellipsoid, torus, cone, cylinder) with a texture (plain, checker, stripes, dots) in two colours.
`ObjectLibrary` loads and validates it, maps prompts to objects and builds (and caches) each object's
Gaussians: one flat Gaussian per surface sample, its thin axis along the surface normal, coloured by the
texture at the sample's (u, v), SH degree 0. Surfaces are sampled densely enough to look opaque.

Prompt matching: a prompt's words (lower case, letters only, stop words such as "a" / "the" / view
suffixes dropped) must all be tags of the object, and the object's `requires` tags must all be in the
prompt. So "a cube" matches the eight textured cubes but not the plain red one (it requires "red"), and
"a red cube" matches only that one. The empty prompt (no words) matches every object.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from renderers.types import GaussianParams

from .base import PriorError

DEFAULT_LIBRARY = Path(__file__).resolve().parents[2] / "assets" / "objects" / "objects.json"
STOP_WORDS = frozenset(
    {"a", "an", "the", "of", "one", "some", "single", "view", "front", "side", "back", "overhead"}
)
SH_C0 = 0.28209479177387814
OPACITY = 0.95  # per Gaussian; overlapping neighbours make the surface close to opaque
TANGENT_SCALE = 0.6  # Gaussian std along the surface, in units of the sample spacing
NORMAL_SCALE = 0.08  # std across the surface, same units: flat disks
DOT_RADIUS = 0.4  # dots cover pi * 0.4^2 = 50 % of their cell, so dotted and checkered average alike
LIGHT_DIR = (0.42, 0.3, 0.86)  # baked Lambert shading, so that a plain object still shows its 3D shape
AMBIENT = 0.6  # shade = AMBIENT + (1 - AMBIENT) * max(n . light, 0)


def prompt_words(prompt: str) -> frozenset[str]:
    """The words a prompt is matched on: lower case, letters only, stop words dropped."""
    return frozenset(w for w in re.findall(r"[a-z]+", prompt.lower()) if w not in STOP_WORDS)


class LibraryError(PriorError):
    """The object library cannot be read or is malformed (the message names the file and the entry)."""


@dataclass(frozen=True)
class ReferenceObject:
    name: str
    tags: frozenset[str]
    requires: frozenset[str]
    primitives: tuple[dict[str, Any], ...]

    def matches(self, words: frozenset[str]) -> bool:
        return words <= self.tags and self.requires <= words


# ----- surfaces: (points [N, 3], normals [N, 3], uv [N, 2], spacing [N]) ------------------------------


def _grid(nu: int, nv: int) -> tuple[Tensor, Tensor]:
    """Cell-centre coordinates in [0, 1]^2, each [nu * nv]."""
    u = (torch.arange(nu, dtype=torch.float64) + 0.5) / nu
    v = (torch.arange(nv, dtype=torch.float64) + 0.5) / nv
    uu, vv = torch.meshgrid(u, v, indexing="ij")
    return uu.reshape(-1), vv.reshape(-1)


def _box(p: dict) -> tuple[Tensor, ...]:
    h, g = torch.tensor(p["half_size"], dtype=torch.float64), int(p["resolution"])
    u, v = _grid(g, g)
    pts, nrm, uvs, sp = [], [], [], []
    for axis in range(3):
        b, c = [a for a in range(3) if a != axis]
        for sign in (1.0, -1.0):
            x = torch.zeros(u.shape[0], 3, dtype=torch.float64)
            x[:, axis] = sign * h[axis]
            x[:, b] = (2 * u - 1) * h[b]
            x[:, c] = (2 * v - 1) * h[c]
            n = torch.zeros_like(x)
            n[:, axis] = sign
            pts.append(x), nrm.append(n), uvs.append(torch.stack([u, v], -1))
            sp.append(torch.full_like(u, 2 * max(h[b].item(), h[c].item()) / g))
    return torch.cat(pts), torch.cat(nrm), torch.cat(uvs), torch.cat(sp)


def _sphere(p: dict) -> tuple[Tensor, ...]:
    r, n = float(p["radius"]), int(p["resolution"])
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))  # golden angle: a near-uniform Fibonacci lattice
    rho = (1 - z * z).clamp_min(0).sqrt()
    nrm = torch.stack([rho * phi.cos(), rho * phi.sin(), z], -1)
    uv = torch.stack([(torch.atan2(nrm[:, 1], nrm[:, 0]) / (2 * math.pi)) % 1.0, torch.acos(z) / math.pi], -1)
    return r * nrm, nrm, uv, torch.full_like(z, math.sqrt(4 * math.pi * r * r / n))


def _superellipsoid(p: dict) -> tuple[Tensor, ...]:
    """The surface |x|^p + |y|^p + |z|^p = r^p (p = 2 a sphere, large p close to a cube of half-size r):
    the sphere's Fibonacci lattice pushed out radially onto it. A direction n lands at rho = r / ||n||_p;
    the patch it stands for grows by rho^2 / (n . N) (N the surface normal), which sets the spacing."""
    r, e, n = float(p["radius"]), float(p["exponent"]), int(p["resolution"])
    _, dirs, uv, sp = _sphere({"radius": 1.0, "resolution": n})
    rho = r / dirs.abs().pow(e).sum(-1).pow(1 / e)
    pts = rho[:, None] * dirs
    nrm = torch.nn.functional.normalize(pts.sign() * pts.abs().pow(e - 1), dim=-1)
    stretch = rho**2 / (dirs * nrm).sum(-1).clamp_min(1e-6)
    return pts, nrm, uv, sp * stretch.sqrt()


def _torus(p: dict) -> tuple[Tensor, ...]:
    R, r = float(p["major_radius"]), float(p["minor_radius"])
    nu, nv = (int(x) for x in p["resolution"])
    u, v = _grid(nu, nv)
    a, b = 2 * math.pi * u, 2 * math.pi * v
    nrm = torch.stack([b.cos() * a.cos(), b.cos() * a.sin(), b.sin()], -1)
    ring = torch.stack([R * a.cos(), R * a.sin(), torch.zeros_like(a)], -1)
    sp = torch.maximum(2 * math.pi * (R + r * b.cos()) / nu, torch.full_like(u, 2 * math.pi * r / nv))
    return ring + r * nrm, nrm, torch.stack([u, v], -1), sp


def _disk(radius: float, spacing: float, z: float, normal_z: float) -> tuple[Tensor, ...]:
    """A flat disk of concentric rings at height z; uv = (angle / 2 pi, radius fraction)."""
    rings = max(1, round(radius / spacing))
    pts, uvs, sps = [], [], []
    for j in range(rings):
        rho = (j + 0.5) / rings * radius
        m = max(3, round(2 * math.pi * rho / spacing))
        a = 2 * math.pi * (torch.arange(m, dtype=torch.float64) + 0.5) / m
        pts.append(torch.stack([rho * a.cos(), rho * a.sin(), torch.full_like(a, z)], -1))
        uvs.append(torch.stack([a / (2 * math.pi), torch.full_like(a, rho / radius)], -1))
        sps.append(torch.full_like(a, max(2 * math.pi * rho / m, radius / rings)))
    x = torch.cat(pts)
    n = torch.zeros_like(x)
    n[:, 2] = normal_z
    return x, n, torch.cat(uvs), torch.cat(sps)


def _lateral(p: dict, top_radius: float) -> tuple[Tensor, ...]:
    """The side of a cone / cylinder from the base (radius R, z = 0) to z = height (top_radius)."""
    R, h = float(p["radius"]), float(p["height"])
    na, nh = (int(x) for x in p["resolution"])
    u, v = _grid(na, nh)
    a, rho = 2 * math.pi * u, R + (top_radius - R) * v
    pts = torch.stack([rho * a.cos(), rho * a.sin(), v * h], -1)
    outward = torch.stack([h * a.cos(), h * a.sin(), torch.full_like(a, R - top_radius)], -1)
    nrm = torch.nn.functional.normalize(outward, dim=-1)
    slant = math.hypot(h, R - top_radius)
    sp = torch.maximum(2 * math.pi * rho / na, torch.full_like(u, slant / nh))
    return pts, nrm, torch.stack([u, v], -1), sp


def _cone(p: dict) -> tuple[Tensor, ...]:
    side = _lateral(p, 0.0)
    base = _disk(float(p["radius"]), side[3].max().item(), 0.0, -1.0)
    return tuple(torch.cat([s, b]) for s, b in zip(side, base))


def _cylinder(p: dict) -> tuple[Tensor, ...]:
    side = _lateral(p, float(p["radius"]))
    sp, h = side[3].max().item(), float(p["height"])
    caps = [_disk(float(p["radius"]), sp, 0.0, -1.0), _disk(float(p["radius"]), sp, h, 1.0)]
    return tuple(torch.cat(parts) for parts in zip(side, *caps))


SHAPES = {"box": _box, "sphere": _sphere, "superellipsoid": _superellipsoid, "torus": _torus, "cone": _cone,
          "cylinder": _cylinder}
SHAPE_FIELDS = {
    "box": ("half_size", "resolution"),
    "sphere": ("radius", "resolution"),
    "superellipsoid": ("radius", "exponent", "resolution"),
    "torus": ("major_radius", "minor_radius", "resolution"),
    "cone": ("radius", "height", "resolution"),
    "cylinder": ("radius", "height", "resolution"),
}
TEXTURES = ("plain", "checker", "stripes", "dots")


def texture_colors(tex: dict, uv: Tensor) -> Tensor:
    """Colours [N, 3] of a texture at uv [N, 2] in [0, 1]^2. frequency: cells / bands per unit of uv."""
    colors = torch.tensor(tex["colors"], dtype=torch.float64)
    kind, f = tex["kind"], float(tex.get("frequency", 1))
    u, v = uv.unbind(-1)
    if kind == "plain":
        idx = torch.zeros_like(u, dtype=torch.long)
    elif kind == "checker":
        idx = (torch.floor(u * f) + torch.floor(v * f)).long() % 2
    elif kind == "stripes":
        coord = {"u": u, "v": v, "diagonal": (u + v) / math.sqrt(2.0)}[tex.get("direction", "u")]
        idx = torch.floor(coord * f).long() % 2
    else:  # dots
        du, dv = (u * f) % 1.0 - 0.5, (v * f) % 1.0 - 0.5
        idx = (du * du + dv * dv < DOT_RADIUS**2).long()
    return colors[idx]


def _z_to_normal_quats(n: Tensor) -> Tensor:
    """wxyz quaternions [N, 4] rotating +z onto the unit normals n [N, 3] (half-way construction)."""
    q = torch.stack([1 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros_like(n[:, 0])], -1)
    flip = q[:, 0] < 1e-6  # n = -z: any half turn about a horizontal axis
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=q.dtype)
    return torch.nn.functional.normalize(q, dim=-1)


def build_scene(obj: ReferenceObject) -> GaussianParams:
    """The object's Gaussians (float32, CPU), one per surface sample of each primitive; the colours
    carry a fixed, view-independent Lambert shading."""
    parts = []
    for p in obj.primitives:
        pts, nrm, uv, sp = SHAPES[p["shape"]](p)
        light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIR, dtype=torch.float64), dim=0)
        shade = AMBIENT + (1 - AMBIENT) * (nrm @ light).clamp_min(0)
        rgb = texture_colors(p["texture"], uv) * shade[:, None]
        scales = torch.stack([TANGENT_SCALE * sp, TANGENT_SCALE * sp, NORMAL_SCALE * sp], -1)
        center = torch.tensor(p["center"], dtype=torch.float64)
        parts.append((pts + center, _z_to_normal_quats(nrm), scales, rgb))
    means, quats, scales, rgb = (torch.cat(x).float() for x in zip(*parts))
    sh = ((rgb - 0.5) / SH_C0)[:, None, :]  # [N, 1, 3], degree 0
    return GaussianParams(means, quats, scales, torch.full((means.shape[0],), OPACITY), sh)


def _check_primitive(where: str, p: Any) -> None:
    if not isinstance(p, dict) or p.get("shape") not in SHAPES:
        raise PriorError(f"{where}.shape: expected one of {', '.join(SHAPES)}, got {p!r:.80}")
    for key in ("center", "texture") + SHAPE_FIELDS[p["shape"]]:
        if key not in p:
            raise PriorError(f"{where}: a {p['shape']} needs {key!r} (fields: {', '.join(SHAPE_FIELDS[p['shape']])})")
    if p["shape"] == "superellipsoid" and not (isinstance(p["exponent"], (int, float)) and 1 <= p["exponent"] <= 100):
        raise PriorError(f"{where}.exponent: must lie in [1, 100] (2 is a sphere), got {p['exponent']!r}")
    tex = p["texture"]
    if not isinstance(tex, dict) or tex.get("kind") not in TEXTURES:
        raise PriorError(f"{where}.texture.kind: expected one of {', '.join(TEXTURES)}, got {tex!r:.80}")
    need = 1 if tex["kind"] == "plain" else 2
    cols = tex.get("colors", [])
    if len(cols) < need or any(len(c) != 3 or not all(0.0 <= x <= 1.0 for x in c) for c in cols):
        raise PriorError(f"{where}.texture.colors: need {need} RGB triples in [0, 1], got {cols!r}")


def parse_library(data: dict, source: str) -> tuple[list[ReferenceObject], list[str]]:
    """Validate the JSON document; return (objects, example prompts). Errors name the offending entry."""
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list) or not data["objects"]:
        raise PriorError(f"{source}: expected a JSON object with a non-empty 'objects' list")
    objects = []
    for i, o in enumerate(data["objects"]):
        where = f"{source}: objects[{i}]"
        if not isinstance(o, dict) or not o.get("name") or not o.get("tags") or not o.get("primitives"):
            raise PriorError(f"{where}: each object needs 'name', 'tags' and 'primitives'")
        for j, p in enumerate(o["primitives"]):
            _check_primitive(f"{where} ({o['name']}).primitives[{j}]", p)
        tags, req = frozenset(o["tags"]), frozenset(o.get("requires", []))
        if not req <= tags:
            raise PriorError(f"{where} ({o['name']}): requires {sorted(req - tags)} which are not among its tags")
        objects.append(ReferenceObject(o["name"], tags, req, tuple(o["primitives"])))
    names = [o.name for o in objects]
    if len(set(names)) != len(names):
        raise PriorError(f"{source}: object names must be unique, got {names}")
    prompts = list(data.get("prompts", []))
    for pr in prompts:
        if not any(o.matches(prompt_words(pr)) for o in objects):
            raise PriorError(f"{source}: listed prompt {pr!r} matches no object")
    return objects, prompts


class ObjectLibrary:
    """The reference objects, prompt matching and a per-device cache of their Gaussian scenes."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else DEFAULT_LIBRARY
        if not self.path.is_absolute() and not self.path.exists() and (DEFAULT_LIBRARY.parents[2] / self.path).exists():
            self.path = DEFAULT_LIBRARY.parents[2] / self.path  # e.g. assets/objects/shapes.json from anywhere
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LibraryError(f"procedural prior: cannot read the object library {self.path}: {e}") from e
        try:
            self.objects, self.prompts = parse_library(data, str(self.path))
        except PriorError as e:
            raise LibraryError(str(e)) from None
        self._scenes: dict[tuple[int, str], GaussianParams] = {}

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    def match(self, prompt: str) -> list[int]:
        """Indices of the objects `prompt` matches; PriorError listing the known prompts if none."""
        words = prompt_words(prompt)
        if not words:  # the empty (unconditional) prompt: every object, whatever it requires
            return list(range(len(self.objects)))
        idx = [i for i, o in enumerate(self.objects) if o.matches(words)]
        if not idx:
            raise PriorError(
                f"procedural prior: no reference object matches the prompt {prompt!r}. Known prompts: "
                + "; ".join(repr(p) for p in self.prompts)
                + ". (Or use a Stable Diffusion model with --model <hub id or folder>.)"
            )
        return idx

    def scene(self, index: int, device: torch.device) -> GaussianParams:
        """Object `index` as Gaussians on `device` (built once, then cached).

        Objects that differ only in colour (the textured cubes) share their geometry tensors (means,
        quats, scales, opacities): the CPU renderer's `render_many_forward` composites such scenes in
        one pass, their colours as extra channels."""
        key = (index, str(device))
        if key not in self._scenes:
            scene = build_scene(self.objects[index]).to(device)
            self._scenes[key] = _share_geometry(scene, [s for (_, d), s in self._scenes.items() if d == str(device)])
        return self._scenes[key]


def _share_geometry(scene: GaussianParams, built: list[GaussianParams]) -> GaussianParams:
    """`scene` with the geometry tensors of an equal-geometry scene of `built`, if there is one."""
    geometry = ("means", "quats", "scales", "opacities")
    for other in built:
        if other.num_gaussians == scene.num_gaussians and all(
                torch.equal(getattr(scene, f), getattr(other, f)) for f in geometry):
            return GaussianParams(other.means, other.quats, other.scales, other.opacities, scene.sh)
    return scene
