"""Mesh export (studio.mesh, studio.mesh_density, studio.mesh_repair): the density's fast path against its
dense twin, closed-form iso-surfaces of single Gaussians, watertightness through decimation, GLB / OBJ
round trips through trimesh, atomic writes, settings validation and the Export command."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

import studio.commands as C
from studio.atomic import ExportError
from studio.config import default_config, with_values
from studio.confio import ConfigError
from studio.export import export_mesh
from studio.initializers import make_raw
from studio.mesh import MeshSettings, extract_mesh, y_up
from studio.mesh_density import Grid, density_grid, density_reference
from studio.mesh_repair import edge_counts, is_closed, mend, weld
from studio.session import Session

SPHERE = MeshSettings(smooth=0.0, grid=64, max_faces=0)  # one Gaussian's level set, exactly


def gaussians(means, sigma, opacity, rgb=(0.8, 0.1, 0.1)):
    """Raw isotropic Gaussians: means [N, 3], sigma and opacity scalars or [N]."""
    means = torch.as_tensor(means, dtype=torch.float32).reshape(-1, 3)
    n = means.shape[0]
    sig = torch.as_tensor(sigma, dtype=torch.float32).expand(n)
    col = torch.as_tensor(rgb, dtype=torch.float32).expand(n, 3)
    return make_raw(means, sig, col, torch.as_tensor(opacity, dtype=torch.float32).expand(n), 0)


def level_radius(sigma: float, opacity: float, iso: float) -> float:
    """Where o exp(-r^2 / (2 sigma^2)) = iso."""
    return sigma * math.sqrt(2.0 * math.log(opacity / iso))


def test_density_grid_matches_the_dense_reference():
    g = torch.Generator().manual_seed(0)
    n = 30
    means = torch.rand(n, 3, generator=g) - 0.5
    scales = 0.02 + 0.12 * torch.rand(n, 3, generator=g)  # anisotropic, rotated
    quats = torch.randn(n, 4, generator=g)
    opac = torch.rand(n, generator=g)
    grid = Grid((-0.8, -0.7, -0.75), 0.06, (27, 25, 26))
    fast = density_grid(grid, means, scales, quats, opac)
    ref = density_reference(torch.from_numpy(grid.points()), means, scales, quats, opac).reshape(grid.shape)
    np.testing.assert_allclose(fast, ref.numpy(), rtol=0, atol=1e-6)
    uncut = density_reference(torch.from_numpy(grid.points()), means, scales, quats, opac, cutoff=None)
    assert float((uncut.reshape(grid.shape) - ref).max()) < 0.01  # what the 3.5-sigma cut-off leaves out


@pytest.mark.parametrize("opacity, iso", [(0.9, 0.3), (0.5, 0.05)])
def test_a_single_gaussian_gives_the_sphere_of_its_level(opacity, iso):
    sigma = 0.2
    r = level_radius(sigma, opacity, iso)
    mesh = extract_mesh(gaussians([0.1, -0.2, 0.3], sigma, opacity), replace(SPHERE, iso=iso)).mesh
    radii = np.linalg.norm(mesh.vertices - np.array([0.1, -0.2, 0.3]), axis=1)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0  # outward normals
    assert radii.mean() == pytest.approx(r, rel=0.01) and radii.std() < 0.01 * r
    assert mesh.volume == pytest.approx(4.0 / 3.0 * math.pi * r**3, rel=0.03)
    np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3].mean(axis=0), [204, 25.5, 25.5], atol=1.0)


def test_blur_and_decimation_keep_the_closed_form_and_the_closed_surface():
    sigma, opacity, iso, blur = 0.15, 0.9, 0.2, 0.05
    # the blur convolves: an isotropic Gaussian of sigma' = sqrt(sigma^2 + blur^2), peak o (sigma / sigma')^3
    wide = math.hypot(sigma, blur)
    r = level_radius(wide, opacity * (sigma / wide) ** 3, iso)
    s = MeshSettings(iso=iso, grid=80, smooth=blur, max_faces=1500)
    result = extract_mesh(gaussians([0, 0, 0], sigma, opacity), s)
    mesh = result.mesh
    assert len(mesh.faces) <= 1500 and mesh.is_watertight
    assert np.linalg.norm(mesh.vertices, axis=1).mean() == pytest.approx(r, rel=0.02)
    assert mesh.volume == pytest.approx(4.0 / 3.0 * math.pi * r**3, rel=0.05)
    assert set(result.seconds) == {"density", "surface", "cleanup", "colour"}


def test_a_hollow_shell_is_filled_and_small_pieces_dropped():
    k = torch.arange(1500, dtype=torch.float64) + 0.5  # a Fibonacci sphere: evenly spaced, no gaps in the wall
    z, phi = 1 - 2 * k / 1500, math.pi * (1 + 5**0.5) * k
    d = torch.stack([(1 - z**2).sqrt() * phi.cos(), (1 - z**2).sqrt() * phi.sin(), z], dim=1).float()
    shell = 0.5 * d  # Gaussians on a sphere of radius 0.5: a hollow shell
    floater = torch.tensor([[0.6, 0.6, 0.0]])  # outside the ball, inside the grid's bounds
    raw = gaussians(torch.cat([shell, floater]), 0.04, 0.9)
    s = MeshSettings(iso=0.3, grid=96, smooth=0.0, max_faces=0)
    filled = extract_mesh(raw, s)
    hollow = extract_mesh(raw, replace(s, fill=False, min_component=0.0))
    assert filled.dropped_components == 1 and hollow.dropped_components == 0
    assert filled.mesh.is_watertight and len(filled.mesh.split(only_watertight=False)) == 1
    assert len(hollow.mesh.split(only_watertight=False)) == 3  # outer wall, inner wall, floater
    r_out = np.linalg.norm(filled.mesh.vertices, axis=1).mean()
    assert filled.mesh.volume == pytest.approx(4.0 / 3.0 * math.pi * r_out**3, rel=0.02)  # a solid ball
    assert hollow.mesh.volume < 0.8 * filled.mesh.volume  # the inner wall faces the cavity: outer minus inner


def test_mend_closes_two_sheets_that_share_an_edge():
    # two spheres glued along one edge (what decimation sometimes does): that edge has four faces
    a = trimesh.creation.icosphere(subdivisions=2)
    i, j = a.edges_unique[0]
    mid = 0.5 * (a.vertices[i] + a.vertices[j])
    b_verts = 2 * mid - a.vertices  # point reflection through the edge's middle: b's i lies on a's j
    relabel = np.arange(len(a.vertices)) + len(a.vertices)
    relabel[i], relabel[j] = j, i
    b_faces = relabel[a.faces[:, ::-1]]  # a reflection turns the faces inside out: reverse them
    verts = np.concatenate([a.vertices, b_verts])
    faces = np.concatenate([a.faces, b_faces])
    assert not is_closed(faces) and (edge_counts(faces)[1] == 4).sum() == 1
    verts, mended = mend(verts, faces)
    mesh = trimesh.Trimesh(verts, mended, process=False)
    assert is_closed(mended) and mesh.is_winding_consistent and len(mesh.split(only_watertight=True)) == 2
    assert len(mended) > 0.95 * len(faces)  # a local repair


def test_weld_joins_vertices_on_one_spot_so_a_position_merging_reader_sees_a_closed_surface():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    verts = np.concatenate([sphere.vertices, sphere.vertices[:1] + 1e-9])  # vertex 0 twice, a hair apart
    faces = sphere.faces.copy()
    half = np.nonzero((faces == 0).any(axis=1))[0][:2]  # two of vertex 0's faces use the copy
    faces[half] = np.where(faces[half] == 0, len(verts) - 1, faces[half])
    assert not is_closed(faces)  # by index: two fans meeting at one point
    welded_v, welded_f = weld(verts, faces, 1e-6)
    assert is_closed(welded_f) and len(welded_v) == len(sphere.vertices) and len(welded_f) == len(faces)


@pytest.mark.parametrize("fmt", ["glb", "obj"])
def test_glb_and_obj_round_trip_through_trimesh(tmp_path, fmt):
    raw = gaussians([[0.0, 0.0, 0.4]], 0.2, 0.9, rgb=(0.2, 0.6, 0.9))
    path = tmp_path / f"ball.{fmt}"
    result = export_mesh(raw, path, fmt, SPHERE)
    loaded = trimesh.load(path, force="mesh")
    assert result.path == path and result.num_bytes == path.stat().st_size and result.num_written == len(loaded.faces)
    assert loaded.is_watertight and "watertight" in result.detail
    # files are +y up: the studio's z = 0.4 is the file's y
    np.testing.assert_allclose(loaded.bounds.mean(axis=0), y_up(np.array([[0.0, 0.0, 0.4]]))[0], atol=0.01)
    colour = loaded.visual.vertex_colors[:, :3].mean(axis=0) / 255.0
    expect = np.array([0.2, 0.6, 0.9])
    if fmt == "glb":  # glTF's vertex colours are linear
        expect = np.where(expect <= 0.04045, expect / 12.92, ((expect + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(colour, expect, atol=0.01)


def test_a_failing_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "asset.glb"
    path.write_bytes(b"the old, complete file")

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(ExportError, match="No space left") as e:
        export_mesh(gaussians([0, 0, 0], 0.2, 0.9), path, "glb", SPHERE)
    assert e.value.path == str(path) and path.read_bytes() == b"the old, complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset.glb"]


def test_no_surface_is_an_export_error_naming_mesh_iso(tmp_path):
    with pytest.raises(ExportError, match=r"never reaches mesh.iso = 0.95 .*lower mesh.iso"):
        export_mesh(gaussians([0, 0, 0], 0.2, 0.5), tmp_path / "x.obj", "obj", replace(SPHERE, iso=0.95))
    assert not (tmp_path / "x.obj").exists()


@pytest.mark.parametrize("values, needle", [
    ({"mesh.iso": 0}, "mesh.iso: must lie in [0.0001, 100.0], got 0"),
    ({"mesh.iso": "nan"}, "mesh.iso"),
    ({"mesh.grid": 8}, "mesh.grid: must lie in [16, 512], got 8"),
    ({"mesh.grid": 4096}, "mesh.grid: must lie in [16, 512], got 4096"),
    ({"mesh.grid": 1.5}, "mesh.grid: expected a whole number"),
    ({"mesh.smooth": -0.1}, "mesh.smooth: must lie in [0.0, 1.0]"),
    ({"mesh.min_component": 2}, "mesh.min_component: must lie in [0.0, 1.0]"),
    ({"mesh.max_faces": 3}, "mesh.max_faces: a closed mesh needs at least 4 faces"),
    ({"mesh.texture": 16}, "mesh.texture: at least 64 pixels"),
    ({"mesh.isolevel": 0.2}, "mesh.isolevel: unknown setting 'isolevel' (known: iso, grid,"),
])
def test_bad_mesh_settings_name_the_field_and_its_range(values, needle):
    with pytest.raises(ConfigError) as e:
        with_values(default_config(), values)
    assert needle in str(e.value)


def test_mesh_settings_are_config_fields():
    cfg = with_values(default_config(), {"mesh.iso": "0.25", "mesh.grid": "128"})
    assert cfg.mesh == replace(MeshSettings(), iso=0.25, grid=128)


def test_the_export_command_writes_both_meshes_with_the_sessions_settings(tmp_path):
    cfg = with_values(default_config(), {"render.resolution": 16, "render.batch": 1, "init.num": 200,
                                         "init.opacity": 0.5, "run.psnr_every": 0, "run.view_psnr_every": 0,
                                         "mesh.grid": 48, "mesh.iso": 0.2})
    session = Session(cfg, tmp_path / "run", metrics_file=False)
    try:
        session.send(C.Export(formats=("glb", "obj"), out_dir=str(tmp_path / "exp"), name="asset"))
        session.drain()
    finally:
        session.stop()
    events = [e.text for e in session.snapshot.events]
    assert any(t.startswith("exported asset.glb") and "faces" in t for t in events), events
    for fmt in ("glb", "obj"):
        assert trimesh.load(tmp_path / "exp" / f"asset.{fmt}", force="mesh").faces.shape[0] > 0
        assert (tmp_path / "exp" / f"asset.{fmt}.json").exists()


def test_a_baked_texture_holds_the_gaussians_colours(tmp_path):
    path = tmp_path / "textured.glb"
    result = export_mesh(gaussians([0, 0, 0], 0.2, 0.9, rgb=(0.2, 0.6, 0.9)), path, "glb",
                         replace(SPHERE, texture=128, max_faces=3000))
    loaded = trimesh.load(path, force="mesh")
    assert loaded.visual.kind == "texture" and loaded.visual.uv.shape == (len(loaded.vertices), 2)
    texels = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB")).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(texels.mean(axis=0), [0.2, 0.6, 0.9], atol=0.01)  # sRGB, as glTF textures are
    np.testing.assert_allclose(loaded.visual.to_color().vertex_colors[:, :3].mean(axis=0) / 255.0,
                               [0.2, 0.6, 0.9], atol=0.01)  # sampled at the UVs
    welded = trimesh.Trimesh(loaded.vertices, loaded.faces)  # seams welded back: the same closed surface
    assert "faces, watertight (split along its UV seams)" in result.detail and welded.is_watertight
