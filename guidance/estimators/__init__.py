"""The gradient estimators, one file each: SDS (DreamFusion), ISM (LucidDreamer), SSD (SteinDreamer).

    est = make_estimator("ism", ISMSettings(delta_t=80), seed=0)
    result = est(prior, render, cameras, vc, step)     # EstimatorResult(loss, diagnostics, z, grad)
    est.settings = replace(est.settings, delta_s=100)  # replaced whole between steps, no rebuild
"""

from __future__ import annotations

from typing import Any

from .base import Estimator, EstimatorResult, SettingsError
from .ism import ISM, ISMSettings
from .sds import SDS, SDSSettings
from .ssd import SSD, SSDSettings

ESTIMATORS: dict[str, type] = {"sds": SDS, "ism": ISM, "ssd": SSD}


def _lookup(name: str) -> type:
    if name not in ESTIMATORS:
        raise SettingsError(f"method: unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def settings_class(name: str) -> type:
    """The settings dataclass of estimator `name` ("sds", "ism", "ssd")."""
    return _lookup(name).settings_class


def make_estimator(name: str, settings: Any = None, seed: int = 0) -> Estimator:
    """A new estimator by name, with `settings` (default: the method's defaults) and its own seeded
    random streams (see common.py for how the seed is used)."""
    return _lookup(name)(settings, seed=seed)


__all__ = [
    "ESTIMATORS", "ISM", "ISMSettings", "SDS", "SDSSettings", "SSD", "SSDSettings", "Estimator",
    "EstimatorResult", "SettingsError", "make_estimator", "settings_class",
]
