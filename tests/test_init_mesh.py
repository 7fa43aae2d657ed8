"""Initial Gaussians: the k-d tree k-NN scales against brute force."""

from __future__ import annotations

import pytest
import torch

from studio.initializers import knn_scale, knn_scale_reference

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
