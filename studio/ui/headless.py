"""Open the browser studio in a headless Chromium (Selenium): the browser test, the viewer-overhead
benchmark and the README screenshot use it.

Chromium runs without a GPU (its software WebGL draws viser's splats), without a sandbox (containers),
with a fresh profile in a temporary folder, and resolves no host but 127.0.0.1, so it never talks to
the network. Needs the system packages `chromium` and `chromium-driver` (scripts/system_deps.sh) and
the `selenium` test dependency.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--no-default-browser-check",
    # WebGL on the software rasterizer, now that --disable-gpu no longer implies it.
    "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
    # Only localhost resolves: nothing leaves the machine whatever the page asks for.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
STATUS_PATTERN = re.compile(r"it ([\d,]+) / ([\d,]+)")


def find_chromium() -> tuple[str, str] | None:
    """(chromium, chromedriver) executables, or None when either is missing."""
    for browser, driver in (("/usr/bin/chromium", "/usr/bin/chromedriver"),
                            (shutil.which("chromium") or "", shutil.which("chromedriver") or "")):
        if browser and driver and Path(browser).exists() and Path(driver).exists():
            return browser, driver
    return None


class HeadlessBrowser:
    """One headless Chromium window on one URL. Use as a context manager.

    Args:
        url: the studio's address (http://127.0.0.1:<port>).
        width, height: window size in CSS pixels (the screenshot's size).
    """

    def __init__(self, url: str, width: int = 1440, height: int = 900):
        found = find_chromium()
        if found is None:
            raise RuntimeError("chromium and chromedriver are not installed; run scripts/system_deps.sh "
                               "(apt-get install chromium chromium-driver)")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._profile = tempfile.mkdtemp(prefix="studio-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = found[0]
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile}")
        options.add_argument(f"--window-size={width},{height}")
        try:
            self.driver = webdriver.Chrome(service=Service(found[1]), options=options)
        except Exception:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        # The page gets exactly width x height (--window-size counts the window's frame too).
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.driver.set_page_load_timeout(30)
        self.driver.get(url)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "HeadlessBrowser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- reading the page -------------------------------------------------------------------------
    def wait(self, predicate, timeout: float, what: str, poll: float = 0.1) -> Any:
        """Poll predicate() until it returns something truthy; TimeoutError naming `what` otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"page: {what} not seen within {timeout} s")
            time.sleep(poll)

    def status(self) -> tuple[int, int] | None:
        """(iteration, planned steps) as the page's status line shows them, or None before it shows."""
        text = self.driver.execute_script("return document.body ? document.body.innerText : ''") or ""
        m = STATUS_PATTERN.search(text)
        return (int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))) if m else None

    def page_image(self) -> np.ndarray:
        """[H, W, 3] uint8 screenshot of the window."""
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB"))

    def canvas_image(self) -> np.ndarray:
        """[H, W, 3] uint8 screenshot of the 3D viewport (the largest canvas), cut from a window screenshot
        (Chromium's element screenshots wait for a quiet page, which a live studio never is)."""
        rect = self.driver.execute_script(
            "const cs = Array.from(document.querySelectorAll('canvas'));"
            "if (!cs.length) return null;"
            "const c = cs.reduce((a, b) => a.clientWidth * a.clientHeight >= b.clientWidth * b.clientHeight ? a : b);"
            "const r = c.getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height, window.devicePixelRatio];")
        assert rect is not None, "page: no canvas element"
        img = self.page_image()
        left, top, width, height, dpr = rect
        y0, x0 = max(0, int(top * dpr)), max(0, int(left * dpr))
        return img[y0:int((top + height) * dpr), x0:int((left + width) * dpr)]

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def click_button(self, label: str) -> None:
        """Click the (first enabled) button whose text is `label`."""
        from selenium.webdriver.common.by import By

        xpath = f"//button[normalize-space(.)='{label}' and not(@disabled)]"
        button = self.wait(lambda: self.driver.find_elements(By.XPATH, xpath), 10.0, f"button {label!r}")[0]
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
        button.click()
