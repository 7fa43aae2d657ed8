"""A UV texture for a mesh (mesh.texture > 0, GLB only): xatlas unwraps it, every texel a triangle covers
gets the colour of its 3D point (`mesh.vertex_colours`, as vertices do), and texels no triangle covers take
their nearest covered neighbour's colour, so that bilinear filtering at chart edges shows no seams.

xatlas's time grows faster than the face count (here: 20k faces 2 s, 50k faces 10 s); lower mesh.max_faces
when baking a texture.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np


def bake_texture(mesh: Any, gaussians: Any, size: int) -> Any:
    """A copy of `mesh` (trimesh.Trimesh, studio coordinates) with UVs and a size x size texture baked from
    `gaussians` (studio.mesh.Gaussians); vertices at chart seams are split, as UVs need."""
    import trimesh
    import xatlas
    from PIL import Image
    from scipy.ndimage import distance_transform_edt

    from .mesh import vertex_colours

    vmap, faces, uv = xatlas.parametrize(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32))
    verts = np.asarray(mesh.vertices, np.float64)[vmap]
    faces = faces.astype(np.int64)
    # texel (row, col) is centred at uv ((col + 0.5) / size, 1 - (row + 0.5) / size): row 0 is the image's top
    pos = np.zeros((size, size, 3), np.float64)
    covered = np.zeros((size, size), np.bool_)
    _rasterize(uv.astype(np.float64) * size, faces, verts, pos, covered)
    image = np.zeros((size, size, 3), np.float64)
    if covered.any():
        image[covered] = vertex_colours(pos[covered], gaussians)
        _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
        image = image[rows, cols]  # every texel: its nearest covered texel's colour
    texture = Image.fromarray(np.round(image * 255.0).astype(np.uint8))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(verts, faces, visual=visual, process=False)


@numba.njit(cache=True)
def _rasterize(uv_px, faces, verts, pos, covered):
    """For every texel centre inside a face's UV triangle (in pixels, v up), its 3D point."""
    size = pos.shape[0]
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        ax, ay = uv_px[a, 0], size - uv_px[a, 1]  # to image rows: v up -> row down
        bx, by = uv_px[b, 0], size - uv_px[b, 1]
        cx, cy = uv_px[c, 0], size - uv_px[c, 1]
        area = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
        if abs(area) < 1e-12:
            continue
        c0 = max(0, int(np.floor(min(ax, bx, cx))))
        c1 = min(size - 1, int(np.ceil(max(ax, bx, cx))))
        r0 = max(0, int(np.floor(min(ay, by, cy))))
        r1 = min(size - 1, int(np.ceil(max(ay, by, cy))))
        for row in range(r0, r1 + 1):
            py = row + 0.5
            for col in range(c0, c1 + 1):
                px = col + 0.5
                wa = ((bx - px) * (cy - py) - (cx - px) * (by - py)) / area
                wb = ((cx - px) * (ay - py) - (ax - px) * (cy - py)) / area
                wc = 1.0 - wa - wb
                if wa < -1e-6 or wb < -1e-6 or wc < -1e-6:
                    continue
                for k in range(3):
                    pos[row, col, k] = wa * verts[a, k] + wb * verts[b, k] + wc * verts[c, k]
                covered[row, col] = True
