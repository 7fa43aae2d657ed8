"""The session engine: commands, threads, failures, checkpoints and exports, as a front-end uses them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import studio.commands as C
from studio import confio
from studio.config import StudioConfig, default_config, with_values
from studio.session import Session

SMALL = {
    "render.resolution": 24,
    "render.batch": 2,
    "init.num": 200,
    "run.psnr_every": 5,
    "densify.refine_start": 4,
    "densify.refine_every": 4,
}


def small_config(method: str = "sds", **extra) -> StudioConfig:
    return with_values(default_config(method), {**SMALL, **extra})


@pytest.fixture
def session(tmp_path):
    s = Session(small_config(), tmp_path / "out")
    yield s
    s.stop()


def params_of(s: Session) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in s.trainer.scene.raw().items()}


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"parameter {k} differs")


# ----- each command changes what it should and nothing else ------------------------------------------------
@pytest.mark.parametrize(
    "cmd, path, expected",
    [
        (C.SetPrompt("a cube"), "prompt.prompt", "a cube"),
        (C.SetPrompt("a red cube", negative="a sphere"), "prompt.negative", "a sphere"),
        (C.SetMethod("ism"), "run.method", "ism"),
        (C.UpdateSettings({"ism.delta_t": 80}), "ism.delta_t", 80),
        (C.UpdateSettings({"ssd.mu_mode": "fixed", "ssd.mu": 0.5}), "ssd.mu", 0.5),
        (C.UpdateSettings({"camera.radius": "2.5,3.0"}), "camera.radius", (2.5, 3.0)),
        (C.UpdateSettings({"optim.sh0_lr": 0.01}), "optim.sh0_lr", 0.01),
        (C.UpdateSettings({"densify.enabled": False}), "densify.enabled", False),
        (C.SetSeed(7), "run.seed", 7),
    ],
)
def test_settings_commands_change_only_their_field(session, cmd, path, expected):
    before = confio.to_dict(session.trainer.cfg)
    session.send(cmd)
    session.drain()
    after_cfg = session.trainer.cfg
    assert confio.get_path(after_cfg, path) == expected
    assert confio.get_path(session.config, path) == expected
    after = confio.to_dict(after_cfg)
    changed = {f"{sec}.{k}" for sec in before for k in before[sec] if before[sec][k] != after[sec][k]}
    changed_paths = {p for p in changed}
    touched = set(cmd.values) if isinstance(cmd, C.UpdateSettings) else {path}
    assert changed_paths <= touched, f"{cmd} also changed {changed_paths - touched}"


def test_settings_reach_the_objects_that_use_them(session):
    session.send(C.UpdateSettings({"ism.delta_t": 80, "optim.sh0_lr": 0.02, "camera.radius": "2.0,2.2"}))
    session.send(C.SetMethod("ism"))
    session.drain()
    tr = session.trainer
    assert tr.estimator.name == "ism" and tr.estimator.settings.delta_t == 80
    assert tr.sampler.ranges.radius == (2.0, 2.2)
    session.run_steps(1)
    assert tr.scene.optimizers["sh0"].param_groups[0]["lr"] == pytest.approx(0.02, rel=0.2)


@pytest.mark.parametrize(
    "cmd, field",
    [
        (C.UpdateSettings({"ism.delta_t": -5}), "ism.delta_t"),
        (C.UpdateSettings({"sds.guidance_scale": "lots"}), "sds.guidance_scale"),
        (C.UpdateSettings({"render.resolution": 4}), "render.resolution"),
        (C.UpdateSettings({"no.such": 1}), "no.such"),
        (C.SetMethod("vsd"), "run.method"),
        (C.SetPrompt("a flying teapot"), "prompt"),
        (C.SetSeed(-1), "run.seed"),
        (C.StepOnce(0), "count"),
        (C.Export(formats=("fbx",)), "export"),
        (C.LoadCheckpoint("/nonexistent/x.pt"), "load"),
    ],
)
def test_bad_values_are_refused_without_side_effects(session, cmd, field):
    before_cfg = session.config
    before_params = params_of(session)
    with pytest.raises(C.CommandError, match=field.split(".")[0]):
        session.send(cmd)
    session.drain()
    assert session.config == before_cfg
    assert session.trainer.cfg == before_cfg
    assert_same_params(params_of(session), before_params)
    assert session.snapshot.last_error is None


def test_unknown_prompt_message_lists_the_known_ones(session):
    with pytest.raises(C.CommandError) as err:
        session.send(C.SetPrompt("a flying teapot"))
    assert "a red cube" in str(err.value)


# ----- estimator switching, pause / resume -------------------------------------------------------------------
def test_switching_estimators_keeps_the_scene(session):
    session.run_steps(3)
    for method in ("ism", "ssd", "sds"):
        n, before = session.trainer.scene.num_gaussians, params_of(session)
        session.send(C.SetMethod(method))
        session.drain()
        assert session.trainer.scene.num_gaussians == n
        assert_same_params(params_of(session), before)
        session.run_steps(2)
        assert session.snapshot.method == method
    assert session.snapshot.iteration == 9


def test_pause_stops_steps_and_resume_continues(session):
    session.start()
    session.wait_for(lambda s: s.iteration >= 2, timeout=60)
    session.send(C.Pause())
    paused = session.wait_for(lambda s: s.paused, timeout=30)
    it = session.trainer.iteration
    import time

    time.sleep(0.5)
    assert session.trainer.iteration == it and session.snapshot.iteration == it
    session.send(C.StepOnce(2))
    session.wait_for(lambda s: s.iteration == it + 2, timeout=30)
    time.sleep(0.3)
    assert session.trainer.iteration == it + 2
    session.send(C.Resume())
    session.wait_for(lambda s: s.iteration >= it + 4 and not s.paused, timeout=60)
    assert paused.iteration <= it


def test_reset_reinitializes_and_keeps_settings(session):
    session.send(C.UpdateSettings({"ism.delta_t": 70}))
    session.run_steps(3)
    session.send(C.Reset())
    session.drain()
    fresh = Session(with_values(small_config(), {"ism.delta_t": 70}), session.out_dir / "x", metrics_file=False)
    assert session.trainer.iteration == 0
    assert session.trainer.cfg.ism.delta_t == 70
    assert_same_params(params_of(session), params_of(fresh))


# ----- failures ---------------------------------------------------------------------------------------------
def test_a_failing_step_pauses_with_the_error_and_keeps_the_scene(session, monkeypatch):
    session.run_steps(2)
    good = params_of(session)

    def broken(*a, **k):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(type(session.trainer.estimators["sds"]), "__call__", lambda self, *a, **k: broken())
    session.start()
    snap = session.wait_for(lambda s: s.last_error is not None, timeout=30)
    assert "simulated out of memory" in snap.last_error and snap.paused
    assert any(e.level == "error" and "simulated" in e.text for e in snap.events)
    assert_same_params(params_of(session), good)
    assert session.running  # the worker survived


def test_nonfinite_gradients_skip_the_step(session, monkeypatch):
    tr = session.trainer
    orig = tr.renderer._fn

    def nan_grad_render(params, cams, bg):
        out = orig(params, cams, bg)
        out.rgb = out.rgb + (params.means.sum() * float("nan"))
        return out

    monkeypatch.setattr(tr.renderer, "_fn", nan_grad_render)
    before = params_of(session)
    session.run_steps(1)
    assert tr.skipped_steps == 1
    assert_same_params(params_of(session), before)
    assert any("non-finite" in e.text for e in session.snapshot.events)


# ----- checkpoints, export / import ---------------------------------------------------------------------------
def test_checkpoint_resume_equals_the_uninterrupted_run(tmp_path):
    cfg = small_config("ssd")
    a = Session(cfg, tmp_path / "a", metrics_file=False)
    a.run_steps(6)
    ckpt = tmp_path / "mid.pt"
    a.send(C.SaveCheckpoint(str(ckpt)))
    a.drain()
    a.run_steps(6)  # crosses a densification step (refine_every = 4)

    b = Session(small_config("sds", **{"run.seed": 99}), tmp_path / "b", metrics_file=False)
    b.send(C.LoadCheckpoint(str(ckpt)))
    b.drain()
    assert b.trainer.iteration == 6 and b.trainer.cfg == cfg
    b.run_steps(6)
    assert a.trainer.scene.num_gaussians == b.trainer.scene.num_gaussians
    assert_same_params(params_of(a), params_of(b))
    mu_a = a.trainer.estimators["ssd"].state_dict()
    mu_b = b.trainer.estimators["ssd"].state_dict()
    assert str(mu_a) == str(mu_b)


def test_export_then_import_preserves_every_parameter(session, tmp_path):
    session.send(C.UpdateSettings({"init.sh_degree": 1}))
    session.send(C.Reset())
    session.run_steps(3)
    before = params_of(session)
    session.send(C.Export(formats=("ply", "splat"), out_dir=str(tmp_path / "exp"), name="asset"))
    session.drain()
    ply = tmp_path / "exp" / "asset.ply"
    assert ply.is_file() and (tmp_path / "exp" / "asset.splat").is_file()
    sidecar = (tmp_path / "exp" / "asset.ply.json").read_text()
    assert '"seed": 0' in sidecar and '"iteration": 3' in sidecar
    session.send(C.LoadPly(str(ply)))
    session.drain()
    after = params_of(session)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    assert any(e.path == str(ply) for e in session.snapshot.events)


def test_an_unwritable_export_is_an_error_event_and_the_session_goes_on(session, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(C.CommandError, match="is a file"):
        session.send(C.Export(formats=("ply",), out_dir=str(blocker / "sub")))
    # a failure only found while writing (the folder vanishes between send and apply) is an event
    target = tmp_path / "later"
    session.send(C.Export(formats=("ply",), out_dir=str(target / "x")))
    target.write_text("now a file")
    session.drain()
    assert any(e.level == "error" and "later" in e.text for e in session.snapshot.events)
    session.run_steps(1)
    assert session.snapshot.last_error is None and session.trainer.iteration == 1


def test_snapshots_are_immutable_and_carry_what_the_ui_needs(session):
    session.run_steps(5)
    snap = session.snapshot
    assert dataclasses.is_dataclass(snap)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.iteration = 0  # type: ignore[misc]
    assert snap.iteration == 5 and snap.num_gaussians == session.trainer.scene.num_gaussians
    assert snap.splats.means.shape == (snap.num_gaussians, 3)
    assert snap.preview.shape == (24, 24, 3) and snap.reference.shape == (24, 24, 3)
    assert {"loss", "grad_var", "grad_norm", "psnr_ref"} <= set(snap.latest)
    assert [p[0] for p in snap.metrics["loss"]] == [1, 2, 3, 4, 5]
    assert snap.publish_ms > 0
    lines = (session.out_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5
