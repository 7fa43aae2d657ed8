"""The session engine as a transaction machine: commands that fail leave every object as it was, a failed
step returns to a scene at most N steps old, method switches land on the method's preset, runs end at
their plan, and every reset / load / prompt change starts a new metrics segment."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import torch

import studio.commands as C
from studio import confio
from studio.config import StudioConfig, default_config, method_preset_values, with_values
from studio.session import Session

SMALL = {
    "render.resolution": 16,
    "render.batch": 2,
    "init.num": 120,
    "run.psnr_every": 4,
    "run.view_psnr_every": 0,
    "densify.refine_start": 2,
    "densify.refine_every": 3,
}


def small(method: str = "sds", **extra) -> StudioConfig:
    return with_values(default_config(method), {**SMALL, **extra})


@pytest.fixture
def session(tmp_path):
    s = Session(small(), tmp_path / "run")
    yield s
    s.stop()


def fingerprint(s: Session) -> dict:
    """Everything a failed command must leave bit-identical: config (both sides), scene tensors, Adam
    states, densifier statistics, estimator states, random streams, iteration, segment."""
    tr = s.trainer
    return {
        "config": confio.to_dict(tr.cfg),
        "requested": confio.to_dict(s.config),
        "trainer": copy.deepcopy(tr.state_dict()),
        "prior": id(tr.prior),
        "renderer": id(tr.renderer),
        "settings": {m: e.settings for m, e in tr.estimators.items()},
        "segment": s.state.segment,
        "user_set": s.state.user_set,
    }


def assert_same(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def error_events(s: Session) -> list[str]:
    return [e.text for e in s.snapshot.events if e.level == "error"]


def trains_on(s: Session) -> None:
    it = s.trainer.iteration
    s.run_steps(2)
    assert s.trainer.iteration == it + 2 and s.last_error is None


# ----- failed commands change nothing ----------------------------------------------------------------------
def _checkpoint(s: Session, path: Path) -> dict:
    s.send(C.SaveCheckpoint(str(path)))
    s.drain()
    return torch.load(path, weights_only=True)


def _malformed(good: dict, tmp: Path) -> dict[str, Path]:
    """Fifteen ways a checkpoint goes wrong, each written to a file."""
    def edit(fn):
        p = copy.deepcopy(good)
        fn(p)
        return p

    sc = lambda p: p["trainer"]["scene"]  # noqa: E731
    cases = {
        "wrong format": edit(lambda p: p.update(format="someone-else/1")),
        "no trainer": edit(lambda p: p.pop("trainer")),
        "no scene": edit(lambda p: p["trainer"].pop("scene")),
        "bad config value": edit(lambda p: p["config"]["ism"].update(delta_t=-5)),
        "unknown prompt": edit(lambda p: p["config"]["prompt"].update(prompt="a flying teapot")),
        "model that cannot load": edit(lambda p: p["config"]["prior"].update(model=str(tmp / "no_model"))),
        "means of the wrong shape": edit(lambda p: sc(p)["params"].update(means=torch.zeros(3, 2))),
        "sh0 of another N": edit(lambda p: sc(p)["params"].update(sh0=sc(p)["params"]["sh0"][:5])),
        "Adam moments of the wrong shape": edit(
            lambda p: sc(p)["optimizers"]["means"]["state"][0].update(exp_avg=torch.zeros(2, 3))),
        "densifier statistics of the wrong length": edit(
            lambda p: sc(p)["densifier"]["state"].update(grad2d=torch.zeros(7), count=torch.zeros(7))),
        "negative extent": edit(lambda p: sc(p).update(extent=-1.0)),
        "NaN parameters": edit(lambda p: sc(p)["params"]["means"].__setitem__((0, 0), float("nan"))),
        "unknown estimator": edit(lambda p: p["trainer"]["estimators"].update(vsd={})),
        "broken random state": edit(lambda p: p["trainer"].update(sampler_rng=torch.zeros(3))),
        "iteration not a number": edit(lambda p: p["trainer"].update(iteration="many")),
        "metrics history not pairs": edit(lambda p: p["metrics"].update(history={"loss": [1, 2, 3]})),
    }
    paths = {}
    for name, payload in cases.items():
        paths[name] = tmp / (name.replace(" ", "_") + ".pt")
        torch.save(payload, paths[name])
    raw = (tmp / "good.pt").read_bytes()
    paths["truncated file"] = tmp / "truncated.pt"
    paths["truncated file"].write_bytes(raw[: len(raw) // 2])
    return paths


def test_a_malformed_checkpoint_changes_nothing_and_training_goes_on(session, tmp_path):
    session.run_steps(5)
    good = _checkpoint(session, tmp_path / "good.pt")
    session.run_steps(2)
    session.send(C.UpdateSettings({"ism.delta_t": 77}))
    session.drain()
    for name, path in _malformed(good, tmp_path).items():
        before = fingerprint(session)
        n_errors = len(error_events(session))
        try:
            session.send(C.LoadCheckpoint(str(path)))
        except C.CommandError as e:
            assert "load" in str(e), (name, e)  # refused when sent, with the reason
        else:
            session.drain()  # refused when applied: an event that names the command
            errors = error_events(session)
            assert len(errors) == n_errors + 1 and errors[-1].startswith(f"Load checkpoint {path}"), (name, errors)
        assert_same(fingerprint(session), before, name)
        trains_on(session)
    # and the good one still loads
    session.send(C.LoadCheckpoint(str(tmp_path / "good.pt")))
    session.drain()
    assert session.trainer.iteration == 5 and session.config.ism.delta_t == session.trainer.cfg.ism.delta_t


def test_a_prior_that_fails_to_build_is_rolled_back_and_never_saved(session, tmp_path):
    session.run_steps(3)
    before = fingerprint(session)
    session.send(C.UpdateSettings({"prior.model": str(tmp_path / "missing_sd")}))
    session.send(C.UpdateSettings({"ism.delta_t": 66}))  # queued behind it: still applies
    assert session.config.prior.model.endswith("missing_sd")  # accepted when sent (a valid setting)
    session.drain()
    assert error_events(session)[-1].startswith("Settings prior.model failed; nothing changed")
    assert session.config.prior.model == "procedural" == session.trainer.cfg.prior.model
    assert session.trainer.cfg.ism.delta_t == 66 == session.config.ism.delta_t
    after = fingerprint(session)
    before["config"]["ism"]["delta_t"] = before["requested"]["ism"]["delta_t"] = 66
    for key in ("trainer", "prior", "renderer", "segment", "config", "requested"):
        assert_same(after[key], before[key], key)
    trains_on(session)
    payload = _checkpoint(session, tmp_path / "after.pt")
    assert payload["config"]["prior"]["model"] == "procedural"  # a checkpoint that resumes
    fresh = Session(small(), tmp_path / "other", metrics_file=False)
    fresh.send(C.LoadCheckpoint(str(tmp_path / "after.pt")))
    fresh.drain()
    assert fresh.trainer.iteration == 5 and not error_events(fresh)


def test_a_failing_renderer_switch_changes_nothing(session):
    session.run_steps(2)
    before = fingerprint(session)
    session.send(C.UpdateSettings({"render.renderer": "gsplat"}))  # no CUDA here: it cannot be built
    session.drain()
    assert "Settings render.renderer failed" in error_events(session)[-1]
    assert_same(fingerprint(session), before)
    trains_on(session)
    session.send(C.UpdateSettings({"render.renderer": "reference"}))  # one that can: it is used
    session.drain()
    assert session.trainer.renderer.name == "reference"
    trains_on(session)


def test_a_failure_late_in_a_settings_change_is_rolled_back(session, monkeypatch):
    session.run_steps(2)
    before = fingerprint(session)

    def broken(self, settings):
        raise RuntimeError("simulated failure after the estimators and the sampler were updated")

    monkeypatch.setattr(type(session.trainer.scene), "set_densify_settings", broken)
    session.send(C.UpdateSettings({"ism.delta_t": 90, "camera.radius": "2.0,2.1", "run.seed": 5,
                                   "optim.means_lr": 0.002, "densify.grow_grad2d": 0.001}))
    session.drain()
    assert "simulated failure" in error_events(session)[-1]
    assert_same(fingerprint(session), before)
    assert session.trainer.sampler.ranges == session.trainer.cfg.camera
    monkeypatch.undo()
    trains_on(session)


# ----- recovery from a failed step ---------------------------------------------------------------------------
def test_a_step_failing_mid_update_returns_to_the_good_copy_within_n_steps(tmp_path, monkeypatch):
    cfg = small(**{"run.keep_good_every": 5})
    s = Session(cfg, tmp_path / "a")
    s.run_steps(13)
    reference = Session(cfg, tmp_path / "b", metrics_file=False)
    reference.run_steps(10)
    scene_type = type(s.trainer.scene)
    real = scene_type.optimizer_step

    def half(self, step):  # the means move, then the step dies: a half-updated scene
        self.optimizers["means"].step()
        raise RuntimeError("simulated device error mid-update")

    monkeypatch.setattr(scene_type, "optimizer_step", half)
    s.run_steps(1)
    monkeypatch.setattr(scene_type, "optimizer_step", real)
    assert s.paused and s.last_error and "simulated device error" in s.last_error
    text = error_events(s)[-1]
    assert "step 14 failed" in text and "went back to step 10" in text and "every 5 steps" in text
    assert s.trainer.iteration == 10
    assert_same(s.trainer.state_dict()["scene"], reference.trainer.state_dict()["scene"])
    assert [p[0] for p in s.snapshot.metrics["loss"]] == list(range(1, 11))  # the plot goes back too
    s.send(C.Resume())
    trains_on(s)


def test_a_step_failing_before_the_update_keeps_the_current_scene(session, monkeypatch):
    session.run_steps(7)
    before = copy.deepcopy(session.trainer.state_dict()["scene"])
    monkeypatch.setattr(type(session.trainer.estimators["sds"]), "__call__",
                        lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("simulated OOM")))
    session.run_steps(1)
    assert "the failed step changed nothing" in error_events(session)[-1]
    assert session.trainer.iteration == 7
    assert_same(session.trainer.state_dict()["scene"], before)


def test_a_scene_gone_nonfinite_is_caught_within_n_steps(tmp_path):
    s = Session(small(**{"run.keep_good_every": 4}), tmp_path / "r")
    s.run_steps(9)
    with torch.no_grad():  # an opacity logit at +inf renders fine (sigmoid = 1) and trains on, silently
        s.trainer.scene.params["opacities"][0] = float("inf")
    s.run_steps(3)
    assert s.paused and "became NaN or infinite between steps 8 and 12" in s.last_error
    assert s.trainer.iteration == 8 and s.trainer.scene.is_finite()
    with torch.no_grad():  # a mean at inf: the renderer refuses it, the step fails, the same copy returns
        s.trainer.scene.params["means"][0, 0] = float("inf")
    s.send(C.Resume())
    s.run_steps(1)
    assert "step 9 failed" in error_events(s)[-1] and "went back to step 8" in error_events(s)[-1]
    assert s.trainer.iteration == 8 and s.trainer.scene.is_finite()


# ----- presets ----------------------------------------------------------------------------------------------
def test_switching_estimator_lands_on_its_preset_unless_the_user_set_the_field(tmp_path):
    bare = with_values(StudioConfig(), SMALL)  # dataclass defaults: ISM with a 1500-step warm-up
    assert bare.ism.warmup_steps == 1500
    s = Session(bare, tmp_path / "r", metrics_file=False, user_set={"ism.inv_steps"})
    s.send(C.UpdateSettings({"ism.delta_t": 80}))
    s.send(C.SetMethod("ism"))
    s.drain()
    for path, value in method_preset_values("ism").items():
        expected = {"ism.delta_t": 80, "ism.inv_steps": bare.ism.inv_steps}.get(path, value)
        assert confio.get_path(s.trainer.cfg, path) == expected, path
    assert s.trainer.estimator.settings.warmup_steps == 200
    s.send(C.SetMethod("ssd"))
    s.drain()
    assert s.trainer.cfg.ssd.guidance_scale == 7.5  # stein's, not the dataclass default
    s.send(C.ApplyPreset("lucid"))  # picking a preset applies all of it, the user's fields too
    s.drain()
    assert s.trainer.cfg.run.method == "ism" and s.trainer.cfg.ism.delta_t == 50
    assert "ism.delta_t" not in s.state.user_set
    with pytest.raises(C.CommandError, match="unknown preset"):
        s.send(C.ApplyPreset("nope"))


# ----- runs end, and go on when asked -----------------------------------------------------------------------
def test_the_run_pauses_at_its_plan_and_continue_extends_it(tmp_path):
    s = Session(small(**{"run.steps": 6}), tmp_path / "r", paused=False)
    s.start()
    try:
        snap = s.wait_for(lambda x: x.done and x.paused, timeout=60)
        time.sleep(0.4)
        assert s.trainer.iteration == 6 and s.snapshot.iteration == 6
        assert any(e.text.startswith("done: 6 of 6 planned steps") for e in snap.events)
        s.send(C.StepOnce(1))  # one more, past the plan; still paused, no second "done"
        s.wait_for(lambda x: x.iteration == 7, timeout=30)
        s.send(C.Resume())  # resuming a finished plan extends it by the plan's length
        s.wait_for(lambda x: x.iteration == 13 and x.paused, timeout=60)
        assert s.snapshot.planned_steps == 13
        s.send(C.Continue(4))
        s.wait_for(lambda x: x.iteration == 17 and x.paused, timeout=60)
        time.sleep(0.3)
        assert s.trainer.iteration == 17
        dones = [e for e in s.snapshot.events if e.text.startswith("done:")]
        assert len(dones) == 3
    finally:
        s.stop()


# ----- segments ---------------------------------------------------------------------------------------------
def rows(folder: Path) -> list[tuple[int, int]]:
    return [(r["segment"], r["step"]) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]


def test_reset_load_and_prompt_change_start_new_segments(tmp_path):
    folder = tmp_path / "run"
    s = Session(small(), folder)
    s.run_steps(3)
    ckpt = tmp_path / "c.pt"
    _checkpoint(s, ckpt)
    s.send(C.Reset())
    s.drain()
    assert s.snapshot.segment == 2 and s.snapshot.metrics.get("loss", ()) == () and s.snapshot.elapsed == 0
    s.run_steps(2)
    s.send(C.SetPrompt("a ball"))
    s.drain()
    s.run_steps(2)
    s.send(C.LoadCheckpoint(str(ckpt)))
    s.drain()
    assert [p[0] for p in s.snapshot.metrics["loss"]] == [1, 2, 3]  # the checkpoint's own curve
    s.run_steps(1)
    s.send(C.UpdateSettings({"sds.guidance_scale": 20.0}))  # not a new segment
    s.drain()
    s.run_steps(1)
    assert rows(folder) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 3), (3, 4), (4, 4), (4, 5)]
    assert s.snapshot.its >= 0
    again = Session(small(), folder)  # the same folder again: numbering goes on
    again.run_steps(1)
    assert rows(folder)[-1] == (5, 1)


def test_psnr_ref_is_measured_at_the_viewer_resolution_too(tmp_path):
    s = Session(small(**{"run.view_psnr_every": 3, "run.view_resolution": 64}), tmp_path / "r")
    s.run_steps(6)
    assert [p[0] for p in s.snapshot.metrics["psnr_view"]] == [3, 6]
    at_64 = float(s.trainer.score(64).psnr)
    assert s.snapshot.metrics["psnr_view"][-1][1] == pytest.approx(at_64, abs=1e-4)
    assert abs(at_64 - float(s.trainer.score().psnr)) > 1e-3  # a different measurement than at 16 px


def test_a_queued_load_shows_the_loaded_settings_at_once(tmp_path):
    a = Session(small(**{"prompt.prompt": "a ball"}), tmp_path / "a")
    a.run_steps(2)
    ckpt = tmp_path / "ball.pt"
    _checkpoint(a, ckpt)
    b = Session(small(), tmp_path / "b")
    b.send(C.LoadCheckpoint(str(ckpt)))
    assert b.config.prompt.prompt == "a ball"  # what the UI shows before the worker has loaded it
    b.send(C.UpdateSettings({"sds.guidance_scale": 12.0}))  # validated against the loaded settings
    b.drain()
    assert b.trainer.cfg.prompt.prompt == "a ball" and b.trainer.cfg.sds.guidance_scale == 12.0
    assert b.config == b.trainer.cfg


def test_the_engine_imports_flow_one_way():
    """session -> handlers -> state -> trainer; nothing below the session imports it (no cycle)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "studio"
    for name in ("state", "handlers", "publish", "snapshot", "trainer", "scene"):
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "session" not in imported and "ui" not in imported, (name, imported)
