"""Files in: the splat formats the studio writes (3DGS PLY, SuperSplat's compressed PLY, .splat) and plain
point-cloud PLYs, read into raw tensors in gsplat's layout and checked before anything is built from them.

Every problem is one `ReadError` (studio.atomic) whose message names the file, the field, the value and
what to do. A PLY header is checked against the file's size before a single row is read, so a header that
claims 2e9 vertices is refused at once; values must be finite and within the limits of
`studio.initializers` (positions, log-scales, quaternion norms, SH coefficients).

    raw = read_gaussians("scene.compressed.ply")   # any splat format, chosen by suffix and header
    n = validate_scene_file("cloud.ply")           # what LoadPly checks when the command is sent

Decoding the quantized formats (the encoders are gsplat's `exporter`):
- compressed PLY: 256 Gaussians per row of the `chunk` element, which holds min / max bounds of
  position, log-scale and colour. Per Gaussian: position and log-scale as 11-10-11-bit fractions of
  their chunk's range, colour and opacity as 8-8-8-8 bits (colour within its chunk's range, opacity
  absolute), the rotation as "smallest three" (2 bits: which component is largest, then the other three
  in order, 10 bits each, in [-1/sqrt2, 1/sqrt2]), and the `sh` element's f_rest_* as uint8 over [-4, 4).
- .splat: 32 bytes per Gaussian: float32 position, float32 size (exp of the log-scale), uint8 rgba
  (colour and opacity), uint8 quaternion (q * 128 + 128, wxyz). It holds no SH beyond degree 0.
The encoders round to nearest (compressed positions, scales, colours, rotations) or truncate (.splat,
compressed SH); each value decodes to the centre of its quantization bin. An opacity byte of 0 or 255
would be a logit of -inf or inf: it decodes half a step inside (0, 1).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from renderers.sh import C0

from .atomic import ReadError
from .initializers import MAX_ABS_POSITION, raw_value_problem

__all__ = ["PlyHeader", "is_gaussian_file", "is_gaussian_ply", "read_gaussian_ply", "read_gaussians",
           "read_ply_header", "read_point_ply", "read_splat", "validate_scene_file"]

MAX_HEADER_BYTES = 1 << 16
MAX_ROWS = 10**12  # rows of one element: beyond any real file (and an element without properties has no size)
SPLAT_RECORD = np.dtype([("pos", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
CHUNK_SIZE = 256  # Gaussians per chunk row of the compressed layout
GAUSSIAN_FIELDS = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                   "rot_0", "rot_1", "rot_2", "rot_3")
COMPRESSED_FIELDS = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
CHUNK_FIELDS = tuple(f"{m}_{a}" for m in ("min", "max") for a in "xyz") + tuple(
    f"{m}_scale_{a}" for m in ("min", "max") for a in "xyz")
CHUNK_COLOR_FIELDS = tuple(f"{m}_{c}" for m in ("min", "max") for c in "rgb")  # absent in older files: [0, 1]
FIX_PLY = "export the scene again, or remove those Gaussians in the tool that made the file"
_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
          "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
          "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")


# ----- PLY headers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlyProperty:
    name: str
    type: str  # numpy type code without byte order: "f4", "u1", ...
    list_len_type: str | None = None  # a list property: the type of its length prefix


@dataclass(frozen=True)
class PlyElementHeader:
    name: str
    count: int
    properties: tuple[PlyProperty, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.properties)


@dataclass(frozen=True)
class PlyHeader:
    format: str  # one of _FORMATS
    elements: tuple[PlyElementHeader, ...]
    size: int  # bytes from the start of the file to the end of the end_header line

    def element(self, name: str) -> PlyElementHeader | None:
        return next((e for e in self.elements if e.name == name), None)


def _file_size(path: str | os.PathLike) -> int:
    p = Path(path)
    try:
        if p.is_dir():
            raise ReadError(path, "it is a directory; give a .ply or .splat file")
        return p.stat().st_size
    except FileNotFoundError:
        raise ReadError(path, "no such file") from None
    except OSError as e:
        raise ReadError(path, e.strerror or str(e)) from None


def _read_head(path: str | os.PathLike, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise ReadError(path, e.strerror or str(e)) from None


def read_ply_header(path: str | os.PathLike) -> PlyHeader:
    """Parse a PLY header and check that the rows it declares fit in the file (before anything is read).

    Raises ReadError: not a PLY, an unknown format, type or line, a count that is not a whole number, or
    more rows than the bytes after the header can hold."""
    size = _file_size(path)
    head = _read_head(path, MAX_HEADER_BYTES)
    nl = next((e for e in (b"\r\n", b"\n", b"\r") if head.startswith(b"ply" + e)), None)
    if nl is None:
        raise ReadError(path, "not a PLY file (it does not start with a 'ply' line)")
    end = head.find(nl + b"end_header" + nl)
    if end < 0:
        raise ReadError(path, f"not a PLY file, or a damaged one: no end_header line in its first "
                              f"{MAX_HEADER_BYTES:,} bytes")
    header_size = end + len(nl + b"end_header" + nl)
    try:
        lines = head[len(b"ply" + nl):end].decode("ascii").split(nl.decode())
    except UnicodeDecodeError:
        raise ReadError(path, "a damaged PLY header: it holds bytes that are not ASCII text") from None
    fmt, elements = _parse_header_lines(lines, path)
    header = PlyHeader(fmt, elements, header_size)
    _check_rows_fit(header, size - header_size, path)
    return header


def _parse_header_lines(lines: list[str], path: str | os.PathLike) -> tuple[str, tuple[PlyElementHeader, ...]]:
    fmt = None
    elements: list[tuple[str, int, list[PlyProperty]]] = []
    for number, line in enumerate(lines, start=2):
        words = line.split()
        where = f"header line {number} ({line.strip()[:60]!r})"
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise ReadError(path, f"{where}: the format must be one of {', '.join(_FORMATS)}")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit() or int(words[2]) > MAX_ROWS:
                raise ReadError(path, f"{where}: an element line is 'element <name> <count>', with a whole "
                                      f"number of rows up to {MAX_ROWS:.0e}")
            if any(e[0] == words[1] for e in elements):
                raise ReadError(path, f"{where}: a second element named {words[1]!r}")
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise ReadError(path, f"{where}: a property before any element")
            is_list = len(words) == 5 and words[1] == "list"
            types = words[2:4] if is_list else words[1:2]
            if (len(words) != 3 and not is_list) or any(t not in _TYPES for t in types):
                raise ReadError(path, f"{where}: a property is 'property <type> <name>' or 'property list "
                                      f"<type> <type> <name>', with types among {', '.join(_TYPES)}")
            props = elements[-1][2]
            if any(p.name == words[-1] for p in props):
                raise ReadError(path, f"{where}: element {elements[-1][0]!r} has a second property {words[-1]!r}")
            props.append(PlyProperty(words[-1], _TYPES[types[-1]], _TYPES[types[0]] if is_list else None))
        else:
            raise ReadError(path, f"{where}: not a PLY header line")
    if fmt is None:
        raise ReadError(path, "a damaged PLY header: it has no format line")
    return fmt, tuple(PlyElementHeader(n, c, tuple(p)) for n, c, p in elements)


def _check_rows_fit(header: PlyHeader, available: int, path: str | os.PathLike) -> None:
    """Each row needs at least this many bytes: its binary size (a list: its length prefix), or in ASCII
    two characters per value (a digit and a separator)."""
    need = 0
    for el in header.elements:
        if header.format == "ascii":
            row = 2 * len(el.properties)
        else:
            row = sum(np.dtype(p.list_len_type or p.type).itemsize for p in el.properties)
        need += el.count * row
        if need > available:
            exact = header.format != "ascii" and all(p.list_len_type is None for p in el.properties)
            raise ReadError(path, f"the header declares {el.count:,} {el.name} rows of {'' if exact else 'at least '}"
                                  f"{row} bytes ({_amount(el.count * row)}) but only {_amount(available)} follow it: "
                                  "the file is truncated or its header is damaged; export it again")


def _amount(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _read_elements(path: str | os.PathLike, header: PlyHeader) -> dict[str, np.ndarray]:
    """Every element's rows (structured arrays), read by plyfile once the header has been checked."""
    from plyfile import PlyData, PlyParseError

    try:
        ply = PlyData.read(str(path))
        return {el.name: np.array(el.data) for el in ply.elements}  # a copy: no memory map stays open
    except (PlyParseError, ValueError, EOFError, IndexError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ReadError(path, f"a damaged PLY file ({reason}); export it again") from None
    except OSError as e:
        raise ReadError(path, e.strerror or str(e)) from None


def _require_scalars(el: PlyElementHeader, fields: tuple[str, ...] | list[str], path: str | os.PathLike) -> None:
    lists = [p.name for p in el.properties if p.name in fields and p.list_len_type is not None]
    if lists:
        raise ReadError(path, f"{el.name} properties {', '.join(lists)} are lists; this layout stores one number "
                              "per row in each; export it again")


def _columns(rows: np.ndarray, fields: tuple[str, ...] | list[str]) -> np.ndarray:
    """[N, len(fields)] float32 from numeric scalar properties (a double beyond float32 becomes inf)."""
    with np.errstate(over="ignore", invalid="ignore"):
        cols = [np.asarray(rows[f], dtype=np.float32) for f in fields]
        return np.stack(cols, axis=-1).reshape(len(rows), len(fields))


# ----- 3DGS and compressed PLY ------------------------------------------------------------------------
def _layout(header: PlyHeader) -> str:
    """'compressed', '3dgs' or 'points', from the header alone."""
    vertex = header.element("vertex")
    if vertex is None:
        return "points"  # read_point_ply names the missing element
    names = set(vertex.names)
    if header.element("chunk") is not None and "packed_position" in names:
        return "compressed"
    if names & {"f_dc_0", "opacity", "scale_0", "rot_0"}:
        return "3dgs"  # one 3DGS field is enough: a file that lacks the others is a damaged 3DGS PLY
    return "points"


def is_gaussian_ply(path: str | os.PathLike) -> bool:
    """True when the PLY holds Gaussians (3DGS fields or the compressed layout), from its header alone."""
    return _layout(read_ply_header(path)) != "points"


def is_gaussian_file(path: str | os.PathLike) -> bool:
    """A .splat, or a PLY that holds Gaussians."""
    return Path(path).suffix.lower() == ".splat" or is_gaussian_ply(path)


def read_gaussians(path: str | os.PathLike) -> dict[str, Tensor]:
    """Any splat file the studio writes (.splat by suffix; a PLY: 3DGS or compressed by header)."""
    return read_splat(path) if Path(path).suffix.lower() == ".splat" else read_gaussian_ply(path)


def read_gaussian_ply(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a 3DGS PLY or a compressed PLY into raw float32 tensors (gsplat layout), checked.

    3DGS fields: x y z, f_dc_0..2, f_rest_0..3(K-1)-1 (channel-major: all of red's coefficients, then
    green's, then blue's), opacity (logit), scale_0..2 (log), rot_0..3 (wxyz), read exactly as stored.
    K - 1 must be 0, 3, 8 or 15 (SH degree 0..3). A compressed PLY is decoded (see the module's notes).
    Raises ReadError naming the file, the field and the value.
    """
    header = read_ply_header(path)
    layout = _layout(header)
    if layout == "points":
        raise ReadError(path, "not a 3DGS PLY: its vertices carry none of the 3DGS fields (f_dc_0, opacity, "
                              "scale_0, rot_0); a plain point cloud can initialize a scene through "
                              "GaussianScene.from_points / read_point_ply")
    vertex = header.element("vertex")
    if vertex.count == 0:
        raise ReadError(path, "the PLY holds no Gaussians (element vertex 0); export a scene with at least one")
    if layout == "compressed":
        return _decode_compressed(header, path)
    names = set(vertex.names)
    missing = [f for f in GAUSSIAN_FIELDS if f not in names]
    if missing:
        raise ReadError(path, f"not a 3DGS PLY: missing vertex fields {', '.join(missing)}; export it again "
                              "(a plain point cloud, with no 3DGS fields, initializes a scene too)")
    k1 = _rest_count(names, "vertex", path)
    rest_fields = [f"f_rest_{j}" for j in range(3 * k1)]
    _require_scalars(vertex, list(GAUSSIAN_FIELDS) + rest_fields, path)
    v = _read_elements(path, header)["vertex"]
    n = len(v)
    rest = torch.from_numpy(_columns(v, rest_fields)) if k1 else torch.zeros(n, 0)
    cols = lambda fields: torch.from_numpy(_columns(v, fields))  # noqa: E731
    raw = {
        "means": cols(["x", "y", "z"]),
        "scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": cols(["opacity"])[:, 0].contiguous(),
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :].contiguous(),
        "shN": rest.reshape(n, 3, k1).transpose(1, 2).contiguous(),  # [N, 3*(K-1)] channel-major -> [N, K-1, 3]
    }
    _check_values(raw, path, _ply_label(k1))
    return raw


def _rest_count(names: set[str], element: str, path: str | os.PathLike) -> int:
    """K - 1 from the f_rest_* properties of an element."""
    n_rest = sum(1 for f in names if f.startswith("f_rest_"))
    if n_rest % 3 or n_rest // 3 not in (0, 3, 8, 15) or any(f"f_rest_{j}" not in names for j in range(n_rest)):
        raise ReadError(path, f"element {element} has {n_rest} f_rest_* fields: expected 0, 9, 24 or 45 numbered "
                              "from 0 (SH degree 0..3); export it again")
    return n_rest // 3


def _ply_label(k1: int, note: str = ""):
    def label(key: str, col: int | None) -> str:
        if key == "shN":
            k, c = divmod(col, 3)
            return f"f_rest_{c * k1 + k}{note}"
        names = {"means": "xyz", "scales": ["scale_0", "scale_1", "scale_2"],
                 "quats": ["rot_0", "rot_1", "rot_2", "rot_3"], "opacities": ["opacity"],
                 "sh0": ["f_dc_0", "f_dc_1", "f_dc_2"]}[key]
        return (names[col] if col is not None else f"{names[0]}..{names[-1]}") + note
    return label


def _check_values(raw: dict[str, Tensor], path: str | os.PathLike, label, fix: str = FIX_PLY) -> None:
    problem = raw_value_problem(raw, label)
    if problem is not None:
        raise ReadError(path, f"{problem}; {fix}")


def _decode_compressed(header: PlyHeader, path: str | os.PathLike) -> dict[str, Tensor]:
    """SuperSplat's chunked layout -> raw tensors (the Gaussians in the file's order: Morton-sorted)."""
    vertex, chunk, sh = header.element("vertex"), header.element("chunk"), header.element("sh")
    n = vertex.count
    missing = [f for f in COMPRESSED_FIELDS if f not in vertex.names] + [
        f"chunk {f}" for f in CHUNK_FIELDS if f not in chunk.names]
    if missing:
        raise ReadError(path, f"a damaged compressed PLY: missing {', '.join(missing)}; export it again")
    if chunk.count != -(-n // CHUNK_SIZE):
        raise ReadError(path, f"a damaged compressed PLY: {chunk.count} chunk rows for {n} Gaussians (expected "
                              f"{-(-n // CHUNK_SIZE)}, one per {CHUNK_SIZE}); export it again")
    if sh is not None and sh.properties and sh.count != n:
        raise ReadError(path, f"a damaged compressed PLY: {sh.count} sh rows for {n} Gaussians; export it again")
    k1 = _rest_count(set(sh.names), "sh", path) if sh is not None else 0
    wrong = [p.name for p in vertex.properties if p.name in COMPRESSED_FIELDS and (p.list_len_type or p.type != "u4")]
    wrong += [p.name for p in (sh.properties if sh is not None else ()) if p.list_len_type or p.type != "u1"]
    if wrong:
        raise ReadError(path, f"a damaged compressed PLY: {', '.join(wrong)} must be uint (packed_*) or uchar "
                              "(f_rest_*); export it again")
    has_color = all(f in chunk.names for f in CHUNK_COLOR_FIELDS)
    _require_scalars(chunk, CHUNK_FIELDS + CHUNK_COLOR_FIELDS, path)
    data = _read_elements(path, header)
    table = _columns(data["chunk"], CHUNK_FIELDS + (CHUNK_COLOR_FIELDS if has_color else ()))  # [C, 12 | 18]
    bad = ~np.isfinite(table)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ReadError(path, f"chunk {row}'s {(CHUNK_FIELDS + CHUNK_COLOR_FIELDS)[col]} is {table[row, col]:g}: "
                              "the chunk bounds must be finite; the file is damaged, export it again")
    if not has_color:
        table = np.concatenate([table, np.tile(np.array([0, 0, 0, 1, 1, 1], np.float32), (len(table), 1))], 1)
    per = table[np.arange(n) // CHUNK_SIZE]  # [N, 18]: each Gaussian's chunk bounds
    v = data["vertex"]
    packed = {f: np.asarray(v[f]).astype(np.int64) for f in COMPRESSED_FIELDS}

    def lerp(lo: int, t: np.ndarray) -> np.ndarray:  # columns lo..lo+2 are the minimum, lo+3..lo+5 the maximum
        return per[:, lo:lo + 3] + t * (per[:, lo + 3:lo + 6] - per[:, lo:lo + 3])

    rgba = _fractions(packed["packed_color"], (8, 8, 8, 8))  # [N, 4]
    alpha = np.clip(rgba[:, 3], 0.5 / 255, 1 - 0.5 / 255)
    raw = {
        "means": lerp(0, _fractions(packed["packed_position"], (11, 10, 11))),
        "scales": lerp(6, _fractions(packed["packed_scale"], (11, 10, 11))),
        "quats": _smallest_three(packed["packed_rotation"]),
        "opacities": np.log(alpha) - np.log1p(-alpha),
        "sh0": ((lerp(12, rgba[:, :3]) - 0.5) / C0)[:, None, :],
        "shN": np.zeros((n, 0, 3), np.float32),
    }
    if k1:
        q = _columns(data["sh"], [f"f_rest_{j}" for j in range(3 * k1)])  # [N, 3*(K-1)] uint8 values
        raw["shN"] = (((q + 0.5) / 256 - 0.5) * 8).reshape(n, 3, k1).transpose(0, 2, 1)
    raw = {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in raw.items()}
    _check_values(raw, path, _ply_label(k1, " (decoded)"), "the file is damaged; export it again")
    return raw


def _fractions(packed: np.ndarray, bits: tuple[int, ...]) -> np.ndarray:
    """[N] packed words -> [N, len(bits)] in [0, 1], the first field in the highest bits."""
    out, shift = [], sum(bits)
    for b in bits:
        shift -= b
        out.append(((packed >> shift) & ((1 << b) - 1)) / float((1 << b) - 1))
    return np.stack(out, axis=-1)


def _smallest_three(packed: np.ndarray) -> np.ndarray:
    """[N] packed rotations -> [N, 4] unit quaternions (wxyz)."""
    n = packed.shape[0]
    largest = (packed >> 30) & 3  # [N] index of the component left out
    rest = (_fractions(packed, (2, 10, 10, 10))[:, 1:] - 0.5) * math.sqrt(2.0)  # [N, 3]
    # A damaged word can claim components whose squares pass 1: the largest is then 0, not NaN.
    q = np.empty((n, 4))
    rows = np.arange(n)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]  # [N, 3]
    q[rows[:, None], others] = rest
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (rest**2).sum(axis=1)))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


# ----- .splat ---------------------------------------------------------------------------------------------
def read_splat(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read antimatter15's .splat (32 bytes per Gaussian) into raw float32 tensors (gsplat layout, SH
    degree 0), checked. Sizes are stored, so log-scale = log(size); every size must be positive."""
    size = _file_size(path)
    if size == 0 or size % SPLAT_RECORD.itemsize:
        raise ReadError(path, f"a .splat holds {SPLAT_RECORD.itemsize} bytes per Gaussian and this file has "
                              f"{size:,} bytes: it is {'empty' if size == 0 else 'truncated, or not a .splat'}; "
                              "export it again")
    try:
        rec = np.fromfile(path, dtype=SPLAT_RECORD)
    except OSError as e:
        raise ReadError(path, e.strerror or str(e)) from None
    n = len(rec)
    sizes = rec["scale"].astype(np.float32)  # [N, 3]
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ReadError(path, f"the size scale_{col} of Gaussian {row} is {sizes[row, col]:g}: sizes must be positive "
                              f"and finite ({int(bad.sum())} of {bad.size} are not); {FIX_PLY}")
    rgba = np.minimum((rec["rgba"].astype(np.float64) + 0.5) / 255, 1.0)  # truncated bytes: bin centres
    alpha = np.clip(rgba[:, 3], 0.5 / 255, 1 - 0.5 / 255)
    quats = (rec["rot"].astype(np.float64) + 0.5 - 128) / 128  # never all zero
    raw = {
        "means": rec["pos"],
        "scales": np.log(sizes),
        "quats": quats / np.linalg.norm(quats, axis=1, keepdims=True),
        "opacities": np.log(alpha) - np.log1p(-alpha),
        "sh0": ((rgba[:, :3] - 0.5) / C0)[:, None, :],
        "shN": np.zeros((n, 0, 3)),
    }
    raw = {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in raw.items()}
    _check_values(raw, path, _ply_label(0, " (.splat)"))
    return raw


# ----- point clouds ---------------------------------------------------------------------------------------
def read_point_ply(path: str | os.PathLike) -> tuple[Tensor, Tensor | None]:
    """A plain point cloud PLY: xyz [N, 3] float32 and colours [N, 3] in [0, 1] (None without red/green/blue).

    Raises ReadError for no points, a coordinate or colour that is not finite, or a coordinate beyond
    +-MAX_ABS_POSITION."""
    header = read_ply_header(path)
    vertex = header.element("vertex")
    if vertex is None:
        raise ReadError(path, "the PLY has no 'vertex' element; give a point cloud or a 3DGS PLY")
    if not {"x", "y", "z"} <= set(vertex.names):
        raise ReadError(path, "the PLY vertices have no x, y, z; give a point cloud or a 3DGS PLY")
    if vertex.count == 0:
        raise ReadError(path, "the PLY holds no points (element vertex 0); give one with at least one point")
    _require_scalars(vertex, ("x", "y", "z", "red", "green", "blue"), path)
    v = _read_elements(path, header)["vertex"]
    xyz = _columns(v, ["x", "y", "z"])
    bad = ~np.isfinite(xyz) | (np.abs(xyz) > MAX_ABS_POSITION)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ReadError(path, f"{'xyz'[col]} of point {row} is {xyz[row, col]:g}: coordinates must be finite and "
                              f"within +-{MAX_ABS_POSITION:.0e} world units ({int(bad.sum())} of {bad.size} are not); "
                              "fix or remove those points")
    if not {"red", "green", "blue"} <= set(vertex.names):
        return torch.from_numpy(xyz), None
    rgb = _columns(v, ["red", "green", "blue"])
    bad = ~np.isfinite(rgb)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ReadError(path, f"{('red', 'green', 'blue')[col]} of point {row} is {rgb[row, col]:g}: colours must be "
                              "finite; fix or remove those points")
    scale = 255.0 if v.dtype["red"].kind in "ui" else 1.0
    return torch.from_numpy(xyz), torch.from_numpy(rgb / scale)


def validate_scene_file(path: str | os.PathLike) -> int:
    """Read and check a file that can initialize a scene (any splat format, or a point cloud) and return
    how many Gaussians or points it holds. Raises ReadError with the one problem to fix."""
    if is_gaussian_file(path):
        return int(read_gaussians(path)["means"].shape[0])
    return int(read_point_ply(path)[0].shape[0])
