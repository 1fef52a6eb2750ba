"""rosbag2 recordings without ROS: read two camera topics, fuse them like cgrp_fusion, write MCAP.

    with BagTopics(path, "/camera/image_raw", "/thermal/image_raw/compressed") as bag:
        for stream, timestamp, raw, msg in bag.messages(): ...   # sync.VISIBLE | THERMAL, log time ns, CDR bytes, message

    summary = fuse_bag(stream_pipeline, "in_bag", "/cam", "/thermal", "out_bag", progress=tqdm)

Reading and writing use the pure-Python `rosbags` package (sqlite3 and MCAP storage, its own CDR
(de)serialisation and ROS 2 message definitions: no rclpy, no ROS installation). Messages are
fed in the bag's order to the node's synchronizer (cgrp_ros.ros.sync.PairSynchronizer) and every
pair goes through the node's pair -> outputs code (fusion_outputs.fuse_pair), so a bag gives the
pairs and images that cgrp_fusion would publish for it, but none is dropped for want of time. This
module imports nothing from rclpy.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import CgrpError, InputError
from .camera_info import RECTIFIED, camera_info_message, camera_info_topic, intrinsics_from_camera_info, pair_plan
from .fusion_outputs import as_array, fuse_pair, prepare_input
from .image_conversions import ImageConversionError, numpy_to_image
from .sync import DEFAULT_QUEUE_SIZE, DEFAULT_SLOP, STREAM_NAMES, PairSynchronizer, stamp_ns

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
NODE_NAME = "cgrp_fusion"
# the outputs a bag gets, each on the node's topic (~/NAME of node cgrp_fusion)
BAG_OUTPUTS = ("fused", "registered_thermal", "deformation", "pseudo_thermal")


def output_topic(name: str, node: str = NODE_NAME) -> str:
    return f"/{node}/{name}"


def typestore():
    """rosbags' ROS 2 message definitions (the newest distribution it knows; Image and
    CompressedImage are the same since Foxy)."""
    from rosbags.typesys import Stores, get_typestore

    for name in ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_HUMBLE"):
        if hasattr(Stores, name):
            return get_typestore(getattr(Stores, name))
    return get_typestore(Stores.LATEST)


class BagError(CgrpError):
    """A bag that cannot be read or written, or a topic it does not have."""


class BagTopics:
    """The visible and thermal topics of a rosbag2 (a bag folder, or a .db3 / .mcap file)."""

    def __init__(self, path, visible_topic: str, thermal_topic: str):
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag '{self.path}' does not exist")
        if visible_topic == thermal_topic:  # each message would be paired with itself
            raise BagError(f"the visible and the thermal topic are the same, '{visible_topic}': name each camera's own")
        self.types = typestore()
        try:
            self.reader = Reader(self.path)
            self.reader.open()
        except Exception as exc:  # rosbags' ReaderError, a bad metadata.yaml, a foreign file
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # (YAML errors span lines)
            if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
                reason = ("a folder without metadata.yaml, so no rosbag2 (give the folder `ros2 bag record` made, "
                          "or its .db3 / .mcap file)")
            elif "magic" in reason.lower():
                reason += (" (an MCAP file cut off before the recorder closed it? the mcap CLI's `mcap recover` "
                           "writes a readable copy)")
            raise BagError(f"cannot read bag '{self.path}': {reason}") from None
        topics = {c.topic: c.msgtype for c in self.reader.connections}
        self.connections, self.compressed = [], []
        for name, topic in zip(STREAM_NAMES, (visible_topic, thermal_topic)):
            if topic not in topics:
                self.reader.close()
                listing = ", ".join(f"{t} ({m})" for t, m in sorted(topics.items())) or "none"
                near = [t for t in topics if t in (topic + "/compressed", topic.removesuffix("/compressed"))]
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                raise BagError(f"bag '{self.path}' has no {name} topic '{topic}'{hint}; its topics: {listing}")
            if topics[topic] not in (IMAGE, COMPRESSED):
                self.reader.close()
                raise BagError(f"{name} topic '{topic}' is {topics[topic]}, expected {IMAGE} or {COMPRESSED}")
            self.connections.append([c for c in self.reader.connections if c.topic == topic])
            self.compressed.append(topics[topic] == COMPRESSED)
        self.topics = (visible_topic, thermal_topic)
        self.msgtypes = tuple(COMPRESSED if c else IMAGE for c in self.compressed)
        self.counts = tuple(sum(c.msgcount for c in conns) for conns in self.connections)
        # each camera's CameraInfo where image_transport looks for it (`/cam/image_raw` -> `/cam/camera_info`)
        self.info_topics = tuple(camera_info_topic(t) for t in self.topics)
        self.info_connections = [[c for c in self.reader.connections if c.topic == t and c.msgtype == CAMERA_INFO]
                                 for t in self.info_topics]

    def cameras(self) -> "BagCameras":
        """Each camera's intrinsics from its camera_info topic in the bag (the first usable message: a
        driver publishes the same one with every image), and every such message to copy."""
        cameras, copies = [None, None], []
        ignored = [[], []]  # per camera: (log time ns, why) of each unusable message before a usable one
        wanted = [c for conns in self.info_connections for c in conns]
        stream_of = {id(c): s for s, conns in enumerate(self.info_connections) for c in conns}
        for connection, timestamp, raw in (self.reader.messages(connections=wanted) if wanted else ()):
            stream = stream_of[id(connection)]
            copies.append((self.info_topics[stream], timestamp, raw))
            if cameras[stream] is not None:
                continue
            try:
                cameras[stream] = intrinsics_from_camera_info(self.types.deserialize_cdr(raw, CAMERA_INFO))
            except Exception as exc:  # noqa: BLE001 - garbled CDR or an unusable K: the next one may do
                ignored[stream].append((timestamp, exc))
        # one line per camera: a driver repeats the same faulty message with every image
        notes = [f"{topic}: {len(faults)} message(s) ignored{'' if camera is None else ' before a usable one'}, "
                 f"the first (log time {faults[0][0] * 1e-9:.3f}): {faults[0][1]}"
                 for topic, camera, faults in zip(self.info_topics, cameras, ignored) if faults]
        return BagCameras(tuple(cameras), self.info_topics, notes, copies)

    def messages(self):
        """(stream, log time ns, CDR bytes, message or None) in the bag's order; None: not deserialisable."""
        stream_of = {id(c): s for s, conns in enumerate(self.connections) for c in conns}
        wanted = [c for conns in self.connections for c in conns]
        for connection, timestamp, raw in self.reader.messages(connections=wanted):
            stream = stream_of[id(connection)]
            try:
                msg = self.types.deserialize_cdr(raw, connection.msgtype)
            except Exception:  # truncated or garbled CDR: a bad message
                msg = None
            yield stream, timestamp, raw, msg

    def close(self):
        if self.reader.is_open:
            self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


@dataclass
class BagCameras:
    """The two cameras' intrinsics found in a bag (BagTopics.cameras)."""
    intrinsics: tuple          # (visible, thermal) core.camera.Intrinsics, or None where the bag has none
    topics: tuple              # the camera_info topics looked for
    notes: list                # camera_info messages that could not be used, and why
    copies: list               # [(topic, log time ns, CDR bytes)] of every camera_info message

    @property
    def both(self) -> bool:
        return all(camera is not None for camera in self.intrinsics)

    def describe(self) -> str:
        """One line: what the images get, as the node would do with the same camera_info."""
        found = [t for t, c in zip(self.topics, self.intrinsics) if c is not None]
        if self.both:
            return f"undistorting each image with its camera_info ({', '.join(found)}), as cgrp_fusion does"
        if found:
            return (f"only {found[0]} in the bag: images used as recorded (cgrp_fusion undistorts only "
                    "with both cameras' camera_info)")
        if self.notes:
            return "no usable camera_info in the bag (see the warnings): images used as recorded"
        return "no camera_info in the bag: images used as recorded"

    def for_pair(self, visible_shape, thermal_shape):
        """What the node would do with this pair (camera_info.pair_plan): ((visible, thermal) Intrinsics
        to undistort it with, or None; how the outputs are described, or None; why a camera_info does not
        fit its image, or None)."""
        undistort, outputs, problem = pair_plan(self.intrinsics, (visible_shape, thermal_shape))
        return (self.intrinsics if undistort else None), outputs, problem and f"{problem}: used without undistortion"


class _Fields:
    """A plain object numpy_to_image and rectified_camera_info can fill (the rosbags message classes
    need every field at once)."""
    header = None

    def __init__(self, **fields):
        self.__dict__.update(fields)


class BagWriter:
    """A rosbag2 in MCAP storage: `copy` input messages as recorded, `write_image` new ones."""

    def __init__(self, path):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"output bag '{self.path}' exists already: remove it or pick another --out")
        self.types = typestore()
        self.writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.connections = {}
        self.counts = {}
        Image = self.types.types[IMAGE]
        Header = self.types.types["std_msgs/msg/Header"]
        Time = self.types.types["builtin_interfaces/msg/Time"]
        self._image, self._header, self._time = Image, Header, Time

    def connection(self, topic: str, msgtype: str):
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.types)
            self.counts[topic] = 0
        return self.connections[topic]

    def copy(self, topic: str, msgtype: str, timestamp: int, raw: bytes):
        self.writer.write(self.connection(topic, msgtype), timestamp, raw)
        self.counts[topic] += 1

    def image_message(self, image: np.ndarray, encoding: str, header):
        """A rosbags sensor_msgs/Image of `image` (the node's conversion) with a copy of `header`."""
        fields = numpy_to_image(image, encoding, _Fields)
        stamp = self._time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec))
        return self._image(header=self._header(stamp=stamp, frame_id=str(header.frame_id)),
                           height=fields.height, width=fields.width, encoding=fields.encoding,
                           is_bigendian=int(fields.is_bigendian), step=fields.step,
                           data=np.frombuffer(fields.data, np.uint8))

    def write_image(self, topic: str, timestamp: int, image: np.ndarray, encoding: str, header):
        raw = self.types.serialize_cdr(self.image_message(image, encoding, header), IMAGE)
        self.copy(topic, IMAGE, timestamp, raw)

    def write_camera_info(self, topic: str, timestamp: int, camera, header, rectified: bool = True):
        """A sensor_msgs/CameraInfo of `camera` (core.camera.Intrinsics) as the node's ~/camera_info, with
        a copy of `header`: of `undistort`'s output (D = 0), or of the images as recorded
        (camera_info.camera_info_message)."""
        fields = camera_info_message(camera, _Fields, rectified)
        stamp = self._time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec))
        roi = self.types.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                                  do_rectify=False)
        message = self.types.types[CAMERA_INFO](
            header=self._header(stamp=stamp, frame_id=str(header.frame_id)), height=fields.height,
            width=fields.width, distortion_model=fields.distortion_model,
            d=np.array(fields.d, np.float64), k=np.array(fields.k, np.float64), r=np.array(fields.r, np.float64),
            p=np.array(fields.p, np.float64), binning_x=0, binning_y=0, roi=roi)
        self.copy(topic, CAMERA_INFO, timestamp, self.types.serialize_cdr(message, CAMERA_INFO))

    def close(self):
        self.writer.close()


@dataclass
class BagSummary:
    pairs: int = 0                 # pairs fused and written
    counts: dict = field(default_factory=dict)  # problem -> how many
    messages: tuple = (0, 0)       # messages read per stream
    written: dict = field(default_factory=dict)  # topic -> messages written
    problems: list = field(default_factory=list)  # the first few problem texts
    resets: int = 0                # synchronizer resets (stamps that jumped backwards)
    stamp_offset: float | None = None  # s, thermal - visible at the end of the bag (sync.StampOffset)
    warned: set = field(default_factory=set)  # kinds of content warning already given (fusion_outputs)
    cameras: str = ""              # what the images got of the bag's camera_info (BagCameras.describe)
    stopped: bool = False          # stopped at `limit` with messages left unread
    unpaired: tuple = (0, 0)       # readable messages per stream that found no partner within slop

    def count(self, kind: str, text: str):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.problems) < 10:
            self.problems.append(text)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        counts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(self.counts.items())) or "none"
        resets = f"; {self.resets} synchronizer reset(s) (stamps jumped back)" if self.resets else ""
        unpaired = (f"; without a partner within the slop: {self.unpaired[0]} visible, {self.unpaired[1]} thermal "
                    "(cameras at different rates leave some)" if any(self.unpaired) else "")
        return (f"{self.pairs} pair(s) fused from {self.messages[0]} visible and {self.messages[1]} thermal "
                f"message(s); skipped: {counts}{resets}{unpaired}")


def fuse_bag(stream_pipeline, bag_path, visible_topic: str, thermal_topic: str, out_path, *,
             slop: float = DEFAULT_SLOP, queue_size: int = DEFAULT_QUEUE_SIZE, progress=None,
             warn=None, on_pair=None, use_camera_info: bool = True, limit: int | None = None) -> BagSummary:
    """Fuse the pairs of a bag into a new MCAP bag at `out_path` (inputs copied, outputs added).

    stream_pipeline: a core StreamPipeline (one rig: registrations paced by the visible stamps, the rig
    estimate for every pair; registration_rate 0: every pair registered alone).

    The inputs are copied as recorded, less messages that cannot be deserialised at all.
    Outputs are stamped with the visible image's header (as cgrp_fusion publishes them) and logged
    at the log time of the message that completed the pair. `progress(total=N)` -> an object with
    update(n) and close() (tqdm); `warn(text)` gets one line per skipped message or pair;
    `on_pair(visible_msg, thermal_msg, outputs)` is called for every fused pair (fusion_outputs.PairOutputs,
    whose `inputs` are the arrays fused: undistorted where the bag's camera_info was used).
    `use_camera_info`: where the bag has both cameras' camera_info (beside their image topics), each image
    is undistorted with it first and `/cgrp_fusion/camera_info` written, as cgrp_fusion does; the
    camera_info topics are copied either way. `limit`: stop after that many pairs (the new bag holds the
    messages read until then).
    """
    summary = BagSummary()
    warn = warn or (lambda text: None)
    with BagTopics(bag_path, visible_topic, thermal_topic) as bag:
        cameras = bag.cameras()
        writer = BagWriter(out_path)
        # the camera_info messages go in at their log times, as the images are read: a bag cut at `limit`
        # ends there for them too
        infos = collections.deque(sorted(cameras.copies, key=lambda copy: copy[1]))

        def copy_infos(until=None):
            while infos and (until is None or infos[0][1] <= until):
                topic, log_time, raw = infos.popleft()
                writer.copy(topic, CAMERA_INFO, log_time, raw)

        if not use_camera_info:
            cameras = BagCameras((None, None), cameras.topics, [], [])
        for note in cameras.notes:
            warn(note)
        summary.cameras = cameras.describe()
        bar = progress(total=sum(bag.counts)) if progress else None
        pairs, read, usable = [], [0, 0], [0, 0]
        sync = PairSynchronizer(queue_size, slop, lambda v, t: pairs.append((v, t)))
        try:
            for stream, timestamp, raw, msg in bag.messages():
                if limit and summary.pairs >= limit:  # a message after the last pair wanted: stop before it
                    summary.stopped = True
                    break
                read[stream] += 1
                copy_infos(timestamp)
                if msg is not None:  # one that cannot even be deserialised would break the new bag's readers
                    writer.copy(bag.topics[stream], bag.msgtypes[stream], timestamp, raw)
                if bar is not None:
                    bar.update(1)
                name = STREAM_NAMES[stream]
                try:
                    if msg is None:
                        raise ImageConversionError("data", "the message cannot be deserialised")
                    msg = prepare_input(msg, bag.compressed[stream])
                except ImageConversionError as exc:
                    text = f"skipping {name} message at log time {timestamp * 1e-9:.3f}: {exc}"
                    summary.count("bad_messages", text)
                    warn(text)
                    continue
                usable[stream] += 1
                sync.add(stream, msg)
                while pairs and not (limit and summary.pairs >= limit):
                    _fuse_one(stream_pipeline, writer, summary, *pairs.pop(0), timestamp, warn, on_pair, cameras)
            summary.stopped = summary.stopped or bool(pairs)  # pairs left: the limit stopped them
            if not summary.stopped:
                copy_infos()
        finally:
            if bar is not None:
                bar.close()
            writer.close()
        summary.messages = tuple(read)
        if not summary.stopped:  # (at --limit a message's partner may simply not have been read yet)
            summary.unpaired = tuple(n - sync.pairs for n in usable)
        summary.written = dict(writer.counts)
        summary.resets = sync.resets
        summary.stamp_offset = sync.offset.closest()
        if "camera_info size" in summary.warned:  # describe() said every image is undistorted
            summary.cameras += "; pairs whose size does not fit it used as recorded (see the warning)"
    return summary


def _warn_once(summary: BagSummary, warn, key, text: str) -> None:
    """Once per kind: a bag repeats its cameras' faults every frame."""
    if key not in summary.warned:
        summary.warned.add(key)
        warn(f"{text} (said once)")


def _fuse_one(stream_pipeline, writer: BagWriter, summary: BagSummary, visible_msg, thermal_msg, timestamp, warn,
              on_pair=None, cameras=None):
    stamp = stamp_ns(visible_msg) * 1e-9
    intrinsics = outputs = None
    if cameras is not None:
        intrinsics, outputs, problem = cameras.for_pair(as_array(visible_msg).shape, as_array(thermal_msg).shape)
        if problem:
            _warn_once(summary, warn, "camera_info size", f"pair at {stamp:.3f}: {problem}")
    try:
        out = fuse_pair(stream_pipeline, visible_msg, thermal_msg, set(BAG_OUTPUTS), intrinsics=intrinsics)
    except InputError as exc:
        text = f"skipping pair at {stamp:.3f}: {exc}"
        summary.count("bad_pairs", text)
        warn(text)
        return
    except Exception as exc:  # one failed inference must not end the bag
        text = f"inference failed for the pair at {stamp:.3f}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        summary.count("inference_errors", text)
        warn(text)
        return
    for counter, key, text in out.warnings:
        _warn_once(summary, warn, key, text)
    for name, (image, encoding) in out.images.items():
        writer.write_image(output_topic(name), timestamp, image, encoding, visible_msg.header)
    if outputs is not None:  # the outputs' camera model: the visible camera's, as the node publishes it
        writer.write_camera_info(output_topic("camera_info"), timestamp, cameras.intrinsics[0], visible_msg.header,
                                 rectified=outputs == RECTIFIED)
    summary.pairs += 1
    if on_pair is not None:
        on_pair(visible_msg, thermal_msg, out)
