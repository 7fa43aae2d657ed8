"""The command line as a user runs it: a real subprocess of app.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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

    # A new launch never appends to an old run: it gets a folder of its own. (The .json beside an export
    # is a --config: flags still win over it.)
    r3 = app("--ui", "headless", "--config", str(out / (ply.name + ".json")), "--steps", "2", "--out", str(tmp_path),
             "--export", "none", *SMALL)
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


# ----- bad input: one line, exit 2, before any model loads ---------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """One folder of files that are wrong in every way a user's file can be."""
    d = tmp_path_factory.mktemp("bad_files")
    (d / "binary.json").write_bytes(bytes(range(256)) * 4)
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "deep_table.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    (d / "list.json").write_text("[1, 2]")
    (d / "string.json").write_text('"a red cube"')
    (d / "number.json").write_text("3")
    (d / "unknown_section.json").write_text('{"foo": {"bar": 1}}')
    (d / "unknown_field.json").write_text('{"run": {"bar": 1}}')
    (d / "nan.json").write_text('{"run": {"grad_clip": NaN}}')
    (d / "huge_int.json").write_text('{"run": {"steps": 1' + "0" * 5000 + "}}")
    (d / "text_is_a_table.json").write_text('{"prompt": {"prompt": {"a": 1}}}')
    (d / "a.toml").write_text("[run]\nsteps = 3\n")
    (d / "a_folder").mkdir()
    (d / "run-no-checkpoint").mkdir()
    (d / "a_file").write_text("not a folder")
    (d / "empty.pt").write_bytes(b"")
    (d / "garbage.pt").write_bytes(b"\x00garbage\xff" * 100)
    torch.save({"a": 1}, d / "other.pt")
    trainer = {k: 0 for k in ("iteration", "scene", "estimators", "sampler_rng", "bg_rng", "torch_rng")}
    torch.save({"format": "gaussian-dreamer-studio/checkpoint-1", "config": {"foo": 1}, "trainer": trainer,
                "metrics": {"history": {}}}, d / "bad_config.pt")
    torch.save({"format": "gaussian-dreamer-studio/checkpoint-1", "config": {}}, d / "no_trainer.pt")
    (d / "text.ply").write_text("hello world\n")
    (d / "empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                                 "property float z\nend_header\n")
    (d / "no_xyz.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float q\nend_header\n1\n")
    os.mkfifo(d / "fifo")
    return d


@pytest.fixture
def busy_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


# (case, arguments after `--ui headless --out <tmp>/out --steps 2`, words the one line must hold); {f} is the
# bad_files folder, {port} a port something listens on. Later flags win, so a case may pick --ui or --out.
BAD_INPUT = [
    ("set out of range", ["--set", "ism.delta_t=-3"], "ism.delta_t"),
    ("set misspelt", ["--set", "ism.delta_tt=3"], "did you mean delta_t"),
    ("set without =", ["--set", "oops"], "key=value"),
    ("set without key", ["--set", "=3"], "key=value"),
    ("set int overflow", ["--set", "run.steps=1e400"], "run.steps"),
    ("set float nan", ["--set", "run.grad_clip=nan"], "run.grad_clip: must lie in [0.0, 1000000.0]"),
    ("set float inf", ["--set", "init.radius=inf"], "init.radius: must lie in [0.001, 100.0]"),
    ("set float -inf", ["--set", "optim.betas=-inf,0.9"], "optim.betas"),
    ("set range nan", ["--set", "sds.t_range=nan,1"], "sds.t_range"),
    ("set view nan", ["--set", "view.max_hz=nan"], "view.max_hz"),
    ("set unknown section", ["--set", "foo.bar=1"], "foo.bar: unknown setting 'foo'"),
    ("set unknown field", ["--set", "run.bar=1"], "run.bar: unknown setting 'bar'"),
    ("set wrong type", ["--set", "run.steps=abc"], "run.steps: expected int"),
    ("set section as value", ["--set", "run=3"], "run: expected a table"),
    ("set bad choice", ["--set", "run.method=x"], "run.method: must be one of sds, ism, ssd"),
    ("steps 0", ["--steps", "0"], "run.steps"),
    ("steps not a number", ["--steps", "many"], "--steps"),
    ("resolution 0", ["--resolution", "0"], "render.resolution"),
    ("batch too big", ["--batch", "1000"], "render.batch"),
    ("seed negative", ["--seed", "-1"], "run.seed"),
    ("prompt empty", ["--prompt", ""], "prompt.prompt"),
    ("prompt unknown", ["--prompt", "a flying teapot"], "Known prompts"),
    ("model empty", ["--model", ""], "prior.model"),
    ("preset unknown", ["--preset", "nope"], "unknown preset"),
    ("preset empty", ["--preset", ""], "--preset"),
    ("method unknown", ["--method", "x"], "--method"),
    ("ui unknown", ["--ui", "x"], "--ui"),
    ("flag unknown", ["--frobnicate"], "--frobnicate"),
    ("export unknown", ["--export", "fbx"], "--export"),
    ("out empty", ["--out", ""], "--out"),
    ("out under a file", ["--out", "{f}/a_file/out"], "--out"),
    ("config binary", ["--config", "{f}/binary.json"], "--config"),
    ("config deep list", ["--config", "{f}/deep.json"], "--config"),
    ("config deep table", ["--config", "{f}/deep_table.json"], "--config"),
    ("config list", ["--config", "{f}/list.json"], "--config"),
    ("config string", ["--config", "{f}/string.json"], "got str 'a red cube'"),
    ("config number", ["--config", "{f}/number.json"], "--config"),
    ("config unknown section", ["--config", "{f}/unknown_section.json"], "unknown section 'foo'"),
    ("config unknown field", ["--config", "{f}/unknown_field.json"], "run: unknown setting 'bar'"),
    ("config nan", ["--config", "{f}/nan.json"], "run.grad_clip"),
    ("config huge int", ["--config", "{f}/huge_int.json"], "--config"),
    ("config table for text", ["--config", "{f}/text_is_a_table.json"], "prompt.prompt"),
    ("config toml", ["--config", "{f}/a.toml"], "not valid JSON"),
    ("config missing", ["--config", "{f}/none.json"], "--config"),
    ("config folder", ["--config", "{f}/a_folder"], "--config"),
    ("config fifo", ["--config", "{f}/fifo"], "--config"),
    ("resume missing", ["--resume", "{f}/none.pt"], "--resume"),
    ("resume empty file", ["--resume", "{f}/empty.pt"], "--resume"),
    ("resume garbage", ["--resume", "{f}/garbage.pt"], "--resume"),
    ("resume not a checkpoint", ["--resume", "{f}/other.pt"], "--resume"),
    ("resume bad settings", ["--resume", "{f}/bad_config.pt"], "unknown section 'foo'"),
    ("resume no trainer", ["--resume", "{f}/no_trainer.pt"], "trainer state lacks"),
    ("resume run folder without checkpoint", ["--resume", "{f}/run-no-checkpoint"], "--resume"),
    ("resume other folder", ["--resume", "{f}/a_folder"], "--resume"),
    ("resume fifo", ["--resume", "{f}/fifo"], "--resume"),
    ("init ply missing", ["--set", "init.kind=ply", "--set", "init.path={f}/none.ply"], "init.path"),
    ("init ply not a ply", ["--set", "init.kind=ply", "--set", "init.path={f}/text.ply"], "init.path"),
    ("init ply empty", ["--set", "init.kind=ply", "--set", "init.path={f}/empty.ply"], "init.path"),
    ("init ply no xyz", ["--set", "init.kind=ply", "--set", "init.path={f}/no_xyz.ply"], "init.path"),
    ("init ply folder", ["--set", "init.kind=ply", "--set", "init.path={f}/a_folder"], "init.path"),
    ("init ply without path", ["--set", "init.kind=ply"], "init.path"),
    ("mcmc on cpu", ["--renderer", "cpu", "--set", "densify.strategy=mcmc"], "densify.strategy"),
    ("port too large", ["--port", "70000"], "--port: must lie in [1, 65535]"),
    ("port negative", ["--port", "-1"], "--port: must lie in [1, 65535]"),
    ("port not a number", ["--port", "http"], "--port"),
    ("host not ipv4", ["--host", "256.0.0.1"], "--host 256.0.0.1"),
    ("host not ipv6", ["--host", "::zz"], "--host"),
    ("host empty", ["--host", ""], "--host"),
    ("viser port too large", ["--ui", "viser", "--port", "70000"], "--port"),
    ("viser host not ipv4", ["--ui", "viser", "--host", "256.0.0.1"], "--host 256.0.0.1"),
    ("viser host elsewhere", ["--ui", "viser", "--host", "192.0.2.1"], "--host 192.0.2.1"),
    ("viser port in use", ["--ui", "viser", "--port", "{port}"], "another --port"),
    ("allow-origin without scheme", ["--allow-origin", "studio.example.com"], "--allow-origin"),
    ("allow-origin with a path", ["--allow-origin", "https://studio.example.com/app"], "--allow-origin"),
    ("allow-origin bad port", ["--allow-origin", "http://box:99999"], "--allow-origin"),
]


GSPLAT_WITHOUT_CUDA = pytest.param("gsplat without cuda", ["--renderer", "gsplat"], "gsplat", id="gsplat without cuda",
                                   marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA here: gsplat runs"))


@pytest.mark.parametrize("case, args, words", [pytest.param(*c, id=c[0]) for c in BAD_INPUT] + [GSPLAT_WITHOUT_CUDA])
def test_bad_input_is_one_line_exit_2_and_no_run_folder(tmp_path, bad_files, busy_port, case, args, words):
    out = tmp_path / "out"
    args = [a.format(f=bad_files, port=busy_port) for a in args]
    r = app("--ui", "headless", "--out", str(out), "--steps", "2", *args, timeout=60)  # a hang fails here
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not list(tmp_path.rglob("run-*")) and not list(bad_files.glob("*/run-*")), case


def test_a_host_name_that_does_not_resolve_in_time_is_refused(monkeypatch):
    import time

    from studio import startup
    from studio.cli_errors import UsageError

    monkeypatch.setattr(startup, "RESOLVE_TIMEOUT_S", 0.2)
    monkeypatch.setattr(startup.socket, "getaddrinfo", lambda *a, **k: time.sleep(5))  # a DNS server that hangs
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=r"--host slow\.example: the name did not resolve within 0\.2 s"):
        startup.check_listen("slow.example", 8080)
    assert time.monotonic() - t0 < 2


def test_a_bug_keeps_its_traceback_and_leaves_no_run_folder(tmp_path, monkeypatch):
    """Only bad input is one line: an unexpected exception propagates (app.py shows its traceback)."""
    from studio import cli, run

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(run, "run", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["--ui", "headless", "--out", str(tmp_path), "--steps", "2"])
    assert list(tmp_path.iterdir()) == []


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
