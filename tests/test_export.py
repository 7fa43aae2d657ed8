"""Exports: PLY round trip, .splat and ply_compressed contents, turntable videos, atomic writes under
crashes, kills and unwritable paths, checkpoints and JSON sidecars."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from plyfile import PlyData

import renderers
from studio.atomic import ExportError, ReadError, atomic_write, clean_stale_temps, write_bytes_atomic
from studio.export import (TurntableSettings, export_splats, export_turntable, load_checkpoint, read_gaussian_ply,
                           read_point_ply, render_turntable, save_checkpoint, write_json_atomic)
from studio.scene import GaussianScene

ROOT = Path(__file__).resolve().parent.parent
C0 = 0.28209479177387814


def random_raw(n: int, sh_degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Raw tensors with every field distinct and unnormalized quaternions."""
    g = torch.Generator().manual_seed(seed)
    k1 = (sh_degree + 1) ** 2 - 1
    return {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3,
        "quats": 3 * torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k1, 3, generator=g),
    }


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


# ----- splat formats ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sh_degree", [0, 3])
def test_ply_round_trip_preserves_every_raw_parameter(tmp_path, sh_degree):
    raw = random_raw(257, sh_degree)
    res = export_splats(raw, tmp_path / "a.ply", "ply")
    assert res.num_written == 257 and res.num_dropped == 0
    back = read_gaussian_ply(tmp_path / "a.ply")
    for k, v in raw.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k  # quats as stored, unnormalized
    scene = GaussianScene.from_ply(tmp_path / "a.ply")
    assert scene.sh_degree == sh_degree
    assert all(torch.equal(scene.params[k].detach(), raw[k]) for k in raw)
    export_splats(scene.params, tmp_path / "b.ply", "ply")  # a scene's ParameterDict exports as is
    assert (tmp_path / "b.ply").read_bytes() == (tmp_path / "a.ply").read_bytes()


def test_ply_uses_the_3dgs_field_layout(tmp_path):
    raw = random_raw(5, 1)
    export_splats(raw, tmp_path / "a.ply", "ply")
    v = PlyData.read(str(tmp_path / "a.ply"))["vertex"].data
    rest = [f"f_rest_{j}" for j in range(9)]
    assert list(v.dtype.names) == ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
                                   "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    # channel-major f_rest: red's three coefficients, then green's, then blue's
    for c in range(3):
        for k in range(3):
            assert np.array_equal(v[f"f_rest_{c * 3 + k}"], raw["shN"][:, k, c].numpy())
    assert np.array_equal(v["opacity"], raw["opacities"].numpy())


def test_non_finite_gaussians_are_counted_not_hidden(tmp_path):
    raw = random_raw(10, 0)
    raw["means"][2, 0] = float("nan")
    raw["opacities"][7] = float("inf")
    res = export_splats(raw, tmp_path / "a.ply", "ply")
    assert (res.num_written, res.num_dropped) == (8, 2)
    back = read_gaussian_ply(tmp_path / "a.ply")
    keep = torch.tensor([i not in (2, 7) for i in range(10)])
    assert torch.equal(back["means"], raw["means"][keep])


def test_splat_is_32_bytes_per_gaussian_with_the_expected_fields(tmp_path):
    raw = random_raw(100, 2)
    res = export_splats(raw, tmp_path / "a.splat", "splat")
    data = (tmp_path / "a.splat").read_bytes()
    assert len(data) == res.num_bytes == 32 * 100
    rec = np.frombuffer(data, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    order = torch.from_numpy(rec["pos"].copy())
    idx = torch.cdist(order, raw["means"]).argmin(dim=1)  # the file is sorted along a Morton curve
    assert sorted(idx.tolist()) == list(range(100))
    assert np.allclose(rec["scale"], torch.exp(raw["scales"][idx]).numpy(), rtol=1e-6)
    rgb = ((raw["sh0"][idx, 0] * C0 + 0.5) * 255).clamp(0, 255)
    assert np.abs(rec["rgba"][:, :3].astype(float) - rgb.numpy()).max() <= 1.0
    alpha = torch.sigmoid(raw["opacities"][idx]) * 255
    assert np.abs(rec["rgba"][:, 3].astype(float) - alpha.numpy()).max() <= 1.0
    q = torch.nn.functional.normalize(raw["quats"][idx], dim=-1)
    assert np.abs((rec["rot"].astype(float) - 128) / 128 - q.numpy()).max() <= 1.0 / 128 + 1e-6


def test_ply_compressed_runs_on_cpu_and_decodes_to_the_positions(tmp_path):
    raw = random_raw(600, 3)
    raw["opacities"][:50] = -10.0  # opacity 4.5e-5 < 1/255: this format leaves them out
    res = export_splats(raw, tmp_path / "a.compressed.ply", "ply_compressed")
    assert res.num_written == 550
    ply = PlyData.read(str(tmp_path / "a.compressed.ply"))
    chunk, vert, sh = ply["chunk"].data, ply["vertex"].data, ply["sh"].data
    assert (len(chunk), len(vert), len(sh)) == (3, 550, 550) and len(sh.dtype.names) == 45
    pos = vert["packed_position"].astype(np.int64)
    t = np.stack([(pos >> 21) & 0x7FF, (pos >> 11) & 0x3FF, pos & 0x7FF], axis=-1) / np.array([2047, 1023, 2047])
    ci = np.arange(550) // 256
    lo = np.stack([chunk["min_x"], chunk["min_y"], chunk["min_z"]], -1)[ci]
    hi = np.stack([chunk["max_x"], chunk["max_y"], chunk["max_z"]], -1)[ci]
    xyz = torch.from_numpy(lo + t * (hi - lo)).float()
    kept = raw["means"][50:]
    err = torch.cdist(xyz, kept).min(dim=1).values
    assert err.max() < 0.01 * float(hi.max() - lo.min())  # 10-11 bit quantization per chunk
    assert torch.cdist(kept, xyz).min(dim=1).values.max() < 0.01 * float(hi.max() - lo.min())


def test_point_cloud_ply_initializes_a_scene(tmp_path):
    from plyfile import PlyElement

    xyz = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    arr = np.zeros(40, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    arr["x"], arr["y"], arr["z"] = xyz.T
    arr["red"] = 255
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "pc.ply"))
    pts, rgb = read_point_ply(tmp_path / "pc.ply")
    assert torch.equal(pts, torch.from_numpy(xyz)) and torch.equal(rgb[:, 0], torch.ones(40))
    with pytest.raises(ReadError, match="not a 3DGS PLY"):
        read_gaussian_ply(tmp_path / "pc.ply")
    scene = GaussianScene.from_ply(tmp_path / "pc.ply", opacity=0.2)
    assert scene.num_gaussians == 40 and torch.allclose(scene.to_params().opacities, torch.full((40,), 0.2))
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(ReadError, match="junk.ply"):
        read_gaussian_ply(tmp_path / "junk.ply")


# ----- turntables ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def turntable_frames():
    scene = GaussianScene.ball(60, 0.6, seed=1, opacity=0.8)
    params = scene.to_params().detach()
    settings = TurntableSettings(frames=6, size=32, radius=2.5, batch=4)
    calls: list[tuple[int, int]] = []
    frames = render_turntable(renderers.make_renderer("cpu"), params, settings, progress=lambda d, t: calls.append((d, t)))
    return params, settings, frames, calls


@pytest.mark.parametrize("suffix, tol", [(".mp4", 8.0), (".gif", 5.0)])
def test_turntable_is_readable_back_with_frame_count_size_and_content(tmp_path, turntable_frames, suffix, tol):
    params, settings, frames, calls = turntable_frames
    assert calls == [(4, 6), (6, 6)]
    assert frames.shape == (6, 32, 32, 3) and frames.std() > 10  # the object is there, not a blank frame
    res = export_turntable(renderers.make_renderer("cpu"), params, tmp_path / f"t{suffix}", settings)
    back = iio.imread(tmp_path / f"t{suffix}")
    assert res.num_written == 6 and back.shape == (6, 32, 32, 3)
    assert np.abs(back.astype(float) - frames.astype(float)).mean() < tol  # lossy, but the same images
    assert leftovers(tmp_path) == []


def test_turntable_settings_name_the_bad_field(tmp_path):
    with pytest.raises(ValueError, match=r"turntable\.size"):
        TurntableSettings(size=31).validate()
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        export_turntable(renderers.make_renderer("cpu"), None, tmp_path / "t.avi")


# ----- atomic writes -----------------------------------------------------------------------------------

def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "scene.ply"
    target.write_bytes(b"old complete file")

    def writer(f):
        f.write(b"x" * 100_000)
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash mid-write"):
        write_bytes_atomic(target, writer)
    assert target.read_bytes() == b"old complete file" and leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old complete file" and leftovers(tmp_path) == []


def test_a_failing_rename_is_an_export_error_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.ply"
    export_splats(random_raw(20, 0), target, "ply")
    old = target.read_bytes()

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(ExportError, match="No space left") as e:
        export_splats(random_raw(30, 0, seed=1), target, "ply")
    assert e.value.path == str(target)
    assert target.read_bytes() == old and leftovers(tmp_path) == []


def test_unwritable_paths_are_export_errors_naming_the_path(tmp_path):
    blocker = tmp_path / "plain_file"
    blocker.write_text("I am a file")
    before = sorted(p.name for p in tmp_path.iterdir())
    for bad in (blocker / "scene.ply", blocker / "deeper" / "scene.ply"):
        with pytest.raises(ExportError, match="plain_file is a file") as e:
            export_splats(random_raw(5, 0), bad, "ply")
        assert e.value.path == str(bad)
    with pytest.raises(ExportError, match="directory"):
        write_json_atomic(tmp_path, {"a": 1})  # the target is a directory
    with pytest.raises(ExportError):
        save_checkpoint(blocker / "ck.pt", {"x": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == before and blocker.read_text() == "I am a file"


def test_stale_temps_of_dead_processes_are_cleaned_on_the_next_write(tmp_path):
    target = tmp_path / "a.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".a.json.tmp-{dead_pid}-abcd1234.json"
    mine = tmp_path / f".a.json.tmp-{os.getpid()}-abcd1234.json"  # a live writer's: must survive
    stale.write_text("half")
    mine.write_text("in progress")
    write_json_atomic(target, {"prompt": "a red cube", "steps": 3})
    assert json.loads(target.read_text()) == {"prompt": "a red cube", "steps": 3}
    assert not stale.exists() and mine.exists()
    assert clean_stale_temps(target) == 0


def test_json_that_cannot_be_serialized_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "c.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


KILL_SCRIPT = r"""
import os, sys, time
import torch
from studio.atomic import write_bytes_atomic
from studio.export import export_splats

target, marker, mode = sys.argv[1], sys.argv[2], sys.argv[3]

def raw(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {"means": torch.randn(n, 3, generator=g), "scales": torch.randn(n, 3, generator=g),
            "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g),
            "sh0": torch.randn(n, 1, 3, generator=g), "shN": torch.randn(n, 15, 3, generator=g)}

if mode == "writer":  # killed in the middle of writing the bytes
    def slow(f):
        f.write(b"x" * (1 << 20)); f.flush()
        open(marker, "w").close()
        time.sleep(120)
    write_bytes_atomic(target, slow)
elif mode == "commit":  # a real export, killed when all is on disk under the temporary name, before the rename
    real_fsync = os.fsync
    def hang(fd):
        real_fsync(fd); open(marker, "w").close(); time.sleep(120)
    os.fsync = hang
    export_splats(raw(50_000, 1), target, "ply")
else:  # PLY files streamed in small chunks (as a video encoder writes), in a loop, killed whenever
    from gsplat.exporter import export_splats as ply_bytes
    files = [ply_bytes(*raw(20_000, s).values(), format="ply") for s in (0, 1)]
    i = 0
    while True:
        data = files[i % 2]
        def stream(f):
            for j in range(0, len(data), 1 << 16):
                f.write(data[j:j + (1 << 16)]); f.flush(); time.sleep(0.002)  # most time is mid-file
        write_bytes_atomic(target, stream)
        i += 1
        open(marker, "w").close()
"""


def _run_and_kill(tmp_path: Path, target: Path, mode: str, delay: float = 0.0) -> None:
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(target), str(marker), mode], env=env, cwd=str(ROOT))
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, f"the writer exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "the writer never started"
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["writer", "commit"])
def test_sigkill_mid_export_leaves_the_old_file_and_the_next_write_cleans_up(tmp_path, mode):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "scene.ply"
    old = random_raw(10, 0, seed=7)
    export_splats(old, target, "ply")
    old_bytes = target.read_bytes()
    _run_and_kill(tmp_path, target, mode)
    assert target.read_bytes() == old_bytes  # the old complete file, untouched
    assert len(leftovers(out)) == 1  # the killed writer's temp: nobody could remove it...
    export_splats(random_raw(12, 0), target, "ply")
    assert leftovers(out) == []  # ...until the next write to the same target
    assert read_gaussian_ply(target)["means"].shape == (12, 3)


def test_sigkill_at_an_arbitrary_moment_never_leaves_a_partial_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "scene.ply"
    _run_and_kill(tmp_path, target, "loop", delay=0.3)
    back = read_gaussian_ply(target)  # parses completely: some whole export, never a torn one
    assert back["means"].shape == (20_000, 3) and back["shN"].shape == (20_000, 15, 3)


# ----- checkpoints -----------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    payload = {"iteration": 12, "scene": {"means": torch.randn(4, 3)}, "name": "run", "betas": (0.9, 0.99)}
    save_checkpoint(tmp_path / "ck" / "a.pt", payload)
    back = load_checkpoint(tmp_path / "ck" / "a.pt")
    assert back["iteration"] == 12 and back["betas"] == (0.9, 0.99)
    assert torch.equal(back["scene"]["means"], payload["scene"]["means"])
    with pytest.raises(ReadError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ReadError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    assert leftovers(tmp_path / "ck") == []
