"""Building a Snapshot from the worker's state (worker thread only; the only host sync of a step)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from .snapshot import Snapshot, Splats, to_uint8

if TYPE_CHECKING:
    from .session import Session


def _host(t: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy: on CPU, .numpy() would share memory with the live parameters."""
    return np.array(t.detach().float().cpu().numpy(), copy=True)


def splats_of(params) -> Splats:
    p = params.detach()
    return Splats(
        means=_host(p.means),
        scales=_host(p.scales),
        quats=_host(torch.nn.functional.normalize(p.quats.float(), dim=-1)),
        opacities=_host(p.opacities),
        rgbs=_host((p.sh[:, 0].float() * 0.28209479177387814 + 0.5).clamp(0, 1)),
        sh=_host(p.sh),
    )


def build_snapshot(session: "Session", now: float) -> Snapshot:
    t0 = time.perf_counter()
    tr = session.trainer
    latest = session.metrics.flush()
    params = tr.scene.to_params()
    preview = reference = cams = None
    if tr.last_render is not None:
        preview = to_uint8(tr.last_render[0])
        b = tr.last_batch.cameras
        cams = {"viewmats": b.viewmats.detach().cpu().numpy(), "Ks": b.Ks.detach().cpu().numpy(),
                "width": b.width, "height": b.height}
        if tr.is_procedural:
            with torch.no_grad():
                bg = torch.ones(1, 3, device=tr.device)
                refs, _ = tr.prior.reference_images(tr.cond, tr.last_batch[0:1], bg)
            mode = session._latest_score.mode if session._latest_score is not None else 0
            reference = to_uint8(refs[min(mode, refs.shape[0] - 1), 0])
    old = session._snapshot
    merged = dict(old.latest) if old is not None else {}
    merged.update(latest)
    cfg = tr.cfg
    snap = Snapshot(
        version=session.next_version(),
        iteration=tr.iteration,
        planned_steps=cfg.run.steps,
        elapsed=session._elapsed,
        its=session._its,
        paused=session.paused,
        method=cfg.run.method,
        prompt=cfg.prompt.prompt,
        negative=cfg.prompt.negative,
        num_gaussians=tr.scene.num_gaussians,
        metrics=session.metrics.frozen(),
        latest=merged,
        splats=splats_of(params),
        preview=preview,
        reference=reference,
        cameras=cams,
        config=cfg,
        events=tuple(session._events),
        last_error=session.last_error,
        publish_ms=0.0,
    )
    ms = (time.perf_counter() - t0) * 1000.0
    return Snapshot(**{**snap.__dict__, "publish_ms": ms})
