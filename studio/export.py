"""Files out (and back in): splat formats through gsplat's exporter, 3DGS PLY import, turntable videos,
checkpoints and the JSON config written beside an export. Every write is atomic (`studio.atomic`).

Formats (`export_splats`), all produced by `gsplat.exporter.export_splats`, on CPU, with no extra package:
- "ply": the 3DGS layout (x y z, f_dc_0..2, f_rest_* channel-major, opacity as a logit, scale_0..2 as
  logs, rot_0..3 wxyz as stored, i.e. not normalized); `read_gaussian_ply` reads it back exactly.
- "splat": antimatter15's 32 bytes per Gaussian (float32 position, float32 scale, uint8 rgba, uint8
  normalized quaternion), sorted along a Morton curve.
- "ply_compressed": SuperSplat's chunked, quantized PLY; Gaussians with opacity <= 1/255 are dropped.

The raw tensors are gsplat's parameter layout, which `GaussianScene.params` is:
means [N,3], scales [N,3] (log), quats [N,4] (wxyz), opacities [N] (logit), sh0 [N,1,3], shN [N,K-1,3].
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from .atomic import ExportError, ReadError, atomic_path, atomic_write, write_bytes_atomic, write_json_atomic
from .initializers import RAW_KEYS

SPLAT_FORMATS = ("ply", "splat", "ply_compressed")
VIDEO_FORMATS = ("mp4", "gif")
COMPRESSED_MIN_OPACITY = 1.0 / 255.0  # gsplat's opacity_threshold for ply_compressed
SUFFIXES = {"ply": ".ply", "splat": ".splat", "ply_compressed": ".compressed.ply", "mp4": ".mp4",
            "gif": ".gif", "checkpoint": ".pt", "json": ".json"}

__all__ = [
    "ExportError", "ReadError", "ExportResult", "SPLAT_FORMATS", "SUFFIXES", "TurntableSettings",
    "VIDEO_FORMATS", "atomic_write", "export_splats", "export_turntable", "is_gaussian_ply",
    "load_checkpoint", "read_gaussian_ply", "read_point_ply", "render_turntable", "save_checkpoint",
    "write_json_atomic", "write_video",
]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    num_written: int  # Gaussians (or frames, for videos) in the file
    num_dropped: int  # Gaussians left out because a parameter was NaN or inf
    num_bytes: int


def _raw_cpu(splats: Mapping[str, Tensor]) -> dict[str, Tensor]:
    missing = [k for k in RAW_KEYS if k not in splats]
    if missing:
        raise ValueError(f"export: raw splats lack {', '.join(missing)}; expected keys {', '.join(RAW_KEYS)}")
    raw = {k: splats[k].detach().to("cpu", torch.float32) for k in RAW_KEYS}
    n = raw["means"].shape[0]
    expect = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3)}
    for k, shape in expect.items():
        assert tuple(raw[k].shape) == shape, f"export: {k} must be {shape}, got {tuple(raw[k].shape)}"
    shn = raw["shN"]
    assert shn.dim() == 3 and shn.shape[0] == n and shn.shape[2] == 3, f"export: shN must be [N={n}, K-1, 3], got {tuple(shn.shape)}"
    return raw


def finite_rows(raw: Mapping[str, Tensor]) -> Tensor:
    """[N] bool: Gaussians whose every raw parameter is finite."""
    n = raw["means"].shape[0]
    ok = torch.ones(n, dtype=torch.bool)
    for k in RAW_KEYS:
        ok &= torch.isfinite(raw[k].reshape(n, -1)).all(dim=1)
    return ok


def export_splats(splats: Mapping[str, Tensor], path: str | os.PathLike, format: str = "ply") -> ExportResult:
    """Write Gaussians in one of SPLAT_FORMATS with gsplat's exporter, atomically.

    Gaussians with a NaN or inf parameter are left out and counted in the result (gsplat would drop them
    too, silently). Raises ExportError (naming the path) when the file cannot be written; then nothing
    at `path` changes.

    Args:
        splats: raw tensors in gsplat's layout (e.g. `scene.params`), any device
        path: the file to write (its directory is created if missing)
        format: "ply" | "splat" | "ply_compressed"
    """
    if format not in SPLAT_FORMATS:
        raise ValueError(f"export: format must be one of {', '.join(SPLAT_FORMATS)}, got {format!r}")
    from gsplat.exporter import export_splats as gsplat_export

    raw = _raw_cpu(splats)
    ok = finite_rows(raw)
    dropped = int((~ok).sum())
    if dropped:
        raw = {k: v[ok] for k, v in raw.items()}
    n = raw["means"].shape[0]
    if n == 0:
        raise ExportError(path, f"nothing to export: the scene has no Gaussians with finite parameters "
                                f"({dropped} non-finite)")
    data = gsplat_export(raw["means"], raw["scales"], raw["quats"], raw["opacities"], raw["sh0"], raw["shN"],
                         format=format)
    write_bytes_atomic(path, data)
    if format == "ply_compressed":  # this format leaves out Gaussians of opacity <= 1/255
        n = int((torch.sigmoid(raw["opacities"]) > COMPRESSED_MIN_OPACITY).sum())
    return ExportResult(Path(path), format, n, dropped, len(data))


# ----- PLY import ---------------------------------------------------------------------------------------

def _read_vertices(path: str | os.PathLike):
    from plyfile import PlyData, PlyHeaderParseError, PlyElementParseError

    try:
        ply = PlyData.read(str(path))
    except FileNotFoundError:
        raise ReadError(path, "no such file") from None
    except (PlyHeaderParseError, PlyElementParseError, ValueError, EOFError) as e:
        raise ReadError(path, f"not a valid PLY file ({e})") from None
    except OSError as e:
        raise ReadError(path, e.strerror or str(e)) from None
    if "vertex" not in [el.name for el in ply.elements]:
        raise ReadError(path, "the PLY has no 'vertex' element")
    return ply["vertex"].data


def is_gaussian_ply(path: str | os.PathLike) -> bool:
    """True when the PLY's vertices carry the 3DGS fields (f_dc_0, opacity, scale_0, rot_0)."""
    names = set(_read_vertices(path).dtype.names)
    return {"f_dc_0", "opacity", "scale_0", "rot_0"} <= names


def read_gaussian_ply(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a 3DGS PLY into raw float32 tensors (gsplat layout, values exactly as stored).

    Fields: x y z, f_dc_0..2, f_rest_0..3(K-1)-1 (channel-major: all of red's coefficients, then
    green's, then blue's), opacity (logit), scale_0..2 (log), rot_0..3 (wxyz). K - 1 must be 0, 3, 8 or 15
    (SH degree 0..3). Raises ReadError naming the missing fields.
    """
    v = _read_vertices(path)
    names = set(v.dtype.names)
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [f for f in need if f not in names]
    if missing:
        raise ReadError(path, f"not a 3DGS PLY: missing vertex fields {', '.join(missing)} (a plain point "
                              "cloud can initialize a scene through GaussianScene.from_points / read_point_ply)")
    n_rest = sum(1 for f in names if f.startswith("f_rest_"))
    if n_rest % 3 or n_rest // 3 not in (0, 3, 8, 15) or any(f"f_rest_{j}" not in names for j in range(n_rest)):
        raise ReadError(path, f"{n_rest} f_rest_* fields: expected 0, 9, 24 or 45 numbered from 0 (SH degree 0..3)")

    def cols(fields: list[str]) -> Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[f], dtype=np.float32) for f in fields], axis=-1))

    n = len(v)
    k1 = n_rest // 3
    rest = cols([f"f_rest_{j}" for j in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    return {
        "means": cols(["x", "y", "z"]),
        "scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": cols(["opacity"])[:, 0].contiguous(),
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :].contiguous(),
        "shN": rest.reshape(n, 3, k1).transpose(1, 2).contiguous(),  # [N, 3*(K-1)] channel-major -> [N, K-1, 3]
    }


def read_point_ply(path: str | os.PathLike) -> tuple[Tensor, Tensor | None]:
    """A plain point cloud PLY: xyz [N, 3] float32 and colours [N, 3] in [0, 1] (None without red/green/blue)."""
    v = _read_vertices(path)
    names = set(v.dtype.names)
    if not {"x", "y", "z"} <= names:
        raise ReadError(path, "the PLY vertices have no x, y, z")
    xyz = torch.from_numpy(np.stack([np.asarray(v[f], dtype=np.float32) for f in "xyz"], axis=-1))
    if not {"red", "green", "blue"} <= names:
        return xyz, None
    rgb = np.stack([np.asarray(v[f]) for f in ("red", "green", "blue")], axis=-1)
    scale = 255.0 if rgb.dtype.kind in "ui" else 1.0
    return xyz, torch.from_numpy(rgb.astype(np.float32) / scale)


# ----- turntable videos ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TurntableSettings:
    """A turntable: `frames` cameras evenly spaced on a ring around the origin."""

    frames: int = 60
    """number of frames (one full turn)"""
    size: int = 256
    """frame width and height in pixels (even, for mp4's yuv420p)"""
    elevation_deg: float = 15.0
    """camera elevation above the horizontal plane, degrees"""
    radius: float = 3.2
    """camera distance from the origin, world units"""
    fovy_deg: float = 45.0
    """vertical field of view, degrees"""
    fps: float = 30.0
    """frames per second of the video"""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """colour behind the Gaussians, rgb in [0, 1]"""
    batch: int = 4
    """cameras rendered at once"""

    def validate(self) -> None:
        checks = {"frames": (1, 10_000), "size": (8, 4096), "elevation_deg": (-89.0, 89.0),
                  "radius": (1e-3, 1e4), "fovy_deg": (1.0, 170.0), "fps": (0.1, 240.0), "batch": (1, 256)}
        for name, (lo, hi) in checks.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"turntable.{name}: must lie in [{lo}, {hi}], got {value!r}")
        if self.size % 2:
            raise ValueError(f"turntable.size: must be even (mp4 uses yuv420p), got {self.size}")
        if len(self.background) != 3 or not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"turntable.background: three values in [0, 1], got {self.background!r}")


def render_turntable(renderer: Callable, params: Any, settings: TurntableSettings = TurntableSettings(),
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Render the turntable frames: uint8 [frames, size, size, 3].

    Args:
        renderer: a renderers.Renderer (params, cameras, background) -> RenderOutput
        params: renderers.GaussianParams (activated), on the renderer's device
        progress: called as progress(frames_done, frames_total) after each batch
    """
    from renderers.camera import ring

    settings.validate()
    s = settings
    cams = ring(s.frames, s.elevation_deg, s.radius, s.fovy_deg, s.size, s.size).to(params.device)
    bg = torch.tensor(s.background, dtype=params.dtype, device=params.device)
    out = np.empty((s.frames, s.size, s.size, 3), dtype=np.uint8)
    with torch.no_grad():
        for i in range(0, s.frames, s.batch):
            rgb = renderer(params, cams[i:i + s.batch], bg).rgb  # [b, H, W, 3]
            out[i:i + rgb.shape[0]] = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
            if progress is not None:
                progress(min(i + s.batch, s.frames), s.frames)
    return out


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: float) -> ExportResult:
    """Write uint8 frames [F, H, W, 3] as mp4 (H.264 through imageio-ffmpeg's bundled ffmpeg) or gif,
    chosen by the path's suffix, atomically."""
    import imageio.v3 as iio

    suffix = Path(path).suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"export: a turntable is written as .mp4 or .gif, got {Path(path).name!r}")
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8, \
        f"frames: expected uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}"
    with atomic_path(path) as tmp:
        if suffix == ".mp4":
            iio.imwrite(tmp, frames, plugin="FFMPEG", fps=fps, codec="libx264", quality=8,
                        macro_block_size=2, ffmpeg_log_level="error")
        else:
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    return ExportResult(Path(path), suffix[1:], frames.shape[0], 0, Path(path).stat().st_size)


def export_turntable(renderer: Callable, params: Any, path: str | os.PathLike,
                     settings: TurntableSettings = TurntableSettings(),
                     progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Render a turntable with `renderer` and write it to `path` (.mp4 or .gif) atomically.

    Args:
        renderer: a renderers.Renderer
        params: renderers.GaussianParams (activated), e.g. scene.to_params()
        path: the .mp4 or .gif to write
        settings: ring, image size, fps, background
        progress: called as progress(frames_done, frames_total) while rendering
    """
    if Path(path).suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"export: a turntable is written as .mp4 or .gif, got {Path(path).name!r}")
    frames = render_turntable(renderer, params, settings, progress)
    return write_video(frames, path, settings.fps)


# ----- checkpoints ------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """torch.save(payload) to `path` atomically (the session decides what the payload holds).

    Keep the payload to tensors, numbers, strings, lists and dicts: `load_checkpoint` reads with
    weights_only=True, so that opening a checkpoint can never run code.
    """
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`. Raises ReadError with the reason."""
    try:
        payload = torch.load(str(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ReadError(path, "it is a directory") from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as e:
        # OSError: torch's zip reader answers a truncated file with EINVAL
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReadError(path, f"not a studio checkpoint, or a damaged one ({first})") from None
    if not isinstance(payload, dict):
        raise ReadError(path, f"a checkpoint holds a dict, this one holds {type(payload).__name__}")
    return payload
