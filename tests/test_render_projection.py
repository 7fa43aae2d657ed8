"""The pieces the fast renderers share, against gsplat's independent pure-PyTorch twins: SH bases
(`_eval_sh_bases_fast`, Sloan's formulation) and the EWA projection (`_fully_fused_projection`)."""

from __future__ import annotations

import pytest
import torch
from gsplat.cuda._torch_impl import _eval_sh_bases_fast, _fully_fused_projection, _quat_scale_to_covar_preci

from render_scenes import random_scene, scene_cameras
from renderers.projection import project, rotation_matrices
from renderers.sh import sh_basis, sh_to_color


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_sh_basis_matches_gsplat(degree):
    dirs = torch.nn.functional.normalize(torch.randn(500, 3, generator=torch.Generator().manual_seed(degree),
                                                     dtype=torch.float64), dim=-1)
    ours = sh_basis(degree, dirs)
    theirs = _eval_sh_bases_fast((degree + 1) ** 2, dirs)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_sh_colour_is_the_dc_term_plus_a_half_for_degree_zero():
    sh = torch.tensor([[[0.5, -1.0, 3.0]]])  # [1, K=1, 3]
    colour = sh_to_color(sh, torch.tensor([[0.0, 0.3, -2.0]]))
    torch.testing.assert_close(colour, torch.clamp_min(0.28209479177387814 * sh[:, 0] + 0.5, 0.0))


def test_rotation_matrices_are_rotations_of_the_quaternion():
    q = torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    R = rotation_matrices(q * 3.7)  # any norm
    eye = torch.eye(3, dtype=torch.float64).expand(200, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(200, dtype=torch.float64))
    # q v q* on a pure quaternion v agrees with R v.
    qn = torch.nn.functional.normalize(q, dim=-1)
    v = torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w, u = qn[:, :1], qn[:, 1:]
    uv = torch.linalg.cross(u, v, dim=-1)
    rotated = v + 2 * w * uv + 2 * torch.linalg.cross(u, uv, dim=-1)
    torch.testing.assert_close((R @ v[..., None])[..., 0], rotated)


@pytest.mark.parametrize("seed", [0, 1])
def test_projection_matches_gsplat_torch_implementation(seed):
    params = random_scene(300, seed, requires_grad=False)
    cams = scene_cameras(40, 28)
    ours = project(params, cams)
    covars, _ = _quat_scale_to_covar_preci(params.quats, params.scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        params.means, covars, cams.viewmats, cams.Ks, cams.width, cams.height, eps2d=0.3, near_plane=0.01)
    assert torch.equal(ours.radii_int, radii), "radii (and so culling) must agree exactly"
    seen = (radii > 0).all(-1)
    assert seen.any() and not seen.all()
    torch.testing.assert_close(ours.means2d[seen], means2d[seen], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(ours.conics[seen], conics[seen], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours.depths, depths, rtol=1e-12, atol=1e-12)
