"""The Gaussians' density on a voxel grid, the field a mesh is extracted from.

    D(x) = sum_i o_i exp(-0.5 (x - mu_i)^T Sigma_i^-1 (x - mu_i)),   Sigma_i = R_i S_i^2 R_i^T

with o_i the opacity, mu_i the mean, S_i the scales and R_i the rotation of Gaussian i, x in world units.
A Gaussian adds nothing beyond Mahalanobis distance CUTOFF (there it has fallen to exp(-CUTOFF^2 / 2) =
0.2 % of its opacity), so each one touches only the voxels inside its cut-off ellipsoid.

Two implementations of the same field:
- `density_grid` (fast): a numba kernel, one thread per slab of x; each Gaussian visits only the voxels of
  its cut-off ellipsoid (per (x, y) column, the z chord where its Mahalanobis distance is below CUTOFF).
  Memory: the grid and a list of (x slice, Gaussian) pairs, nothing per (voxel, Gaussian).
- `density_reference` (obviously right): dense torch over every (point, Gaussian) pair, for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import prange
from torch import Tensor

CUTOFF = 3.5  # Mahalanobis radius of a Gaussian's support


@dataclass(frozen=True)
class Grid:
    """Cubic voxels: voxel (i, j, k) is centred at origin + step * (i, j, k), world units."""

    origin: tuple[float, float, float]
    step: float
    shape: tuple[int, int, int]

    def points(self) -> np.ndarray:
        """[nx * ny * nz, 3] voxel centres, x slowest (the order of `density_grid`'s array, flattened)."""
        axes = [self.origin[a] + self.step * np.arange(self.shape[a]) for a in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def covariances(scales: Tensor, quats: Tensor) -> Tensor:
    """[N, 3, 3] Sigma = R S^2 R^T from activated scales [N, 3] (std devs) and quaternions [N, 4] (wxyz,
    normalized here)."""
    n = scales.shape[0]
    assert scales.shape == (n, 3) and quats.shape == (n, 4), f"scales {tuple(scales.shape)}, quats {tuple(quats.shape)}"
    w, x, y, z = torch.nn.functional.normalize(quats.double(), dim=-1).unbind(-1)
    rot = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(n, 3, 3)  # [N, 3, 3]
    return rot @ torch.diag_embed(scales.double() ** 2) @ rot.transpose(1, 2)


def density_reference(points: Tensor, means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor,
                      cutoff: float | None = CUTOFF) -> Tensor:
    """D at each point, dense over every (point, Gaussian) pair, float64. Tests only.

    Args:
        points: [P, 3] world positions
        means: [N, 3]; scales: [N, 3] std devs; quats: [N, 4] wxyz; opacities: [N] in [0, 1]
        cutoff: Mahalanobis radius beyond which a Gaussian adds nothing (None: no cut-off)
    """
    prec = torch.linalg.inv(covariances(scales, quats))  # [N, 3, 3]
    d = points.double()[:, None, :] - means.double()[None]  # [P, N, 3]
    m2 = torch.einsum("pni,nij,pnj->pn", d, prec, d)  # [P, N] squared Mahalanobis distances
    w = opacities.double()[None] * torch.exp(-0.5 * m2)
    if cutoff is not None:
        w = torch.where(m2 <= cutoff * cutoff, w, torch.zeros_like(w))
    return w.sum(dim=1)


def density_grid(grid: Grid, means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor) -> np.ndarray:
    """D on every voxel of `grid`: float32 [nx, ny, nz] (fast path; `density_reference` is its twin).

    Args:
        means: [N, 3] world positions; scales: [N, 3] std devs (activated); quats: [N, 4] wxyz;
        opacities: [N] in [0, 1] (activated)
    """
    n = means.shape[0]
    assert means.shape == (n, 3) and opacities.shape == (n,), \
        f"means: expected [N, 3], opacities [N], got {tuple(means.shape)}, {tuple(opacities.shape)}"
    cov = covariances(scales, quats)  # [N, 3, 3]
    prec = torch.linalg.inv(cov).numpy()
    mu = means.double().numpy()
    half = CUTOFF * np.sqrt(np.diagonal(cov.numpy(), axis1=1, axis2=2))  # [N, 3] axis-aligned half-extent
    origin, step = np.array(grid.origin), grid.step
    shape = np.array(grid.shape)
    lo = np.clip(np.ceil((mu - half - origin) / step), 0, shape).astype(np.int64)  # [N, 3] first voxel
    hi = np.clip(np.floor((mu + half - origin) / step) + 1, 0, shape).astype(np.int64)  # [N, 3] end, exclusive
    keep = np.all(hi > lo, axis=1) & (opacities.double().numpy() > 0)
    ids = np.nonzero(keep)[0]
    starts, members = _slices(lo[ids, 0], hi[ids, 0], ids, grid.shape[0])
    sym = np.stack([prec[:, 0, 0], prec[:, 0, 1], prec[:, 0, 2], prec[:, 1, 1], prec[:, 1, 2], prec[:, 2, 2]],
                   axis=1)  # [N, 6] xx xy xz yy yz zz
    out = np.zeros(grid.shape, np.float32)
    _splat(out, origin.astype(np.float64), float(step), mu, sym, opacities.double().numpy(), lo, hi, starts, members,
           CUTOFF * CUTOFF)
    return out


def _slices(x0: np.ndarray, x1: np.ndarray, ids: np.ndarray, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """For each x slice, the Gaussians whose x range [x0, x1) holds it: (starts [nx + 1], members)."""
    lengths = x1 - x0  # [M]
    total = int(lengths.sum())
    owner = np.repeat(ids, lengths)  # [total] the Gaussian of each (slice, Gaussian) pair
    offset = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    slice_of = np.repeat(x0, lengths) + offset
    order = np.argsort(slice_of, kind="stable")
    starts = np.searchsorted(slice_of[order], np.arange(nx + 1)).astype(np.int64)
    return starts, owner[order].astype(np.int64)


@numba.njit(parallel=True, cache=True, fastmath=False)
def _splat(out, origin, step, mu, sym, opac, lo, hi, starts, members, cut2):
    nx = out.shape[0]
    for ix in prange(nx):  # one slab per thread: no two threads write the same voxel
        x = origin[0] + step * ix
        for m in range(starts[ix], starts[ix + 1]):
            g = members[m]
            dx = x - mu[g, 0]
            pxx, pxy, pxz, pyy, pyz, pzz = sym[g, 0], sym[g, 1], sym[g, 2], sym[g, 3], sym[g, 4], sym[g, 5]
            for iy in range(lo[g, 1], hi[g, 1]):
                dy = origin[1] + step * iy - mu[g, 1]
                # m2(dz) = pzz dz^2 + 2 b dz + c: the chord where m2 <= cut2
                b = pxz * dx + pyz * dy
                c = pxx * dx * dx + 2.0 * pxy * dx * dy + pyy * dy * dy
                disc = b * b - pzz * (c - cut2)
                if disc < 0.0:
                    continue
                root = math.sqrt(disc)
                z_lo = mu[g, 2] + (-b - root) / pzz
                z_hi = mu[g, 2] + (-b + root) / pzz
                k0 = max(lo[g, 2], int(math.ceil((z_lo - origin[2]) / step)))
                k1 = min(hi[g, 2], int(math.floor((z_hi - origin[2]) / step)) + 1)
                for iz in range(k0, k1):
                    dz = origin[2] + step * iz - mu[g, 2]
                    m2 = c + dz * (2.0 * b + pzz * dz)
                    if m2 <= cut2:
                        out[ix, iy, iz] += opac[g] * math.exp(-0.5 * m2)
