"""The command line as a user runs it: a real subprocess of app.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--resolution", "24", "--batch", "2", "--set", "init.num=200", "--set", "run.psnr_every=5",
         "--no-progress"]


def app(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def run_folder(out: Path) -> Path:
    """The one run folder a launch made under --out."""
    runs = sorted(out.glob("run-*"))
    assert len(runs) == 1, f"expected one run folder under {out}, found {[r.name for r in runs]}"
    return runs[0]


def metric_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_help_documents_every_flag():
    out = app("--help").stdout
    for flag in ("--prompt", "--negative", "--method", "--preset", "--model", "--renderer", "--steps",
                 "--resolution", "--batch", "--seed", "--out", "--export", "--resume", "--ui", "--host",
                 "--port", "--set"):
        assert flag in out, flag


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "ism.delta_t=-3"], "ism.delta_t"),
        (["--set", "ism.delta_tt=3"], "did you mean delta_t"),
        (["--steps", "0"], "run.steps"),
        (["--preset", "nope"], "unknown preset"),
        (["--export", "obj"], "--export"),
        (["--prompt", "a flying teapot"], "Known prompts"),
        (["--set", "oops"], "key=value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    r = app("--ui", "headless", "--out", str(tmp_path), *args)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder left behind


def test_headless_run_writes_metrics_exports_and_resumes(tmp_path):
    r = app("--ui", "headless", "--steps", "10", "--out", str(tmp_path), "--export", "ply,checkpoint,gif",
            *SMALL)
    assert r.returncode == 0, r.stderr
    assert "psnr_ref" in r.stdout
    out = run_folder(tmp_path)
    rows = metric_rows(out)
    assert [row["step"] for row in rows] == list(range(1, 11))
    assert {row["segment"] for row in rows} == {1}
    assert all("loss" in row and "grad_var" in row for row in rows)
    assert any("psnr_ref" in row for row in rows)
    ply = next(out.glob("*.ply"))
    ckpt = next(out.glob("*.pt"))
    gif = next(out.glob("*.gif"))
    assert ply.stat().st_size > 0 and gif.stat().st_size > 0
    config = json.loads((out / (ply.name + ".json")).read_text())
    assert config["config"]["run"]["steps"] == 10 and config["seed"] == 0

    # Resuming goes on in the checkpoint's run folder, as a new segment that continues the steps.
    r2 = app("--ui", "headless", "--steps", "14", "--resume", str(ckpt), "--out", str(tmp_path),
             "--export", "none", *SMALL)
    assert r2.returncode == 0, r2.stderr
    assert run_folder(tmp_path) == out
    rows = metric_rows(out)
    assert [(row["segment"], row["step"]) for row in rows[10:]] == [(2, s) for s in range(11, 15)]

    # A new launch never appends to an old run: it gets a folder of its own.
    r3 = app("--ui", "headless", "--steps", "2", "--out", str(tmp_path), "--export", "none", *SMALL)
    assert r3.returncode == 0, r3.stderr
    runs = sorted(tmp_path.glob("run-*"))
    assert len(runs) == 2 and len(metric_rows(out)) == 14
    assert [row["step"] for row in metric_rows(next(r for r in runs if r != out))] == [1, 2]


def test_missing_model_is_one_clear_line(tmp_path):
    r = app("--ui", "headless", "--model", str(tmp_path / "no_such_model"), "--out", str(tmp_path), "--steps", "1")
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "procedural" in lines[0], r.stderr


def test_headless_run_on_a_stable_diffusion_folder(tmp_path):
    """The SD path end to end through the command line: a tiny random checkpoint and depth model on disk,
    SSD with its depth baseline (the method that touches every network), metrics and a PLY out."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import save_tiny_dpt, save_tiny_sd

    sd, dpt = save_tiny_sd(tmp_path / "sd"), save_tiny_dpt(tmp_path / "dpt")
    r = app("--ui", "headless", "--model", str(sd), "--method", "ssd", "--steps", "4", "--out", str(tmp_path / "o"),
            "--export", "ply", "--prompt", "a cube", "--set", f"prior.depth_model={dpt}", "--set", "prior.image_size=64",
            *SMALL)
    assert r.returncode == 0, r.stderr
    out = run_folder(tmp_path / "o")
    rows = metric_rows(out)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(row["loss"] > 0 and row["nonfinite"] == 0 for row in rows), rows
    assert not any("psnr_ref" in row for row in rows)  # no references without the procedural prior
    assert next(out.glob("*.ply")).stat().st_size > 0


# ----- start-up checks: one line, exit 2, before any model loads --------------------------------------------
def _busy_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


@pytest.mark.parametrize("what", ["out under a file", "port out of range", "negative port", "bad host",
                                  "port in use", "resume missing"])
def test_bad_out_host_port_fail_fast(tmp_path, what):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    busy = _busy_port()
    args, words = {
        "out under a file": (["--ui", "headless", "--out", str(blocker / "out")], "--out"),
        "port out of range": (["--port", "70000", "--out", str(tmp_path / "o")], "--port"),
        "negative port": (["--port", "-1", "--out", str(tmp_path / "o")], "--port"),
        "bad host": (["--host", "256.0.0.1", "--out", str(tmp_path / "o")], "--host 256.0.0.1"),
        "port in use": (["--port", str(busy.getsockname()[1]), "--out", str(tmp_path / "o")], "another --port"),
        "resume missing": (["--ui", "headless", "--resume", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")],
                           "--resume"),
    }[what]
    try:
        r = app(*args, timeout=60)
    finally:
        busy.close()
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root (mount said: {r.stderr.strip()})")


def _fill(path: Path) -> None:
    with open(path / "filler", "ab", buffering=0) as f:  # unbuffered: the write that fails is the last
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue


def test_a_full_disk_is_a_clear_error_at_start_and_an_event_while_training(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "2m")
    try:
        # Full before the start: the run folder cannot be written, one line, exit 2.
        _fill(disk)
        r = app("--ui", "headless", "--steps", "3", "--out", str(disk / "out"), *SMALL, timeout=60)
        assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr
        # Full while training: metrics.jsonl fails, training goes on, the rows arrive once there is room.
        (disk / "filler").unlink()
        from studio.config import default_config, with_values
        from studio.session import Session

        cfg = with_values(default_config("sds"), {"render.resolution": 16, "render.batch": 1, "init.num": 60,
                                                  "run.psnr_every": 0, "run.view_psnr_every": 0})
        s = Session(cfg, disk / "live")
        _fill(disk)
        s.run_steps(4)
        assert s.trainer.iteration == 4 and s.last_error is None
        warnings = [e.text for e in s.snapshot.events if e.level == "warning"]
        assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings
        (disk / "filler").unlink()
        s.run_steps(2)
        rows = [json.loads(line) for line in (disk / "live" / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
        assert "written late" in s.snapshot.events[-1].text
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_sigterm_in_a_headless_run_writes_a_checkpoint_that_resumes(tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--ui", "headless", "--steps", "5000",
                             "--out", str(tmp_path), *SMALL], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = list(tmp_path.glob("run-*/metrics.jsonl"))
            if runs and len(runs[0].read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    line = next(line for line in err.splitlines() if "checkpoint written to" in line)
    ckpt = Path(line.split("checkpoint written to ")[1].split(" (")[0])
    folder = run_folder(tmp_path)
    assert ckpt.parent == folder and ckpt.is_file()
    steps = len(metric_rows(folder))
    assert f"interrupted at step {steps}:" in line, (line, steps)  # every row up to it was written
    r = app("--ui", "headless", "--resume", str(ckpt), "--steps", str(steps + 2), "--out", str(tmp_path),
            "--export", "none", *SMALL)
    assert r.returncode == 0, r.stderr
    assert metric_rows(folder)[-1]["step"] == steps + 2
