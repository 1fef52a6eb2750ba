"""sensor_msgs/CameraInfo <-> the core's Intrinsics, and the latest CameraInfo of each camera.

    infos = CameraInfos()
    infos.update(VISIBLE, visible_info_msg)            # InputError: unusable (e.g. an all-zero K)
    plan = infos.plan(visible.shape[:2], thermal.shape[:2])
    plan.intrinsics    # (visible, thermal) Intrinsics to undistort with, or None: fuse as they are
    plan.camera_info   # the CameraInfo that describes the outputs, or None
    plan.problem       # why a pair is fused without undistortion although both are known, or None

Duck-typed on the message fields (no rclpy import): a CameraInfo built elsewhere works too. The image
that a CameraInfo describes is `roi` (all zero: the full `width` x `height`) divided by `binning`;
K is adjusted to it (as image_geometry does). R and P are not used: each image is undistorted to its
own K (cgrp_ros.core.camera), no stereo rectification.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.camera import Intrinsics
from ..core.errors import InputError
from .sync import STREAM_NAMES, THERMAL, VISIBLE

FIELDS = ("header", "height", "width", "distortion_model", "d", "k", "r", "p", "binning_x", "binning_y", "roi")


def intrinsics_from_camera_info(msg) -> Intrinsics:
    """The Intrinsics of the images `msg` describes (ROI and binning applied). InputError: unusable."""
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    roi = msg.roi
    full = roi.width == 0 or roi.height == 0
    x0, y0 = (0, 0) if full else (int(roi.x_offset), int(roi.y_offset))
    width, height = (msg.width, msg.height) if full else (roi.width, roi.height)
    k = [float(v) for v in msg.k]
    if len(k) == 9:  # cropped, then binned: (x - x0) / bx
        k[0], k[2] = k[0] / bx, (k[2] - x0) / bx
        k[4], k[5] = k[4] / by, (k[5] - y0) / by
    return Intrinsics(tuple(k), tuple(float(v) for v in msg.d), msg.distortion_model or "plumb_bob",
                      (int(height) // by, int(width) // bx))


def camera_info_topic(image_topic: str) -> str:
    """Where image_transport's camera subscribers look for an image topic's CameraInfo:
    `/cam/image_raw` (or its `/compressed`) -> `/cam/camera_info`."""
    return image_topic.removesuffix("/compressed").rsplit("/", 1)[0] + "/camera_info"


def size_mismatch(name: str, camera: Intrinsics, shape) -> str | None:
    """Why `camera` (of the `name` camera) does not describe an image of `shape`, or None."""
    if tuple(camera.size) == tuple(shape[:2]):
        return None
    (h, w) = camera.size
    return f"{name}/camera_info is for {w}x{h} images but the {name} image is {shape[1]}x{shape[0]}"


def camera_info_message(camera: Intrinsics, message_type, rectified: bool = True):
    """A `message_type` (sensor_msgs/CameraInfo, empty header) describing `camera`'s images: K, R =
    identity, P = [K | 0], no binning, no ROI, the image's size; D = 0 (plumb_bob) for `undistort`'s
    output (`rectified`), else the camera's own model and D (its images as recorded)."""
    k, described = camera.K, camera.rectified() if rectified else camera
    return message_type(height=camera.size[0], width=camera.size[1], distortion_model=described.model,
                        d=list(described.D), k=list(k), r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                        p=[*k[0:3], 0.0, *k[3:6], 0.0, *k[6:9], 0.0])


RECTIFIED, AS_RECORDED = "rectified", "as recorded"  # pair_plan's ways of describing the outputs


def pair_plan(cameras, shapes) -> tuple:
    """The rule for one pair, the node's and `cgrp fuse/calibrate --bag`'s alike.

    cameras: (visible, thermal) Intrinsics, None where a camera has no usable CameraInfo; shapes: the
    two images' shapes. -> (undistort, outputs, problem): undistort both images when both are known
    and fit them; describe the outputs with the visible camera's CameraInfo, RECTIFIED when undistorted,
    AS_RECORDED when only it is known and fits (None: no description); problem: why a known CameraInfo
    does not fit its image (the pair is then fused as it is), or None."""
    visible, thermal = cameras
    if visible is None:
        return False, None, None
    visible_problem = size_mismatch(STREAM_NAMES[VISIBLE], visible, shapes[0])
    thermal_problem = None if thermal is None else size_mismatch(STREAM_NAMES[THERMAL], thermal, shapes[1])
    if visible_problem or thermal_problem:
        return False, None if visible_problem else AS_RECORDED, "; ".join(
            problem for problem in (visible_problem, thermal_problem) if problem)
    return (False, AS_RECORDED, None) if thermal is None else (True, RECTIFIED, None)


def with_header(msg, header):
    """A copy of a CameraInfo with another header (the stored message is shared with other threads)."""
    return type(msg)(**{name: (header if name == "header" else getattr(msg, name)) for name in FIELDS})


@dataclass(frozen=True)
class Plan:
    """What to do with one pair, given the latest CameraInfo of each camera."""
    intrinsics: tuple | None = None   # (visible, thermal) Intrinsics: undistort each image before the pipeline
    camera_info: object = None        # CameraInfo describing the outputs (header still to be set), or None
    problem: str | None = None        # a CameraInfo does not fit its image: fused without undistortion


class CameraInfos:
    """The latest CameraInfo of each camera (index VISIBLE, THERMAL), with its Intrinsics.

    `update` runs in the subscriptions' thread, `plan` in the worker's: each stream's entry is one
    reference, replaced whole, so no lock is needed.
    """

    def __init__(self):
        self._latest = [None, None]  # per stream: (msg, Intrinsics, rectified CameraInfo)

    def update(self, stream: int, msg) -> Intrinsics:
        """Keep `msg` as the stream's latest. InputError: unusable; the stream then counts as having none."""
        try:
            camera = intrinsics_from_camera_info(msg)
        except InputError:
            self._latest[stream] = None
            raise
        previous = self._latest[stream]
        rectified = previous[2] if previous is not None and previous[1] == camera else \
            camera_info_message(camera, type(msg))
        self._latest[stream] = (msg, camera, rectified)
        return camera

    def clear(self) -> None:
        self._latest = [None, None]

    def known(self, stream: int) -> bool:
        return self._latest[stream] is not None

    def plan(self, visible_shape, thermal_shape) -> Plan:
        """pair_plan with the latest CameraInfo of each camera; the outputs as recorded are described
        by the visible camera's own message."""
        visible, thermal = self._latest
        cameras = tuple(None if entry is None else entry[1] for entry in (visible, thermal))
        undistort, outputs, problem = pair_plan(cameras, (visible_shape, thermal_shape))
        return Plan(cameras if undistort else None, {RECTIFIED: visible and visible[2], AS_RECORDED: visible and visible[0]}
                    .get(outputs), problem and f"{problem}: fused without undistortion")
