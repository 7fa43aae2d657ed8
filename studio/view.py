"""How the studio shows the scene: settings of the viewers, not of training (they live outside the
session's config and its checkpoints).

`--set view.mode=depth` on the command line and the View folder of both panels set them; paths are
`view.<field>` like the config's `section.field`, and bad values are refused with the field and its range.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from . import confio

RenderMode = Literal["rgb", "depth", "alpha", "normal"]
PREFIX = "view."


@dataclass(frozen=True)
class ViewSettings:
    mode: RenderMode = "rgb"
    """what the viewers draw: colour, depth (near is bright), accumulated opacity, or camera-space normals
    (the browser's 3D viewport always draws colour; its training view follows this)"""
    splat_hz: float = 1.0
    """browser: most splat updates sent per second; a new one also waits until every page has taken the
    last (so a slow page is sent fewer, never a backlog)"""
    live_splats: int = 20_000
    """browser: while training, send at most this many splats (the most opaque); all of them once paused
    (0: always all)"""
    size: int = 256
    """desktop: side of the viewport render in pixels (square) while paused and still"""
    moving_size: int = 128
    """desktop: side of the render while training or while the camera moves (a divisor of size: cheaper
    renders leave the cores to training; the image sharpens to `size` once paused and still)"""
    display: int = 512
    """desktop: largest side of the viewport on screen in pixels (the render is scaled up to it; a smaller
    window shows it smaller)"""
    max_hz: float = 4.0
    """desktop: re-renders per second for new snapshots while training (camera moves re-render at once)"""
    background: float = 0.16
    """desktop: grey level behind the Gaussians"""
    fps: float = 30.0
    """desktop: frame-rate cap while the user interacts (without a GPU, Mesa draws every frame on the CPU)"""
    idle_fps: float = 5.0
    """desktop: frame-rate cap without input for a second (snapshots arrive at run.publish_hz anyway)"""

    def validate(self) -> "ViewSettings":
        """Self, or ConfigError naming the first bad field and its allowed range."""
        def check(name: str, lo: float, hi: float, unit: str = "") -> None:
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise confio.ConfigError(f"view.{name}: must lie in [{lo:g}, {hi:g}]{unit}, got {value}")

        if self.mode not in typing.get_args(RenderMode):
            raise confio.ConfigError(f"view.mode: must be one of {', '.join(typing.get_args(RenderMode))}, "
                                     f"got {self.mode!r}")
        check("splat_hz", 0.1, 30.0, " per second")
        check("live_splats", 0, 10_000_000, " splats")
        check("size", 16, 2048, " pixels")
        if not (8 <= self.moving_size <= self.size and self.size % self.moving_size == 0):
            raise confio.ConfigError(f"view.moving_size: must be a divisor of size = {self.size} and at least 8, "
                                     f"got {self.moving_size}")
        check("display", 16, 4096, " pixels")
        check("max_hz", 0.1, 120.0, " per second")
        check("background", 0.0, 1.0)
        check("fps", 1.0, 240.0, " frames per second")
        check("idle_fps", 1.0, 240.0, " frames per second")
        return self


@dataclass(frozen=True)
class _Holder:  # lets confio's dotted paths ("view.mode") address ViewSettings
    view: ViewSettings = ViewSettings()


def is_view_path(path: str) -> bool:
    return path.startswith(PREFIX)


def with_view_values(settings: ViewSettings, values: dict[str, Any]) -> ViewSettings:
    """A validated copy with `view.<field>` paths set (values coerced from strings or JSON values)."""
    return confio.set_paths(_Holder(settings), values).view.validate()


def view_value(settings: ViewSettings, path: str) -> Any:
    return confio.get_path(_Holder(settings), path)


def view_field_type(path: str) -> Any:
    return confio.field_type(_Holder, path)


def view_field_doc(path: str) -> str:
    return confio.field_doc(ViewSettings, path.removeprefix(PREFIX))


def list_view_settings() -> list[str]:
    """'view.mode = 'rgb'    # help' lines, as --list-settings prints the config's."""
    default = ViewSettings()
    return [f"view.{f.name} = {getattr(default, f.name)!r}    # {confio.field_doc(ViewSettings, f.name)}"
            for f in dataclasses.fields(ViewSettings)]
