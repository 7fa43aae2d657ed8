"""The browser studio in a real (headless) Chromium: the page loads, its viewport draws the splats, and
the Pause button stops the iteration counter. Chromium comes from the system packages (`make test` runs
scripts/system_deps.sh first; as root this test runs it itself when they are missing); skipped, with the
reason, only where they cannot be installed."""

from __future__ import annotations

import os
import time
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
            text = page.driver.execute_script("return document.body.innerText")
            assert "Paused" in text, text[:800]

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


def plot_pixels(page: HeadlessBrowser) -> list[int]:
    """Per uPlot chart in the page, how many of its canvas pixels are strongly coloured (a drawn line;
    axes, grid and text are grey)."""
    rects = page.driver.execute_script(
        "return Array.from(document.querySelectorAll('.uplot canvas')).map(c => {"
        "const r = c.getBoundingClientRect(); return [r.left, r.top, r.width, r.height];})")
    img = page.page_image().astype(np.int16)
    counts = []
    for left, top, width, height in rects:
        crop = img[int(top):int(top + height), int(left):int(left + width)]
        saturation = crop.max(axis=-1) - crop.min(axis=-1)
        counts.append(int((saturation > 60).sum()))
    return counts


def type_slowly(element, text: str, pause: float = 0.12) -> None:
    """Keys at a person's pace. The page sends all widget edits through one 50 ms throttle that keeps
    only the newest message, so keys a few milliseconds apart can lose all but the first edit."""
    for key in text:
        element.send_keys(key)
        time.sleep(pause)


def test_page_opened_before_the_first_step_plots_it_and_typing_commits_once(tmp_path):
    session = Session(with_values(default_config("sds"), SMALL), tmp_path, paused=True)
    studio = ViserStudio(session, port=0).start()
    session.start()
    sent, real_send = [], session.send
    try:
        with HeadlessBrowser(studio.url, width=1280, height=800) as page:
            page.wait(page.status, 60, "the status line")
            assert page.driver.title == "Gaussian Dreamer Studio: a red cube"
            assert session.snapshot.iteration == 0 and plot_pixels(page) == []  # no chart before data
            session.send(C.Resume())
            session.wait_for(lambda s: s.iteration >= 25, 120)
            counts = page.wait(lambda: (c := plot_pixels(page)) and len(c) == 3 and min(c) > 50 and c, 30,
                               "three charts with their lines drawn")
            assert len(counts) == 3

            # Typing a number into the CFG slider's box: one edit reaches the session, once settled.
            from selenium.webdriver.common.by import By
            from selenium.webdriver.common.keys import Keys

            def send(cmd):
                sent.append(cmd)
                return real_send(cmd)

            session.send = send
            # Paused for the typing: Selenium waits for a busy page before each key, and keys a whole
            # frame apart are, to the panel, typing that stopped (tests/test_viser_ui.py streams the
            # values of a typed number over the wire while training).
            session.send(C.Pause())
            session.wait_for(lambda s: s.paused, 20)
            time.sleep(1.5)
            box = page.wait(lambda: [e for e in page.driver.find_elements(By.CSS_SELECTOR, "input")
                                     if e.get_attribute("value") == "7.5" and e.is_displayed()], 10,
                             "the CFG scale box")[0]
            page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
            box.click()
            box.send_keys(Keys.CONTROL, "a")
            type_slowly(box, "150", pause=0.03)  # not in a form: the throttle's trailing send has the last
            box.send_keys(Keys.ENTER)
            session.wait_for(lambda s: s.config.sds.guidance_scale == 150.0, 20)
            time.sleep(1.5)
            edits = [c.values["sds.guidance_scale"] for c in sent
                     if isinstance(c, C.UpdateSettings) and "sds.guidance_scale" in c.values]
            assert edits == [150.0]

            # A refused prompt: the message is on screen and the box shows the prompt in use again.
            prompt_box = [e for e in page.driver.find_elements(By.CSS_SELECTOR, "input")
                          if e.get_attribute("value") == "a red cube" and e.is_displayed()][0]
            page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", prompt_box)
            prompt_box.click()
            prompt_box.send_keys(Keys.CONTROL, "a")
            type_slowly(prompt_box, "a purple elephant")
            prompt_box.send_keys(Keys.ENTER)
            page.wait(lambda: "purple elephant" in page.driver.execute_script("return document.body.innerText"),
                      20, "the refusal shown")
            page.wait(lambda: prompt_box.get_attribute("value") == "a red cube", 20, "the box reverted")
            note = page.driver.execute_script(
                "const n = Array.from(document.querySelectorAll('.mantine-Notification-root'))"
                ".find(e => e.innerText.includes('purple elephant')); if (!n) return null;"
                "const r = n.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom];")
            assert note is not None and note[0] >= 0 and note[1] >= 0 and note[2] <= 1280 and note[3] <= 800
            assert session.config.prompt.prompt == "a red cube"
            page.screenshot(tmp_path / "refused.png")
    finally:
        session.send = real_send
        studio.stop()
        session.stop()
