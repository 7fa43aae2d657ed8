"""Initial Gaussians on a mesh: a mesh file (init.kind = mesh) or a mesh Shap-E makes from text
(init.kind = shap-e, GaussianDreamer's start). Points are sampled uniformly on the surface, coloured by
the mesh (texture, vertex or face colours; grey without), and become Gaussians as a point cloud does
(`initializers.points`: scales from the 3 nearest neighbours).

    raw, extent = raw_from_mesh_file(init, seed)             # init.path: .obj .glb .gltf .ply .stl .off
    raw, extent = raw_from_shap_e(init, "a red cube", seed)  # init.model: "openai/shap-e" or a folder

Shap-E goes through diffusers' ShapEPipeline (prior -> latent -> its renderer's marching cubes, output_type
"mesh"); a model that cannot be loaded is one PriorError naming init.model and how to get it. Its meshes,
like the studio, have +z up; glTF and OBJ files have +y up by convention (init.up = auto turns them).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import initializers as init_mod
from .atomic import ReadError

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
Y_UP_SUFFIXES = (".obj", ".glb", ".gltf")
SHAP_E_PARTS = ("prior", "text_encoder", "tokenizer", "scheduler", "shap_e_renderer")
SHAP_E_FALLBACK = "Or start from a built-in shape: --set init.kind=ball."


def read_mesh(path: str | os.PathLike) -> Any:
    """A trimesh.Trimesh from a mesh file (a scene's meshes joined, their transforms applied). Raises
    ReadError, in one line, for a missing, unreadable or empty file."""
    import trimesh

    file = Path(path)
    if not file.exists():
        raise ReadError(path, "no such file; give a mesh file (init.path: " + ", ".join(MESH_SUFFIXES) + ")")
    if not file.is_file():
        raise ReadError(path, "not a regular file; give a mesh file (" + ", ".join(MESH_SUFFIXES) + ")")
    if file.suffix.lower() not in MESH_SUFFIXES:
        raise ReadError(path, f"not a mesh format the studio reads (suffix {file.suffix or 'none'}); use one "
                              f"of {', '.join(MESH_SUFFIXES)}")
    try:
        mesh = trimesh.load(file, force="mesh")
    except Exception as e:  # noqa: BLE001 -- trimesh's loaders raise what their parsers raise
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise ReadError(path, f"not a readable mesh ({type(e).__name__}{': ' + first if first else ''})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or mesh.area <= 0:
        raise ReadError(path, "the file holds no triangles with area (a point cloud is init.kind = ply)")
    if not np.isfinite(mesh.vertices).all():
        raise ReadError(path, f"{int((~np.isfinite(mesh.vertices)).sum())} vertex coordinates are NaN or inf")
    return mesh


def surface_colours(mesh: Any, face_index: np.ndarray, bary: np.ndarray) -> np.ndarray | None:
    """[P, 3] colours in [0, 1] at surface samples (face_index [P], barycentric [P, 3]): from the texture,
    the vertex colours or the face colours, whichever the mesh has; None when it has none."""
    from trimesh.visual import uv_to_interpolated_color

    visual = mesh.visual
    corners = mesh.faces[face_index]  # [P, 3] vertex ids
    if visual.kind == "texture":
        material = visual.material
        image = getattr(material, "image", None)  # SimpleMaterial (OBJ); PBRMaterial (glTF) below
        image = getattr(material, "baseColorTexture", None) if image is None else image
        if image is not None and visual.uv is not None and len(visual.uv) == len(mesh.vertices):
            uv = (np.asarray(visual.uv)[corners] * bary[..., None]).sum(axis=1)  # [P, 2]
            return uv_to_interpolated_color(uv, image)[:, :3] / 255.0
        colour = np.asarray(material.main_color, np.float64)[:3] / 255.0  # a material without a texture
        return np.tile(colour, (len(face_index), 1))
    if visual.kind == "vertex":
        rgb = np.asarray(visual.vertex_colors, np.float64)[:, :3] / 255.0
        return (rgb[corners] * bary[..., None]).sum(axis=1)
    if visual.kind == "face":
        return np.asarray(visual.face_colors, np.float64)[face_index, :3] / 255.0
    return None


def sample_points(mesh: Any, n: int, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """n points uniform on the surface: (xyz [n, 3] float32, rgb [n, 3] in [0, 1] or None)."""
    import trimesh

    xyz, face_index, bary = trimesh.sample.sample_surface(mesh, n, seed=seed, return_barycentric=True)
    rgb = surface_colours(mesh, face_index, bary)
    return (torch.from_numpy(np.asarray(xyz, np.float32)),
            None if rgb is None else torch.from_numpy(np.clip(rgb, 0.0, 1.0).astype(np.float32)))


def place(verts: np.ndarray, up: str, fit: bool, radius: float) -> np.ndarray:
    """[V, 3] vertices in the studio's frame: +y up turned to +z up, then (fit) centred on the bounding
    box's centre and scaled so that the farthest vertex lies at `radius`."""
    v = np.asarray(verts, np.float64)
    if up == "y":
        v = np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)  # (x, y, z) y-up -> (x, -z, y) z-up
    if fit:
        v = v - 0.5 * (v.min(axis=0) + v.max(axis=0))
        far = float(np.linalg.norm(v, axis=1).max())
        if far > 0:
            v = v * (radius / far)
    return v


def raw_from_mesh(mesh: Any, init: Any, seed: int, up: str = "z") -> tuple[dict[str, Tensor], float]:
    """Gaussians on a trimesh mesh (placed by `place`), grey where the mesh has no colours."""
    mesh = mesh.copy()
    mesh.vertices = place(mesh.vertices, up, init.fit, init.radius)
    xyz, rgb = sample_points(mesh, init.num, seed)
    return init_mod.points(xyz, rgb, opacity=init.opacity, sh_degree=init.sh_degree, seed=seed, colors="grey")


def up_axis(path: str | os.PathLike, up: str) -> str:
    """The file's up axis: `up`, or for "auto" y for glTF / OBJ files and z for the rest."""
    if up != "auto":
        return up
    return "y" if Path(path).suffix.lower() in Y_UP_SUFFIXES else "z"


def raw_from_mesh_file(init: Any, seed: int) -> tuple[dict[str, Tensor], float]:
    """init.kind = mesh: Gaussians on the mesh in init.path."""
    return raw_from_mesh(read_mesh(init.path), init, seed, up_axis(init.path, init.up))


# ----- Shap-E ------------------------------------------------------------------------------------------

def raw_from_shap_e(init: Any, prompt: str, seed: int) -> tuple[dict[str, Tensor], float]:
    """init.kind = shap-e: Gaussians on the mesh Shap-E makes for init.prompt (or `prompt`, the session's,
    when init.prompt is empty)."""
    import trimesh

    text = init.prompt or prompt
    verts, faces, rgb = shap_e_mesh(init.model, text, init.shap_e_steps, init.shap_e_guidance, seed)
    mesh = trimesh.Trimesh(verts, faces, vertex_colors=np.round(rgb * 255).astype(np.uint8), process=False)
    return raw_from_mesh(mesh, init, seed, up="z")


@functools.lru_cache(maxsize=4)  # a reset starts from the same mesh without running Shap-E again
def shap_e_mesh(model: str, prompt: str, steps: int, guidance: float, seed: int) -> tuple[np.ndarray, ...]:
    """Shap-E's mesh for `prompt`: (verts [V, 3], faces [F, 3], rgb [V, 3] display colours in [0, 1]).

    Runs on CUDA when there is one (fp16), else on the CPU (minutes for the real model). Raises
    PriorError naming init.model when the pipeline cannot be loaded, or when it makes no surface."""
    from guidance.priors.base import PriorError

    from .mesh import linear_to_srgb

    pipe, device = load_shap_e(model)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    latents = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                   output_type="latent").images  # [1, rows, width]
    try:
        out = pipe.shap_e_renderer.decode_to_mesh(latents[0][None].to(device), device)
    except ValueError as e:  # its texture query concatenates nothing when the field never crosses zero
        raise PriorError(f"init.model {model!r}: Shap-E made no surface for {prompt!r} (seed {seed}: {e}); try "
                         f"another prompt or run.seed. {SHAP_E_FALLBACK}") from None
    verts = out.verts.detach().float().cpu().numpy()
    faces = out.faces.detach().cpu().numpy().astype(np.int64)
    linear = torch.stack([out.vertex_channels[c] for c in ("R", "G", "B")], dim=-1).float().cpu().numpy()
    if len(faces) == 0:
        raise PriorError(f"init.model {model!r}: Shap-E made no surface for {prompt!r} (seed {seed}); try another "
                         f"prompt or run.seed. {SHAP_E_FALLBACK}")
    return verts, faces, linear_to_srgb(np.clip(linear, 0.0, 1.0))  # the renderer hands out linear colours


def load_shap_e(model: str) -> tuple[Any, str]:
    """diffusers' ShapEPipeline from a hub id or folder, on CUDA (fp16) if available; (pipeline, device)."""
    from diffusers import ShapEPipeline

    from guidance.priors import hub

    what = "Shap-E pipeline (init.model)"
    layout = "model_index.json and " + ", ".join(f"{p}/" for p in SHAP_E_PARTS)
    hub.require_subfolders(model, SHAP_E_PARTS, what, SHAP_E_FALLBACK)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    half = {"torch_dtype": torch.float16} if device == "cuda" else {}  # as the SD prior asks for it
    pipe = hub.load(ShapEPipeline.from_pretrained, model, what, layout, SHAP_E_FALLBACK, **half)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), device
