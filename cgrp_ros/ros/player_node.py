"""cgrp_player: publishes visible/thermal pairs from two folders, or a bag's two topics, as two camera streams, looping.

Publishes visible/image and thermal/image (sensor_msgs/Image) at `rate` Hz. The visible stamp
is the current time; the thermal stamp is offset by `stamp_offset` plus uniform noise of
+-`jitter` seconds, like two free-running cameras. With `bag` (+ `visible_topic`, `thermal_topic`)
the pairs come from a rosbag2 (BagSource, read with rosbags: no ROS installation needed) and keep
the bag's header stamps unless `bag_stamps` is false. With `deform` the thermal is misaligned on the
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


class PairSource:
    """What the player needs of a source of pairs: `len(source)`, `source.arrays(index)` ->
    (visible, thermal) arrays, and `source.stamps(index)` -> (visible ns, thermal ns) or None (stamp now).

    The arrays are shrunk to `max_width`, the thermal made single channel and misaligned by `deform`.
    """

    def __init__(self, deform: str = "none", seed: int = 0, max_width: int = 0, fixed_rig: bool = False):
        if deform not in PRESETS:
            raise CgrpError(f"deform: unknown preset '{deform}', expected one of {', '.join(PRESETS)}")
        self.deform, self.seed, self.max_width, self.fixed_rig = deform, seed, max_width, fixed_rig

    def _shrink(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if not self.max_width or width <= self.max_width:
            return image
        size = (self.max_width, max(1, round(height * self.max_width / width)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def _finish(self, visible: np.ndarray, thermal: np.ndarray, name: str):
        visible, thermal = self._shrink(visible), self._shrink(thermal)
        if thermal.ndim == 3:  # a thermal camera is single channel
            thermal = cv2.cvtColor(thermal[:, :, :3], cv2.COLOR_BGR2GRAY)
        if self.deform != "none":
            # a rigid rig: one misalignment for every frame (of one size); else one per image
            thermal = misalign(thermal, self.deform, rng_for(self.seed, "rig" if self.fixed_rig else name)).misaligned
        return visible, thermal

    def stamps(self, index: int):
        return None


class FolderSource(PairSource):
    """Same-named visible/thermal image pairs from two folders, as (visible, thermal) arrays."""

    def __init__(self, visible_dir, thermal_dir, deform: str = "none", seed: int = 0, max_width: int = 0,
                 fixed_rig: bool = False):
        super().__init__(deform, seed, max_width, fixed_rig)
        root = sample_dir()
        visible_dir, thermal_dir = visible_dir or root / "visible", thermal_dir or root / "thermal"
        self.pairs = find_pairs(visible_dir, thermal_dir).pairs  # [(name, visible path, thermal path)]
        if not self.pairs:
            raise CgrpError(f"no visible/thermal pairs in '{visible_dir}' and '{thermal_dir}'")

    def __len__(self) -> int:
        return len(self.pairs)

    def arrays(self, index: int):
        """(visible, thermal) of pair `index`: the thermal single channel, misaligned by `deform`."""
        name, visible_path, thermal_path = self.pairs[index]
        return self._finish(read_image(visible_path), read_image(thermal_path), name)


class BagSource(PairSource):
    """The visible and thermal topics of a rosbag2 (sqlite3 or MCAP; Image or CompressedImage).

    Every good visible message of the bag, in the bag's order, makes one pair with the thermal message
    whose header stamp is closest to it; messages that cannot be read are skipped (and counted in
    `skipped`). The bag's serialised messages are kept in memory, decoded when a pair is played.
    """

    def __init__(self, bag, visible_topic: str, thermal_topic: str, deform: str = "none", seed: int = 0,
                 max_width: int = 0, fixed_rig: bool = False):
        from .bag import BagTopics
        from .fusion_outputs import prepare_input
        from .image_conversions import ImageConversionError
        from .sync import stamp_ns

        super().__init__(deform, seed, max_width, fixed_rig)
        if not visible_topic or not thermal_topic:
            raise CgrpError("bag: give visible_topic and thermal_topic too")
        self.streams = ([], [])  # per stream: [(header stamp ns, CDR bytes)]
        self.skipped = 0
        with BagTopics(bag, visible_topic, thermal_topic) as reader:
            self.types, self.msgtypes, self.compressed = reader.types, reader.msgtypes, reader.compressed
            for stream, _, raw, msg in reader.messages():
                try:
                    if msg is None:
                        raise ImageConversionError("data", "cannot be deserialised")
                    prepare_input(msg, self.compressed[stream])
                except ImageConversionError:
                    self.skipped += 1
                    continue
                self.streams[stream].append((stamp_ns(msg), raw))
        visible, thermal = self.streams
        if not visible or not thermal:
            raise CgrpError(f"bag '{bag}': no readable messages on "
                            f"{visible_topic if not visible else thermal_topic}")
        thermal_stamps = np.array([stamp for stamp, _ in thermal], np.int64)
        order = np.argsort(thermal_stamps, kind="stable")
        sorted_stamps = thermal_stamps[order]
        self.pairs = []  # (visible index, thermal index)
        for index, (stamp, _) in enumerate(visible):
            at = int(np.searchsorted(sorted_stamps, stamp))
            near = [i for i in (at - 1, at) if 0 <= i < len(sorted_stamps)]
            best = min(near, key=lambda i: abs(int(sorted_stamps[i]) - stamp))
            self.pairs.append((index, int(order[best])))

    def __len__(self) -> int:
        return len(self.pairs)

    def _array(self, stream: int, index: int) -> np.ndarray:
        from .fusion_outputs import as_array, prepare_input
        from .image_conversions import to_bgr

        _, raw = self.streams[stream][index]
        msg = prepare_input(self.types.deserialize_cdr(raw, self.msgtypes[stream]), self.compressed[stream])
        return np.array(to_bgr(as_array(msg), msg.encoding))  # a copy: not a view of the CDR buffer

    def arrays(self, index: int):
        visible_index, thermal_index = self.pairs[index]
        return self._finish(self._array(0, visible_index), self._array(1, thermal_index), str(visible_index))

    def stamps(self, index: int):
        visible_index, thermal_index = self.pairs[index]
        return self.streams[0][visible_index][0], self.streams[1][thermal_index][0]


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
        fixed_rig = declare("fixed_rig", False, "with deform: ONE misalignment for every frame, as a rigid rig "
                            "(frames of one size); false: one per image")
        reliable = declare("reliable", True, "reliable QoS (needed for large images over shared memory)")
        self.count = declare("count", 0, "pairs to publish before exiting; 0: loop forever",
                             integer_range=[IntegerRange(from_value=0, to_value=10**9, step=0)])
        max_width = declare("max_width", 0, "downscale wider images to this width, px; 0: as stored",
                            integer_range=[IntegerRange(from_value=0, to_value=100000, step=0)])
        self.visible_frame = declare("visible_frame_id", "visible_camera", "frame_id of the visible images")
        self.thermal_frame = declare("thermal_frame_id", "thermal_camera", "frame_id of the thermal images")
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
        self.done = False

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

    def _publish_next(self):
        if self.done:
            return
        index = self.published % len(self.source)
        visible_msg, thermal_msg = self._messages_for(index)
        stamps = self.source.stamps(index) if self.bag_stamps else None
        if stamps is None:
            now = self.get_clock().now().nanoseconds
            offset = self.stamp_offset + (self._rng.uniform(-self.jitter, self.jitter) if self.jitter > 0 else 0.0)
            stamps = (now, now + int(round(offset * 1e9)))
        for msg, stamp, frame in ((visible_msg, stamps[0], self.visible_frame),
                                  (thermal_msg, stamps[1], self.thermal_frame)):
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
