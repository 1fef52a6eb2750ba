"""cgrp_player: publishes visible/thermal pairs from two folders, or a bag's two topics, as two camera streams, looping.

Publishes visible/image and thermal/image (sensor_msgs/Image) at `rate` Hz. The visible stamp
is the current time; the thermal stamp is offset by `stamp_offset` plus uniform noise of
+-`jitter` seconds, like two free-running cameras. With `bag` (+ `visible_topic`, `thermal_topic`)
the pairs come from a rosbag2 (cgrp_ros.ros.sources.BagSource, read with rosbags: no ROS installation needed) and keep
the bag's header stamps unless `bag_stamps` is false; a thermal frame that several visible frames are nearest to (a
slower thermal camera) goes out once, with the first of them, as the camera sent it. With `deform` the thermal is misaligned on the
fly by cgrp_ros.core.deform (deterministic per image and `seed`), as an uncalibrated rig would be.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from ..core.deform import PRESETS
from ..core.errors import CgrpError
from .image_conversions import encoding_for, numpy_to_image
from .process import spin_until_signal
from .sources import BagSource, FolderSource

DEFAULT_FRAMES = ("visible_camera_optical_frame", "thermal_camera_optical_frame")  # (REP 103 optical frames)


def _float_range(low, high):
    return [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]


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
        self.seed = declare("seed", 0, "seed of the misalignment and the jitter",
                            integer_range=[IntegerRange(from_value=0, to_value=2**31 - 1, step=0)])
        fixed_rig = declare("fixed_rig", False, "with deform: ONE misalignment for every frame, as a rigid rig "
                            "(frames of one size); false: one per image")
        reliable = declare("reliable", True, "reliable QoS (needed for large images over shared memory)")
        self.count = declare("count", 0, "pairs to publish before exiting (with bag: visible frames, each with "
                             "the thermal frame nearest it if not sent already); 0: loop forever",
                             integer_range=[IntegerRange(from_value=0, to_value=10**9, step=0)])
        max_width = declare("max_width", 0, "downscale wider images to this width, px; 0: as stored",
                            integer_range=[IntegerRange(from_value=0, to_value=100000, step=0)])
        self.visible_frame = declare("visible_frame_id", DEFAULT_FRAMES[0], "frame_id of the visible images (with "
                                     "bag and this default: each message's recorded one)")
        self.thermal_frame = declare("thermal_frame_id", DEFAULT_FRAMES[1], "frame_id of the thermal images (with "
                                     "bag and this default: each message's recorded one)")
        bag = declare("bag", "", "rosbag2 to play instead of the folders (bag folder, .db3 or .mcap)")
        visible_topic = declare("visible_topic", "", "with bag: the visible topic (Image or CompressedImage)")
        thermal_topic = declare("thermal_topic", "", "with bag: the thermal topic (Image or CompressedImage)")
        self.bag_stamps = declare("bag_stamps", True, "with bag: publish the bag's header stamps; "
                                  "false: now, with stamp_offset and jitter")
        if bag:
            self.source = BagSource(bag, visible_topic, thermal_topic, deform, self.seed, max_width, fixed_rig)
        else:
            self.source = FolderSource(visible_dir, thermal_dir, deform, self.seed, max_width, fixed_rig)
        self._messages = {}               # index -> (visible msg, thermal msg), built on first use
        self._rng = np.random.default_rng(self.seed)
        self.published = 0
        self._next = 0                    # the next pair's index, counted on through the loops
        self._unreadable = set()          # indices of pairs that failed to load: skipped from then on
        self.done = False
        self.failed = False               # no pair could be loaded: stopped, exit code 1

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.visible_pub = self.create_publisher(Image, "visible/image", qos)
        self.thermal_pub = self.create_publisher(Image, "thermal/image", qos)
        self.timer = self.create_timer(1.0 / rate, self._publish_next)
        origin = (f"bag {bag} ({visible_topic}, {thermal_topic}; {getattr(self.source, 'skipped', 0)} unreadable "
                  f"message(s) skipped; {'bag' if self.bag_stamps else 'current'} stamps)") if bag else "folders"
        self.get_logger().info(f"cgrp_player: {len(self.source)} pairs from {origin} at {rate:g} Hz, deform {deform}, "
                               f"stamp offset {self.stamp_offset:g} s, jitter {self.jitter:g} s, "
                               f"{'reliable' if reliable else 'best effort'}, count {self.count or 'unlimited'}")

    CACHED_PAIRS = 200  # messages of up to this many pairs are kept once built (a long bag is not)

    def _messages_for(self, index: int):
        if index in self._messages:
            return self._messages[index]
        visible, thermal = self.source.arrays(index)
        messages = (numpy_to_image(visible, encoding_for(visible), Image),
                    numpy_to_image(thermal, encoding_for(thermal), Image))
        if len(self.source) <= self.CACHED_PAIRS:
            self._messages[index] = messages
        return messages

    def _next_messages(self):
        """(index, (visible msg, thermal msg)) of the next pair that loads, or None when none does: a pair
        that fails (an unreadable or truncated file) is logged once and skipped from then on."""
        while len(self._unreadable) < len(self.source):
            index = self._next % len(self.source)
            self._next += 1
            if index in self._unreadable:
                continue
            try:
                return index, self._messages_for(index)
            except CgrpError as exc:
                self._unreadable.add(index)
                self.get_logger().error(f"skipping pair {index} from now on: {exc}")
        return None

    def _publish_next(self):
        if self.done:
            return
        following = self._next_messages()
        if following is None:
            self.get_logger().error("no pair could be loaded: stopping")
            self.done = self.failed = True
            return
        index, (visible_msg, thermal_msg) = following
        stamps = self.source.stamps(index) if self.bag_stamps else None
        if stamps is None:
            now = self.get_clock().now().nanoseconds
            offset = self.stamp_offset + (self._rng.uniform(-self.jitter, self.jitter) if self.jitter > 0 else 0.0)
            stamps = (now, now + int(round(offset * 1e9)))
        recorded = self.source.frame_ids(index) or ("", "")
        frames = (self.visible_frame, self.thermal_frame)
        for stream, (msg, stamp) in enumerate(((visible_msg, stamps[0]), (thermal_msg, stamps[1]))):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(max(stamp, 0), 1_000_000_000)
            # a bag's own frame_id, unless one other than the default is given
            keep = recorded[stream] and frames[stream] == DEFAULT_FRAMES[stream]
            msg.header.frame_id = recorded[stream] if keep else frames[stream]
        self.visible_pub.publish(visible_msg)
        if self.source.sends_thermal(index):
            self.thermal_pub.publish(thermal_msg)
        self.published += 1
        if self.count and self.published >= self.count:
            self.done = True


def main(args=None) -> int:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = PlayerNode()
    except (CgrpError, ValueError, ParameterException) as exc:  # (Parameter: a wrong type or range)
        print(f"cgrp_player: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    spin_until_signal(node, until=lambda: node.done)
    if node.done and not node.failed:
        time.sleep(0.5)  # let reliable subscribers fetch the last pair
        node.get_logger().info(f"cgrp_player: published {node.published} pairs (count {node.count}): done")
    node.destroy_node()
    rclpy.try_shutdown()
    return 1 if node.failed else 0


if __name__ == "__main__":
    sys.exit(main())
