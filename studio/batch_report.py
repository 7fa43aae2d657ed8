"""The batch's summary: summary.json (every job's result), summary.md (one table row per job) and
gallery.html (each job's turntable GIF with its prompt, seed and scores), all in the batch folder and
written atomically. Links in the page and the table are relative, so the folder can be moved or served."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .atomic import write_json_atomic, write_text_atomic

COLUMNS = ("prompt", "seed", "status", "steps", "psnr_ref", "loss", "seconds", "folder", "error")


def _number(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _row(result: dict[str, Any]) -> list[str]:
    return [result["prompt"], str(result["seed"]), result["status"] + (" (earlier)" if result.get("earlier") else ""),
            str(result.get("steps", 0)), _number(result.get("psnr_ref"), 2), _number(result.get("loss"), 4),
            _number(result.get("seconds"), 1), result["id"], result.get("error") or ""]


def markdown(results: list[dict[str, Any]]) -> str:
    """One row per job (a '|' in a prompt or message is escaped)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in _row(r)) + " |" for r in results]
    return "\n".join(lines)


def counts(results: list[dict[str, Any]]) -> str:
    done = sum(r["status"] == "done" for r in results)
    earlier = sum(r["status"] == "done" and bool(r.get("earlier")) for r in results)
    failed = sum(r["status"] == "failed" for r in results)
    unfinished = len(results) - done - failed
    text = f"{len(results)} jobs: {done} done ({earlier} in an earlier run), {failed} failed"
    return text + (f", {unfinished} unfinished" if unfinished else "")


def gallery(results: list[dict[str, Any]], title: str) -> str:
    """A self-contained page: one card per job, its GIF (when it wrote one) and what it came to."""
    cards = []
    for r in results:
        gif = next((name for name in r.get("exports", []) if name.endswith(".gif")), None)
        folder = quote(r["id"])
        image = (f'<img src="{folder}/{quote(gif)}" alt="{html.escape(r["prompt"])}" width="256" height="256">'
                 if gif else '<div class="none">no turntable</div>')
        facts = [f"seed {r['seed']}", r["status"]]
        if r.get("psnr_ref") is not None:
            facts.append(f"psnr_ref {r['psnr_ref']:.2f} dB")
        if r.get("steps"):
            facts.append(f"{r['steps']} steps")
        links = " ".join(f'<a href="{folder}/{quote(name)}">{html.escape(name.rsplit(".", 1)[-1])}</a>'
                         for name in r.get("exports", []) if not name.endswith(".gif"))
        error = f'<p class="error">{html.escape(r["error"])}</p>' if r.get("error") else ""
        cards.append(f'<figure class="{html.escape(r["status"])}">{image}<figcaption><b>{html.escape(r["prompt"])}'
                     f'</b><br>{html.escape(", ".join(facts))}<br><a href="{folder}/">folder</a> {links}{error}'
                     f'</figcaption></figure>')
    style = ("body{font-family:sans-serif;margin:1.5em;background:#fafafa}main{display:flex;flex-wrap:wrap;gap:1em}"
             "figure{margin:0;width:256px;background:#fff;border:1px solid #ddd;padding:.5em}"
             "figure.failed{border-color:#c33}img{display:block;background:#fff}.none{width:256px;height:256px;"
             "display:flex;align-items:center;justify-content:center;color:#888;background:#eee}"
             ".error{color:#c33;font-size:.85em;overflow-wrap:anywhere}figcaption{font-size:.9em;margin-top:.4em}")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head>\n<body><h1>{html.escape(title)}</h1><p>{html.escape(counts(results))}"
            f"</p>\n<main>\n" + "\n".join(cards) + "\n</main></body></html>\n")


def write_summary(out: Path, outcome: Any) -> dict[str, Path]:
    """summary.json, summary.md and gallery.html in `out` (atomically); their paths by kind."""
    results = outcome.results
    title = f"Batch {out.name}: {time.strftime('%Y-%m-%d %H:%M')}"
    paths = {"json": out / "summary.json", "md": out / "summary.md", "html": out / "gallery.html"}
    write_json_atomic(paths["json"], {"jobs": results, "summary": counts(results), "seconds": round(outcome.seconds, 3),
                                      "ran": outcome.ran, "interrupted": outcome.interrupted,
                                      "task_resources": outcome.resources})
    write_text_atomic(paths["md"], f"# {title}\n\n{counts(results)}\n\n{markdown(results)}\n")
    write_text_atomic(paths["html"], gallery(results, title))
    return paths


def print_summary(outcome: Any, paths: dict[str, Path]) -> None:
    print(markdown(outcome.results))
    print(f"{counts(outcome.results)}; {outcome.seconds:.1f} s. Summary: {paths['md']}, gallery: {paths['html']}")
