"""Mesh export on the procedural prior: "a red cube" and "a ball" trained with the default session, their
GLB / OBJ meshes loaded back with trimesh and measured against the objects they should be (watertight,
faces, bounding box, volume, mean vertex colour); the same for the prior's own reference Gaussians (what
the mesh pipeline gives for a perfect scene); the time for 50,000 Gaussians at the default grid, by stage;
and the k-NN initial scales of 60,000 points before (brute force) and after (k-d tree).

    .venv/bin/python benchmarks/mesh_export.py             # table, docs/BENCHMARKS.md, docs/fig_mesh_*.png
    .venv/bin/python benchmarks/mesh_export.py --quick --no-write

Ideal objects (assets/objects/objects.json): the red cube has half-size 0.6 (edge 1.2, volume 1.728);
"a ball" matches the red and the blue ball, radius 0.65 (diameter 1.3, volume 1.150). Mean colours are
display colours (the OBJ's; the GLB holds the same, linearized as glTF asks), against the mean colour of
the matched reference object's Gaussians (its baked shading included).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import load_average, machine, markdown_table, write_section

import torch  # noqa: E402

from guidance.priors.objects import ObjectLibrary  # noqa: E402
from renderers.sh import C0  # noqa: E402
from studio.config import default_config, with_values  # noqa: E402
from studio.export import export_mesh  # noqa: E402
from studio.initializers import knn_scale  # noqa: E402
from studio.mesh import MeshSettings, extract_mesh  # noqa: E402
from studio.session import Session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "mesh_export"
IDEAL = {  # prompt: (what, bounding-box edge, volume)
    "a red cube": ("cube, half-size 0.6", 1.2, 1.2**3),
    "a ball": ("ball, radius 0.65", 1.3, 4.0 / 3.0 * math.pi * 0.65**3),
}
KNN_NOTE = ("The k-NN difference is the old code's error: torch.cdist computes distances by a float32 matrix "
            "product; against an exact float64 brute force (tests/test_init_mesh.py) the k-d tree agrees to 1e-6.")
FIGURES = {"a red cube": "fig_mesh_cube.png", "a ball": "fig_mesh_ball.png"}


def train(prompt: str, steps: int) -> tuple[dict, str, float]:
    """The default session on `prompt` for `steps`: (raw Gaussians, nearest mode's name, psnr_ref)."""
    cfg = with_values(default_config("sds"), {"run.steps": steps, "prompt.prompt": prompt})
    session = Session(cfg, OUT / "runs", metrics_file=False)
    session.run_steps(steps)
    score = session.trainer.score()
    raw = {k: v.detach().cpu() for k, v in session.trainer.scene.raw().items()}
    session.stop()
    return raw, score.mode_name, float(score.psnr)


def reference_raw(name: str) -> dict:
    """The procedural prior's own Gaussians of object `name`, as raw tensors."""
    lib = ObjectLibrary()
    p = lib.scene(lib.names.index(name), torch.device("cpu"))
    return {"means": p.means, "scales": p.scales.log(), "quats": p.quats, "opacities": torch.logit(p.opacities),
            "sh0": p.sh[:, :1], "shN": p.sh[:, 1:]}


def reference_colour(name: str) -> np.ndarray:
    raw = reference_raw(name)
    return (0.5 + C0 * raw["sh0"][:, 0]).clamp(0, 1).mean(dim=0).numpy()


def measure(raw: dict, stem: str, prompt: str, mode: str, label: str, settings: MeshSettings) -> tuple[list, object]:
    """Export GLB and OBJ, load both back, one table row (and the loaded OBJ for the picture)."""
    import trimesh

    t0 = time.perf_counter()
    glb = export_mesh(raw, OUT / f"{stem}.glb", "glb", settings)
    seconds = time.perf_counter() - t0
    export_mesh(raw, OUT / f"{stem}.obj", "obj", settings)
    m_glb = trimesh.load(OUT / f"{stem}.glb", force="mesh")
    m_obj = trimesh.load(OUT / f"{stem}.obj", force="mesh")
    what, edge, volume = IDEAL[prompt]
    ext = m_obj.extents[[0, 2, 1]]  # files are +y up: back to the studio's x, y, z
    colour = m_obj.visual.vertex_colors[:, :3].mean(axis=0) / 255.0
    ref = reference_colour(mode)
    row = [prompt, label, f"{raw['means'].shape[0]:,}", f"{glb.num_written:,}",
           f"{'yes' if m_glb.is_watertight else 'no'} / {'yes' if m_obj.is_watertight else 'no'}",
           " x ".join(f"{e:.3f}" for e in ext) + f" (ideal {edge:.2f})",
           f"{m_obj.volume:.3f} ({m_obj.volume / volume:.2f})",
           "(" + ", ".join(f"{c:.2f}" for c in colour) + ")", "(" + ", ".join(f"{c:.2f}" for c in ref) + f") {mode}",
           f"{seconds:.1f}"]
    print(" | ".join(row), flush=True)
    return row, m_obj


def reading(rows: list[list[str]]) -> str:
    """What the table says, from its cells: how far the surface lies outside the object, per side, and
    what the volumes say beside it."""
    parts = []
    for row in rows:
        prompt, label, box, vol = row[0], row[1], row[5], row[6]
        edge = IDEAL[prompt][1]
        mean_edge = float(np.mean([float(x) for x in box.split(" (")[0].split(" x ")]))
        ratio = float(vol.split("(")[1].rstrip(")"))
        filled = (mean_edge / edge) ** 3  # a cube or a ball scaled to that box, against the ideal
        parts.append(f"{prompt}, {label.split(',')[0]}: {(mean_edge - edge) / 2:+.3f} per side, volume "
                     f"{ratio:.2f} of the ideal where a solid of that box would be {filled:.2f}")
    return ("Reading: the iso-surface lies outside the Gaussians' centres (the level is reached a blur and a "
            "Gaussian's width beyond them), so every box is larger than its object; a volume below what a "
            "solid of that box would have means pores and tunnels inside. " + "; ".join(parts) + ".")


def many_gaussians(raw: dict, n: int, seed: int = 0) -> dict:
    """n Gaussians from a trained scene, as densification makes them: each a child of a random parent,
    drawn inside it (its mean plus its own noise), 1.6 times smaller, same opacity and colour."""
    g = torch.Generator().manual_seed(seed)
    parent = torch.randint(0, raw["means"].shape[0], (n,), generator=g)
    scales = raw["scales"][parent].exp()
    offset = scales * torch.randn(n, 3, generator=g)  # in the parent's axes (its rotation left out: a sketch)
    return {"means": raw["means"][parent] + offset, "scales": (scales / 1.6).log(), "quats": raw["quats"][parent],
            "opacities": raw["opacities"][parent], "sh0": raw["sh0"][parent], "shN": raw["shN"][parent]}


def knn_brute_force(points: torch.Tensor, k: int = 3, chunk_elems: int = 4_000_000) -> torch.Tensor:
    """The studio's k-NN scale before the k-d tree (torch.cdist in row chunks), kept here to time it."""
    n = points.shape[0]
    k = min(k, n - 1)
    rows = max(1, chunk_elems // n)
    out = []
    for i in range(0, n, rows):
        d2 = torch.cdist(points[i:i + rows], points).square()
        d2[torch.arange(d2.shape[0]), torch.arange(i, i + d2.shape[0])] = float("inf")
        out.append(d2.topk(k, dim=1, largest=False).values.mean(dim=1).sqrt())
    return torch.cat(out).clamp_min(1e-7)


def knn_rows(points: torch.Tensor) -> list[list[str]]:
    t0 = time.perf_counter()
    before = knn_brute_force(points)
    t_before = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = knn_scale(points)
    t_after = time.perf_counter() - t0
    diff = float(((after - before).abs() / before).max())
    return [["brute force (torch.cdist, row chunks)", f"{points.shape[0]:,}", f"{t_before:.2f}", ""],
            ["k-d tree (scipy cKDTree)", f"{points.shape[0]:,}", f"{t_after:.2f}", f"{diff:.1e}"]]


def picture(mesh, path: Path, title: str) -> None:
    """The mesh drawn with its vertex colours and a headlight-style Lambert shade, from two sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from scipy.spatial import cKDTree

    from studio.mesh_repair import decimate

    v, f = np.asarray(mesh.vertices)[:, [0, 2, 1]] * [1, -1, 1], np.asarray(mesh.faces)  # +y up -> +z up (a rotation)
    colour = mesh.visual.vertex_colors[:, :3] / 255.0
    if len(f) > 60_000:  # matplotlib draws every polygon: fewer, same shape
        v2, f = decimate(v, f, 60_000)
        colour = colour[cKDTree(v).query(v2)[1]]
        v = v2
    tri = v[f]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    fig = plt.figure(figsize=(8, 4.2))
    for i, (elev, azim) in enumerate(((25, -60), (-20, 120))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        eye = np.array([math.cos(math.radians(elev)) * math.cos(math.radians(azim)),
                        math.cos(math.radians(elev)) * math.sin(math.radians(azim)), math.sin(math.radians(elev))])
        light = eye + np.array([0.0, 0.0, 0.6])
        shade = 0.35 + 0.65 * np.clip(normal @ (light / np.linalg.norm(light)), 0, 1)
        face_colour = np.clip(colour[f].mean(axis=1) * shade[:, None], 0, 1)
        ax.add_collection3d(Poly3DCollection(tri, facecolors=face_colour, edgecolors="none", linewidths=0))
        r = 0.8
        ax.set_xlim(-r, r), ax.set_ylim(-r, r), ax.set_zlim(-r, r)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
        ax.set_title(f"elevation {elev}°, azimuth {azim}°", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 steps, grid 64, 5,000 and 3,000 points (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args()
    steps = 30 if args.quick else 600
    settings = MeshSettings(grid=64) if args.quick else MeshSettings()
    load = load_average()
    OUT.mkdir(parents=True, exist_ok=True)
    rows, trained = [], {}
    for prompt in IDEAL:
        t0 = time.perf_counter()
        raw, mode, psnr = train(prompt, steps)
        print(f"{prompt}: {steps} steps in {time.perf_counter() - t0:.0f} s, nearest mode {mode}, "
              f"psnr_ref {psnr:.1f} dB", flush=True)
        stem = prompt.replace(" ", "_")
        row, mesh = measure(raw, stem, prompt, mode, f"trained, {steps} steps ({psnr:.1f} dB)", settings)
        rows.append(row)
        trained[prompt] = raw
        if not args.no_write:
            picture(mesh, ROOT / "docs" / FIGURES[prompt], f'"{prompt}" after {steps} steps: {row[3]} faces')
        rows.append(measure(reference_raw(mode), f"{stem}_reference", prompt, mode, "reference Gaussians",
                            settings)[0])
    header = ["prompt", "Gaussians from", "Gaussians", "faces", "watertight (glb / obj)", "bounding box x y z",
              "volume (/ ideal)", "mean vertex colour", "reference colour, mode", "glb s"]
    table = markdown_table(header, rows, align_left=2)
    notes = reading(rows)

    n_many = 5_000 if args.quick else 50_000
    big = many_gaussians(trained["a red cube"], n_many)
    extract_mesh(big, replace(settings, grid=16))  # the density kernel compiles once (numba caches it)
    t0 = time.perf_counter()
    result = extract_mesh(big, settings)
    total = time.perf_counter() - t0
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    timing = (f"{n_many:,} Gaussians (each a child of a trained cube's Gaussian) at the default grid "
              f"({settings.grid} voxels, grid {' x '.join(map(str, result.grid.shape))}): {total:.1f} s "
              f"({stages}); {len(result.mesh.faces):,} faces, "
              f"{'watertight' if result.watertight else 'not watertight'}.")
    points = torch.from_numpy(trimesh_sample(OUT / "a_red_cube.obj", 3_000 if args.quick else 60_000))
    knn = markdown_table(["initial scales (3 nearest neighbours)", "points", "seconds", "max relative difference"],
                         knn_rows(points))
    print(f"machine: {machine(load)}")
    print(table)
    print(notes)
    print(timing)
    print(knn)
    if not args.no_write:
        write_section("mesh-export", "\n".join([
            "## Mesh export",
            "",
            f"`.venv/bin/python benchmarks/mesh_export.py` on {machine(load)}.",
            "Each prompt trained with the default session (SDS, 64 px, batch 4, 2,000 Gaussians at start) for",
            f"{steps} steps, exported with the default `mesh.*` settings (iso {settings.iso}, grid {settings.grid},",
            f"blur {settings.smooth}, fill on, pieces under {settings.min_component:.0%} of the faces dropped, at most",
            f"{settings.max_faces:,} faces) and loaded back with trimesh; the reference rows mesh the procedural",
            "prior's own Gaussians of the mode the run converged to (flat disks on the surface, opacity 0.95).",
            "Bounding boxes in the studio's axes; the ideal cube is 1.2 on a side (volume 1.728), the ideal",
            "ball 1.3 across (volume 1.150). Mean colours are display colours; the reference colour is the",
            "mean of the mode's Gaussians (its baked shading included). glb s: extraction and writing.",
            "",
            table,
            "",
            notes,
            "",
            timing,
            "",
            knn,
            "",
            KNN_NOTE,
            "",
            "![The mesh of \"a red cube\" after 600 steps](fig_mesh_cube.png)",
            "![The mesh of \"a ball\" after 600 steps](fig_mesh_ball.png)",
        ]))
    return 0


def trimesh_sample(path: Path, n: int) -> np.ndarray:
    """n points on a mesh file's surface (float32), for the k-NN timing."""
    import trimesh

    return np.asarray(trimesh.load(path, force="mesh").sample(n, seed=0), np.float32)


if __name__ == "__main__":
    raise SystemExit(main())
