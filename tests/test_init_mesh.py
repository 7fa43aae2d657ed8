"""Initial Gaussians from meshes (studio.mesh_init): a mesh file (init.kind = mesh), Shap-E through
diffusers' real loading code on a tiny random pipeline (init.kind = shap-e), the one-line errors, and the
k-d tree k-NN scales against brute force."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

from guidance.priors.base import PriorError
from studio.atomic import ReadError
from studio.cli_errors import UsageError
from studio.config import InitSettings, default_config, with_values
from studio.confio import ConfigError
from studio.initializers import knn_scale, knn_scale_reference
from studio.mesh_init import read_mesh, shap_e_mesh
from studio.scene import raw_from_settings
from studio.startup import check_init_mesh
from studio.trainer import Trainer
from tiny_shap_e import save_tiny_shap_e

RED = (220, 30, 20, 255)


def coloured_box(extents=(1.0, 2.0, 1.0), rgba=RED) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=extents)
    box.visual.vertex_colors = np.tile(rgba, (len(box.vertices), 1))
    return box


# ----- k-NN scales -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 4, 50, 3000])
def test_knn_scale_equals_brute_force(n):
    pts = torch.rand(n, 3, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(knn_scale(pts), knn_scale_reference(pts), rtol=1e-6, atol=0)


def test_knn_scale_with_coincident_points_and_a_lattice():
    g = torch.arange(6, dtype=torch.float32)
    lattice = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), dim=-1).reshape(-1, 3)  # spacing 1
    pts = torch.cat([lattice, lattice[:10]])  # ten points twice
    torch.testing.assert_close(knn_scale(pts), knn_scale_reference(pts), rtol=1e-6, atol=0)
    assert float(knn_scale(lattice).min()) == pytest.approx(1.0)


# ----- mesh files --------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_a_mesh_file_gives_coloured_gaussians_on_its_surface(tmp_path, suffix):
    path = tmp_path / f"box{suffix}"
    coloured_box().export(path)
    init = InitSettings(kind="mesh", path=str(path), num=3000, radius=0.6)
    raw, extent = raw_from_settings(init, seed=0)
    xyz = raw["means"]
    assert xyz.shape == (3000, 3) and torch.isfinite(xyz).all()
    # fit: centred, the farthest corner at init.radius; glb / obj are +y up, the studio +z up
    half = torch.tensor([0.5, 0.5, 1.0]) if suffix != ".ply" else torch.tensor([0.5, 1.0, 0.5])
    half = half * 0.6 / float(half.norm())
    on_a_face = ((xyz.abs() - half).abs() < 1e-4).any(dim=1)
    assert bool(on_a_face.all()) and bool((xyz.abs() <= half + 1e-4).all())
    rgb = 0.5 + 0.28209479177387814 * raw["sh0"][:, 0, :]
    torch.testing.assert_close(rgb.mean(dim=0), torch.tensor(RED[:3]) / 255.0, atol=2e-3, rtol=0)
    assert 0.3 < extent < 0.7 and torch.isfinite(raw["scales"]).all()


def test_a_mesh_without_colours_is_grey_and_fit_off_keeps_its_coordinates(tmp_path):
    path = tmp_path / "plain.stl"
    trimesh.creation.box(extents=(2.0, 2.0, 2.0)).apply_translation((5.0, 0.0, 0.0)).export(path)
    raw, _ = raw_from_settings(InitSettings(kind="mesh", path=str(path), num=500, fit=False), seed=1)
    assert float(raw["means"][:, 0].min()) >= 4.0 - 1e-4 and float(raw["means"][:, 0].max()) <= 6.0 + 1e-4
    torch.testing.assert_close(raw["sh0"], torch.zeros_like(raw["sh0"]))  # grey: 0.5 = 0.5 + C0 * 0


def test_a_textured_mesh_takes_its_texture_colours(tmp_path):
    from PIL import Image

    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    uv = np.random.default_rng(0).random((len(box.vertices), 2))
    image = Image.new("RGB", (8, 8), (30, 200, 60))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    path = tmp_path / "textured.glb"
    box.export(path)
    raw, _ = raw_from_settings(InitSettings(kind="mesh", path=str(path), num=400), seed=0)
    rgb = 0.5 + 0.28209479177387814 * raw["sh0"][:, 0, :]
    torch.testing.assert_close(rgb.mean(dim=0), torch.tensor([30, 200, 60]) / 255.0, atol=5e-3, rtol=0)


def test_bad_mesh_files_are_one_line_errors(tmp_path):
    (tmp_path / "text.obj").write_text("this is not a mesh\n")
    (tmp_path / "a_folder.obj").mkdir()
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(tmp_path / "cloud.ply")
    (tmp_path / "shape.fbx").write_bytes(b"\0")
    cases = {"none.glb": "no such file", "a_folder.obj": "not a regular file", "text.obj": "no triangles",
             "cloud.ply": "init.kind = ply", "shape.fbx": "not a mesh format"}
    for name, needle in cases.items():
        with pytest.raises(ReadError) as e:
            read_mesh(tmp_path / name)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
        with pytest.raises(UsageError, match=f"init.path {tmp_path / name}: .*{needle}"):
            check_init_mesh(str(tmp_path / name))
    with pytest.raises(ConfigError, match="init.path: kind = mesh needs"):
        with_values(default_config(), {"init.kind": "mesh"})


# ----- Shap-E ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_shap_e(tmp_path_factory):
    return save_tiny_shap_e(tmp_path_factory.mktemp("shap-e") / "tiny")


def test_shap_e_through_the_real_pipeline_on_tiny_random_weights(tiny_shap_e):
    cfg = with_values(default_config(), {
        "init.kind": "shap-e", "init.model": str(tiny_shap_e), "init.num": 800, "init.shap_e_steps": 2,
        "init.shap_e_guidance": 3.0, "render.resolution": 16, "render.batch": 1, "run.psnr_every": 0,
        "run.view_psnr_every": 0})
    trainer = Trainer(cfg)  # the scene is built as every session builds it, from the session's prompt
    raw = trainer.scene.raw()
    assert trainer.scene.num_gaussians == 800 and all(bool(torch.isfinite(v).all()) for v in raw.values())
    r = raw["means"].norm(dim=1)
    assert 0.4 < float(r.max()) <= 0.6 + 1e-5  # fit: the mesh's farthest vertex lies at init.radius
    verts, faces, rgb = shap_e_mesh(str(tiny_shap_e), cfg.prompt.prompt, 2, 3.0, cfg.run.seed)  # cached
    assert faces.shape[1] == 3 and len(faces) > 100 and rgb.shape == verts.shape
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0 and rgb.std() > 0  # Shap-E's own colours, not grey
    trainer.step()  # and it trains
    assert trainer.iteration == 1 and trainer.scene.is_finite()


def test_shap_e_uses_init_prompt_when_given(tiny_shap_e):
    init = InitSettings(kind="shap-e", model=str(tiny_shap_e), num=200, shap_e_steps=2, shap_e_guidance=3.0)
    a, _ = raw_from_settings(init, seed=3, prompt="a red cube")
    b, _ = raw_from_settings(replace(init, prompt="a blue ball"), seed=3, prompt="a red cube")
    c, _ = raw_from_settings(replace(init, prompt="a red cube"), seed=3, prompt="anything")
    torch.testing.assert_close(a["means"], c["means"])
    assert not torch.equal(a["means"], b["means"])


def test_a_missing_shap_e_model_is_one_line_naming_init_model(tmp_path):
    partial = tmp_path / "partial"
    for sub in ("prior", "text_encoder", "tokenizer", "scheduler"):
        (partial / sub).mkdir(parents=True)
    cases = {str(tmp_path / "no-such-folder"): "does not exist",
             str(partial): "lacks shap_e_renderer/",
             "nobody-here/no-such-shap-e-xyz": "hf download nobody-here/no-such-shap-e-xyz"}
    for model, needle in cases.items():
        init = InitSettings(kind="shap-e", model=model, num=10)
        with pytest.raises(PriorError) as e:
            raw_from_settings(init, seed=0, prompt="a red cube")
        msg = str(e.value)
        assert "\n" not in msg and "Shap-E pipeline (init.model)" in msg and needle in msg, msg
        assert "--set init.kind=ball" in msg


def test_the_command_line_refuses_a_missing_shap_e_model_in_one_line(tmp_path, capsys):
    from studio import cli

    code = cli.main(["--ui", "headless", "--out", str(tmp_path / "out"), "--steps", "1", "--resolution", "16",
                     "--set", "init.kind=shap-e", "--set", f"init.model={tmp_path / 'nothing-here'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "init.model" in err[0], err
    assert not any((tmp_path / "out").glob("run-*"))  # no empty run folder left behind
