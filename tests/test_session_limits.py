"""The session under floods and runaway settings: a bounded command queue whose settings edits merge, and a
run that skips most of its steps pauses (headless: exits 1 with a checkpoint) instead of going on forever."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import studio.commands as C
from studio.config import default_config, with_values
from studio.session import MAX_QUEUED, Session

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"render.resolution": 16, "render.batch": 2, "init.num": 120, "run.psnr_every": 0,
         "run.view_psnr_every": 0, "densify.enabled": False}
RUNAWAY = {f"optim.{n}_lr{end}": 10.0 for n in ("means", "sh0", "opacities", "scales", "quats")
           for end in ("", "_final")}  # the allowed maximum: nearly every step's gradients overflow


@pytest.fixture
def session(tmp_path):
    s = Session(with_values(default_config("ism"), SMALL), tmp_path / "run", paused=True)
    yield s
    s.stop()


def test_settings_edits_merge_while_waiting(session):
    for i in range(1000):  # a slider dragged for a while, faster than the worker takes them
        session.update(**{"ism.delta_t": 10 + i % 90})
    session.update(**{"ism.delta_s": 150})
    assert session.queued == 1
    assert session.config.ism.delta_t == 10 + 999 % 90 and session.config.ism.delta_s == 150
    session.drain()
    assert session.queued == 0
    assert session.trainer.cfg.ism.delta_t == 10 + 999 % 90 and session.trainer.cfg.ism.delta_s == 150


def test_an_edit_that_builds_fails_or_applies_alone(session, tmp_path):
    session.update(**{"ism.delta_t": 30})
    session.update(**{"prior.model": str(tmp_path / "missing_sd")})  # builds a prior: never merged
    session.update(**{"ism.delta_t": 40})
    assert session.queued == 3
    session.drain()
    assert session.trainer.cfg.ism.delta_t == 40 and session.trainer.cfg.prior.model == "procedural"


def test_the_queue_is_bounded_and_says_so(session):
    for _ in range(MAX_QUEUED - 1):
        session.send(C.Pause())
    session.update(**{"ism.delta_t": 30})
    assert session.queued == MAX_QUEUED
    session.update(**{"ism.delta_t": 40})  # full, but an edit still merges into the waiting edit
    for cmd in (C.Resume(), C.SetSeed(3)):
        with pytest.raises(C.CommandError, match=f"busy: {MAX_QUEUED} commands are waiting"):
            session.send(cmd)
    assert session.queued == MAX_QUEUED and session.config.run.seed == 0  # the refused one changed nothing
    session.drain()
    assert session.trainer.cfg.ism.delta_t == 40
    session.send(C.SetSeed(3))
    session.drain()
    assert session.trainer.cfg.run.seed == 3


def test_a_stream_of_edits_is_not_a_snapshot_each(session):
    session.start()  # paused: the worker takes each edit as it comes
    session.wait_for(lambda s: s.version > 0)
    before = session.snapshot.version
    for i in range(400):  # one every 2 ms, for about a second (400 snapshots before DIRTY_GAP_S)
        session.update(**{"ism.delta_t": 10 + i % 90})
        time.sleep(0.002)
    session.wait_for(lambda s: s.config.ism.delta_t == 10 + 399 % 90, 30)
    published = session.snapshot.version - before
    assert published < 100, f"{published} snapshots for 400 edits"


def runaway_session(tmp_path, **extra):
    return Session(with_values(default_config("sds"), {**SMALL, **RUNAWAY, **extra}), tmp_path / "run")


def test_a_run_that_skips_most_steps_pauses_and_says_why(tmp_path):
    s = runaway_session(tmp_path)
    s.run_steps(60)
    snap = s.snapshot
    assert s.trainer.iteration == 20 and s.trainer.skipped_steps > 10  # the window is full at step 20
    assert snap.paused and "run.skip_pause_share" in (s.last_error or "")
    last = snap.events[-1]
    assert last.level == "error" and "optim.*_lr" in last.text and "\n" not in last.text
    # Resume clears it and the window starts afresh: the next pause comes a full window later.
    s.send(C.Resume())
    s.run_steps(60)
    assert s.trainer.iteration == 40 and s.last_error


def test_skip_pause_share_one_never_pauses(tmp_path):
    s = runaway_session(tmp_path, **{"run.skip_pause_share": 1.0, "run.skip_window": 5})
    s.run_steps(15)
    assert s.trainer.iteration == 15 and s.last_error is None and s.trainer.skipped_steps > 5


def test_headless_run_that_skips_exits_1_with_a_checkpoint(tmp_path):
    sets = [a for k, v in {**SMALL, **RUNAWAY}.items() for a in ("--set", f"{k}={v}")]
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--ui", "headless", "--steps", "60", "--no-progress",
                        "--out", str(tmp_path), *sets], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    said = r.stdout + r.stderr  # events go through the progress bar's writer
    assert "error: the session paused" in said and "run.skip_pause_share" in said and "Traceback" not in said
    assert list(tmp_path.glob("run-*/checkpoint_*.pt")), r.stderr
