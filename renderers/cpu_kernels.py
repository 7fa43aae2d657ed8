"""numba kernels of the CPU rasterizer (see `cpu.py` for the data flow).

All kernels take (camera, Gaussian) flattened to one index g = b * N + n and float64 arrays. A tile is
processed by one thread, one row of 16 pixels at a time: each Gaussian of the tile's depth-sorted list
is loaded once per row, and only the pixels of the row where it can reach alpha >= 1/255 are visited
(the span where sigma <= log(255 o), widened by a pixel; inside it every test is the exact one).

Compile-time knobs are module constants; numba freezes them into the cached machine code.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .reference import ALPHA_MAX, ALPHA_MIN, T_MIN

TILE = 16
GRAD_COLS = 6  # gradient row per intersection: d means2d (2), d conic (3), d opacity (1), then d features
_CUT_MARGIN = 1e-9  # added to the alpha >= 1/255 cut-off in sigma so that rounding never skips a pixel
SPAN_MARGIN = 1e-3  # pixels by which `forward_only_kernel` widens each row's chord where sigma <= cut-off


@numba.njit(cache=True, fastmath=False)
def bin_kernel(means2d, radii, order, n_img, n_gauss, tiles_x, tiles_y):
    """Tile lists: (starts [n_img * tiles + 1], flat ids [n_isect]), each list in `order` (depth) order."""
    per_img = tiles_x * tiles_y
    box = np.zeros((n_img * n_gauss, 4), np.int64)  # x0, x1, y0, y1 tile ranges, end exclusive
    counts = np.zeros(n_img * per_img + 1, np.int64)
    for b in range(n_img):
        for j in range(n_gauss):
            g = b * n_gauss + order[b, j]
            rx, ry = radii[g, 0], radii[g, 1]
            if rx <= 0.0 or ry <= 0.0:
                continue
            u, v = means2d[g, 0], means2d[g, 1]
            box[g, 0] = int(max(0.0, np.floor((u - rx) / TILE)))
            box[g, 1] = int(min(float(tiles_x), np.ceil((u + rx) / TILE)))
            box[g, 2] = int(max(0.0, np.floor((v - ry) / TILE)))
            box[g, 3] = int(min(float(tiles_y), np.ceil((v + ry) / TILE)))
            for ty in range(box[g, 2], box[g, 3]):
                for tx in range(box[g, 0], box[g, 1]):
                    counts[b * per_img + ty * tiles_x + tx + 1] += 1
    starts = np.cumsum(counts)
    flat_ids = np.empty(starts[-1], np.int64)
    cursor = starts[:-1].copy()
    for b in range(n_img):
        for j in range(n_gauss):
            g = b * n_gauss + order[b, j]
            for ty in range(box[g, 2], box[g, 3]):
                for tx in range(box[g, 0], box[g, 1]):
                    t = b * per_img + ty * tiles_x + tx
                    flat_ids[cursor[t]] = g
                    cursor[t] += 1
    return starts, flat_ids


@numba.njit(cache=True, fastmath=False)
def _gather_tile(means2d, conics, feats, opac, flat_ids, start, end):
    """The tile's Gaussians as contiguous rows and their features.

    Row: u, v, conic a, b, c, opacity, sigma cut-off, lowest and highest y where sigma <= cut-off.
    """
    local = np.empty((end - start, 9))
    local_f = np.empty((end - start, feats.shape[1]))
    for k in range(start, end):
        g = flat_ids[k]
        row = local[k - start]
        row[0], row[1] = means2d[g, 0], means2d[g, 1]
        row[2], row[3], row[4] = conics[g, 0], conics[g, 1], conics[g, 2]
        row[5] = opac[g]
        # alpha < 1/255 exactly when sigma > log(255 o)
        cut = np.log(max(opac[g] / ALPHA_MIN, 1e-300)) + _CUT_MARGIN
        row[6] = cut
        # sigma <= cut spans |dy| <= sqrt(2 cut Sigma_yy), Sigma_yy = a / (a c - b^2); widened by a pixel
        det = conics[g, 0] * conics[g, 2] - conics[g, 1] ** 2
        reach = np.sqrt(2.0 * cut * conics[g, 0] / det) + 1.0 if cut > 0.0 and det > 0.0 else -np.inf
        row[7], row[8] = row[1] - reach, row[1] + reach
        local_f[k - start] = feats[g]
    return local, local_f


@numba.njit(cache=True, fastmath=False)
def _row_span(row, y, x0, npx):
    """Pixels [lo, hi) of the row (centres x0 + p + 0.5 at height y) where sigma may be <= the cut-off."""
    u, v, a, b, c, cut = row[0], row[1], row[2], row[3], row[4], row[6]
    dy = y - v
    # a dx^2 + 2 b dy dx + (c dy^2 - 2 cut) <= 0; the tolerance covers the rounding of the discriminant.
    bdy2, q = (b * dy) ** 2, a * (c * dy * dy - 2.0 * cut)
    disc = bdy2 - q
    tol = 1e-9 * (bdy2 + abs(q) + 1.0)
    if disc < -tol:
        return 0, 0
    half = np.sqrt(max(disc, 0.0) + tol) / a
    centre = u - b * dy / a - x0 - 0.5  # pixel index of the sigma minimum along the row
    lo = max(0.0, np.floor(centre - half) - 1.0)
    hi = min(float(npx), np.ceil(centre + half) + 2.0)
    if hi <= lo:
        return 0, 0
    return int(lo), int(hi)


@numba.njit(parallel=True, cache=True, fastmath=False)
def forward_kernel(means2d, conics, feats, opac, tile_start, flat_ids, n_img, height, width, tiles_x,
                   tiles_y, out_feat, out_T, out_last, out_evals):
    """Front-to-back compositing per pixel; keeps final T, list length to the last contributor, pairs."""
    per_img = tiles_x * tiles_y
    D = feats.shape[1]
    for t in prange(n_img * per_img):
        b, ty, tx = t // per_img, (t % per_img) // tiles_x, t % tiles_x
        start, end = tile_start[t], tile_start[t + 1]
        local, local_f = _gather_tile(means2d, conics, feats, opac, flat_ids, start, end)
        x0 = tx * TILE
        npx = min(width, x0 + TILE) - x0
        T, acc = np.empty(TILE), np.empty((TILE, D))
        last, evals, done = np.empty(TILE, np.int64), np.empty(TILE, np.int64), np.empty(TILE, np.bool_)
        for py in range(ty * TILE, min(height, ty * TILE + TILE)):
            y = py + 0.5
            T[:], acc[:], last[:], evals[:], done[:] = 1.0, 0.0, 0, 0, False
            active = npx
            for k in range(end - start):
                row = local[k]
                if y < row[7] or y > row[8]:
                    continue
                lo, hi = _row_span(row, y, x0, npx)
                for p in range(lo, hi):
                    if done[p]:
                        continue
                    evals[p] += 1
                    dx, dy = x0 + p + 0.5 - row[0], y - row[1]
                    sigma = 0.5 * (row[2] * dx * dx + row[4] * dy * dy) + row[3] * dx * dy
                    if sigma < 0.0 or sigma > row[6]:
                        continue
                    alpha = min(ALPHA_MAX, row[5] * np.exp(-sigma))
                    if alpha < ALPHA_MIN:
                        continue
                    next_T = T[p] * (1.0 - alpha)
                    if next_T <= T_MIN:  # this pixel is done, before this Gaussian
                        done[p] = True
                        active -= 1
                        continue
                    w = alpha * T[p]
                    for d in range(D):
                        acc[p, d] += w * local_f[k, d]
                    T[p] = next_T
                    last[p] = k + 1
                if active == 0:
                    break
            out_feat[b, py, x0:x0 + npx] = acc[:npx]
            out_T[b, py, x0:x0 + npx] = T[:npx]
            out_last[b, py, x0:x0 + npx] = last[:npx]
            out_evals[b, py, x0:x0 + npx] = evals[:npx]


@numba.njit(parallel=True, cache=True, fastmath=False)
def backward_kernel(means2d, conics, feats, opac, tile_start, flat_ids, n_img, height, width, tiles_x,
                    tiles_y, out_T, out_last, grad_feat, grad_alpha, rows):
    """Back to front from each pixel's last contributor; rows[k] collects intersection k's gradients."""
    D = feats.shape[1]
    per_img = tiles_x * tiles_y
    for t in prange(n_img * per_img):
        start, end = tile_start[t], tile_start[t + 1]
        b, ty, tx = t // per_img, (t % per_img) // tiles_x, t % tiles_x
        local, local_f = _gather_tile(means2d, conics, feats, opac, flat_ids, start, end)
        x0 = tx * TILE
        npx = min(width, x0 + TILE) - x0
        T = np.empty(TILE)  # transmittance in front of the Gaussian being undone
        behind = np.zeros((TILE, D))  # S = sum over the Gaussians behind of w_j f_j
        grad_k = np.empty(GRAD_COLS + D)
        for py in range(ty * TILE, min(height, ty * TILE + TILE)):
            y = py + 0.5
            T_final, last = out_T[b, py, x0:x0 + npx], out_last[b, py, x0:x0 + npx]
            g_pix, g_alpha = grad_feat[b, py, x0:x0 + npx], grad_alpha[b, py, x0:x0 + npx]
            T[:npx] = T_final
            behind[:] = 0.0
            for k in range(last.max() - 1, -1, -1):
                row = local[k]
                if y < row[7] or y > row[8]:
                    continue
                lo, hi = _row_span(row, y, x0, npx)
                grad_k[:] = 0.0
                touched = False
                for p in range(lo, hi):
                    if k >= last[p]:
                        continue
                    dx, dy = x0 + p + 0.5 - row[0], y - row[1]
                    sigma = 0.5 * (row[2] * dx * dx + row[4] * dy * dy) + row[3] * dx * dy
                    if sigma < 0.0 or sigma > row[6]:
                        continue
                    vis = np.exp(-sigma)
                    raw = row[5] * vis
                    alpha = min(ALPHA_MAX, raw)
                    if alpha < ALPHA_MIN:
                        continue
                    touched = True
                    ra = 1.0 / (1.0 - alpha)
                    T[p] *= ra
                    w = alpha * T[p]
                    # dL/dalpha_i = sum_d g_d (T_i f_d - S_d / (1 - alpha_i)) + g_A T_final / (1 - alpha_i)
                    v_alpha = g_alpha[p] * T_final[p] * ra
                    for d in range(D):
                        f = local_f[k, d]
                        grad_k[GRAD_COLS + d] += w * g_pix[p, d]
                        v_alpha += g_pix[p, d] * (T[p] * f - behind[p, d] * ra)
                        behind[p, d] += w * f
                    if raw <= ALPHA_MAX:  # the 0.999 clamp passes no gradient
                        v_sigma = -v_alpha * alpha
                        grad_k[0] -= v_sigma * (row[2] * dx + row[3] * dy)
                        grad_k[1] -= v_sigma * (row[3] * dx + row[4] * dy)
                        grad_k[2] += v_sigma * 0.5 * dx * dx
                        grad_k[3] += v_sigma * dx * dy
                        grad_k[4] += v_sigma * 0.5 * dy * dy
                        grad_k[5] += v_alpha * vis
                if touched:  # only this tile's thread writes rows[start:end]
                    rows[start + k] += grad_k


@numba.njit(parallel=True, cache=True, fastmath=False)
def forward_only_kernel(means2d, conics, feats, opac, tile_start, flat_ids, n_img, height, width, tiles_x,
                        tiles_y, out_feat, out_T):
    """`forward_kernel` for renders nobody differentiates: out_feat [n_img, H, W, D] and final T only.

    Every pixel meets the same Gaussians in the same order with the same arithmetic, so the results are
    those of `forward_kernel`. What differs is the bookkeeping: a tile's list is walked once, Gaussian
    by Gaussian, over only the rows it reaches (rather than once per row), each row's pixels are the
    exact chord where sigma <= cut-off (widened by SPAN_MARGIN; `_row_span` adds 3 pixels), and the
    loops create no array views (their reference counting cost more than the compositing)."""
    per_img = tiles_x * tiles_y
    D = feats.shape[1]
    for t in prange(n_img * per_img):
        b, ty, tx = t // per_img, (t % per_img) // tiles_x, t % tiles_x
        x0, y0 = tx * TILE, ty * TILE
        npx, npy = min(width, x0 + TILE) - x0, min(height, y0 + TILE) - y0
        T, acc = np.ones((TILE, TILE)), np.zeros((TILE, TILE, D))
        done = np.zeros((TILE, TILE), np.bool_)
        row_active = np.full(TILE, npx, np.int64)  # pixels of each row not yet done
        rows_left = npy
        for k in range(tile_start[t], tile_start[t + 1]):
            g = flat_ids[k]
            u, v, ca, cb, cc, o = means2d[g, 0], means2d[g, 1], conics[g, 0], conics[g, 1], conics[g, 2], opac[g]
            cut = np.log(max(o / ALPHA_MIN, 1e-300)) + _CUT_MARGIN  # as in _gather_tile
            det = ca * cc - cb * cb
            if not (cut > 0.0 and det > 0.0):
                continue
            reach = np.sqrt(2.0 * cut * ca / det) + 1.0
            r0 = max(0, int(np.floor(v - reach - 0.5)) - y0)
            r1 = min(npy - 1, int(np.ceil(v + reach - 0.5)) - y0)
            # Row at offset dy: a dx^2 + 2 b dy dx + c dy^2 <= 2 cut for dx in centre -+ sqrt(disc) / a, with
            # disc = 2 a cut - det dy^2; the tolerance (at least `_row_span`'s) covers the rounding.
            inv_a, b_a, two_a_cut, spread = 1.0 / ca, cb / ca, 2.0 * ca * cut, ca * cc + cb * cb
            for r in range(r0, r1 + 1):
                if row_active[r] == 0:
                    continue
                dy = y0 + r + 0.5 - v
                disc = two_a_cut - det * dy * dy
                tol = 1e-9 * (two_a_cut + spread * dy * dy + 1.0)
                if disc < -tol:
                    continue
                half = np.sqrt(max(disc, 0.0) + tol) * inv_a
                centre = u - b_a * dy - x0 - 0.5  # pixel index of the sigma minimum along the row
                lo = int(max(0.0, np.ceil(centre - half - SPAN_MARGIN)))
                hi = int(min(float(npx), np.floor(centre + half + SPAN_MARGIN) + 1.0))
                for p in range(lo, hi):
                    if done[r, p]:
                        continue
                    dx = x0 + p + 0.5 - u
                    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    if sigma < 0.0 or sigma > cut:
                        continue
                    alpha = min(ALPHA_MAX, o * np.exp(-sigma))
                    if alpha < ALPHA_MIN:
                        continue
                    next_T = T[r, p] * (1.0 - alpha)
                    if next_T <= T_MIN:  # this pixel is done, before this Gaussian
                        done[r, p] = True
                        row_active[r] -= 1
                        if row_active[r] == 0:
                            rows_left -= 1
                        continue
                    w = alpha * T[r, p]
                    for d in range(D):
                        acc[r, p, d] += w * feats[g, d]
                    T[r, p] = next_T
            if rows_left == 0:
                break
        for r in range(npy):
            for p in range(npx):
                out_T[b, y0 + r, x0 + p] = T[r, p]
                for d in range(D):
                    out_feat[b, y0 + r, x0 + p, d] = acc[r, p, d]
