"""What `cgrp eval` runs and how it counts: the methods, the metrics table's columns, the histograms'
bins and the per-pair targets of issue 9. Shared by the evaluation (evaluate.py) and its reports
(report.py), which would otherwise import each other."""
from __future__ import annotations

import numpy as np

from ..core.errors import InputError
from . import metrics as M

METHODS = ("cgrp", "none", "ecc", "dis", "cgrp_avg")
REGISTRARS = ("cgrp", "none", "ecc", "dis")  # cgrp_avg shares cgrp's registration
METHOD_DESCRIPTIONS = {
    "cgrp": "CGRP pipeline: registration network + fusion network",
    "none": "no registration, fusion network on the misaligned pair",
    "ecc": "OpenCV ECC affine on gradient magnitudes + fusion network",
    "dis": "OpenCV DIS flow pseudo-thermal -> thermal + fusion network (an optical flow made for one "
           "modality: across modalities it often moves pairs further off than no registration does)",
    "cgrp_avg": "CGRP registration + plain averaging fusion",
}
ALWAYS = ("cgrp", "none")  # run whatever `methods` says
METRIC_COLUMNS = tuple(M.REGISTRATION_COLUMNS) + tuple(M.FUSION_COLUMNS)
# per pair: the published alignment's edge agreement (the yardstick for the methods'), cgrp's confidence
PAIR_COLUMNS = ("edge_agreement_published", "registration_confidence", "registration_fallback")
COLUMNS = ("image", "method") + METRIC_COLUMNS + PAIR_COLUMNS
EPE_BINS = np.linspace(0.0, 20.0, 81)       # px; the last bin also holds everything above
ABS_ERROR_BINS = np.linspace(0.0, 128.0, 65)  # grey levels
WORSE_MARGIN_PX = 0.5          # a pair counts as made worse when cgrp's EPE exceeds no registration's by more
MOVED_LIMIT_PX = 5.0           # issue 9: no aligned pair moved by more than this on average


def made_worse(epe_cgrp, epe_none):
    """Per pair (floats or arrays): cgrp's EPE exceeds no registration's by more than WORSE_MARGIN_PX."""
    excess = np.asarray(epe_cgrp, np.float64) - epe_none
    return np.isfinite(excess) & (excess > WORSE_MARGIN_PX)


def moved_too_far(epe_cgrp):
    """Per pair (floats or arrays): cgrp's EPE above MOVED_LIMIT_PX (on aligned input: moved that far)."""
    epe_cgrp = np.asarray(epe_cgrp, np.float64)
    return np.isfinite(epe_cgrp) & (epe_cgrp > MOVED_LIMIT_PX)


def misses_pair_target(preset: str, epe_cgrp: float, epe_none: float) -> bool:
    """Whether one pair breaks a per-pair target of issue 9: on aligned input (`none`) moved by more than
    MOVED_LIMIT_PX, at `mild` worse than unregistered by more than WORSE_MARGIN_PX."""
    if preset == "none":
        return bool(moved_too_far(epe_cgrp))
    return preset == "mild" and bool(made_worse(epe_cgrp, epe_none))


def select_methods(methods=None) -> tuple:
    """METHODS to run, in METHODS order: `methods` (names, or a comma-separated string) + cgrp and none."""
    if methods is None:
        return METHODS
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    wanted = {m.strip() for m in methods}
    unknown = sorted(wanted - set(METHODS))
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}: expected some of {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in wanted or m in ALWAYS)
