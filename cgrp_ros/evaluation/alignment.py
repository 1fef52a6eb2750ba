"""Did the registration line the two cameras up? A check that needs no ground truth, for a user's own
recordings (`cgrp fuse`'s registration.csv and alignment pictures) and a running node (its /diagnostics
and ~/alignment_vis).

    received, registered = prior_and_registered_edges(pipeline, visible, thermal, flow)

Both are metrics.edge_agreement scores of the visible luminance against the thermal brought into the
visible camera by `pipeline` (Pipeline.thermal_in_visible): through the prior alone (a resize, or the
calibration: the alignment the pair came with) and through the prior and `flow`. Compare them per pair
with metrics.EDGE_MARGIN_OF_DIFFERENCE. received_and_registered() keeps the images, for a picture;
registered_edges_picture() draws one registered pair's edges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.image import check_image, luminance, visible_to_bgr01
from .metrics import edge_agreement
from .report import edge_overlay


@dataclass
class ReceivedAndRegistered:
    """One pair in the visible camera's pixels (all H x W)."""
    visible_y: np.ndarray    # visible luminance
    received: np.ndarray     # float32 thermal through the prior alone: the alignment the pair came with
    registered: np.ndarray   # float32 thermal through the prior and the flow
    seen: np.ndarray         # bool: where both of them see the thermal (0 elsewhere)

    def edges(self) -> tuple:
        """(received, registered) edge agreement with the visible image, over `seen`."""
        return tuple(edge_agreement(self.visible_y, image, self.seen) for image in (self.received, self.registered))


def received_and_registered(pipeline, visible: np.ndarray, thermal: np.ndarray,
                            flow: np.ndarray) -> ReceivedAndRegistered:
    """visible: H x W (x3 BGR / x4 BGRA); thermal: h x w as received; flow: H x W x 2 visible px."""
    flows = (np.zeros_like(flow), flow)
    seen = np.logical_and.reduce([thermal_seen(pipeline, thermal.shape, f) for f in flows])
    received, registered = (np.nan_to_num(pipeline.thermal_in_visible(thermal, f).astype(np.float32)) for f in flows)
    return ReceivedAndRegistered(visible_luminance(visible), received, registered, seen)


def registered_edges_picture(pipeline, visible: np.ndarray, registered: np.ndarray, thermal_shape,
                             flow: np.ndarray) -> np.ndarray:
    """H x W x 3 BGR uint8: report.edge_overlay of the visible image (green) and the registered thermal
    (magenta; `registered`: Pipeline.thermal_in_visible of a thermal of `thermal_shape` with `flow`),
    white where the edges coincide; the thermal's edges only where it sees."""
    image = np.nan_to_num(registered.astype(np.float32))
    return edge_overlay(visible_luminance(visible), image, thermal_seen(pipeline, thermal_shape, flow))


def visible_luminance(visible: np.ndarray) -> np.ndarray:
    """H x W luminance of a visible image (H x W, or x3 BGR / x4 BGRA)."""
    visible = check_image(visible, "visible")  # (H x W x 1 -> H x W)
    integer = visible.dtype in (np.uint8, np.uint16)  # OpenCV's conversion: ~20x faster than the float path
    return luminance(visible if integer else visible_to_bgr01(visible))


def thermal_seen(pipeline, thermal_shape, flow: np.ndarray) -> np.ndarray:
    """H x W bool: the visible pixels that `flow` (and the pipeline's prior) map inside the thermal."""
    def seen():
        coverage = np.ones(thermal_shape[:2], np.float32)  # resampled: 1 wherever the thermal is seen
        return pipeline.thermal_in_visible(coverage, flow) > 0.999

    return pipeline.per_flow(flow, ("thermal seen", tuple(thermal_shape[:2])), seen)


def prior_and_registered_edges(pipeline, visible: np.ndarray, thermal: np.ndarray, flow: np.ndarray):
    """(received, registered) edge agreement of one pair, over the pixels both mappings see."""
    return received_and_registered(pipeline, visible, thermal, flow).edges()
