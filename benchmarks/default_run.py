"""The default run, as `make studio` starts it, to its plan and on to twice its plan: Gaussian count and
psnr_ref at the training resolution (64 px) and at the viewer's (256 px), at 600 and 1200 steps, and a
browser screenshot at 600 steps (the plan's end, where the session pauses with "done").

    .venv/bin/python benchmarks/default_run.py                   # table + docs/screenshot_default_600.png
    .venv/bin/python benchmarks/default_run.py --compare         # also the densification defaults before
    .venv/bin/python benchmarks/default_run.py --quick --no-write

The session is the studio's own (default config: "a red cube", SDS, 64 px, batch 4, 2,000 Gaussians at
start), stepped in this thread to 600, shown in the browser studio with one headless Chromium for the
screenshot, then continued with the Continue command, as a user would, to 1200. psnr_ref is measured on
the held-out ring of four cameras against the nearest reference mode; at 256 px it shows what a 64 px
loss cannot see (holes between Gaussians that 64 px pixels average away).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import load_average, machine, markdown_table, write_section

import studio.commands as C  # noqa: E402
from studio.config import default_config, with_values  # noqa: E402
from studio.session import Session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEFORE = {"densify.refine_stop": 3000, "densify.max_gaussians": 100_000_000}  # the defaults until this change


def measure(session: Session, label: str, t0: float) -> list[str]:
    tr = session.trainer
    train, view = tr.score(), tr.score(tr.cfg.run.view_resolution)
    return [label, f"{tr.iteration:,}", f"{tr.scene.num_gaussians:,}", f"{float(train.psnr):.2f}",
            f"{float(view.psnr):.2f}", f"{time.perf_counter() - t0:.0f}"]


def screenshot(session: Session, path: Path) -> None:
    from studio.ui.headless import HeadlessBrowser
    from studio.ui.viser_ui import ViserStudio

    studio = ViserStudio(session, port=0).start()
    studio.scene.set_frusta_visible(False)  # the last batch's cameras would stand between the view and the scene
    session.start()  # paused at the plan's end: the page shows "Done" and the finished scene
    try:
        with HeadlessBrowser(studio.url, 1440, 900) as page:
            page.wait(page.status, 60, "the status line")
            time.sleep(4.0)  # splats, image and plots reach the page and are drawn
            page.driver.execute_script(
                "document.querySelectorAll('.mantine-Notification-closeButton, .mantine-Notifications-root button')"
                ".forEach(b => b.click());")
            time.sleep(1.0)
            page.screenshot(path)
    finally:
        studio.stop()
        session.stop()
    from PIL import Image  # 256 colours: a third of the bytes, no visible change for a UI screenshot

    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                             dither=Image.Dither.NONE).save(path, optimize=True)


def run(label: str, values: dict, plan: int, shot: Path | None) -> list[list[str]]:
    cfg = with_values(default_config("sds"), {"run.steps": plan, **values})
    session = Session(cfg, ROOT / "out" / "default_run", metrics_file=False)
    t0 = time.perf_counter()
    session.run_steps(plan)
    rows = [measure(session, label, t0)]
    print(" | ".join(rows[-1]), flush=True)
    if shot is not None:
        screenshot(session, shot)
        print(f"wrote {shot}", flush=True)
    session.send(C.Continue())  # what the page's Continue button sends: the plan again
    session.run_steps(session.config.run.steps - session.trainer.iteration)
    rows.append(measure(session, label, t0))
    print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 40-step plan (smoke test)")
    ap.add_argument("--compare", action="store_true", help="also run the densification defaults before the cap")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args()
    plan = 40 if args.quick else 600
    load = load_average()
    shot = None if args.no_write else ROOT / "docs" / "screenshot_default_600.png"
    rows = run("defaults (refine_stop 500, cap 20k)", {}, plan, shot)
    if args.compare:
        rows += run("before (refine_stop 3000, no cap)", BEFORE, plan, None)
    header = ["densification", "step", "Gaussians", "psnr_ref 64 px (dB)", "psnr_ref 256 px (dB)", "seconds"]
    table = markdown_table(header, rows)
    print(f"machine: {machine(load)}")
    print(table)
    if not args.no_write:
        write_section("Default run to its plan and twice its plan", "\n".join([
            f"`.venv/bin/python benchmarks/default_run.py{' --compare' if args.compare else ''}` on {machine(load)}.",
            "The default session (`make studio`: \"a red cube\", SDS, 64 px, batch 4, 2,000 Gaussians at start)",
            "stepped to its 600-step plan, then continued (the Continue command) to 1,200. psnr_ref on the",
            "held-out ring against the nearest mode, at the training resolution and at the viewer's 256 px.",
            "Seconds are cumulative wall time of training plus evaluation (the defaults' row at 1,200 includes",
            "the browser screenshot taken at 600).",
            "",
            table,
            "",
            "![The browser studio at the end of the default 600-step plan](screenshot_default_600.png)",
        ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
