"""cgrp_player: publishes visible/thermal pairs from two folders as two camera streams, looping.

Publishes visible/image and thermal/image (sensor_msgs/Image) at `rate` Hz. The visible stamp
is the current time; the thermal stamp is offset by `stamp_offset` plus uniform noise of
+-`jitter` seconds, like two free-running cameras. With `deform` the thermal is misaligned on the
fly by cgrp_ros.core.deform (deterministic per image and `seed`), as an uncalibrated rig would be.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from ..core.data import find_pairs, read_image
from ..core.deform import PRESETS, misalign, rng_for
from ..core.errors import CgrpError
from .image_conversions import encoding_for, numpy_to_image
from .process import spin_until_signal


def sample_dir() -> Path:
    """The bundled sample pairs: the source tree's sample/, else the installed share/cgrp_ros/sample."""
    repo_sample = Path(__file__).resolve().parents[2] / "sample"
    if repo_sample.is_dir():
        return repo_sample
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("cgrp_ros")) / "sample"
    except Exception:
        return repo_sample


def _float_range(low, high):
    return [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]


class FolderSource:
    """Same-named visible/thermal image pairs from two folders, as (visible, thermal) arrays.

    The player asks a source for `len(source)` pairs and `source.arrays(index)`; another source (e.g.
    the two image topics of a recording) can take this one's place.
    """

    def __init__(self, visible_dir, thermal_dir, deform: str = "none", seed: int = 0, max_width: int = 0):
        if deform not in PRESETS:
            raise CgrpError(f"deform: unknown preset '{deform}', expected one of {', '.join(PRESETS)}")
        root = sample_dir()
        visible_dir, thermal_dir = visible_dir or root / "visible", thermal_dir or root / "thermal"
        self.pairs = find_pairs(visible_dir, thermal_dir).pairs  # [(name, visible path, thermal path)]
        if not self.pairs:
            raise CgrpError(f"no visible/thermal pairs in '{visible_dir}' and '{thermal_dir}'")
        self.deform, self.seed, self.max_width = deform, seed, max_width

    def __len__(self) -> int:
        return len(self.pairs)

    def _shrink(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if not self.max_width or width <= self.max_width:
            return image
        size = (self.max_width, max(1, round(height * self.max_width / width)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def arrays(self, index: int):
        """(visible, thermal) of pair `index`: the thermal single channel, misaligned by `deform`."""
        name, visible_path, thermal_path = self.pairs[index]
        visible = self._shrink(read_image(visible_path))
        thermal = self._shrink(read_image(thermal_path))
        if thermal.ndim == 3:  # a thermal camera is single channel
            thermal = cv2.cvtColor(thermal[:, :, :3], cv2.COLOR_BGR2GRAY)
        if self.deform != "none":
            thermal = misalign(thermal, self.deform, rng_for(self.seed, name)).misaligned
        return visible, thermal


class PlayerNode(Node):
    def __init__(self, **kwargs):
        super().__init__("cgrp_player", **kwargs)
        declare = lambda name, default, text, **extra: self.declare_parameter(  # noqa: E731
            name, default, ParameterDescriptor(description=text, read_only=True, **extra)).value
        visible_dir = declare("visible_dir", "", "folder of visible images; empty: the bundled sample")
        thermal_dir = declare("thermal_dir", "", "folder of same-named thermal images; empty: the bundled sample")
        rate = declare("rate", 5.0, "pairs per second", floating_point_range=_float_range(0.01, 1000.0))
        self.stamp_offset = declare("stamp_offset", 0.0, "thermal stamp minus visible stamp, s",
                                    floating_point_range=_float_range(-10.0, 10.0))
        self.jitter = declare("jitter", 0.0, "uniform +- noise on the thermal stamp, s",
                              floating_point_range=_float_range(0.0, 10.0))
        deform = declare("deform", "none", f"misalign the thermal with this preset ({', '.join(PRESETS)})")
        self.seed = declare("seed", 0, "seed of the misalignment and the jitter")
        reliable = declare("reliable", True, "reliable QoS (needed for large images over shared memory)")
        self.count = declare("count", 0, "pairs to publish before exiting; 0: loop forever",
                             integer_range=[IntegerRange(from_value=0, to_value=10**9, step=0)])
        max_width = declare("max_width", 0, "downscale wider images to this width, px; 0: as stored",
                            integer_range=[IntegerRange(from_value=0, to_value=100000, step=0)])
        self.visible_frame = declare("visible_frame_id", "visible_camera", "frame_id of the visible images")
        self.thermal_frame = declare("thermal_frame_id", "thermal_camera", "frame_id of the thermal images")
        self.source = FolderSource(visible_dir, thermal_dir, deform, self.seed, max_width)
        self._messages = {}               # index -> (visible msg, thermal msg), built on first use
        self._rng = np.random.default_rng(self.seed)
        self.published = 0
        self.done = False

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.visible_pub = self.create_publisher(Image, "visible/image", qos)
        self.thermal_pub = self.create_publisher(Image, "thermal/image", qos)
        self.timer = self.create_timer(1.0 / rate, self._publish_next)
        self.get_logger().info(f"cgrp_player: {len(self.source)} pairs at {rate:g} Hz, deform {deform}, "
                               f"stamp offset {self.stamp_offset:g} s, jitter {self.jitter:g} s, "
                               f"{'reliable' if reliable else 'best effort'}, count {self.count or 'unlimited'}")

    def _messages_for(self, index: int):
        if index not in self._messages:
            visible, thermal = self.source.arrays(index)
            self._messages[index] = (numpy_to_image(visible, encoding_for(visible), Image),
                                     numpy_to_image(thermal, encoding_for(thermal), Image))
        return self._messages[index]

    def _publish_next(self):
        if self.done:
            return
        visible_msg, thermal_msg = self._messages_for(self.published % len(self.source))
        now = self.get_clock().now().nanoseconds
        offset = self.stamp_offset + (self._rng.uniform(-self.jitter, self.jitter) if self.jitter > 0 else 0.0)
        for msg, stamp, frame in ((visible_msg, now, self.visible_frame),
                                  (thermal_msg, now + int(round(offset * 1e9)), self.thermal_frame)):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(max(stamp, 0), 1_000_000_000)
            msg.header.frame_id = frame
        self.visible_pub.publish(visible_msg)
        self.thermal_pub.publish(thermal_msg)
        self.published += 1
        if self.count and self.published >= self.count:
            self.done = True


def main(args=None) -> int:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = PlayerNode()
    except (CgrpError, ValueError) as exc:
        print(f"cgrp_player: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    spin_until_signal(node, until=lambda: node.done)
    if node.done:
        time.sleep(0.5)  # let reliable subscribers fetch the last pair
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
