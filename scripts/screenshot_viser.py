"""Take the README's screenshots of the browser studio: train a while, open the page in headless Chromium,
let it settle, save a PNG (256 colours).

    .venv/bin/python scripts/screenshot_viser.py [--out docs/screenshot_viser.png] [--steps 300]
    .venv/bin/python scripts/screenshot_viser.py --width 1000 --height 650 --out docs/screenshot_viser_1000x650.png
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see tests/conftest.py

import studio.commands as C  # noqa: E402
from studio.config import default_config, with_values  # noqa: E402
from studio.session import Session  # noqa: E402
from studio.ui.headless import HeadlessBrowser  # noqa: E402
from studio.ui.viser_ui import ViserStudio  # noqa: E402


def dismiss_notifications(page: HeadlessBrowser) -> None:
    """Close the page's notifications (e.g. viser's 'software WebGL' notice) so they do not cover the view."""
    page.driver.execute_script(
        "document.querySelectorAll('.mantine-Notification-closeButton, .mantine-Notifications-root button')"
        ".forEach(b => b.click());")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot_viser.png")
    p.add_argument("--prompt", default="a mushroom")
    p.add_argument("--method", default="sds")
    p.add_argument("--steps", type=int, default=400, help="steps trained before the page opens")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=800)
    args = p.parse_args()
    cfg = with_values(default_config(args.method), {"prompt.prompt": args.prompt, "run.steps": 600})
    session = Session(cfg, ROOT / "out" / "screenshot", paused=True, metrics_file=False)
    t0 = time.perf_counter()
    session.run_steps(args.steps)
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    studio = ViserStudio(session, port=0).start()
    session.start()
    session.send(C.Resume())
    try:
        with HeadlessBrowser(studio.url, args.width, args.height) as page:
            page.wait(page.status, 60, "the status line")
            start = session.snapshot.iteration
            session.wait_for(lambda s: s.iteration >= start + 20, 120)  # plots and frusta move on a bit
            time.sleep(2.0)  # the next splat, image and plot refreshes reach the page
            dismiss_notifications(page)
            time.sleep(1.0)
            page.screenshot(args.out)
        from PIL import Image  # 256 colours: a third of the bytes, no visible change for a UI screenshot

        Image.open(args.out).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                                     dither=Image.Dither.NONE).save(args.out, optimize=True)
    finally:
        studio.stop()
        session.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
