"""Camera maths: orbit / look_at geometry (property tests), view buckets, the seeded sampler."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from renderers.camera import CameraRanges, Cameras, CameraSampler, look_at, orbit, view_bucket

azimuths = st.floats(-360.0, 360.0)
elevations = st.floats(-85.0, 85.0)
radii = st.floats(0.5, 20.0)
fovs = st.floats(10.0, 120.0)
sizes = st.integers(1, 512)
targets = st.tuples(*[st.floats(-5.0, 5.0)] * 3)


def _project(cams: Cameras, points: torch.Tensor) -> torch.Tensor:
    """[B, 3] world points -> [B, 3] (u, v, z) in pixels and camera depth."""
    p_cam = (cams.viewmats[:, :3, :3] @ points[..., None])[..., 0] + cams.viewmats[:, :3, 3]
    uvw = (cams.Ks @ p_cam[..., None])[..., 0]
    return torch.cat([uvw[:, :2] / uvw[:, 2:], p_cam[:, 2:]], dim=-1)


@settings(max_examples=60, deadline=None)
@given(azimuths, elevations, radii, fovs, sizes, sizes, targets)
def test_orbit_geometry(az, el, r, fov, width, height, target):
    cams = orbit(az, el, r, fov, width, height, target=target).to("cpu", torch.float64)
    a, e = math.radians(az), math.radians(el)
    expected_eye = torch.tensor(target, dtype=torch.float64) + r * torch.tensor(
        [math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=torch.float64)
    torch.testing.assert_close(cams.centers[0], expected_eye, atol=2e-6 * (1 + r), rtol=0)  # float32 orbit

    R = cams.viewmats[0, :3, :3]
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(torch.linalg.det(R).item() - 1.0) < 1e-6
    torch.testing.assert_close(cams.viewmats[0, 3], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64))

    uvz = _project(cams, torch.tensor([target], dtype=torch.float64))[0]
    torch.testing.assert_close(uvz[:2], torch.tensor([width / 2, height / 2], dtype=torch.float64),
                               atol=0.01, rtol=0)  # pixels; float32 cameras reach ~1e-3
    assert uvz[2] == pytest.approx(r, rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(azimuths, st.floats(-70.0, 70.0), radii, fovs)
def test_world_up_is_image_up(az, el, r, fov):
    cams = orbit(az, el, r, fov, 64, 64).to("cpu", torch.float64)
    up = 0.05 * r * torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    v_centre, v_above = _project(cams, torch.zeros(1, 3, dtype=torch.float64))[0, 1], _project(cams, up)[0, 1]
    assert v_above < v_centre, "a point above the target must appear higher in the image (smaller v)"


@settings(max_examples=30, deadline=None)
@given(st.tuples(*[st.floats(-10, 10)] * 3), st.tuples(*[st.floats(-10, 10)] * 3))
def test_look_at_points_the_optical_axis_at_the_target(eye, target):
    eye_t, target_t = torch.tensor([eye], dtype=torch.float64), torch.tensor([target], dtype=torch.float64)
    if (eye_t - target_t).norm() < 1e-2:
        return
    vm = look_at(eye_t, target_t)
    p_cam = vm[0, :3, :3] @ target_t[0] + vm[0, :3, 3]
    torch.testing.assert_close(p_cam[:2], torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
    assert p_cam[2] == pytest.approx((eye_t - target_t).norm().item())
    assert abs(torch.linalg.det(vm[0, :3, :3]).item() - 1.0) < 1e-9


@pytest.mark.parametrize(
    "az, el, bucket",
    [(0.0, 0.0, "front"), (44.9, 0.0, "front"), (-44.9, 10.0, "front"), (45.0, 0.0, "side"),
     (-45.0, 0.0, "side"), (90.0, 0.0, "side"), (135.0, 0.0, "side"), (135.1, 0.0, "back"),
     (-135.1, 0.0, "back"), (180.0, 0.0, "back"), (-180.0, 0.0, "back"), (359.0, 0.0, "front"),
     (-315.5, 0.0, "front"), (225.0, 0.0, "side"), (0.0, 60.0, "front"), (0.0, 60.1, "overhead"),
     (180.0, 89.0, "overhead"), (90.0, -89.0, "side")],
)
def test_view_bucket_boundaries(az, el, bucket):
    assert view_bucket(az, el) == bucket


def test_sampler_is_reproducible_and_its_state_round_trips():
    ranges = CameraRanges(radius=(2.0, 4.0), elevation_deg=(-10.0, 50.0), fovy_deg=(30.0, 60.0))
    a, b = CameraSampler(ranges, 32, 24, seed=7), CameraSampler(ranges, 32, 24, seed=7)
    first_a, first_b = a.sample(4), b.sample(4)
    assert torch.equal(first_a.cameras.viewmats, first_b.cameras.viewmats)
    assert torch.equal(first_a.cameras.Ks, first_b.cameras.Ks)
    assert not torch.equal(CameraSampler(ranges, 32, 24, seed=8).sample(4).azimuth_deg, first_a.azimuth_deg)
    assert ((first_a.radius >= 2.0) & (first_a.radius <= 4.0)).all()
    assert ((first_a.elevation_deg >= -10.0) & (first_a.elevation_deg <= 50.0)).all()
    assert first_a.buckets == [view_bucket(x, y) for x, y in zip(first_a.azimuth_deg.tolist(),
                                                                  first_a.elevation_deg.tolist())]

    state = a.get_state()
    next_batch = a.sample(3)
    a.set_state(state)
    replay = a.sample(3)
    assert torch.equal(next_batch.cameras.viewmats, replay.cameras.viewmats)
    assert torch.equal(next_batch.azimuth_deg, replay.azimuth_deg)


def test_bad_ranges_and_cameras_are_refused():
    with pytest.raises(ValueError, match="camera.fovy_deg"):
        CameraSampler(CameraRanges(fovy_deg=(0.0, 50.0)), 32, 32)
    with pytest.raises(ValueError, match="camera.radius"):
        CameraSampler(CameraRanges(radius=(3.0, 2.0)), 32, 32)
    with pytest.raises(ValueError, match="radius must be > 0"):
        orbit(0.0, 0.0, 0.0, 40.0, 8, 8)
    with pytest.raises(ValueError, match="Ks"):
        Cameras(torch.eye(4)[None].expand(2, 4, 4), torch.eye(3)[None], 8, 8)
