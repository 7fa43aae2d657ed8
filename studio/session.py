"""Session: a SessionState run by a worker thread, a command queue in front of it, snapshots behind it.

Threads (STYLE.md rule 6): the worker owns the state and every tensor in it. Front-ends call `send()`,
which parses and validates the command once (`handlers.prepare`; a refusal raises CommandError and
changes nothing), and read `snapshot` (the latest immutable Snapshot; never blocks the worker).

Between steps the worker applies queued commands as transactions (`handlers.apply` inside
`SessionState.memento / restore`): a failure leaves every object as it was, and an error event names
the command. A failing step pauses the session and keeps the scene (or, if the step had started to
change it, returns to the good copy kept every `run.keep_good_every` steps). At `run.steps` the session
pauses with a "done" event; Continue (or Resume) extends the plan.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Iterable

from . import commands as C
from . import config as cfgmod
from . import handlers
from .publish import build_snapshot
from .snapshot import MetricsLog, Snapshot, last_segment
from .state import SessionState
from .trainer import Trainer

MAX_QUEUED = 256  # commands waiting for the worker; settings edits merge, so only a flood fills it
DIRTY_GAP_S = 0.05  # after commands, the next snapshot comes at most this soon after the last one


class Session:
    """Owns one SessionState. `start()` runs it in a worker thread; `run_steps()` in the caller's.

    Args:
        config: the settings to start with (validated here)
        out_dir: the run folder: metrics.jsonl, exports and checkpoints go here
        prior: a prior to use instead of building one (tests)
        metrics_file: write metrics.jsonl (rows carry their segment; a folder's segments keep counting)
        paused: start paused (the front-ends resume once they are up)
        user_set: config paths the user set (on the command line): a method switch leaves them alone
    """

    def __init__(self, config: cfgmod.StudioConfig, out_dir: str | Path = "out", *, prior: Any = None,
                 metrics_file: bool = True, paused: bool = False, user_set: Iterable[str] = ()):
        config = cfgmod.validate(config)
        run_dir = Path(out_dir)
        path = None
        if metrics_file:
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / "metrics.jsonl"
        metrics = MetricsLog(path=path, segment=last_segment(path) + 1 if path is not None else 1)
        self.state = SessionState(Trainer(config, prior=prior), run_dir, metrics, user_set=frozenset(user_set),
                                  paused=paused, rate_mark=(time.perf_counter(), 0))
        self.state.keep_good()
        self._queue: deque[handlers.Prepared] = deque()  # guarded by _lock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The front side: the config and user-set paths as of every accepted command, for the next one.
        self._requested = config
        self._user_set = self.state.user_set
        self._plan_unit = config.run.steps  # what Continue adds: the plan as last set by the user
        self._last_publish = 0.0
        self._dirty = False  # commands applied since the last snapshot
        self._skips: deque[bool] = deque()  # whether each recent step was skipped (run.skip_window)
        self._version = 0
        self._snapshot: Snapshot | None = None
        self.publish(force=True)

    # ----- the front-end side -----------------------------------------------------------------------
    @property
    def config(self) -> cfgmod.StudioConfig:
        """The config as of every accepted command (what the UI should show)."""
        with self._lock:
            return self._requested

    @property
    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def send(self, cmd: C.Command) -> None:
        """Validate `cmd` now and queue it for the worker. Raises CommandError; on refusal nothing changes.

        Settings edits sent while another is still waiting merge into it (the worker applies them as one);
        at MAX_QUEUED waiting commands a new one is refused."""
        payload = handlers.read_checkpoint(Path(cmd.path)) if isinstance(cmd, C.LoadCheckpoint) \
            and Path(cmd.path).is_file() else None  # read outside the lock: it may be large
        with self._lock:
            tail = self._queue[-1] if self._queue else None
            if len(self._queue) >= MAX_QUEUED and not _mergeable(tail, cmd):
                raise C.CommandError(f"busy: {MAX_QUEUED} commands are waiting for the worker (it takes them "
                                     f"between steps); send this again in a moment")
            prepared = handlers.prepare(cmd, self._requested, self._user_set, self._context(), payload)
            self._accept(prepared)
            if _mergeable(tail, cmd):
                prepared = handlers.Prepared(C.UpdateSettings({**tail.cmd.values, **cmd.values}), tail.base,
                                             prepared.config, prepared.user_set)
                self._queue[-1] = prepared
            else:
                self._queue.append(prepared)
        self._wake.set()

    @property
    def queued(self) -> int:
        """Commands waiting for the worker."""
        with self._lock:
            return len(self._queue)

    def update(self, **values: Any) -> None:
        """Shorthand: session.update(**{"ism.delta_t": 80})."""
        self.send(C.UpdateSettings(values))

    def _context(self) -> handlers.SendContext:
        def check_prompt(cfg: cfgmod.StudioConfig) -> None:
            prior = self.state.trainer.prior
            if hasattr(prior, "reference_images"):  # the procedural prior: embedding is a tag lookup
                prior.embed(cfg.prompt.prompt, cfg.prompt.negative)

        snap = self._snapshot
        return handlers.SendContext(check_prompt, snap.iteration if snap is not None else 0, self._plan_unit,
                                    self.state.run_dir)

    def _accept(self, p: handlers.Prepared) -> None:
        self._requested, self._user_set = p.config, p.user_set
        if p.config.run.steps != p.base.run.steps and not isinstance(p.cmd, C.Continue):
            self._plan_unit = p.config.run.steps

    # ----- the worker side --------------------------------------------------------------------------
    def start(self) -> "Session":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="studio-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain(gap=DIRTY_GAP_S)
                if self._should_step():
                    self._one_step()
                else:
                    self.publish()
                    self._wake.wait(0.05)
                    self._wake.clear()
            except Exception as e:  # noqa: BLE001 -- outside the step (publishing): pause, keep going
                self._fail_outside_step(e)
                self._wake.wait(0.05)
        self.drain()
        self.publish(force=True)

    def _should_step(self) -> bool:
        st = self.state
        self._check_plan()
        return st.pending_steps > 0 or (not st.paused and st.last_error is None)

    def drain(self, gap: float = 0.0) -> None:
        """Apply every queued command (worker thread, between steps), then publish once (if the last
        snapshot is `gap` seconds old: the worker's loop leaves a burst of edits to the next one)."""
        while True:
            with self._lock:
                if not self._queue:
                    break
                prepared = self._queue.popleft()
            self._dirty = True
            self._apply(prepared)
        if self._dirty and time.perf_counter() - self._last_publish >= gap:
            self.publish(force=True)

    def _apply(self, p: handlers.Prepared) -> None:
        st = self.state
        saved = st.memento()
        try:
            handlers.apply(st, p)
        except Exception as e:  # noqa: BLE001 -- any failure of a command rolls it back, whatever it was
            st.restore(saved)
            st.event("error", f"{C.describe(p.cmd)} failed; nothing changed and training goes on: "
                              f"{_one_line(e)}")
            self._rebase()

    def _rebase(self) -> None:
        """After a failed command the config the front-ends see is the trainer's again; commands queued
        behind the failed one are validated anew against it (dropped, with an event, if they no longer
        apply)."""
        st = self.state
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            self._requested, self._user_set = st.trainer.cfg, st.user_set
            for p in queued:
                try:
                    again = handlers.prepare(p.cmd, self._requested, self._user_set, self._context(), p.payload)
                except C.CommandError as e:
                    st.event("error", f"{C.describe(p.cmd)} dropped after the failed command: {e}")
                    continue
                self._accept(again)
                self._queue.append(again)

    def run_steps(self, n: int, callback=None, stop: threading.Event | None = None) -> None:
        """Run up to n steps in the caller's thread (headless runs, tests), applying queued commands
        between them; stops early on an error or when `stop` is set."""
        for _ in range(n):
            self.drain()
            if self.state.last_error is not None or (stop is not None and stop.is_set()):
                break
            self._one_step()
            if callback is not None:
                callback(self)
        self.publish(force=True)

    def _one_step(self) -> None:
        st = self.state
        tr = st.trainer
        t0 = time.perf_counter()
        try:
            diag = tr.step()
        except Exception as e:  # noqa: BLE001 -- any failure must pause, not kill, the studio
            self._fail_step(e)
            return
        try:
            self._evaluate(diag)
        except Exception as e:  # noqa: BLE001 -- the step itself is done; say what failed after it
            self._fail_outside_step(e, f"while evaluating psnr_ref after step {tr.iteration}")
            return
        st.elapsed += time.perf_counter() - t0
        if st.pending_steps > 0:
            st.pending_steps -= 1
        diag["gaussians"] = tr.scene.num_gaussians
        st.metrics.add(tr.iteration, diag)
        if diag.get("skipped"):
            st.event("warning", f"step {tr.iteration}: {int(diag['nonfinite_grads'])} non-finite gradient "
                                "entries; the step was skipped")
        if self._too_many_skips(bool(diag.get("skipped"))):
            return
        every = tr.cfg.run.keep_good_every
        if every and tr.iteration % every == 0 and not st.keep_good():
            self._scene_went_bad()
            return
        self._checkpoint_if_due()
        self._check_plan()
        self.publish()

    def _checkpoint_if_due(self) -> None:
        """Every run.checkpoint_every steps: the metrics up to this step and a checkpoint (atomic) on disk, so
        that a process killed later resumes here; only the newest run.checkpoint_keep of them stay. A write
        that fails is a warning: training goes on."""
        st, run = self.state, self.state.trainer.cfg.run
        step = st.trainer.iteration
        if not run.checkpoint_every or step % run.checkpoint_every:
            return
        self.publish(force=True)  # first the metrics up to this step: on disk, and in the checkpoint's history
        try:
            path = handlers.save(st, None)
        except OSError as e:
            st.event("warning", f"the checkpoint of step {step} could not be written ({_one_line(e)}); "
                                f"training goes on")
            return
        st.periodic = (*(p for p in st.periodic if p != path), path)
        while run.checkpoint_keep and len(st.periodic) > run.checkpoint_keep:
            old, st.periodic = st.periodic[0], st.periodic[1:]
            try:
                old.unlink(missing_ok=True)
            except OSError as e:
                st.event("warning", f"the older checkpoint {old.name} could not be removed ({_one_line(e)})")

    def _too_many_skips(self, skipped: bool) -> bool:
        """Pause (as an error: headless runs stop) when more than run.skip_pause_share of the last
        run.skip_window steps were skipped; the window starts afresh after it."""
        st, run = self.state, self.state.trainer.cfg.run
        self._skips.append(skipped)
        while len(self._skips) > run.skip_window:
            self._skips.popleft()
        count = sum(self._skips)
        if len(self._skips) < run.skip_window or count <= run.skip_pause_share * run.skip_window:
            return False
        self._skips.clear()
        st.last_error = (f"{count} of the last {run.skip_window} steps were skipped for non-finite gradients "
                         f"(more than run.skip_pause_share = {run.skip_pause_share:g})")
        st.paused, st.pending_steps = True, 0
        st.event("error", f"the session paused: {st.last_error}; lower the learning rates (optim.*_lr) or set "
                          f"run.grad_clip, then Resume")
        self._publish_after_failure()
        return True

    def _evaluate(self, diag: dict[str, Any]) -> None:
        """psnr_ref at the training and the viewer's resolution, when due (procedural prior)."""
        tr, run = self.state.trainer, self.state.trainer.cfg.run
        if not tr.is_procedural:
            return
        if run.psnr_every and tr.iteration % run.psnr_every == 0:
            self.state.latest_score = tr.score()
            diag["psnr_ref"] = self.state.latest_score.psnr
            diag["ref_mode"] = self.state.latest_score.mode_name
        if run.view_psnr_every and tr.iteration % run.view_psnr_every == 0:
            diag["psnr_view"] = tr.score(run.view_resolution).psnr

    def _check_plan(self) -> None:
        """At the plan's end: pause once, with a "done" event (StepOnce still steps past it)."""
        st, tr = self.state, self.state.trainer
        planned = tr.cfg.run.steps
        if tr.iteration < planned:
            st.announced_done = False
            return
        if st.announced_done or st.pending_steps > 0:
            return
        st.announced_done, st.paused = True, True
        score = st.latest_score
        at = f", psnr_ref {float(score.psnr):.2f} dB" if score is not None else ""
        st.event("info", f"done: {tr.iteration:,} of {planned:,} planned steps{at}; Continue (or Resume) adds "
                         f"{self._plan_unit:,} more")

    # ----- failures ---------------------------------------------------------------------------------
    def _fail_step(self, e: BaseException) -> None:
        st, tr = self.state, self.state.trainer
        st.traceback = traceback.format_exc(limit=6)
        failed = tr.iteration + 1
        tr.scene.zero_grad()
        st.last_error = f"{type(e).__name__}: {e}"
        st.paused, st.pending_steps = True, 0
        if tr.updating or not tr.scene.is_finite():
            try:
                back = st.rewind()
                note = (f"it had changed part of the scene, so the scene went back to step {back} "
                        f"(a copy is kept every {tr.cfg.run.keep_good_every} steps: run.keep_good_every)")
            except Exception as again:  # noqa: BLE001 -- say so; Reset still builds a new scene
                note = f"the scene is damaged and could not be restored ({_one_line(again)}); reset it"
        else:
            note = f"the scene is as after step {tr.iteration}: the failed step changed nothing"
        st.event("error", f"step {failed} failed and the session paused: {st.last_error}; {note}")
        self._publish_after_failure()

    def _scene_went_bad(self) -> None:
        st = self.state
        now = st.trainer.iteration
        back = st.rewind()
        st.last_error = f"the scene became NaN or infinite between steps {back} and {now}"
        st.paused, st.pending_steps = True, 0
        st.event("error", f"{st.last_error}; it went back to step {back} and the session paused (lower the "
                          f"learning rates, or set run.grad_clip)")
        self._publish_after_failure()

    def _fail_outside_step(self, e: BaseException, what: str = "outside a step") -> None:
        st = self.state
        st.traceback = traceback.format_exc(limit=6)
        st.last_error = f"{type(e).__name__}: {e}"
        st.paused, st.pending_steps = True, 0
        st.event("error", f"the session paused after an error {what}: {st.last_error}")
        self._publish_after_failure()

    def _publish_after_failure(self) -> None:
        try:
            self.publish(force=True)
        except Exception as pub:  # noqa: BLE001 -- the snapshot keeps its last good state
            self.state.event("error", f"publishing a snapshot failed: {type(pub).__name__}: {pub}")

    # ----- snapshots --------------------------------------------------------------------------------
    def publish(self, force: bool = False) -> None:
        st = self.state
        now = time.perf_counter()
        if not force and now - self._last_publish < 1.0 / st.trainer.cfg.run.publish_hz:
            return
        t0, it0 = st.rate_mark
        if now - t0 >= 1.0 or st.trainer.iteration < it0:
            st.its = max(0.0, (st.trainer.iteration - it0) / (now - t0))
            st.rate_mark = (now, st.trainer.iteration)
        latest, note = st.metrics.flush()
        if note is not None:
            st.event("warning", note)
        self._version += 1
        self._dirty = False
        snap = build_snapshot(st, self._version, latest, self._snapshot)
        with self._lock:
            self._snapshot = snap
        self._last_publish = time.perf_counter()

    def wait_for(self, predicate, timeout: float = 30.0, poll: float = 0.02) -> Snapshot:
        """Block until predicate(snapshot) holds (tests, scripts); raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.snapshot
            if predicate(snap):
                return snap
            time.sleep(poll)
        raise TimeoutError(f"condition not reached in {timeout} s; last snapshot at iteration "
                           f"{self.snapshot.iteration}, error {self.snapshot.last_error!r}")

    # ----- for the caller's thread when the worker is not running (headless runs, closing, tests) ------
    @property
    def known_prompts(self) -> list[str]:
        """The prior's example prompts (the procedural prior's list; [] for a model that takes any text)."""
        return list(getattr(self.state.trainer.prior, "prompts", ()))

    @property
    def trainer(self) -> Trainer:
        """The current trainer. Touch it only from the worker, or while no worker runs."""
        return self.state.trainer

    @property
    def out_dir(self) -> Path:
        return self.state.run_dir

    @out_dir.setter
    def out_dir(self, path: Path) -> None:
        self.state.run_dir = Path(path)

    @property
    def last_error(self) -> str | None:
        return self.state.last_error

    @property
    def paused(self) -> bool:
        return self.state.paused

    def export_now(self, formats: tuple[str, ...]) -> list[Path]:
        """Write exports into the run folder in the caller's thread (the worker must not be running)."""
        assert not self.running, "stop the worker first, or send an Export command"
        return handlers.export(self.state, formats, self.state.run_dir)

    def checkpoint_due(self) -> bool:
        """Whether the scene changed since a checkpoint was last written or loaded."""
        it = self.state.trainer.iteration
        return it > 0 and it != self.state.saved_iteration

    def save_if_due(self) -> Path | None:
        """Write a checkpoint into the run folder if one is due (closing, Ctrl-C); the worker must not be
        running. Returns its path, or None. Raises OSError when it cannot be written."""
        assert not self.running, "stop the worker first"
        if not self.checkpoint_due():
            return None
        path = handlers.save(self.state, None)
        self.publish(force=True)
        return path


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _mergeable(tail: handlers.Prepared | None, cmd: C.Command) -> bool:
    """A settings edit merges into a settings edit waiting at the end of the queue, unless either touches a
    setting whose apply builds something that can fail (a prior, a renderer, a prompt's embedding): then
    each must fail or apply alone, as sent."""
    if tail is None or not isinstance(tail.cmd, C.UpdateSettings) or not isinstance(cmd, C.UpdateSettings):
        return False
    return not any(path.startswith(handlers.BUILDING_PATHS) for path in (*tail.cmd.values, *cmd.values))
