"""cgrp_fusion's no-ground-truth check of its rig estimate, for /diagnostics.

After each full registration (StreamPipeline's on_registration, in the registration thread) the
frame's thermal is scored against its visible image twice (evaluation.alignment): as received
(through the prior: a resize, or calibration_file) and through the rig estimate. The means over the
last WINDOW registrations say whether the estimate lines the cameras' edges up better than what
arrives; clearly worse is a warning (e.g. a rig already aligned that the estimate moves).
"""
from __future__ import annotations

import collections
import threading

import numpy as np

from ..evaluation.alignment import prior_and_registered_edges
from ..evaluation.metrics import EDGE_MARGIN_OF_DIFFERENCE, edge_comparison

WINDOW = 5        # registrations the means are taken over (the rig estimate's own window)
MIN_SCORED = 3    # registrations scored before a verdict
WORSE_BY = 2 * EDGE_MARGIN_OF_DIFFERENCE  # a mean this much below the received one is a warning


class AlignmentCheck:
    """check(stream, visible, thermal) after a registration; values() and worse() for diagnostics."""

    def __init__(self, window: int = WINDOW):
        self._scores = collections.deque(maxlen=window)  # (received, with the estimate)
        self._lock = threading.Lock()
        self.error = None  # why the last check failed (it never stops the fusion)

    def check(self, stream, visible: np.ndarray, thermal: np.ndarray) -> None:
        generation = stream.generation
        current = stream.current()
        if current is None or current.flow.shape[:2] != visible.shape[:2]:
            return
        try:
            scores = prior_and_registered_edges(stream.pipeline, visible, thermal, current.flow)
        except Exception as exc:  # a diagnostic: report it, never fail the registration for it
            self.error = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:  # (the node resets the stream, then this window: compared and appended under the lock)
            # a reset while scoring (another calibration, cleanup) cleared the window: this score is of the old estimate
            if np.all(np.isfinite(scores)) and stream.generation == generation:
                self._scores.append(scores)

    def reset(self) -> None:
        with self._lock:
            self._scores.clear()

    def means(self):
        """(received, with the estimate, registrations scored), or None before the first."""
        with self._lock:
            scores = list(self._scores)
        if not scores:
            return None
        c = edge_comparison(*zip(*scores))
        return c["before"], c["after"], c["scored"]

    def values(self) -> dict:
        """Its /diagnostics key/value."""
        means = self.means()
        key = "edge agreement received / rig estimate"
        if means is None:
            return {key: f"n/a ({self.error})" if self.error else "n/a"}
        received, estimate, n = means
        return {key: f"{received:.3f} / {estimate:.3f} (last {n} registrations)"}

    def worse(self) -> str | None:
        """The warning when the estimate lines the edges up clearly worse than the input, or None."""
        means = self.means()
        if means is None or means[2] < MIN_SCORED or means[1] >= means[0] - WORSE_BY:
            return None
        return (f"the rig estimate lines the cameras' edges up worse than the input (edge agreement "
                f"{means[1]:.3f} against {means[0]:.3f}): check ~/registered_thermal, the estimate may be "
                f"wrong for this rig")
