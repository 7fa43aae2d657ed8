"""Files out (and back in): splat formats through gsplat's exporter, meshes (`studio.mesh`), turntable videos,
checkpoints and the JSON config written beside an export. Every write is atomic (`studio.atomic`). The splat
readers live in `studio.readers` (re-exported here); every format written here reads back.

Formats (`export_splats`), all produced by `gsplat.exporter.export_splats`, on CPU, with no extra package:
- "ply": the 3DGS layout (x y z, f_dc_0..2, f_rest_* channel-major, opacity as a logit, scale_0..2 as
  logs, rot_0..3 wxyz as stored, i.e. not normalized); `read_gaussian_ply` reads it back exactly.
- "splat": antimatter15's 32 bytes per Gaussian (float32 position, float32 scale, uint8 rgba, uint8
  normalized quaternion), sorted along a Morton curve; `read_splat` reads it back to 8-bit precision.
- "ply_compressed": SuperSplat's chunked, quantized PLY; Gaussians with opacity <= 1/255 are dropped;
  `read_gaussian_ply` decodes it (11/10-bit positions and log-scales per chunk, 8-bit colours).

A checkpoint is a `torch.save`d dict that carries, under CHECKSUM_KEY, the SHA-256 of the rest of it
(`payload_digest`: every tensor's dtype, shape and bytes, every key and value, in order); `load_checkpoint`
refuses one whose contents no longer match. Files written before checksums load as before.

The raw tensors are gsplat's parameter layout, which `GaussianScene.params` is:
means [N,3], scales [N,3] (log), quats [N,4] (wxyz), opacities [N] (logit), sh0 [N,1,3], shN [N,K-1,3].
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from .atomic import ExportError, ReadError, atomic_path, atomic_write, write_bytes_atomic, write_json_atomic
from .initializers import RAW_KEYS
from .readers import is_gaussian_file, is_gaussian_ply, read_gaussian_ply, read_gaussians, read_point_ply, read_splat

SPLAT_FORMATS = ("ply", "splat", "ply_compressed")
MESH_FORMATS = ("glb", "obj")  # the density's iso-surface, studio.mesh (mesh.* settings)
VIDEO_FORMATS = ("mp4", "gif")
COMPRESSED_MIN_OPACITY = 1.0 / 255.0  # gsplat's opacity_threshold for ply_compressed
CHECKSUM_KEY = "sha256"  # a checkpoint's digest of the rest of its payload
SUFFIXES = {"ply": ".ply", "splat": ".splat", "ply_compressed": ".compressed.ply", "glb": ".glb", "obj": ".obj",
            "mp4": ".mp4", "gif": ".gif", "checkpoint": ".pt", "json": ".json"}

__all__ = [
    "CHECKSUM_KEY", "ExportError", "ReadError", "ExportResult", "MESH_FORMATS", "SPLAT_FORMATS", "SUFFIXES",
    "TurntableSettings", "VIDEO_FORMATS", "atomic_write", "export_mesh", "export_splats", "export_turntable",
    "is_gaussian_file", "is_gaussian_ply", "load_checkpoint", "payload_digest", "read_gaussian_ply", "read_gaussians",
    "read_point_ply", "read_splat", "render_turntable", "save_checkpoint", "write_json_atomic", "write_video",
]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    num_written: int  # Gaussians (frames for videos, faces for meshes) in the file
    num_dropped: int  # Gaussians left out because a parameter was NaN or inf
    num_bytes: int
    detail: str = ""  # more for the event line (a mesh: faces, watertight)


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
    assert shn.dim() == 3 and shn.shape[0] == n and shn.shape[2] == 3, \
        f"export: shN must be [N={n}, K-1, 3], got {tuple(shn.shape)}"
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


def export_mesh(splats: Mapping[str, Tensor], path: str | os.PathLike, format: str = "glb",
                settings: Any = None) -> ExportResult:
    """Write the Gaussians' iso-surface as a GLB or OBJ mesh, atomically (see studio.mesh).

    Args:
        splats: raw tensors in gsplat's layout (e.g. `scene.raw()`), any device
        path: the file to write
        format: "glb" | "obj"
        settings: a studio.mesh.MeshSettings (the config's `mesh` section); None: the defaults
    Raises ExportError (naming the path) when there is no surface or the file cannot be written.
    """
    from . import mesh

    raw = _raw_cpu(splats)
    ok = finite_rows(raw)
    result, nbytes = mesh.export_mesh(raw, path, format, settings or mesh.MeshSettings())
    return ExportResult(Path(path), format, len(result.mesh.faces), int((~ok).sum()), nbytes, mesh.describe(result))


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

def payload_digest(payload: Any) -> str:
    """SHA-256 (hex) of a checkpoint payload: keys, values and every tensor's dtype, shape and bytes, in
    order. Raises TypeError for a value a checkpoint may not hold (weights_only loading could not read it)."""
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    def tag(kind: str, text: str = "") -> None:
        data = text.encode("utf-8", "surrogatepass")
        h.update(f"{kind}{len(data)}:".encode() + data)  # length-prefixed: no two payloads feed alike

    if isinstance(obj, Tensor):
        t = obj.detach().to("cpu").contiguous()
        tag("T", f"{t.dtype}{tuple(t.shape)}")
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # [numel * itemsize] the raw bytes
    elif isinstance(obj, Mapping):
        tag("D", str(len(obj)))
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        tag("L" if isinstance(obj, list) else "U", str(len(obj)))
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        tag("V", f"{type(obj).__name__}:{obj!r}")
    else:
        raise TypeError(f"checkpoint: cannot hold a {type(obj).__name__} (keep to tensors, numbers, strings, "
                        "lists and dicts)")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """torch.save(payload) to `path` atomically, with its SHA-256 under CHECKSUM_KEY (the session decides
    what the payload holds).

    Keep the payload to tensors, numbers, strings, lists and dicts: `load_checkpoint` reads with
    weights_only=True, so that opening a checkpoint can never run code (anything else is a TypeError).
    """
    body = {k: v for k, v in payload.items() if k != CHECKSUM_KEY}
    digest = payload_digest(body)  # first: a payload that cannot be saved writes nothing
    with atomic_write(path, "wb") as f:
        torch.save({**body, CHECKSUM_KEY: digest}, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` and verify its checksum (when it has one: files from
    before checksums have none; the caller decides whether that is allowed). The payload comes back with
    CHECKSUM_KEY in it. Raises ReadError with the reason, on one line."""
    try:
        payload = torch.load(str(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ReadError(path, "it is a directory") from None
    except Exception as e:  # noqa: BLE001 -- damaged bytes make torch's reader raise almost anything
        # (UnpicklingError, RuntimeError, KeyError, UnicodeDecodeError, IndexError, OSError for EINVAL...)
        raise ReadError(path, f"the file is damaged, or not a studio checkpoint ({_load_failure(e)})") from None
    if not isinstance(payload, dict):
        raise ReadError(path, f"a checkpoint holds a dict, this one holds {type(payload).__name__}")
    if CHECKSUM_KEY in payload:
        recorded = payload[CHECKSUM_KEY]
        try:
            actual = payload_digest({k: v for k, v in payload.items() if k != CHECKSUM_KEY})
        except TypeError as e:
            raise ReadError(path, f"the file is damaged: {e}") from None
        if actual != recorded:
            shown = recorded[:16] if isinstance(recorded, str) else repr(recorded)[:16]
            raise ReadError(path, f"checksum mismatch (its contents hash to sha256 {actual[:16]}..., the file "
                                  f"records {shown}...): the file is damaged; load an earlier checkpoint")
    return payload


def _load_failure(e: Exception) -> str:
    """torch.load's complaint, short: its weights-only refusal suggests weights_only=False, which for a
    damaged or foreign file is the wrong advice, so only the unpickler's own reason is kept."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__
