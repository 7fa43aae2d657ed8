"""The browser studio in a real (headless) Chromium: the page loads, its viewport draws the splats, and
the Pause button stops the iteration counter. Chromium comes from the system packages (`make test` runs
scripts/system_deps.sh first; as root this test runs it itself when they are missing); skipped, with the
reason, only where they cannot be installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import studio.commands as C
from studio.config import default_config, with_values
from studio.session import Session
from studio.ui.headless import HeadlessBrowser, find_chromium
from studio.ui.viser_ui import ViserStudio

pytest.importorskip("selenium", reason="selenium (a test dependency) is not installed")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def chromium():
    """Chromium and its driver, installed by scripts/system_deps.sh if missing and we may."""
    if find_chromium() is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("chromium and chromedriver are not installed, and installing them needs root and "
                        "apt-get: run `sudo apt-get install chromium chromium-driver`")
        proc = subprocess.run(["bash", "scripts/system_deps.sh"], cwd=ROOT, capture_output=True, text=True,
                              timeout=900)
        if find_chromium() is None:
            pytest.skip(f"chromium could not be installed by scripts/system_deps.sh (exit {proc.returncode}): "
                        f"{(proc.stderr or proc.stdout)[-500:]}")
    return find_chromium()

SMALL = {"render.resolution": 32, "render.batch": 2, "init.num": 400, "densify.enabled": False,
         "run.psnr_every": 10}


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels whose colour differs by more than 24 levels in some channel."""
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    diff = np.abs(a[:h, :w].astype(np.int16) - b[:h, :w].astype(np.int16)).max(axis=-1)
    return float((diff > 24).mean())


def test_page_draws_the_splats_and_pause_stops_the_counter(tmp_path):
    session = Session(with_values(default_config("sds"), SMALL), tmp_path, paused=True)
    studio = ViserStudio(session, port=0).start()
    session.start()
    session.send(C.Resume())
    try:
        with HeadlessBrowser(studio.url, width=1280, height=800) as page:
            first = page.wait(page.status, 60, "the status line")
            page.wait(lambda: (s := page.status()) and s[0] > first[0], 60, "the iteration counter advancing")

            page.click_button("Pause")
            paused = session.wait_for(lambda s: s.paused, 20)
            shown = page.wait(lambda: (s := page.status()) and s[0] == paused.iteration and s, 20,
                              f"the counter settling at iteration {paused.iteration}")
            session.wait_for(lambda s: s.version > paused.version + 5, 20)  # several publishes later
            assert page.status() == shown
            assert "Paused" in page.driver.execute_script("return document.body.innerText")

            # The viewport draws the splats: hiding them changes a visible part of the canvas.
            page.wait(lambda: studio.scene.splat_sends > 0 and studio.scene._last_splats is not None, 20,
                      "splats sent")
            with_splats = page.wait(lambda: [img for img in [page.canvas_image()] if img.std() > 5], 30,
                                    "a drawn canvas")[0]
            studio.scene._splats.visible = False
            page.wait(lambda: changed_fraction(with_splats, page.canvas_image()) > 0.01, 30,
                      "the canvas changing when the splats are hidden")
            studio.scene._splats.visible = True
            page.screenshot(tmp_path / "studio.png")
            assert (tmp_path / "studio.png").stat().st_size > 10_000
    finally:
        studio.stop()
        session.stop()
