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
    assert not (tmp_path / "metrics.jsonl").exists()


def test_headless_run_writes_metrics_exports_and_resumes(tmp_path):
    out = tmp_path / "run"
    r = app("--ui", "headless", "--steps", "10", "--out", str(out), "--export", "ply,checkpoint,gif", *SMALL)
    assert r.returncode == 0, r.stderr
    assert "psnr_ref" in r.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 11))
    assert all("loss" in row and "grad_var" in row for row in rows)
    assert any("psnr_ref" in row for row in rows)
    ply = next(out.glob("*.ply"))
    ckpt = next(out.glob("*.pt"))
    gif = next(out.glob("*.gif"))
    assert ply.stat().st_size > 0 and gif.stat().st_size > 0
    config = json.loads((out / (ply.name + ".json")).read_text())
    assert config["config"]["run"]["steps"] == 10 and config["seed"] == 0

    r2 = app("--ui", "headless", "--steps", "14", "--resume", str(ckpt), "--out", str(out), "--export", "none",
             *SMALL)
    assert r2.returncode == 0, r2.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 14


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
    out = tmp_path / "run"
    r = app("--ui", "headless", "--model", str(sd), "--method", "ssd", "--steps", "4", "--out", str(out),
            "--export", "ply", "--prompt", "a cube", "--set", f"prior.depth_model={dpt}", "--set", "prior.image_size=64",
            *SMALL)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(row["loss"] > 0 and row["nonfinite"] == 0 for row in rows), rows
    assert not any("psnr_ref" in row for row in rows)  # no references without the procedural prior
    assert next(out.glob("*.ply")).stat().st_size > 0
