"""Building a Snapshot from the session state (worker thread only; the only host sync of a step)."""

from __future__ import annotations

import time
import numpy as np
import torch

from .render_modes import MODES, mode_image
from .snapshot import Snapshot, Splats, to_uint8
from .state import SessionState


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


def build_snapshot(state: SessionState, version: int, latest: dict[str, float],
                   previous: Snapshot | None) -> Snapshot:
    """The snapshot of `state` now. `latest`: the metric values just flushed (merged over the previous
    snapshot's within one segment)."""
    t0 = time.perf_counter()
    tr = state.trainer
    params = tr.scene.to_params()
    preview = reference = cams = None
    previews: dict[str, np.ndarray] = {}
    if tr.last_render is not None:
        preview = to_uint8(tr.last_render[0])
        if tr.last_output is not None:
            with torch.no_grad():
                previews = {m: to_uint8(mode_image(tr.last_output, m)) for m in MODES}
        b = tr.last_batch.cameras
        cams = {"viewmats": b.viewmats.detach().cpu().numpy(), "Ks": b.Ks.detach().cpu().numpy(),
                "width": b.width, "height": b.height}
        if tr.is_procedural:
            with torch.no_grad():
                bg = torch.ones(1, 3, device=tr.device)
                refs, _ = tr.prior.reference_images(tr.cond, tr.last_batch[0:1], bg)
            mode = state.latest_score.mode if state.latest_score is not None else 0
            reference = to_uint8(refs[min(mode, refs.shape[0] - 1), 0])
    same_segment = previous is not None and previous.segment == state.segment
    merged = dict(previous.latest) if same_segment else {}
    merged.update(latest)
    cfg = tr.cfg
    snap = Snapshot(
        version=version,
        iteration=tr.iteration,
        planned_steps=cfg.run.steps,
        segment=state.segment,
        done=tr.iteration >= cfg.run.steps,
        elapsed=state.elapsed,
        its=state.its,
        paused=state.paused,
        method=cfg.run.method,
        prompt=cfg.prompt.prompt,
        negative=cfg.prompt.negative,
        num_gaussians=tr.scene.num_gaussians,
        metrics=state.metrics.frozen(),
        latest=merged,
        splats=splats_of(params),
        preview=preview,
        previews=previews,
        reference=reference,
        cameras=cams,
        config=cfg,
        events=state.events.events,
        last_error=state.last_error,
        publish_ms=0.0,
    )
    ms = (time.perf_counter() - t0) * 1000.0
    return Snapshot(**{**snap.__dict__, "publish_ms": ms})
