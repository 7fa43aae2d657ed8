"""Initial Gaussians: random ball, sphere shell, box, a point cloud, or a 3DGS PLY file.

Every initializer returns raw tensors in gsplat's layout (`RAW_KEYS`: log-scales, logit opacities, SH
coefficients) and the scene extent, drawn from its own seeded generator on the CPU (the same seed gives
the same scene on every device). Scales are isotropic, half the mean spacing of the points unless given.

Raw tensors that come from a file (a PLY, a .splat, a checkpoint) are checked by `raw_value_problem`
against the limits below: beyond them a scene renders to inf / NaN, or is not a scene at all.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Mapping

import torch
from torch import Tensor

from renderers.sh import C0

RAW_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
Colors = Literal["random", "grey"]

# What a file may hold (raw values, gsplat layout). Every value must be finite besides.
MAX_ABS_POSITION = 1e6  # world units, per coordinate (squared it still fits float32 with room to spare)
LOG_SCALE_RANGE = (-30.0, math.log(1e4))  # sizes from 9e-14 to 1e4 world units
QUAT_NORM_RANGE = (1e-6, 1e6)  # quaternions are normalized when rendered: a norm near 0 has no direction
MAX_ABS_SH = 1e4  # SH coefficients (colour = 0.28 * sh0 + 0.5: a colour of 2800 is already absurd)


def num_sh_rest(sh_degree: int) -> int:
    """K - 1: SH coefficients beyond the constant one for a degree (0..3)."""
    if sh_degree not in (0, 1, 2, 3):
        raise ValueError(f"sh_degree: must be 0, 1, 2 or 3, got {sh_degree!r}")
    return (sh_degree + 1) ** 2 - 1


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Base colour [..., 3] in [0, 1] -> degree-0 SH coefficient (colour = C0 * sh0 + 0.5)."""
    return (rgb - 0.5) / C0


def _check_common(n: int, opacity: float, scale: float | None) -> None:
    if n < 1:
        raise ValueError(f"init: the number of Gaussians must be >= 1, got {n}")
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"init: opacity must lie in (0, 1), got {opacity}")
    if scale is not None and not scale > 0:
        raise ValueError(f"init: scale must be > 0 world units, got {scale}")


def make_raw(means: Tensor, scales: Tensor, rgb: Tensor, opacity: float | Tensor, sh_degree: int) -> dict[str, Tensor]:
    """Raw (optimizer-space) tensors from activated values.

    Args:
        means: [N, 3] positions
        scales: [N, 3] or [N] standard deviations, world units (> 0)
        rgb: [N, 3] base colours in [0, 1]
        opacity: scalar or [N] in (0, 1)
        sh_degree: 0..3; higher coefficients start at zero
    """
    n = means.shape[0]
    assert means.shape == (n, 3), f"means: expected [N, 3], got {tuple(means.shape)}"
    assert rgb.shape == (n, 3), f"rgb: expected [N={n}, 3], got {tuple(rgb.shape)}"
    scales = scales[:, None].expand(n, 3) if scales.dim() == 1 else scales
    assert scales.shape == (n, 3), f"scales: expected [N={n}, 3] or [N], got {tuple(scales.shape)}"
    opa = torch.as_tensor(opacity, dtype=torch.float32).expand(n)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0  # identity rotation (wxyz); isotropic scales make any rotation equivalent
    return {
        "means": means.float().contiguous(),
        "scales": torch.log(scales.float()).contiguous(),
        "quats": quats,
        "opacities": torch.logit(opa.float()).contiguous(),
        "sh0": rgb_to_sh0(rgb.float())[:, None, :].contiguous(),
        "shN": torch.zeros(n, num_sh_rest(sh_degree), 3),
    }


def _colors(n: int, colors: Colors, gen: torch.Generator) -> Tensor:
    if colors == "grey":
        return torch.full((n, 3), 0.5)
    if colors == "random":
        return torch.rand(n, 3, generator=gen)
    raise ValueError(f"init: colors must be 'random' or 'grey', got {colors!r}")


def ball(n: int, radius: float, *, seed: int = 0, opacity: float = 0.1, scale: float | None = None,
         sh_degree: int = 0, colors: Colors = "random") -> tuple[dict[str, Tensor], float]:
    """n Gaussians uniform in a ball of `radius` around the origin. Extent: the radius."""
    _check_common(n, opacity, scale)
    gen = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    r = radius * torch.rand(n, 1, generator=gen) ** (1.0 / 3.0)  # uniform in volume
    spacing = (4.0 / 3.0 * math.pi * radius**3 / n) ** (1.0 / 3.0)
    s = torch.full((n,), scale if scale is not None else 0.5 * spacing)
    return make_raw(d * r, s, _colors(n, colors, gen), opacity, sh_degree), float(radius)


def shell(n: int, radius: float, *, thickness: float = 0.05, seed: int = 0, opacity: float = 0.1,
          scale: float | None = None, sh_degree: int = 0, colors: Colors = "random") -> tuple[dict[str, Tensor], float]:
    """n Gaussians on a sphere of `radius`, radially jittered by +-thickness/2 * radius. Extent: the radius."""
    _check_common(n, opacity, scale)
    if not 0.0 <= thickness < 1.0:
        raise ValueError(f"init: shell thickness must lie in [0, 1), got {thickness}")
    gen = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    r = radius * (1.0 + thickness * (torch.rand(n, 1, generator=gen) - 0.5))
    spacing = math.sqrt(4.0 * math.pi * radius**2 / n)
    s = torch.full((n,), scale if scale is not None else 0.5 * spacing)
    return make_raw(d * r, s, _colors(n, colors, gen), opacity, sh_degree), float(radius)


def box(n: int, half_size: float, *, seed: int = 0, opacity: float = 0.1, scale: float | None = None,
        sh_degree: int = 0, colors: Colors = "random") -> tuple[dict[str, Tensor], float]:
    """n Gaussians uniform in the cube [-half_size, half_size]^3. Extent: its half-diagonal."""
    _check_common(n, opacity, scale)
    gen = torch.Generator().manual_seed(seed)
    means = half_size * (2.0 * torch.rand(n, 3, generator=gen) - 1.0)
    spacing = ((2.0 * half_size) ** 3 / n) ** (1.0 / 3.0)
    s = torch.full((n,), scale if scale is not None else 0.5 * spacing)
    return make_raw(means, s, _colors(n, colors, gen), opacity, sh_degree), float(half_size * math.sqrt(3.0))


def knn_scale(points: Tensor, k: int = 3) -> Tensor:
    """[N] root-mean-square distance of each point to its k nearest neighbours (3DGS's initial scale).

    Exact, through a k-d tree (scipy's cKDTree: O(N log N); 60,000 points in about 0.1 s here, where brute
    force took 12-13 s, see docs/BENCHMARKS.md). Points that coincide are each other's neighbours at 0.
    """
    from scipy.spatial import cKDTree

    n = points.shape[0]
    if n <= 1:
        return torch.ones(n)
    k = min(k, n - 1)
    pts = points.detach().to("cpu", torch.float64).numpy()
    dist, _ = cKDTree(pts).query(pts, k=k + 1)  # [N, k + 1] ascending; one of the zeros is the point itself
    rms = torch.from_numpy(dist[:, 1:]).square().mean(dim=1).sqrt()
    return rms.float().clamp_min(1e-7)


def knn_scale_reference(points: Tensor, k: int = 3, chunk_elems: int = 4_000_000) -> Tensor:
    """`knn_scale` by brute force, in float64: every pairwise distance, in chunks of rows (O(N^2) time,
    O(chunk_elems) memory). Tests only."""
    n = points.shape[0]
    if n <= 1:
        return torch.ones(n)
    k = min(k, n - 1)
    pts = points.detach().to("cpu", torch.float64)
    rows = max(1, chunk_elems // n)
    out = []
    for i in range(0, n, rows):
        d2 = (pts[i:i + rows, None, :] - pts[None]).square().sum(dim=-1)  # [rows, N]
        d2[torch.arange(d2.shape[0]), torch.arange(i, i + d2.shape[0])] = float("inf")  # not itself
        out.append(d2.topk(k, dim=1, largest=False).values.mean(dim=1).sqrt())
    return torch.cat(out).float().clamp_min(1e-7)


def extent_of(means: Tensor) -> float:
    """Scene extent of a point set: the 99th percentile of distances to the centroid (outliers ignored)."""
    if means.shape[0] == 0:
        return 1.0
    d = (means - means.mean(dim=0)).norm(dim=-1)
    return max(float(torch.quantile(d.float(), 0.99)) if d.numel() > 1 else float(d.max()), 1e-3)


def points(xyz: Tensor, rgb: Tensor | None = None, *, opacity: float = 0.1, scale: float | None = None,
           sh_degree: int = 0, seed: int = 0, colors: Colors = "random") -> tuple[dict[str, Tensor], float]:
    """One Gaussian per point of a cloud.

    Args:
        xyz: [N, 3] positions
        rgb: [N, 3] colours in [0, 1] (uint8 0..255 is accepted too); None: `colors`
        scale: isotropic scale; None: the RMS distance to the 3 nearest neighbours
    """
    xyz = torch.as_tensor(xyz, dtype=torch.float32).cpu()
    n = xyz.shape[0]
    if xyz.dim() != 2 or xyz.shape[1] != 3:
        raise ValueError(f"init: point cloud must be [N, 3], got {tuple(xyz.shape)}")
    _check_common(n, opacity, scale)
    if not torch.isfinite(xyz).all():
        raise ValueError(f"init: the point cloud has {int((~torch.isfinite(xyz)).sum())} non-finite coordinates")
    gen = torch.Generator().manual_seed(seed)
    if rgb is None:
        col = _colors(n, colors, gen)
    else:
        col = torch.as_tensor(rgb).cpu()
        if col.shape != (n, 3):
            raise ValueError(f"init: colours must be [N={n}, 3], got {tuple(col.shape)}")
        col = col.float() / 255.0 if not col.is_floating_point() else col.float()
    s = torch.full((n,), scale) if scale is not None else knn_scale(xyz)
    return make_raw(xyz, s, col.clamp(0, 1), opacity, sh_degree), extent_of(xyz)


def _default_label(key: str, col: int | None) -> str:
    return f"{key}[:, {col}]" if col is not None else key


def raw_value_problem(raw: Mapping[str, Tensor],
                      label: Callable[[str, int | None], str] = _default_label) -> str | None:
    """The first problem with the values of raw Gaussians, as one sentence that names the field, the
    Gaussian, its value, the rule and how many values break it; None when every value is usable.

    Args:
        raw: tensors in gsplat's layout (RAW_KEYS), shapes already checked (N from means)
        label: the name of column `col` of raw[key] flattened to [N, D] (col None: the whole row, for
            quaternions), in the caller's terms: e.g. ("scales", 1) -> "scale_1" for a PLY
    """
    n = raw["means"].shape[0]
    flat = {k: raw[k].detach().reshape(n, -1) for k in RAW_KEYS}  # [N, D] each
    for k in RAW_KEYS:
        bad = ~torch.isfinite(flat[k])
        if bool(bad.any()):
            return _describe(flat[k], bad, k, label, "every value must be finite", "values are NaN or inf")
    lo, hi = LOG_SCALE_RANGE
    ranges = [
        ("means", flat["means"].abs() > MAX_ABS_POSITION,
         f"coordinates must lie within +-{MAX_ABS_POSITION:.0e} world units"),
        ("scales", (flat["scales"] < lo) | (flat["scales"] > hi),
         f"log-scales must lie in [{lo:g}, {hi:.3g}], i.e. sizes from {math.exp(lo):.1e} to "
         f"{math.exp(hi):.0e} world units"),
        ("sh0", flat["sh0"].abs() > MAX_ABS_SH, f"SH coefficients must lie within +-{MAX_ABS_SH:.0e}"),
        ("shN", flat["shN"].abs() > MAX_ABS_SH, f"SH coefficients must lie within +-{MAX_ABS_SH:.0e}"),
    ]
    for k, bad, rule in ranges:
        if bool(bad.any()):
            return _describe(flat[k], bad, k, label, rule, "values break it")
    qlo, qhi = QUAT_NORM_RANGE
    norm = flat["quats"].double().norm(dim=1)  # [N]; float64: a norm of 1e20 squared overflows float32
    bad = (norm < qlo) | (norm > qhi)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        return (f"{label('quats', None)} of Gaussian {row} has norm {float(norm[row]):.3g}: a rotation "
                f"quaternion needs a norm in [{qlo:.0e}, {qhi:.0e}] ({int(bad.sum())} of {n} quaternions break it)")
    return None


def _describe(values: Tensor, bad: Tensor, key: str, label: Callable[[str, int | None], str], rule: str,
              what: str) -> str:
    """values, bad: [N, D]; the first bad entry in row-major order."""
    row, col = (int(i) for i in bad.nonzero()[0])
    return (f"{label(key, col)} of Gaussian {row} is {float(values[row, col]):.6g}: {rule} "
            f"({int(bad.sum())} of {bad.numel()} {what})")
