"""Meshes from Gaussians: the density's iso-surface, cleaned, coloured by the Gaussians, written as GLB / OBJ.

    result = extract_mesh(scene.raw(), MeshSettings())      # MeshResult: trimesh.Trimesh + timings
    export_mesh(scene.raw(), "out/a_red_cube.glb", "glb")   # atomically, like every export

Stages (each timed in `MeshResult.seconds`):
1. density: `mesh_density.density_grid` on a grid of cubic voxels that covers the Gaussians (mesh.grid
   voxels along the longest side), optionally blurred by a Gaussian of mesh.smooth world units;
2. surface: cavities no ray from outside reaches are filled (mesh.fill), then marching cubes (scikit-image)
   at mesh.iso on the grid padded with empty voxels, so every surface is closed;
3. cleanup: vertices on one spot welded, connected pieces with less than mesh.min_component of the faces
   dropped, then quadric decimation (fast-simplification) to mesh.max_faces, kept closed (`mesh_repair`);
4. colour: each vertex gets the degree-0 colour (0.5 + C0 * sh0) of its 16 nearest Gaussians, weighted by
   what each adds to the density there; optionally baked into a UV texture (xatlas, GLB only).

Files are +y up, as glTF requires and OBJ tools expect (the studio is +z up: `y_up`). GLB stores vertex
colours linear, as glTF requires (a viewer shows the Gaussians' colours); OBJ stores them as the Gaussians'
display colours on each `v x y z r g b` line, one file, no .mtl.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from torch import Tensor

from renderers.sh import C0

from .atomic import ExportError, write_bytes_atomic
from .confio import ConfigError

if TYPE_CHECKING:
    from .mesh_density import Grid

MESH_FORMATS = ("glb", "obj")
COLOUR_NEIGHBOURS = 16  # Gaussians whose contributions colour a vertex


@dataclass(frozen=True)
class MeshSettings:
    """How `--export glb,obj` and the Export buttons turn the Gaussians into a mesh."""

    iso: float = 0.1
    """surface level of the density sum_i o_i exp(-d_i^2 / 2) (o: opacity, d: Mahalanobis distance);
    lower: a fuller, larger mesh"""
    grid: int = 256
    """voxels along the longest side of the Gaussians' bounding box (time and memory grow as its cube)"""
    smooth: float = 0.03
    """std of a Gaussian blur of the density before the surface is taken, world units (0: none); closes
    the pores between Gaussians"""
    fill: bool = True
    """fill cavities that no path from outside reaches (a hollow shell of Gaussians becomes a solid)"""
    min_component: float = 0.02
    """drop connected pieces with less than this share of the faces (floaters)"""
    max_faces: int = 200_000
    """decimate to at most this many faces (0: keep every face)"""
    texture: int = 0
    """GLB only: bake the colours into a UV texture this many pixels square, unwrapped by xatlas
    (0: vertex colours)"""

    def validate(self) -> None:
        for name, lo, hi in (("iso", 1e-4, 100.0), ("grid", 16, 512), ("smooth", 0.0, 1.0),
                             ("min_component", 0.0, 1.0), ("max_faces", 0, 10_000_000), ("texture", 0, 8192)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ConfigError(f"mesh.{name}: must lie in [{lo}, {hi}], got {value!r}")
        if 0 < self.max_faces < 4:
            raise ConfigError(f"mesh.max_faces: a closed mesh needs at least 4 faces (0: keep all), got "
                              f"{self.max_faces}")
        if 0 < self.texture < 64:
            raise ConfigError(f"mesh.texture: at least 64 pixels (0: vertex colours), got {self.texture}")


@dataclass(frozen=True)
class Gaussians:
    """Activated, finite Gaussians on the CPU: means [N, 3], scales [N, 3], quats [N, 4], opacities [N],
    rgb [N, 3] (degree-0 colour in [0, 1])."""

    means: Tensor
    scales: Tensor
    quats: Tensor
    opacities: Tensor
    rgb: Tensor

    @classmethod
    def from_raw(cls, raw: Mapping[str, Tensor]) -> "Gaussians":
        """From raw tensors in gsplat's layout (log-scales, logit opacities, sh0 [N, 1, 3]); Gaussians with
        a non-finite parameter are left out."""
        keys = ("means", "scales", "quats", "opacities", "sh0")
        r = {k: raw[k].detach().to("cpu", torch.float64) for k in keys}
        n = r["means"].shape[0]
        ok = torch.ones(n, dtype=torch.bool)
        for k in keys:
            ok &= torch.isfinite(r[k].reshape(n, -1)).all(dim=1)
        r = {k: v[ok] for k, v in r.items()}
        rgb = (0.5 + C0 * r["sh0"][:, 0, :]).clamp(0.0, 1.0)
        return cls(r["means"], torch.exp(r["scales"]), r["quats"], torch.sigmoid(r["opacities"]), rgb)

    def __len__(self) -> int:
        return self.means.shape[0]


@dataclass
class MeshResult:
    mesh: Any  # trimesh.Trimesh with vertex colours (and a texture when asked)
    grid: Grid
    num_gaussians: int
    dropped_components: int  # connected pieces removed by mesh.min_component
    watertight: bool  # every edge in two faces, before a texture splits vertices along its UV seams
    seconds: dict[str, float] = field(default_factory=dict)  # density, surface, cleanup, colour


def grid_for(g: Gaussians, s: MeshSettings) -> Grid:
    """A grid over the support of the Gaussians that can reach mesh.iso (0.1 % outliers per side left
    out, so that a stray floater does not coarsen the grid), widened by the blur and two voxels."""
    from .mesh_density import CUTOFF, Grid

    heavy = g.opacities >= 0.1 * s.iso
    pick = heavy if bool(heavy.any()) else torch.ones_like(heavy)
    half = CUTOFF * g.scales[pick].max(dim=1).values[:, None]  # [M, 1]
    q = 0.001 if int(pick.sum()) >= 1000 else 0.0
    lo = torch.quantile(g.means[pick] - half, q, dim=0)
    hi = torch.quantile(g.means[pick] + half, 1.0 - q, dim=0)
    step = float((hi - lo).max()) / max(s.grid - 1, 1)
    pad = 3.0 * s.smooth + 2.0 * step
    lo, hi = lo - pad, hi + pad
    step = float((hi - lo).max()) / (s.grid - 1)
    shape = tuple(int(np.ceil(float(hi[a] - lo[a]) / step)) + 1 for a in range(3))
    return Grid(tuple(float(v) for v in lo), step, shape)


def extract_mesh(raw: Mapping[str, Tensor], settings: MeshSettings = MeshSettings()) -> MeshResult:
    """The cleaned, coloured iso-surface of the Gaussians' density (see the module's stages).

    Args:
        raw: raw tensors in gsplat's layout (`scene.raw()`), any device
        settings: iso-level, grid, blur, cleanup and texture
    Raises ValueError when there is no surface (the message says which setting to change).
    """
    import trimesh

    from .mesh_density import density_grid

    settings.validate()
    g = Gaussians.from_raw(raw)
    if len(g) == 0:
        raise ValueError("mesh: the scene has no Gaussians with finite parameters")
    seconds = {}
    t0 = time.perf_counter()
    grid = grid_for(g, settings)
    field_ = density_grid(grid, g.means, g.scales, g.quats, g.opacities)  # [nx, ny, nz]
    if settings.smooth > 0:
        from scipy.ndimage import gaussian_filter

        field_ = gaussian_filter(field_, settings.smooth / grid.step, mode="constant")
    seconds["density"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    verts, faces = _surface(field_, grid, settings)
    seconds["surface"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    verts, faces, dropped = _cleanup(verts, faces, settings, grid.step)
    seconds["cleanup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mesh = trimesh.Trimesh(verts, faces, process=False)
    closed = bool(mesh.is_watertight)
    colours = vertex_colours(mesh.vertices, g)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_rgba8(colours))
    if settings.texture:
        from .mesh_texture import bake_texture

        mesh = bake_texture(mesh, g, settings.texture)
    seconds["colour"] = time.perf_counter() - t0
    return MeshResult(mesh, grid, len(g), dropped, closed, seconds)


def _surface(field_: np.ndarray, grid: Grid, s: MeshSettings) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes at s.iso on the (cavity-filled) field padded by one empty voxel: closed surfaces."""
    from skimage.measure import marching_cubes

    inside = field_ >= s.iso
    if not bool(inside.any()):
        raise ValueError(f"mesh: the density never reaches mesh.iso = {s.iso:g} (its maximum is "
                         f"{float(field_.max()):.3g}); lower mesh.iso")
    if s.fill:
        from scipy.ndimage import binary_fill_holes

        cavity = binary_fill_holes(inside) & ~inside
        field_ = np.where(cavity, np.float32(2.0 * s.iso), field_)
    padded = np.pad(field_, 1)
    verts, faces, _, _ = marching_cubes(padded, s.iso, spacing=(grid.step,) * 3, gradient_direction="ascent")
    verts = verts - grid.step + np.asarray(grid.origin)  # index (1, 1, 1) of the padded grid is voxel 0
    return verts, faces.astype(np.int64)


def _cleanup(verts: np.ndarray, faces: np.ndarray, s: MeshSettings, step: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Weld vertices within 1/1000 voxel (mending any pinch that makes), drop small connected pieces, then
    decimate to s.max_faces. Returns (verts, faces, pieces dropped)."""
    from .mesh_repair import decimate, drop_small_components, is_closed, mend, weld

    tol = 1e-3 * step
    verts, faces = weld(verts, faces, tol)
    if not is_closed(faces):
        verts, faces = mend(verts, faces)
    verts, faces, dropped = drop_small_components(verts, faces, s.min_component)
    verts, faces = decimate(verts, faces, s.max_faces, tol)
    return verts, faces, dropped


def vertex_colours(points: np.ndarray, g: Gaussians, k: int = COLOUR_NEIGHBOURS) -> np.ndarray:
    """[P, 3] colours in [0, 1] at points [P, 3]: the degree-0 colours of the k nearest Gaussians, weighted
    by o_i exp(-d_i^2 / 2) (what each adds to the density there); the nearest one's where all are ~0."""
    from scipy.spatial import cKDTree

    from .mesh_density import covariances

    pts = np.asarray(points, np.float64)
    k = min(k, len(g))
    _, idx = cKDTree(g.means.numpy()).query(pts, k=k)  # [P, k]
    idx = idx.reshape(len(pts), k)
    prec = torch.linalg.inv(covariances(g.scales, g.quats)).numpy()  # [N, 3, 3]
    d = pts[:, None, :] - g.means.numpy()[idx]  # [P, k, 3]
    m2 = np.einsum("pki,pkij,pkj->pk", d, prec[idx], d)
    w = g.opacities.numpy()[idx] * np.exp(-0.5 * m2)  # [P, k]
    total = w.sum(axis=1, keepdims=True)
    rgb = g.rgb.numpy()[idx]  # [P, k, 3]
    blended = (w[..., None] * rgb).sum(axis=1) / np.maximum(total, 1e-300)
    return np.where(total > 1e-12, blended, rgb[:, 0]).clip(0.0, 1.0)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(np.maximum(c, 0.0), 1.0 / 2.4) - 0.055)


def _rgba8(rgb: np.ndarray) -> np.ndarray:
    return np.concatenate([np.round(rgb * 255.0), np.full((len(rgb), 1), 255.0)], axis=1).astype(np.uint8)


def y_up(verts: np.ndarray) -> np.ndarray:
    """[V, 3] studio coordinates (+z up) in the +y-up frame glTF and OBJ files use: (x, y, z) -> (x, z, -y)."""
    v = np.asarray(verts, np.float64)
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def mesh_bytes(mesh: Any, format: str) -> bytes:
    """A mesh (studio coordinates) as a GLB (linear vertex colours, or its texture) or a one-file OBJ
    (display colours), both +y up."""
    import trimesh

    if format not in MESH_FORMATS:
        raise ValueError(f"export: a mesh format is one of {', '.join(MESH_FORMATS)}, got {format!r}")
    out = mesh.copy()
    out.vertices = y_up(out.vertices)
    if format == "obj":
        return trimesh.exchange.obj.export_obj(out, include_normals=True, include_color=True,
                                               include_texture=False, header="Gaussian Dreamer Studio").encode()
    if out.visual.kind == "vertex":  # glTF's COLOR_0 is linear
        rgb = out.visual.vertex_colors[:, :3] / 255.0
        out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=_rgba8(srgb_to_linear(rgb)))
    out.vertex_normals  # noqa: B018 -- computed now, so the GLB carries them (smooth shading)
    return trimesh.exchange.gltf.export_glb(out)


def export_mesh(raw: Mapping[str, Tensor], path: str | os.PathLike, format: str = "glb",
                settings: MeshSettings = MeshSettings()) -> tuple[MeshResult, int]:
    """Extract the mesh and write it to `path` atomically. Returns (the result, bytes written).

    Raises ExportError (naming the path) when there is no surface or the file cannot be written; then
    nothing at `path` changes."""
    if format not in MESH_FORMATS:
        raise ValueError(f"export: a mesh format is one of {', '.join(MESH_FORMATS)}, got {format!r}")
    if format == "obj":  # one file: vertex colours (a texture would need an .mtl and an image beside it)
        settings = replace(settings, texture=0)
    try:
        result = extract_mesh(raw, settings)
    except ValueError as e:
        raise ExportError(path, str(e)) from None
    data = mesh_bytes(result.mesh, format)
    write_bytes_atomic(path, data)
    return result, len(data)


def describe(result: MeshResult) -> str:
    """One line for the event: faces, watertight, seconds."""
    m = result.mesh
    closed = "watertight" if result.watertight else "not watertight"
    if result.watertight and m.visual.kind == "texture":
        closed += " (split along its UV seams)"
    return f"{len(m.faces):,} faces, {closed}, {sum(result.seconds.values()):.1f} s"

