"""One pair of camera messages -> the node's output images, without rclpy.

    outputs = fuse_pair(stream_pipeline, visible_msg, thermal_msg, wanted={"fused", "deformation_vis"})
    outputs.images["fused"]          # (array, encoding), at the visible image's resolution

The messages are anything with a `header` and either the sensor_msgs/Image fields or a decoded
CompressedImage (`compressed.DecodedImage`), so a recording read without ROS (a bag) goes through
the same code as cgrp_fusion's subscriptions. InputError: the pipeline rejects the pair (a bad pair);
any other exception: inference failed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.camera import undistort
from ..core.warp import flow_to_color
from ..evaluation.alignment import registered_edges_picture
from .compressed import DecodedImage, PendingDecode, check_compressed, decode_message
from .image_conversions import (INPUT_ENCODINGS, encoding_for, image_to_numpy, to_bgr,
                                unsupported_encoding)
from .sync import stamp_seconds

# output name -> the core output it needs ('fused/compressed' is the JPEG of 'fused'), in publishing order
CORE_OUTPUT = {"fused": "fused", "fused/compressed": "fused", "registered_thermal": "registered_thermal",
               "deformation": "flow", "deformation_vis": "flow", "alignment_vis": "registered_thermal",
               "pseudo_thermal": "pseudo_thermal"}


@dataclass
class PairOutputs:
    stamp: float                                # the visible image's stamp, s
    images: dict = field(default_factory=dict)  # output name -> (array, encoding); 'fused/compressed' not encoded here
    warnings: list = field(default_factory=list)  # (counter, throttle key, text): fused, but worth a warning
    confidence: float = 1.0                     # registration confidence of the pair
    fallback: bool = False                      # registered with the prior (too little evidence)
    inputs: tuple = ()                          # (visible, thermal) arrays as fused (undistorted where asked)


def prepare_input(msg, compressed: bool, decode_later: bool = False):
    """What the synchronizer gets for one incoming message: a CompressedImage decoded (once, here; with
    `decode_later` its header checked here and the pixels decoded where first used: a PendingDecode),
    a raw Image as it is after checking that it converts. ImageConversionError: a bad message."""
    if compressed and decode_later:
        check_compressed(msg)
        return PendingDecode(msg)
    if compressed:
        return decode_message(msg)
    if msg.encoding not in INPUT_ENCODINGS:
        raise unsupported_encoding(msg.encoding, INPUT_ENCODINGS)
    image_to_numpy(msg)  # validation only: a cheap view, converted again by fuse_pair
    return msg


def as_array(msg) -> np.ndarray:
    """The pixels of a raw Image (a view of its buffer) or of an already decoded CompressedImage."""
    return msg.image if isinstance(msg, (DecodedImage, PendingDecode)) else image_to_numpy(msg)


def message_arrays(visible_msg, thermal_msg):
    """(visible, thermal) arrays of one pair of messages, each as `to_bgr` gives it (BGR, or mono as
    sent): what the pipeline fuses."""
    return to_bgr(as_array(visible_msg), visible_msg.encoding), to_bgr(as_array(thermal_msg), thermal_msg.encoding)


# Pipeline.input_warnings' kinds -> (Stats counter or None, throttle key of the log line)
WARNING_COUNTERS = {"non_finite_thermal": ("non_finite_thermal", "non-finite"),
                    "non_finite_visible": (None, "non-finite visible"), "swapped": (None, "swapped"),
                    "stretched": (None, "stretched"), "same_picture": (None, "same picture"),
                    "colour_thermal": (None, "colour thermal"),
                    "constant_visible": ("constant_images", ("constant", "visible")),
                    "constant_thermal": ("constant_images", ("constant", "thermal"))}


def input_warnings(pipeline, visible: np.ndarray, thermal: np.ndarray, stamp: float) -> list:
    """[(Stats counter or None, throttle key, text)]: Pipeline.input_warnings of a pair, by its stamp."""
    return [(*WARNING_COUNTERS[kind], text)
            for kind, text in pipeline.input_warnings(visible, thermal, f"at {stamp:.3f}")]


def fuse_pair(stream_pipeline, visible_msg, thermal_msg, wanted, deformation_vis_max: float = 0.0,
              intrinsics=None) -> PairOutputs:
    """Fuse one pair; the images of the `wanted` outputs (names of CORE_OUTPUT) with their encodings.

    stream_pipeline: a core StreamPipeline, called with the visible stamp: a rig's stream registered at its
    rate of the stamps' time (registration_rate 0: every pair registered alone).

    intrinsics: None, or (visible, thermal) `core.camera.Intrinsics`: each image is first undistorted
    with its own (same size and K), so every output is in the rectified visible camera's frame.
    """
    stamp = stamp_seconds(visible_msg.header.stamp)
    visible, thermal = message_arrays(visible_msg, thermal_msg)
    warnings = input_warnings(stream_pipeline.pipeline, visible, thermal, stamp)
    if intrinsics is not None:
        visible, thermal = undistort(visible, intrinsics[0]), undistort(thermal, intrinsics[1])
    # the core always computes the flow; the rest only when an output needs it
    outputs = {"flow"} | {CORE_OUTPUT[name] for name in wanted}
    result = stream_pipeline(visible, thermal, outputs=outputs, stamp=stamp)
    fused = result.fused_image
    registered = result.registered_thermal
    candidates = {  # None: the core did not compute what the output needs
        "fused": lambda: (fused, encoding_for(fused)) if fused is not None else None,
        "fused/compressed": lambda: (fused, encoding_for(fused)) if fused is not None else None,
        "registered_thermal": lambda: (registered, encoding_for(registered, thermal_msg.encoding))
        if registered is not None else None,
        "deformation": lambda: (result.flow, "32FC2"),
        "deformation_vis": lambda: (stream_pipeline.pipeline.per_flow(  # (a rig estimate's: once per estimate)
            result.flow, ("flow picture", deformation_vis_max),
            lambda: flow_to_color(result.flow, deformation_vis_max or None)), "bgr8"),
        "alignment_vis": lambda: (registered_edges_picture(stream_pipeline.pipeline, visible, registered, thermal.shape,
                                                           result.flow), "bgr8") if registered is not None else None,
        "pseudo_thermal": lambda: (result.pseudo_thermal, "mono8") if result.pseudo_thermal is not None else None,
    }
    images = {}
    for name in CORE_OUTPUT:  # a fixed order (fused first): the node publishes in this order
        if name not in wanted:
            continue
        image = candidates[name]()
        if image is not None:
            images[name] = image
    return PairOutputs(stamp, images, warnings, float(result.registration_confidence),
                       bool(result.registration_fallback), (visible, thermal))
