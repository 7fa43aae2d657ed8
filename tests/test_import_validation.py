"""Import validation: every bad PLY, compressed PLY, .splat or checkpoint is refused with one line that
names the file and the field; every format the studio writes reads back; a fuzzer over mutated files
finds nothing that loads and then fails."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from plyfile import PlyData, PlyElement

import studio.commands as C
from renderers.sh import C0
from studio.atomic import ReadError
from studio.config import default_config, with_values
from studio.export import CHECKSUM_KEY, export_splats, load_checkpoint, save_checkpoint
from studio.handlers import CHECKPOINT_FORMAT, CHECKPOINT_FORMATS
from studio.initializers import LOG_SCALE_RANGE
from studio.readers import read_gaussian_ply, read_gaussians, read_point_ply, read_splat
from studio.session import Session

SMALL = {"render.resolution": 16, "render.batch": 1, "init.num": 40, "run.psnr_every": 0,
         "densify.refine_start": 4, "densify.refine_every": 4}


def random_raw(n: int, sh_degree: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k1 = (sh_degree + 1) ** 2 - 1
    return {
        "means": torch.rand(n, 3, generator=g) - 0.5,
        "scales": torch.log(0.02 + 0.05 * torch.rand(n, 3, generator=g)),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": 0.5 * torch.randn(n, k1, 3, generator=g),
    }


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and "\r" not in text, text
    return text


def refused(fn, path, *needles: str) -> str:
    """fn(path) raises ReadError on one line naming the file and every needle."""
    with pytest.raises(ReadError) as err:
        fn(path)
    text = one_line(err.value)
    assert str(path) in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def write_vertices(path, vertex: np.ndarray, text: bool = False):
    PlyData([PlyElement.describe(vertex, "vertex")], text=text).write(str(path))
    return path


def gaussian_vertices(tmp_path, n: int = 12, sh_degree: int = 1) -> np.ndarray:
    export_splats(random_raw(n, sh_degree), tmp_path / "good.ply", "ply")
    return np.array(PlyData.read(str(tmp_path / "good.ply"))["vertex"].data)


def edit_header(data: bytes, old: bytes, new: bytes) -> bytes:
    end = data.index(b"end_header\n")
    assert old in data[:end], old
    return data[:end].replace(old, new, 1) + data[end:]


# ----- 3DGS PLY ------------------------------------------------------------------------------------------
def test_a_ply_with_no_vertices_is_refused(tmp_path):
    v = gaussian_vertices(tmp_path)
    refused(read_gaussian_ply, write_vertices(tmp_path / "empty.ply", v[:0]), "no Gaussians", "vertex 0")


@pytest.mark.parametrize("norm", [0.0, 1e-9])
def test_zero_and_near_zero_quaternions_are_refused(tmp_path, norm):
    v = gaussian_vertices(tmp_path)
    for j in range(4):
        v[f"rot_{j}"][5] = norm / 2
    text = refused(read_gaussian_ply, write_vertices(tmp_path / "q.ply", v), "rot_0..rot_3", "Gaussian 5", "norm")
    assert "1e-06" in text  # the bound is stated


@pytest.mark.parametrize("field", ["x", "z", "scale_1", "opacity", "f_dc_2", "f_rest_4", "rot_2"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_in_any_field_are_refused_naming_it(tmp_path, field, value):
    v = gaussian_vertices(tmp_path)
    v[field][3] = value
    text = refused(read_gaussian_ply, write_vertices(tmp_path / "bad.ply", v), f"{field} of Gaussian 3",
                   "must be finite")
    assert ("nan" if math.isnan(value) else "inf") in text


@pytest.mark.parametrize("log_scale", [89.0, 20.0, -40.0])
def test_log_scales_outside_the_stated_bounds_are_refused(tmp_path, log_scale):
    v = gaussian_vertices(tmp_path)
    v["scale_0"][7] = log_scale
    text = refused(read_gaussian_ply, write_vertices(tmp_path / "s.ply", v), "scale_0 of Gaussian 7",
                   "log-scales must lie in")
    assert f"{LOG_SCALE_RANGE[1]:.3g}" in text and "1e+04 world units" in text


def test_a_double_beyond_float32_is_refused_not_read_as_inf_silently(tmp_path):
    v = gaussian_vertices(tmp_path)
    dt = [(name, "f8" if name == "x" else v.dtype[name]) for name in v.dtype.names]
    wide = v.astype(dt)
    wide["x"][2] = 1e300
    refused(read_gaussian_ply, write_vertices(tmp_path / "d.ply", wide), "x of Gaussian 2", "inf")


def test_huge_positions_and_sh_are_refused(tmp_path):
    v = gaussian_vertices(tmp_path)
    v["y"][1] = 3e7
    refused(read_gaussian_ply, write_vertices(tmp_path / "p.ply", v), "y of Gaussian 1", "world units")
    v = gaussian_vertices(tmp_path)
    v["f_rest_0"][0] = 1e30
    refused(read_gaussian_ply, write_vertices(tmp_path / "sh.ply", v), "f_rest_0 of Gaussian 0", "SH")


@pytest.mark.parametrize("text", [False, True])
def test_a_header_claiming_2e9_vertices_is_refused_before_anything_is_allocated(tmp_path, text):
    v = gaussian_vertices(tmp_path)
    good = write_vertices(tmp_path / "g.ply", v, text=text).read_bytes()
    path = tmp_path / "huge.ply"
    path.write_bytes(edit_header(good, b"element vertex 12", b"element vertex 2000000000"))
    tracemalloc.start()
    try:
        msg = refused(read_gaussian_ply, path, "2,000,000,000 vertex rows", "truncated or its header is damaged")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, peak
    assert ("GB" in msg) and ("at least" in msg) == text


def test_truncated_files_are_refused(tmp_path):
    good = (write_vertices(tmp_path / "g.ply", gaussian_vertices(tmp_path))).read_bytes()
    (tmp_path / "cut.ply").write_bytes(good[:-100])
    refused(read_gaussian_ply, tmp_path / "cut.ply", "truncated")
    (tmp_path / "cut_header.ply").write_bytes(good[:200])
    refused(read_gaussian_ply, tmp_path / "cut_header.ply", "end_header")


def test_missing_wrong_and_unknown_properties_are_refused(tmp_path):
    good = write_vertices(tmp_path / "g.ply", gaussian_vertices(tmp_path)).read_bytes()
    cases = {
        "no_rot3.ply": (b"property float rot_3\n", b"", "missing vertex fields rot_3"),
        "list_x.ply": (b"property float x\n", b"property list uchar float x\n", "x are lists"),
        "half_type.ply": (b"property float x\n", b"property half x\n", "header line"),
        "five_rest.ply": (b"property float f_rest_5\n", b"", "f_rest_"),
        "bad_count.ply": (b"element vertex 12", b"element vertex twelve", "whole number"),
        "vast_count.ply": (b"element vertex 12", b"element vertex 1" + b"0" * 30, "rows up to 1e+12"),
        "bad_format.ply": (b"binary_little_endian", b"binary_middle_endian", "format must be one of"),
    }
    for name, (old, new, needle) in cases.items():
        (tmp_path / name).write_bytes(edit_header(good, old, new))
        refused(read_gaussian_ply, tmp_path / name, needle)
    (tmp_path / "noise.ply").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)))
    refused(read_gaussian_ply, tmp_path / "noise.ply", "not a PLY")


def test_the_ply_layout_variants_read_alike(tmp_path):
    v = gaussian_vertices(tmp_path)
    ref = read_gaussian_ply(tmp_path / "good.ply")
    write_vertices(tmp_path / "ascii.ply", v, text=True)
    PlyData([PlyElement.describe(v, "vertex")], byte_order=">").write(str(tmp_path / "big.ply"))
    for name in ("ascii.ply", "big.ply"):
        back = read_gaussian_ply(tmp_path / name)
        for k in ref:
            torch.testing.assert_close(back[k], ref[k], rtol=1e-6, atol=1e-6, msg=f"{name} {k}")


def test_point_clouds_are_checked_too(tmp_path):
    pts = np.zeros(5, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    pts["x"] = np.arange(5)
    xyz, rgb = read_point_ply(write_vertices(tmp_path / "ok.ply", pts))
    assert xyz.shape == (5, 3) and rgb is None
    refused(read_point_ply, write_vertices(tmp_path / "none.ply", pts[:0]), "no points")
    pts["z"][4] = np.nan
    refused(read_point_ply, write_vertices(tmp_path / "nan.ply", pts), "z of point 4", "finite")


# ----- compressed PLY and .splat read back --------------------------------------------------------------
def matched(back: dict, raw: dict) -> dict:
    """The raw Gaussians in the order of `back` (both formats reorder along a Morton curve)."""
    idx = torch.cdist(back["means"], raw["means"]).argmin(dim=1)
    assert len(set(idx.tolist())) == len(idx), "two decoded Gaussians matched one original"
    return {k: v[idx] for k, v in raw.items()}


def unit(q):
    return torch.nn.functional.normalize(q, dim=-1)


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_ply_compressed_reads_back_within_its_quantization(tmp_path, sh_degree):
    raw = random_raw(700, sh_degree, seed=sh_degree)  # three chunks
    raw["opacities"] = raw["opacities"].clamp(-5, 5)  # all above the format's 1/255 cut
    export_splats(raw, tmp_path / "a.compressed.ply", "ply_compressed")
    back = read_gaussians(tmp_path / "a.compressed.ply")
    ref = matched(back, raw)
    assert back["shN"].shape == raw["shN"].shape
    span = lambda t: float(t.max() - t.min())  # noqa: E731  (a chunk's range is at most the whole range)
    assert (back["means"] - ref["means"]).abs().max() <= span(raw["means"]) / 2046 + 1e-6
    assert (back["scales"] - ref["scales"]).abs().max() <= span(raw["scales"]) / 2046 + 1e-5
    dq = (back["quats"] * unit(ref["quats"])).sum(-1).abs()  # |cos| of half the angle between them
    assert dq.min() > 1 - 1e-5
    assert (torch.sigmoid(back["opacities"]) - torch.sigmoid(ref["opacities"])).abs().max() <= 0.5 / 255 + 1e-6
    rgb = lambda sh0: sh0 * C0 + 0.5  # noqa: E731
    assert (rgb(back["sh0"]) - rgb(ref["sh0"])).abs().max() <= span(rgb(raw["sh0"])) / 510 + 1e-5
    if sh_degree:
        assert (back["shN"] - ref["shN"].clamp(-4, 4 - 8 / 256)).abs().max() <= 4 / 256 + 1e-6


def test_splat_reads_back_within_its_quantization(tmp_path):
    raw = random_raw(300, 2)
    export_splats(raw, tmp_path / "a.splat", "splat")
    back = read_gaussians(tmp_path / "a.splat")
    ref = matched(back, raw)
    assert back["shN"].shape == (300, 0, 3)  # .splat keeps degree 0 only
    torch.testing.assert_close(back["means"], ref["means"], rtol=0, atol=0)
    torch.testing.assert_close(back["scales"], ref["scales"], rtol=0, atol=1e-6)
    assert (back["quats"] - unit(ref["quats"])).abs().max() <= 1 / 128
    assert (torch.sigmoid(back["opacities"]) - torch.sigmoid(ref["opacities"])).abs().max() <= 0.5 / 255 + 1e-6
    rgb = (ref["sh0"] * C0 + 0.5).clamp(0, 1)
    assert (back["sh0"] * C0 + 0.5 - rgb).abs().max() <= 0.5 / 255 + 1e-6


def test_bad_compressed_plys_are_refused(tmp_path):
    raw = random_raw(300, 1)
    export_splats(raw, tmp_path / "a.compressed.ply", "ply_compressed")
    ply = PlyData.read(str(tmp_path / "a.compressed.ply"))
    chunk, vertex, sh = (np.array(ply[e].data) for e in ("chunk", "vertex", "sh"))

    def write(name, chunk=chunk, vertex=vertex, sh=sh):
        PlyData([PlyElement.describe(chunk, "chunk"), PlyElement.describe(vertex, "vertex"),
                 PlyElement.describe(sh, "sh")]).write(str(tmp_path / name))
        return tmp_path / name

    c = chunk.copy()
    c["min_scale_y"][1] = np.nan
    refused(read_gaussian_ply, write("nan_bound.ply", chunk=c), "chunk 1's min_scale_y is nan")
    c = chunk.copy()
    c["max_scale_x"][0] = 1e30
    refused(read_gaussian_ply, write("huge_scale.ply", chunk=c), "scale_0 (decoded)", "log-scales")
    refused(read_gaussian_ply, write("one_chunk.ply", chunk=chunk[:1]), "1 chunk rows for 300 Gaussians")
    refused(read_gaussian_ply, write("short_sh.ply", sh=sh[:10]), "10 sh rows")
    data = (tmp_path / "a.compressed.ply").read_bytes()
    (tmp_path / "huge.ply").write_bytes(edit_header(data, b"element vertex 300", b"element vertex 2000000000"))
    refused(read_gaussian_ply, tmp_path / "huge.ply", "2,000,000,000 vertex rows")


def test_bad_splats_are_refused(tmp_path):
    export_splats(random_raw(10, 0), tmp_path / "a.splat", "splat")
    data = bytearray((tmp_path / "a.splat").read_bytes())
    (tmp_path / "cut.splat").write_bytes(data[:-5])
    refused(read_splat, tmp_path / "cut.splat", "32 bytes per Gaussian", "truncated")
    (tmp_path / "empty.splat").write_bytes(b"")
    refused(read_splat, tmp_path / "empty.splat", "empty")
    rec = np.frombuffer(bytes(data), dtype=[("pos", "<f4", (3,)), ("scale", "<f4", (3,)), ("rest", "u1", (8,))]).copy()
    rec["scale"][4, 2] = -1.0
    (tmp_path / "neg.splat").write_bytes(rec.tobytes())
    refused(read_splat, tmp_path / "neg.splat", "scale_2 of Gaussian 4", "positive")
    rec["scale"][4, 2] = 0.01
    rec["pos"][6, 0] = np.inf
    (tmp_path / "inf.splat").write_bytes(rec.tobytes())
    refused(read_splat, tmp_path / "inf.splat", "x (.splat) of Gaussian 6", "finite")


# ----- through the session: refused when sent, the studio reopens what it writes ---------------------------
@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = Session(with_values(default_config("sds"), SMALL), tmp_path_factory.mktemp("session"), metrics_file=False)
    yield s
    s.stop()


def errors(s: Session) -> list[str]:
    return [e.text for e in s.snapshot.events if e.level == "error"]


def load_and_train_or_refuse(s: Session, cmd) -> str:
    """The contract: refused when sent with one line, or applied and then one finite training step."""
    n_errors = len(errors(s))
    try:
        s.send(cmd)
    except C.CommandError as e:
        assert one_line(e).startswith("load: "), e
        return str(e)
    s.drain()
    assert len(errors(s)) == n_errors, f"accepted when sent, failed when applied: {errors(s)[-1]}"
    tr = s.trainer
    it, skipped = tr.iteration, tr.skipped_steps
    s.run_steps(1)
    assert s.snapshot.last_error is None, s.snapshot.last_error
    assert (tr.iteration, tr.skipped_steps) == (it + 1, skipped), "the step after the load was skipped"
    assert tr.scene.is_finite() and bool(torch.isfinite(tr.last_render).all())
    assert math.isfinite(s.state.metrics.history["loss"][-1][1])
    return "loaded"


def test_load_ply_is_refused_when_sent_and_training_goes_on(session, tmp_path):
    v = gaussian_vertices(tmp_path)
    v["rot_1"][2] = np.nan
    bad = write_vertices(tmp_path / "bad.ply", v)
    session.run_steps(1)
    before = {k: t.clone() for k, t in session.trainer.scene.raw().items()}
    config = session.config
    msg = load_and_train_or_refuse(session, C.LoadPly(str(bad)))
    assert str(bad) in msg and "rot_1 of Gaussian 2" in msg
    for k, t in session.trainer.scene.raw().items():
        assert torch.equal(t, before[k]), k
    assert session.config == config  # the refused command left no trace in the settings
    session.run_steps(1)
    assert session.snapshot.last_error is None


@pytest.mark.parametrize("fmt", ["ply", "ply_compressed", "splat"])
def test_the_studio_reopens_every_splat_format_it_exports(session, tmp_path, fmt):
    session.send(C.Export(formats=(fmt,), out_dir=str(tmp_path), name="asset"))
    session.drain()
    suffix = {"ply": ".ply", "ply_compressed": ".compressed.ply", "splat": ".splat"}[fmt]
    n = session.trainer.scene.num_gaussians
    assert load_and_train_or_refuse(session, C.LoadPly(str(tmp_path / f"asset{suffix}"))) == "loaded"
    assert session.trainer.scene.num_gaussians <= n  # ply_compressed leaves out the faintest


# ----- checkpoints ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(session, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    session.run_steps(3)
    session.send(C.SaveCheckpoint(str(path)))
    session.drain()
    return path


def test_checkpoints_carry_their_format_and_a_checksum(checkpoint):
    payload = torch.load(checkpoint, weights_only=True)  # still a plain torch file
    assert payload["format"] == CHECKPOINT_FORMAT and len(payload[CHECKSUM_KEY]) == 64
    assert load_checkpoint(checkpoint)["trainer"]["iteration"] == payload["trainer"]["iteration"]


def test_a_bit_flip_is_a_checksum_mismatch(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    params = torch.load(checkpoint, weights_only=True)["trainer"]["scene"]["params"]
    for i, name in enumerate(("means", "scales", "opacities", "sh0")):
        at = data.find(params[name].numpy().tobytes())  # the tensor's bytes in the zip, stored as they are
        assert at > 0, name
        damaged = bytearray(data)
        damaged[at + 4 * i + 1] ^= 1 << i  # a plausible value still: torch reads it without complaint
        path = tmp_path / f"flip_{name}.pt"
        path.write_bytes(bytes(damaged))
        with pytest.raises(ReadError) as err:
            load_checkpoint(path)
        text = one_line(err.value)
        assert "checksum mismatch" in text and "the file is damaged" in text and str(path) in text, text


def test_old_checkpoints_without_a_checksum_still_load(session, checkpoint, tmp_path):
    payload = torch.load(checkpoint, weights_only=True)
    payload.pop(CHECKSUM_KEY)
    payload["format"] = CHECKPOINT_FORMATS[0]
    torch.save(payload, tmp_path / "old.pt")
    assert load_and_train_or_refuse(session, C.LoadCheckpoint(str(tmp_path / "old.pt"))) == "loaded"
    payload["format"] = CHECKPOINT_FORMAT  # a new-format file must have one
    torch.save(payload, tmp_path / "stripped.pt")
    assert "has none" in load_and_train_or_refuse(session, C.LoadCheckpoint(str(tmp_path / "stripped.pt")))


def _edited(payload: dict, path: tuple, value) -> dict:
    import copy

    p = copy.deepcopy(payload)
    node = p
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return p


def _with(t: torch.Tensor, index, value) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


SCENE = ("trainer", "scene")
BAD_CHECKPOINTS = {
    "NaN means": (SCENE + ("params", "means"), lambda t: _with(t, (0, 1), float("nan")), "params.means[:, 1]"),
    "inf opacity": (SCENE + ("params", "opacities"), lambda t: _with(t, 3, float("inf")), "params.opacities"),
    "huge log-scale": (SCENE + ("params", "scales"), lambda t: _with(t, (2, 0), 50.0), "log-scales"),
    "zero quaternion": (SCENE + ("params", "quats"), lambda t: _with(t, 4, 0.0), "norm 0"),
    "NaN Adam moment": (SCENE + ("optimizers", "sh0", "state", 0, "exp_avg_sq"),
                        lambda t: _with(t, 0, float("nan")), "exp_avg_sq of sh0"),
    "NaN densifier statistic": (SCENE + ("densifier", "state", "grad2d"), lambda t: _with(t, 0, float("nan")),
                                "densifier grad2d"),
    "NaN estimator state": (("trainer", "estimators", "sds", "rng", "timesteps"), lambda t: t[:10], "timesteps"),
    "means of the wrong shape": (SCENE + ("params", "means"), lambda t: t[:, :2], "means"),
    "sh0 of another N": (SCENE + ("params", "sh0"), lambda t: t[:5], "sh0"),
    "no optimizers": (SCENE + ("optimizers",), KeyError, "optimizer"),
    "no scene": (("trainer", "scene"), KeyError, "lacks scene"),
    "unknown estimator": (("trainer", "estimators", "vsd"), {}, "vsd"),
    "broken random state": (("trainer", "torch_rng"), torch.zeros(3), "torch_rng"),
    "negative iteration": (("trainer", "iteration"), -4, "trainer.iteration"),
    "params as text": (SCENE + ("params", "scales"), "big", "params scales"),
    "elapsed NaN": (("elapsed",), float("nan"), "elapsed"),
    "user_set not paths": (("user_set",), 5, "user_set"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoints_are_refused_when_sent_naming_the_part(session, checkpoint, tmp_path, case):
    path, value, needle = BAD_CHECKPOINTS[case]
    payload = _edited(load_checkpoint(checkpoint), path, value)
    save_checkpoint(tmp_path / "bad.pt", payload)  # a valid checksum: the content itself is checked
    msg = load_and_train_or_refuse(session, C.LoadCheckpoint(str(tmp_path / "bad.pt")))
    assert msg != "loaded" and needle in msg and str(tmp_path / "bad.pt") in msg, msg
    torch.save(payload, tmp_path / "tampered.pt")  # edited without a new checksum
    assert "checksum mismatch" in load_and_train_or_refuse(session, C.LoadCheckpoint(str(tmp_path / "tampered.pt")))


def test_a_failed_checkpoint_write_leaves_the_old_file(checkpoint, tmp_path):
    target = tmp_path / "keep.pt"
    target.write_bytes(checkpoint.read_bytes())
    with pytest.raises(TypeError, match="cannot hold"):
        save_checkpoint(target, {"format": CHECKPOINT_FORMAT, "thing": object()})
    assert target.read_bytes() == checkpoint.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pt"]


# ----- fuzzing: mutated files either load and train, or are refused with one line ------------------------------
SPECIAL = [float("nan"), float("inf"), -float("inf"), 1e30, -3e38, 1e-40, 0.0, 1e7]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """One small valid file of every kind the studio opens."""
    d = tmp_path_factory.mktemp("seeds")
    raw = random_raw(24, 1, seed=5)
    export_splats(raw, d / "g.ply", "ply")
    export_splats(raw, d / "g.compressed.ply", "ply_compressed")
    export_splats(raw, d / "g.splat", "splat")
    pts = np.zeros(24, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    pts["x"], pts["y"], pts["z"] = raw["means"].numpy().T
    write_vertices(d / "pc.ply", pts, text=True)
    return {p.name: p.read_bytes() for p in d.iterdir()}


def mutations():
    """(kind, parameters) of one edit to a file's bytes; positions are fractions of the rows' bytes (after
    the header, if there is one) so that edits land all over the data."""
    at = st.floats(0.0, 1.0, exclude_max=True)
    return st.one_of(
        st.tuples(st.just("flip"), at, st.integers(0, 7)),
        st.tuples(st.just("value"), at, st.sampled_from(SPECIAL)),
        st.tuples(st.just("value"), at, st.sampled_from(SPECIAL)),
        st.tuples(st.just("flip_header"), at, st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
        st.tuples(st.just("count"), st.sampled_from([0, 1, 23, 25, 255, 257, 2**31, 2_000_000_000, 10**30])),
        st.tuples(st.just("type"), st.integers(0, 100), st.sampled_from(
            [b"double", b"uchar", b"int", b"list uchar float", b"short"])),
        st.tuples(st.just("drop_line"), st.integers(0, 100)),
        st.tuples(st.just("overwrite"), at, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("random"), st.binary(min_size=0, max_size=512)),
    )


def mutate(data: bytes, m: tuple) -> bytes:
    kind, *a = m
    end = data.find(b"end_header\n")
    body = end + len(b"end_header\n") if end >= 0 else 0
    b = bytearray(data)
    rows = len(b) - body
    head = data[:end].split(b"\n") if end >= 0 else None
    if kind == "flip" and rows:
        b[body + int(a[0] * rows)] ^= 1 << a[1]
    elif kind == "value" and rows >= 4:
        i = body + 4 * (int(a[0] * rows) // 4)
        b[i:i + 4] = np.float32(a[1]).tobytes()[: len(b) - i]
    elif kind == "flip_header" and body:
        b[int(a[0] * body)] ^= 1 << a[1]
    elif kind == "truncate":
        del b[int(a[0] * len(b)):]
    elif kind == "count" and head:
        i = next((i for i, line in enumerate(head) if line.startswith(b"element vertex")), 0)
        head[i] = b"element vertex %d" % a[0]
        return b"\n".join(head) + data[end:]
    elif kind == "type" and head:
        props = [i for i, line in enumerate(head) if line.startswith(b"property ")]
        i = props[a[0] % len(props)]
        head[i] = b"property " + a[1] + b" " + head[i].split()[-1]
        return b"\n".join(head) + data[end:]
    elif kind == "drop_line" and head:
        del head[1 + a[0] % (len(head) - 1)]
        return b"\n".join(head) + data[end:]
    elif kind == "overwrite" and b:
        i = body + int(a[0] * rows) if rows else 0
        b[i:i + len(a[1])] = a[1]
    elif kind == "append":
        b += a[0]
    elif kind == "random":
        return a[0]
    return bytes(b)


@settings(deadline=None, derandomize=True, max_examples=400,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=st.sampled_from(["g.ply", "g.compressed.ply", "g.splat", "pc.ply"]),
       edits=st.lists(mutations(), min_size=1, max_size=3))
def test_fuzz_ply_and_splat_import(session, seeds, tmp_path_factory, name, edits):
    data = seeds[name]
    for m in edits:
        data = mutate(data, m)
    path = tmp_path_factory.getbasetemp() / f"fuzz_{name}"
    path.write_bytes(data)
    outcome = load_and_train_or_refuse(session, C.LoadPly(str(path)))
    event("trained a step" if outcome == "loaded" else "refused")  # --hypothesis-show-statistics counts them


def checkpoint_mutations():
    leaf = st.sampled_from([
        SCENE + ("params", "means"), SCENE + ("params", "scales"), SCENE + ("params", "quats"),
        SCENE + ("params", "opacities"), SCENE + ("params", "sh0"),
        SCENE + ("optimizers", "means", "state", 0, "exp_avg"),
        SCENE + ("densifier", "state", "count"), SCENE + ("extent",), ("trainer", "iteration"),
        ("trainer", "torch_rng"), ("trainer", "estimators", "sds", "rng", "seed"), ("elapsed",), ("metrics", "history"),
    ])
    value = st.one_of(
        st.tuples(st.just("inject"), st.integers(0, 10_000), st.sampled_from(SPECIAL)),
        st.tuples(st.just("rows"), st.integers(0, 300)),
        st.tuples(st.just("replace"), st.sampled_from([None, -1, 0, 2**70, 1.5, "x", [], {}, torch.zeros(2, 2)])),
        st.tuples(st.just("delete")),
    )
    return st.one_of(
        st.tuples(st.just("bytes"), mutations()),
        st.tuples(st.just("content"), leaf, value, st.booleans()),
    )


def _apply_content(payload: dict, path: tuple, how: tuple) -> dict:
    kind, *a = how
    if kind == "delete":
        return _edited(payload, path, KeyError)

    def change(old):
        if kind == "replace":
            return a[0]
        if not isinstance(old, torch.Tensor) or not old.is_floating_point() or old.numel() == 0:
            return a[1] if kind == "inject" else old
        if kind == "inject":
            return _with(old.reshape(-1), a[0] % old.numel(), a[1]).reshape(old.shape)
        return old[: a[0] % (old.shape[0] + 1)] if old.dim() else old

    return _edited(payload, path, change)


@settings(deadline=None, derandomize=True, max_examples=200,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(m=checkpoint_mutations())
def test_fuzz_checkpoint_import(session, checkpoint, tmp_path_factory, m):
    path = tmp_path_factory.getbasetemp() / "fuzz.pt"
    if m[0] == "bytes":
        path.write_bytes(mutate(checkpoint.read_bytes(), m[1]))
    else:
        payload = _apply_content(load_checkpoint(checkpoint), m[1], m[2])
        if m[3]:
            save_checkpoint(path, payload)
        else:  # the old format: no checksum, so only the content checks stand between it and the trainer
            payload.pop(CHECKSUM_KEY, None)
            payload["format"] = CHECKPOINT_FORMATS[0]
            torch.save(payload, path)
    outcome = load_and_train_or_refuse(session, C.LoadCheckpoint(str(path)))
    event("trained a step" if outcome == "loaded" else "refused")
