"""Batches on Ray (`python app.py batch`), on a local Ray with 2 CPUs and tiny jobs: every job finishes,
a worker killed mid-job is started again and resumes from its checkpoint, a re-run skips finished jobs
and resumes unfinished ones, a job with a bad prompt or settings fails alone, and bad input for the
whole batch is one `error:` line with exit status 2."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from studio import config as cfgmod  # noqa: E402
from studio.batch import job_id, make_jobs  # noqa: E402
from studio.batch_job import read_json, run_job  # noqa: E402
from studio.batch_ray import run_batch, task_resources  # noqa: E402
from studio.cli import main  # noqa: E402
from studio.session import Session  # noqa: E402

TINY = ["--set", "render.resolution=16", "--set", "render.batch=1", "--set", "init.num=100",
        "--set", "densify.enabled=false", "--set", "run.psnr_every=0", "--set", "run.view_psnr_every=0",
        "--no-progress"]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) for the module: `app.py batch` uses a Ray the process has joined."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def prompts_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def job_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


def metric_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def summary(out: Path) -> dict[tuple[str, int], dict]:
    return {(j["prompt"], j["seed"]): j for j in json.loads((out / "summary.json").read_text())["jobs"]}


def in_thread(argv: list[str]) -> tuple[threading.Thread, dict]:
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("rc", main(argv)), daemon=True)
    thread.start()
    return thread, box


def kill_when_checkpointed(out: Path, prompt_slug: str, timeout: float = 120) -> tuple[Path, int]:
    """SIGKILL the worker process of the job whose folder starts with `prompt_slug` once it has written a
    checkpoint; its folder and the pid killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in out.glob(f"{prompt_slug}-*"):
            worker = read_json(folder / "worker.json")
            if worker and any(folder.glob("checkpoint_*.pt")) and not (folder / "result.json").exists():
                os.kill(worker["pid"], signal.SIGKILL)
                return folder, worker["pid"]
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint from a running {prompt_slug} job within {timeout} s")


def segments(rows: list[dict]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for row in rows:
        out.setdefault(row["segment"], []).append(row["step"])
    return out


def test_three_prompts_two_seeds_finish_and_a_rerun_skips_them(ray_local, tmp_path):
    prompts = prompts_file(tmp_path, "a red cube", "", "# a comment", "a sphere", "a torus")
    out = tmp_path / "batch"
    argv = ["batch", str(prompts), "--out", str(out), "--seeds", "2", "--steps", "12", *TINY]
    assert main(argv) == 0
    folders = job_folders(out)
    assert len(folders) == 6
    jobs = summary(out)
    assert set(jobs) == {(p, s) for p in ("a red cube", "a sphere", "a torus") for s in (0, 1)}
    for folder in folders:
        result = read_json(folder / "result.json")
        assert result["status"] == "done" and result["steps"] == 12 and result["attempts"] == 1, result
        assert [r["step"] for r in metric_rows(folder)] == list(range(1, 13))
        assert {r["segment"] for r in metric_rows(folder)} == {1}
        names = set(result["exports"])
        assert {n.rsplit(".", 1)[1] for n in names} == {"gif", "ply", "pt"}
        assert all((folder / n).stat().st_size > 0 for n in names)
        assert not list(folder.glob("checkpoint_*.pt"))  # spent: the exported checkpoint holds the end
        config = read_json(folder / "job.json")["config"]
        assert config["run"]["seed"] == result["seed"] and config["run"]["checkpoint_every"] == 100
    md = (out / "summary.md").read_text()
    assert md.count("| done |") == 6 and "| a torus | 1 | done | 12 |" in md
    page = (out / "gallery.html").read_text()
    gifs = [line.split('src="', 1)[1].split('"', 1)[0] for line in page.splitlines() if "<img" in line]
    assert len(gifs) == 6 and all((out / g).is_file() for g in gifs)
    # A job's folder is named by its prompt, seed and shared settings: the same again, the same folder.
    assert job_id("a sphere", 0, {"x": 1}) == job_id("a sphere", 0, {"x": 1}) != job_id("a sphere", 1, {"x": 1})

    before = {f.name: (f / "worker.json").read_text() for f in folders}
    assert main(argv) == 0
    assert {f.name: (f / "worker.json").read_text() for f in job_folders(out)} == before  # nothing ran again
    assert all(j["status"] == "done" and j["earlier"] for j in summary(out).values())
    assert "6 jobs: 6 done (6 in an earlier run), 0 failed" in (out / "summary.md").read_text()
    # A task started again after its job had finished (a retry) returns the result, running nothing.
    spec = read_json(folders[0] / "job.json")
    assert run_job(spec) == read_json(folders[0] / "result.json")
    assert (folders[0] / "worker.json").read_text() == before[folders[0].name]


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(ray_local, tmp_path):
    prompts = prompts_file(tmp_path, "a red cube")
    out = tmp_path / "batch"
    thread, box = in_thread(["batch", str(prompts), "--out", str(out), "--steps", "300",
                             "--set", "run.checkpoint_every=10", *TINY])
    folder, killed = kill_when_checkpointed(out, "a-red-cube")
    thread.join(180)
    assert box.get("rc") == 0
    result = read_json(folder / "result.json")
    assert result["status"] == "done" and result["steps"] == 300 and result["attempts"] == 2, result
    assert read_json(folder / "worker.json")["pid"] != killed
    resumed = result["resumed_at"]
    assert resumed >= 10 and resumed % 10 == 0 and resumed < 300
    steps = segments(metric_rows(folder))
    assert sorted(steps) == [1, 2]
    assert steps[1][:resumed] == list(range(1, resumed + 1))  # the first attempt got to the checkpoint
    assert steps[2] == list(range(resumed + 1, 301))  # the second went on from it, not from step 1


def test_a_job_lost_beyond_its_retries_fails_alone_and_a_rerun_resumes_it(ray_local, tmp_path):
    prompts = prompts_file(tmp_path, "a sphere", "a cone")
    out = tmp_path / "batch"
    argv = ["batch", str(prompts), "--out", str(out), "--steps", "200", "--retries", "0",
            "--set", "run.checkpoint_every=10", *TINY]
    thread, box = in_thread(argv)
    folder, _ = kill_when_checkpointed(out, "a-sphere")
    thread.join(180)
    assert box.get("rc") == 1
    jobs = summary(out)
    assert jobs[("a cone", 0)]["status"] == "done"
    lost = jobs[("a sphere", 0)]
    assert lost["status"] == "failed" and "worker was lost on each of its 1 start (" in lost["error"], lost
    checkpoint = max(int(p.stem.split("_")[1]) for p in folder.glob("checkpoint_*.pt"))

    assert main(argv) == 0  # the same command: the cone is skipped, the sphere resumes
    jobs = summary(out)
    assert jobs[("a cone", 0)]["earlier"] and not jobs[("a sphere", 0)].get("earlier")
    result = read_json(folder / "result.json")
    assert result["status"] == "done" and result["resumed_at"] == checkpoint and result["steps"] == 200
    steps = segments(metric_rows(folder))
    assert steps[max(steps)] == list(range(checkpoint + 1, 201))


def test_a_bad_prompt_or_a_seed_out_of_range_fails_alone_with_its_message(ray_local, tmp_path, capsys):
    prompts = prompts_file(tmp_path, "a red cube", "a flying spaghetti monster")
    out = tmp_path / "batch"
    # run.seed's upper end is 2**31 - 1: each prompt's second seed is past it.
    rc = main(["batch", str(prompts), "--out", str(out), "--seeds", "2", "--steps", "4",
               "--set", f"run.seed={2**31 - 1}", *TINY])
    assert rc == 1
    jobs = summary(out)
    assert jobs[("a red cube", 2**31 - 1)]["status"] == "done"
    assert (out / jobs[("a red cube", 2**31 - 1)]["id"] / jobs[("a red cube", 2**31 - 1)]["exports"][0]).is_file()
    seed_error = jobs[("a red cube", 2**31)]["error"]
    assert jobs[("a red cube", 2**31)]["status"] == "failed"
    assert seed_error == "line 1: run.seed: must lie in [0, 2147483647], got 2147483648"
    prompt_error = jobs[("a flying spaghetti monster", 2**31 - 1)]["error"]
    assert prompt_error.startswith("procedural prior: no reference object matches the prompt "
                                   "'a flying spaghetti monster'") and "\n" not in prompt_error
    md = (out / "summary.md").read_text()
    assert md.count("| failed |") == 3 and seed_error in md
    printed = capsys.readouterr()
    assert "4 jobs: 1 done (0 in an earlier run), 3 failed" in printed.out
    assert f"failed: 'a red cube' seed {2**31}: {seed_error}" in printed.err


def test_a_task_that_raises_is_recorded_with_its_traceback(ray_local, tmp_path):
    """A bug in a job (here: a spec without its exports, as a driver of another version might send) fails
    that job with the exception's one line, and its traceback goes to error.log; retry_exceptions is off,
    so it ran once."""
    from studio.batch import BatchPlan, Job

    class NoExports(Job):
        def spec(self) -> dict:
            return {k: v for k, v in super().spec().items() if k != "exports"}

    shared = cfgmod.with_values(cfgmod.default_config(), {
        "run.steps": 2, "render.resolution": 16, "render.batch": 1, "init.num": 100, "run.psnr_every": 0})
    job = make_jobs([(1, "a red cube")], 1, shared, set(), (), tmp_path)[0]
    job.folder.mkdir()
    broken = NoExports(**job.__dict__)
    plan = BatchPlan((broken,), tmp_path, None, 2, 3, False)
    outcome = run_batch(plan, ray_local)
    result = outcome.results[0]
    assert result["status"] == "failed" and result["error"].startswith("KeyError: 'exports'"), result
    log = (job.folder / "error.log").read_text()
    assert 'batch_job.py", line' in log and "KeyError: 'exports'" in log and "\x1b" not in log
    assert read_json(job.folder / "worker.json")["attempt"] == 1


@pytest.mark.parametrize("args, message", [
    (["missing.txt"], "prompts file missing.txt: no such file"),
    (["@empty"], "holds no prompt"),
    (["@ok", "--seeds", "0"], "--seeds: must lie in [1, 1000], got 0"),
    (["@ok", "--set", "render.resolution=4"], "render.resolution: must lie in [8, 2048], got 4"),
    (["@ok", "--set", "run.nonsense=1"], "run.nonsense"),
    (["@ok", "--set", "view.mode=depth"], "viewer settings (view.*) have no meaning in a batch"),
    (["@ok", "--export", "gif,fbx"], "--export: unknown format fbx"),
    (["@ok", "--set", "init.kind=mesh", "--set", "init.path=no_such.obj"], "init.path no_such.obj"),
    (["@ok", "--workers", "0"], "--workers: must lie in [1, 4096], got 0"),
    (["@ok", "--address", "auto", "--workers", "2"], "--workers: sets the CPUs of the local Ray"),
    (["@ok", "--address", "http://head:6379"], "give auto"),
    (["@ok", "--address", "head"], "the port is missing"),
    (["@ok", "--address", "127.0.0.1:1"], "nothing answers at 127.0.0.1:1"),
    (["@ok", "--retries", "-1"], "--retries: must lie in [0, 100], got -1"),
    (["@ok", "--set", "render.renderer=gsplat"], "gsplat"),
])
def test_bad_input_for_the_whole_batch_is_one_error_line(tmp_path, capsys, monkeypatch, args, message):
    import torch

    if "gsplat" in message and torch.cuda.is_available():
        pytest.skip("gsplat runs here")
    monkeypatch.chdir(tmp_path)
    prompts_file(tmp_path, "a red cube").rename(tmp_path / "ok.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n\n")
    args = [f"{a[1:]}.txt" if a.startswith("@") else a for a in args]
    assert main(["batch", *args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_batch_help_lists_its_flags(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["batch", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--seeds", "--set", "--address", "--workers", "--retries", "--export", "--no-progress"):
        assert flag in text, flag


def test_each_task_asks_for_a_gpu_where_jobs_can_use_one():
    assert task_resources({"CPU": 16.0, "GPU": 2.0}, cuda=True) == {"num_cpus": 1, "num_gpus": 1}
    assert task_resources({"CPU": 16.0, "GPU": 2.0}, cuda=False) == {"num_cpus": 1}
    assert task_resources({"CPU": 2.0}, cuda=True) == {"num_cpus": 1}


def test_checkpoint_every_writes_checkpoints_and_keeps_the_newest(tmp_path):
    cfg = cfgmod.with_values(cfgmod.default_config(), {
        "render.resolution": 16, "render.batch": 1, "init.num": 100, "densify.enabled": False,
        "run.psnr_every": 0, "run.view_psnr_every": 0, "run.steps": 20,
        "run.checkpoint_every": 5, "run.checkpoint_keep": 2})
    session = Session(cfg, tmp_path)
    session.run_steps(12)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_000005.pt", "checkpoint_000010.pt"]
    assert [r["step"] for r in metric_rows(tmp_path)][:10] == list(range(1, 11))  # on disk with the checkpoint
    session.run_steps(8)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_000015.pt", "checkpoint_000020.pt"]
    for bad in (-1, 2_000_000):
        with pytest.raises(cfgmod.ConfigError, match=r"run.checkpoint_every: must lie in \[0, 1000000\]"):
            cfgmod.with_values(cfg, {"run.checkpoint_every": bad})
    with pytest.raises(cfgmod.ConfigError, match="run.checkpoint_keep: must lie in"):
        cfgmod.with_values(cfg, {"run.checkpoint_keep": -1})
