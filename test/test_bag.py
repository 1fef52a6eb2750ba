"""cgrp fuse --bag: rosbag2 in (sqlite3 or MCAP, raw or compressed), MCAP out, without ROS running.

The bags are written here with `rosbags` from a few bundled sample pairs shrunk to 96x128; the
command runs as a subprocess like a user would run it.
"""
import csv
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO

from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from cgrp_ros.ros.bag import BAG_OUTPUTS, CAMERA_INFO, COMPRESSED, IMAGE, output_topic, typestore

VISIBLE, THERMAL = "/camera/image_raw", "/thermal/image_raw"
PAIRS = 4
T0 = 1_700_000_000_000_000_000  # ns
PERIOD = 200_000_000            # 5 Hz
THERMAL_OFFSET = 10_000_000     # the thermal is stamped 10 ms after the visible: within the node's slop


def cgrp(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cgrp_ros.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def small_pairs(sample_pairs):
    out = []
    for _, visible, thermal in sample_pairs[:PAIRS]:
        out.append((cv2.resize(visible, (128, 96), interpolation=cv2.INTER_AREA),
                    cv2.resize(thermal, (128, 96), interpolation=cv2.INTER_AREA)))
    return out


def _header(types, stamp_ns, frame):
    Header, Time = types.types["std_msgs/msg/Header"], types.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame)


def _raw(types, image, encoding, stamp_ns, frame):
    Image = types.types[IMAGE]
    image = np.ascontiguousarray(image)
    return Image(header=_header(types, stamp_ns, frame), height=image.shape[0], width=image.shape[1],
                 encoding=encoding, is_bigendian=0, step=image.strides[0],
                 data=image.reshape(-1).view(np.uint8))


def _compressed(types, payload: bytes, fmt, stamp_ns, frame):
    Compressed = types.types[COMPRESSED]
    return Compressed(header=_header(types, stamp_ns, frame), format=fmt, data=np.frombuffer(payload, np.uint8))


def write_bag(path, pairs, storage: str, compressed: bool, corrupt_visible: int | None = None,
              thermal_offset: int = THERMAL_OFFSET, cameras=None, thermal_every: int = 1):
    """A bag with VISIBLE (+ /compressed) and THERMAL (+ /compressed, stamped `thermal_offset` ns after the
    visible) pairs and a chatter topic; returns (visible topic, thermal topic, visible stamps).
    `cameras`: (visible, thermal) core.camera.Intrinsics (or None), published beside each image as drivers do.
    `thermal_every`: a thermal message beside every n-th visible one only (a slower thermal camera)."""
    types = typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(path, version=9, storage_plugin=plugin)
    writer.open()
    msgtype = COMPRESSED if compressed else IMAGE
    suffix = "/compressed" if compressed else ""
    vis = writer.add_connection(VISIBLE + suffix, msgtype, typestore=types)
    th = writer.add_connection(THERMAL + suffix, msgtype, typestore=types)
    chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=types)
    infos = [writer.add_connection(topic, CAMERA_INFO, typestore=types)
             for topic in ("/camera/camera_info", "/thermal/camera_info")] if cameras else []
    stamps = []
    for i, (visible, thermal) in enumerate(pairs):
        stamp = T0 + i * PERIOD
        stamps.append(stamp)
        if compressed:
            payload = cv2.imencode(".jpg", visible)[1].tobytes()
            if i == corrupt_visible:
                payload = b"\xff\xd8 not a jpeg" + bytes(100)
            v = _compressed(types, payload, "bgr8; jpeg compressed bgr8", stamp, "visible_camera")
            t16 = thermal.astype(np.uint16) * 257  # 16-bit radiometric thermal as PNG
            t = _compressed(types, cv2.imencode(".png", t16)[1].tobytes(), "mono16; png compressed mono16",
                            stamp + thermal_offset, "thermal_camera")
        else:
            v = _raw(types, visible, "bgr8", stamp, "visible_camera")
            t = _raw(types, thermal, "mono8", stamp + thermal_offset, "thermal_camera")
        for connection, camera, offset in zip(infos, cameras or (), (0, thermal_offset)):
            if camera is None:  # a camera whose driver publishes no camera_info
                continue
            info = _camera_info(types, camera, stamp + offset, connection.topic)
            writer.write(connection, stamp + offset + 500_000, types.serialize_cdr(info, CAMERA_INFO))
        writer.write(vis, stamp + 1_000_000, types.serialize_cdr(v, msgtype))
        if i % thermal_every == 0:
            writer.write(th, stamp + thermal_offset + 1_000_000, types.serialize_cdr(t, msgtype))
        String = types.types["std_msgs/msg/String"]
        writer.write(chatter, stamp + 2_000_000, types.serialize_cdr(String(data="hi"), "std_msgs/msg/String"))
    writer.close()
    return VISIBLE + suffix, THERMAL + suffix, stamps


def _camera_info(types, camera, stamp_ns, frame):
    roi = types.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    k = np.array(camera.K, np.float64)
    return types.types[CAMERA_INFO](
        header=_header(types, stamp_ns, frame), height=camera.size[0], width=camera.size[1],
        distortion_model=camera.model, d=np.array(camera.D, np.float64), k=k, r=np.eye(3).ravel(),
        p=np.concatenate([k.reshape(3, 3), np.zeros((3, 1))], axis=1).ravel(), binning_x=0, binning_y=0, roi=roi)


def read_bag(path):
    """{topic: [(log time, message)]} and {topic: msgtype} of a bag, read with rosbags."""
    types = typestore()
    out, kinds = {}, {}
    with Reader(path) as reader:
        for c in reader.connections:
            kinds[c.topic] = c.msgtype
        for connection, timestamp, raw in reader.messages():
            out.setdefault(connection.topic, []).append((timestamp, types.deserialize_cdr(raw, connection.msgtype)))
    return out, kinds


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.mark.parametrize("storage,compressed", [("sqlite3", False), ("mcap", False), ("sqlite3", True), ("mcap", True)])
def test_fuse_bag_writes_the_node_outputs_to_mcap(tmp_path, sample_pairs, storage, compressed):
    pairs = small_pairs(sample_pairs)
    visible_topic, thermal_topic, stamps = write_bag(tmp_path / "in", pairs, storage, compressed)
    out = tmp_path / "out"
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
             "--out", out, "--backend", "torch", "--device", "cpu", "--working-size", "96x128")
    assert r.returncode == 0, r.stderr
    assert f"{PAIRS} pair(s) fused from {PAIRS} visible and {PAIRS} thermal message(s); skipped: none" in r.stdout
    assert list(out.glob("*.mcap")), "the output bag is MCAP"
    messages, kinds = read_bag(out)
    expected_topics = {visible_topic, thermal_topic} | {output_topic(n) for n in BAG_OUTPUTS}
    assert set(messages) == expected_topics
    assert kinds[visible_topic] == kinds[thermal_topic] == (COMPRESSED if compressed else IMAGE)
    for topic in expected_topics:
        assert len(messages[topic]) == PAIRS, topic
    for name in BAG_OUTPUTS:
        assert kinds[output_topic(name)] == IMAGE
        assert [stamp_of(m) for _, m in messages[output_topic(name)]] == stamps  # the visible image's header
        assert all(m.header.frame_id == "visible_camera" for _, m in messages[output_topic(name)])
        assert all((m.height, m.width) == (96, 128) for _, m in messages[output_topic(name)])
    # the inputs are copied as recorded, stamps and log times included
    assert [stamp_of(m) for _, m in messages[thermal_topic]] == [s + THERMAL_OFFSET for s in stamps]
    assert [t for t, _ in messages[visible_topic]] == [s + 1_000_000 for s in stamps]
    # outputs are logged when their pair is complete: after the thermal message
    assert [t for t, _ in messages[output_topic("fused")]] == [s + THERMAL_OFFSET + 1_000_000 for s in stamps]
    encodings = {name: messages[output_topic(name)][0][1].encoding for name in BAG_OUTPUTS}
    assert encodings == {"fused": "bgr8", "registered_thermal": "mono16" if compressed else "mono8",
                         "deformation": "32FC2", "pseudo_thermal": "mono8"}
    flow = messages[output_topic("deformation")][0][1]
    assert len(flow.data) == flow.step * flow.height == 96 * 128 * 8
    # registration.csv in the bag's folder, as for folders: one row per pair, named by the visible stamp
    with open(out / "registration.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows] == [f"{s * 1e-9:.6f}" for s in stamps]
    assert all(0 <= float(row["registration_confidence"]) <= 1 and -1 <= float(row["edge_agreement_input"]) <= 1
               for row in rows)
    assert "edge agreement with the visible image" in r.stdout


def test_fuse_bag_video_runs_at_the_bags_rate(tmp_path, sample_pairs):
    visible_topic, thermal_topic, _ = write_bag(tmp_path / "in", small_pairs(sample_pairs), "mcap", False)
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
             "--out", tmp_path / "out", "--device", "cpu", "--working-size", "96x128", "--video", tmp_path / "fused.avi")
    assert r.returncode == 0, r.stderr
    video = cv2.VideoCapture(str(tmp_path / "fused.avi"))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == PAIRS and video.get(cv2.CAP_PROP_FPS) == 1e9 / PERIOD
    assert f"video of {PAIRS} pair(s) at 5 fps" in r.stdout


def test_fuse_bag_limit_stops_early_and_low_confidence_pairs_are_warned_of(tmp_path, sample_pairs):
    from cgrp_ros.core.camera import Intrinsics

    # a lens-capped thermal (constant): nothing to register, every pair falls back to the prior
    pairs = [(visible, np.full_like(thermal, 90)) for visible, thermal in small_pairs(sample_pairs)]
    camera = Intrinsics.from_matrix([[110, 0, 64], [0, 110, 48], [0, 0, 1]], [0] * 5, size=(96, 128))
    visible_topic, thermal_topic, stamps = write_bag(tmp_path / "in", pairs, "mcap", False, cameras=(camera, camera))
    out = tmp_path / "out"
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
             "--out", out, "--device", "cpu", "--working-size", "96x128", "--limit", "2")
    assert r.returncode == 0, r.stderr
    assert "2 pair(s) fused from 2 visible and 2 thermal message(s); skipped: none (stopped at --limit 2)" in r.stdout
    assert "without a partner" not in r.stdout  # (stopped: a partner may not have been read yet)
    assert "2 with low registration confidence" in r.stdout
    for stamp in stamps[:2]:
        assert f"warning: {stamp * 1e-9:.6f}: low registration confidence" in r.stderr
    messages, _ = read_bag(out)
    assert [stamp_of(m) for _, m in messages[output_topic("fused")]] == stamps[:2]
    assert len(messages[visible_topic]) == 2  # the new bag ends where the fusion stopped
    assert len(messages["/camera/camera_info"]) == len(messages["/thermal/camera_info"]) == 2  # (all of them, before)
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
             "--out", tmp_path / "all", "--device", "cpu", "--working-size", "96x128", "--limit", str(PAIRS))
    assert f"{PAIRS} pair(s) fused from {PAIRS} visible and {PAIRS} thermal message(s); skipped: none," in r.stdout
    assert "stopped at" not in r.stdout  # nothing was left


def test_corrupt_compressed_message_is_skipped_and_counted(tmp_path, sample_pairs):
    pairs = small_pairs(sample_pairs)
    visible_topic, thermal_topic, stamps = write_bag(tmp_path / "in", pairs, "mcap", True, corrupt_visible=1)
    out = tmp_path / "out"
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
             "--out", out, "--backend", "torch", "--device", "cpu", "--working-size", "96x128")
    assert r.returncode == 1, r.stderr  # a skipped message is a problem, like an unreadable file
    assert "Traceback" not in r.stderr
    assert "skipping visible message" in r.stderr and "payload of 113 bytes is a JPEG whose header gives no image size" in r.stderr
    assert f"{PAIRS - 1} pair(s) fused from {PAIRS} visible and {PAIRS} thermal message(s); skipped: 1 bad messages" in r.stdout
    messages, _ = read_bag(out)
    assert len(messages[visible_topic]) == PAIRS  # the inputs stay as recorded
    assert [stamp_of(m) for _, m in messages[output_topic("fused")]] == [s for i, s in enumerate(stamps) if i != 1]


def test_missing_bag_and_missing_topic_are_one_clear_line(tmp_path, sample_pairs):
    r = cgrp("fuse", "--bag", tmp_path / "nothing", "--visible-topic", "/a", "--thermal-topic", "/b", "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"cgrp fuse: error: bag '{tmp_path / 'nothing'}' does not exist" in r.stderr
    (tmp_path / "pictures").mkdir()  # a folder, but no bag
    r = cgrp("fuse", "--bag", tmp_path / "pictures", "--visible-topic", "/a", "--thermal-topic", "/b", "--out", tmp_path / "o")
    assert r.returncode == 2 and "a folder without metadata.yaml, so no rosbag2" in r.stderr, r.stderr
    write_bag(tmp_path / "in", small_pairs(sample_pairs)[:1], "sqlite3", False)
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", VISIBLE, "--thermal-topic", "/thermal/wrong",
             "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "has no thermal topic '/thermal/wrong'" in line
    assert f"{VISIBLE} (sensor_msgs/msg/Image)" in line and "/chatter (std_msgs/msg/String)" in line
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", VISIBLE, "--thermal-topic", THERMAL + "/compressed",
             "--out", tmp_path / "o")
    assert r.returncode == 2 and f"(did you mean '{THERMAL}'?)" in r.stderr
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", VISIBLE, "--thermal-topic", "/chatter",
             "--out", tmp_path / "o")
    assert r.returncode == 2 and "'/chatter' is std_msgs/msg/String, expected sensor_msgs/msg/Image" in r.stderr
    assert not (tmp_path / "o").exists()
    (tmp_path / "o").mkdir()
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", VISIBLE, "--thermal-topic", THERMAL,
             "--out", tmp_path / "o")
    assert r.returncode == 2 and "exists already" in r.stderr and "Traceback" not in r.stderr


def test_a_bag_whose_stamps_never_meet_says_by_how_much(tmp_path, sample_pairs):
    """The thermal driver stamps 70 ms late (at the end of its exposure): nothing pairs within the default
    slop of 50 ms, and the error names the offset to fix."""
    visible_topic, thermal_topic, _ = write_bag(tmp_path / "in", small_pairs(sample_pairs)[:2], "mcap", False,
                                                thermal_offset=70_000_000)
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
             "--out", tmp_path / "out")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert ("never came within --slop 0.05 s: the closest stamps are 0.070 s apart (thermal later; --slop 0.05 s)"
            in r.stderr), r.stderr
    assert "skipped: none; without a partner within the slop: 2 visible, 2 thermal" in r.stdout, r.stdout
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
             "--out", tmp_path / "out2", "--slop", "0.08")
    assert r.returncode == 0 and "2 pair(s) fused" in r.stdout, r.stderr  # a slop above the offset it named pairs them
    assert "without a partner" not in r.stdout
    # a bad message besides does not hide why the others never paired
    visible_topic, thermal_topic, _ = write_bag(tmp_path / "in_bad", small_pairs(sample_pairs)[:3], "mcap", True,
                                                corrupt_visible=0, thermal_offset=70_000_000)
    r = cgrp("fuse", "--bag", tmp_path / "in_bad", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
             "--out", tmp_path / "out3")
    assert r.returncode == 1 and "skipping visible message" in r.stderr
    assert "the closest stamps are 0.070 s apart" in r.stderr.strip().splitlines()[-1], r.stderr


def test_the_same_topic_for_both_cameras_is_refused(tmp_path, sample_pairs):
    visible_topic, _, _ = write_bag(tmp_path / "in", small_pairs(sample_pairs), "mcap", False)
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", visible_topic,
             "--out", tmp_path / "out")
    assert r.returncode == 2 and f"the visible and the thermal topic are the same, '{visible_topic}'" in r.stderr


def test_bag_module_needs_no_rclpy():
    code = ("import sys; import cgrp_ros.ros.bag, cgrp_ros.commands.fuse; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rcl_interfaces', 'sensor_msgs')]; "
            "print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_bag_defaults_are_the_nodes():
    from cgrp_ros.ros.parameters import OUTPUTS, PARAMETERS_BY_NAME
    from cgrp_ros.ros.sync import DEFAULT_QUEUE_SIZE, DEFAULT_SLOP

    assert PARAMETERS_BY_NAME["slop"].default == DEFAULT_SLOP
    assert PARAMETERS_BY_NAME["queue_size"].default == DEFAULT_QUEUE_SIZE
    assert set(BAG_OUTPUTS) <= set(OUTPUTS)


def test_bag_source_pairs_each_visible_with_the_nearest_thermal(tmp_path, sample_pairs):
    from cgrp_ros.ros.sources import BagSource

    pairs = small_pairs(sample_pairs)
    visible_topic, thermal_topic, stamps = write_bag(tmp_path / "in", pairs, "mcap", True, corrupt_visible=2)
    source = BagSource(tmp_path / "in", visible_topic, thermal_topic, max_width=64)
    assert len(source) == PAIRS - 1 and source.skipped == 1
    assert [source.stamps(i) for i in range(len(source))] == [(s, s + THERMAL_OFFSET) for i, s in enumerate(stamps) if i != 2]
    visible, thermal = source.arrays(0)
    assert visible.shape == (48, 64, 3) and visible.dtype == np.uint8
    assert thermal.shape == (48, 64) and thermal.dtype == np.uint16  # the 16-bit PNG stays 16-bit


def test_player_replays_a_bag_with_its_stamps(tmp_path, sample_pairs):
    rclpy = pytest.importorskip("rclpy")
    from ros_helpers import play_until_exit

    visible_topic, thermal_topic, stamps = write_bag(tmp_path / "in", small_pairs(sample_pairs), "sqlite3", False)
    rclpy.init()
    try:
        log = tmp_path / "player.log"
        code, got = play_until_exit(log, "-p", f"bag:={tmp_path / 'in'}", "-p", f"visible_topic:={visible_topic}",
                                    "-p", f"thermal_topic:={thermal_topic}", "-p", "count:=40", "-p", "rate:=10.0",
                                    timeout=60.0)  # 4 s of playing: time for discovery on a busy machine
        assert code == 0, log.read_text()
        assert got["visible"] and got["thermal"], "nothing received from the player"
        visible_stamps = {stamp_of(m) for m in got["visible"]}
        thermal_stamps = {stamp_of(m) for m in got["thermal"]}
        assert visible_stamps <= set(stamps) and thermal_stamps <= {s + THERMAL_OFFSET for s in stamps}
        assert got["visible"][-1].encoding == "bgr8" and got["thermal"][-1].encoding == "mono8"
        assert (got["visible"][-1].height, got["visible"][-1].width) == (96, 128)
        # the recording's frame_ids, which the node's outputs carry on (they were the player's defaults)
        assert (got["visible"][-1].header.frame_id, got["thermal"][-1].header.frame_id) == \
            ("visible_camera", "thermal_camera")
    finally:
        rclpy.try_shutdown()


def test_player_sends_a_slower_thermal_cameras_frames_once_per_loop(tmp_path, sample_pairs):
    """A thermal frame nearest to two visible frames went out with both, and the node fused it twice: twice
    the thermal camera's rate."""
    rclpy = pytest.importorskip("rclpy")
    from ros_helpers import play_until_exit

    from cgrp_ros.ros.sources import BagSource

    visible_topic, thermal_topic, stamps = write_bag(tmp_path / "in", small_pairs(sample_pairs), "mcap", False,
                                                     thermal_every=2)
    thermal_stamps = [s + THERMAL_OFFSET for s in stamps[::2]]  # 2 thermal frames beside 4 visible ones
    source = BagSource(tmp_path / "in", visible_topic, thermal_topic)
    assert [source.pairs[i][1] for i in range(PAIRS)] == [0, 0, 1, 1]
    assert [source.sends_thermal(i) for i in range(PAIRS)] == [True, False, True, False]
    # half a frame late at equal rates (a tie): every thermal frame still goes out, once
    late = write_bag(tmp_path / "late", small_pairs(sample_pairs), "mcap", False, thermal_offset=PERIOD // 2)
    source = BagSource(tmp_path / "late", *late[:2])
    sent = {source.pairs[i][1] for i in range(PAIRS) if source.sends_thermal(i)}
    assert sent == {t for _, t in source.pairs} and sum(map(source.sends_thermal, range(PAIRS))) == len(sent)
    rclpy.init()
    try:
        log = tmp_path / "player.log"
        code, got = play_until_exit(log, "-p", f"bag:={tmp_path / 'in'}", "-p", f"visible_topic:={visible_topic}",
                                    "-p", f"thermal_topic:={thermal_topic}", "-p", "count:=40",
                                    "-p", "rate:=10.0", timeout=60.0)  # 10 loops: time for discovery
        assert code == 0, log.read_text()
        visible = [stamp_of(m) for m in got["visible"]]
        thermal = [stamp_of(m) for m in got["thermal"]]
        assert len(visible) >= 2 * PAIRS and set(visible) == set(stamps), "too little received from the player"
        assert set(thermal) == set(thermal_stamps)
        # each frame once (2 of them a loop, in turn), and again in each loop
        assert all(a != b for a, b in zip(thermal, thermal[1:])), thermal
        assert abs(len(thermal) - len(visible) / 2) <= 1, (len(thermal), len(visible))
    finally:
        rclpy.try_shutdown()


class FakePipeline:
    """fuse_pair's view of a StreamPipeline: outputs of the visible image's size, no inference."""

    @property
    def pipeline(self):  # the core Pipeline's checks of a pair as received
        return self

    def input_warnings(self, visible, thermal, where=""):
        from cgrp_ros.core.image import content_warnings

        return content_warnings(visible, thermal, where)

    def __call__(self, visible, thermal, outputs=None, stamp=None):
        from cgrp_ros.core.pipeline import FusionResult

        h, w = visible.shape[:2]
        return FusionResult(fused=visible[:, :, 1].copy(), fused_color=visible.copy(),
                            registered_thermal=np.zeros((h, w), np.uint8), flow=np.zeros((h, w, 2), np.float32),
                            pseudo_thermal=np.zeros((h, w), np.uint8))


def test_undeserialisable_and_inconsistent_raw_messages_are_skipped(tmp_path, sample_pairs):
    from cgrp_ros.ros.bag import fuse_bag

    types = typestore()
    pairs = small_pairs(sample_pairs)
    writer = Writer(tmp_path / "in", version=9, storage_plugin=StoragePlugin.SQLITE3)
    writer.open()
    vis = writer.add_connection(VISIBLE, IMAGE, typestore=types)
    th = writer.add_connection(THERMAL, IMAGE, typestore=types)
    for i, (visible, thermal) in enumerate(pairs):
        stamp = T0 + i * PERIOD
        v = _raw(types, visible, "bgr8", stamp, "visible_camera")
        if i == 2:
            v.step = 10  # shorter than a row: a bad message
        raw = types.serialize_cdr(v, IMAGE)
        writer.write(vis, stamp, raw[:40] if i == 1 else raw)  # i == 1: truncated CDR
        writer.write(th, stamp + 1, types.serialize_cdr(_raw(types, thermal, "mono8", stamp + THERMAL_OFFSET, "t"), IMAGE))
    writer.close()
    warnings = []
    summary = fuse_bag(FakePipeline(), tmp_path / "in", VISIBLE, THERMAL, tmp_path / "out", warn=warnings.append)
    assert summary.pairs == PAIRS - 2 and summary.counts == {"bad_messages": 2}
    assert "cannot be deserialised" in warnings[0] and "needs step >=" in warnings[1]
    messages, _ = read_bag(tmp_path / "out")
    assert [stamp_of(m) for _, m in messages[output_topic("fused")]] == [T0, T0 + 3 * PERIOD]
    assert summary.written[VISIBLE] == PAIRS - 1  # the truncated one is not copied: the new bag stays readable
    assert summary.written[output_topic("pseudo_thermal")] == PAIRS - 2


def test_bag_pairs_like_the_node_slop_and_a_looping_bag(tmp_path, sample_pairs):
    """Out-of-slop stamps stay unpaired; stamps that jump back (a looped recording) reset the synchronizer."""
    from cgrp_ros.ros.bag import fuse_bag

    types = typestore()
    visible, thermal = small_pairs(sample_pairs)[0]
    writer = Writer(tmp_path / "in", version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    vis = writer.add_connection(VISIBLE, IMAGE, typestore=types)
    th = writer.add_connection(THERMAL, IMAGE, typestore=types)
    offsets = [10, 80, 10, 10, 40]  # ms: 80 is beyond the default slop of 50 ms
    expected, log_time = [], T0
    for loop in range(2):  # the second loop repeats the stamps: time goes backwards
        for i, offset in enumerate(offsets):
            stamp = T0 + i * PERIOD
            log_time += PERIOD
            writer.write(vis, log_time, types.serialize_cdr(_raw(types, visible, "bgr8", stamp, "v"), IMAGE))
            writer.write(th, log_time + 1, types.serialize_cdr(
                _raw(types, thermal, "mono8", stamp + offset * 1_000_000, "t"), IMAGE))
            if offset <= 50:
                expected.append(stamp)
    writer.close()
    mcap_file, = (tmp_path / "in").glob("*.mcap")  # a bare .mcap file is read as well as a bag folder
    summary = fuse_bag(FakePipeline(), mcap_file, VISIBLE, THERMAL, tmp_path / "out")
    assert summary.pairs == len(expected) == 8 and summary.skipped == 0
    assert summary.resets >= 1 and "synchronizer reset(s) (stamps jumped back)" in summary.line()
    messages, _ = read_bag(tmp_path / "out")
    assert [stamp_of(m) for _, m in messages[output_topic("fused")]] == expected


def test_a_bags_camera_info_undistorts_like_the_node(tmp_path, sample_pairs):
    """A bag with both cameras' camera_info beside their image topics (the thermal lens distorts strongly):
    cgrp fuse --bag and cgrp calibrate --bag undistort each image with it first, as cgrp_fusion does, and
    the fused bag gets the rectified /cgrp_fusion/camera_info; --no-camera-info uses the images as recorded."""
    from cgrp_ros.commands.calibrate import bag_pairs
    from cgrp_ros.core.camera import Intrinsics, distort, undistort

    pairs = small_pairs(sample_pairs)
    k = [[110, 0, 64], [0, 110, 48], [0, 0, 1]]
    cameras = (Intrinsics.from_matrix(k, [0] * 5, size=(96, 128)),
               Intrinsics.from_matrix(k, [-0.35, 0.1, 0, 0, 0], size=(96, 128)))
    recorded = [(visible, distort(thermal, cameras[1])) for visible, thermal in pairs]
    visible_topic, thermal_topic, stamps = write_bag(tmp_path / "in", recorded, "mcap", False, cameras=cameras)
    registered = {}
    for name, extra in (("with", []), ("without", ["--no-camera-info"])):
        r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
                 "--out", tmp_path / name, "--device", "cpu", "--working-size", "96x128", *extra)
        assert r.returncode == 0, r.stderr
        messages, kinds = read_bag(tmp_path / name)
        assert len(messages["/camera/camera_info"]) == len(messages["/thermal/camera_info"]) == PAIRS  # copied
        registered[name] = [m for _, m in messages[output_topic("registered_thermal")]]
        if name == "with":
            assert "undistorting each image with its camera_info" in r.stdout
            info = [m for _, m in messages[output_topic("camera_info")]]
            assert [stamp_of(m) for m in info] == stamps and kinds[output_topic("camera_info")] == CAMERA_INFO
            assert np.allclose(info[0].k, cameras[0].K) and not np.any(info[0].d)
        else:
            assert output_topic("camera_info") not in messages
    # the thermal comes out where the pinhole thermal is (these pairs are aligned): undistorted, not as recorded
    errors = {name: np.mean([np.abs(m.data.reshape(96, 128)[12:-12, 16:-16].astype(float)
                                    - thermal[12:-12, 16:-16]).mean() for m, (_, thermal) in zip(msgs, pairs)])
              for name, msgs in registered.items()}
    assert errors["with"] < 0.6 * errors["without"], errors
    # cgrp calibrate --bag loads the same undistorted images (the node undistorts before a calibration)
    loaded, _ = bag_pairs(tmp_path / "in", visible_topic, thermal_topic)
    np.testing.assert_array_equal(loaded[0][2](), undistort(recorded[0][1], cameras[1]))
    loaded, _ = bag_pairs(tmp_path / "in", visible_topic, thermal_topic, camera_info=False)
    np.testing.assert_array_equal(loaded[0][2](), recorded[0][1])


def test_a_bag_with_only_the_visible_camera_info_gets_it_for_its_outputs_as_recorded(tmp_path, sample_pairs):
    """As the node publishes ~/camera_info: with only the visible camera's camera_info the images are used as
    recorded, and the outputs are described by that camera's own model (its distortion kept)."""
    from cgrp_ros.core.camera import Intrinsics

    visible_camera = Intrinsics.from_matrix([[110, 0, 64], [0, 110, 48], [0, 0, 1]], [-0.2, 0.05, 0, 0, 0],
                                            size=(96, 128))
    visible_topic, thermal_topic, stamps = write_bag(tmp_path / "in", small_pairs(sample_pairs), "mcap", False,
                                                     cameras=(visible_camera, None))
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", visible_topic, "--thermal-topic", thermal_topic,
             "--out", tmp_path / "out", "--device", "cpu", "--working-size", "96x128")
    assert r.returncode == 0, r.stderr
    assert "images used as recorded" in r.stdout, r.stdout
    messages, _ = read_bag(tmp_path / "out")
    info = [m for _, m in messages[output_topic("camera_info")]]
    assert [stamp_of(m) for m in info] == stamps
    assert np.allclose(info[0].k, visible_camera.K) and np.allclose(info[0].d, visible_camera.D)


def test_a_bags_unusable_camera_info_is_one_line_per_camera_and_the_summary_says_so(tmp_path, sample_pairs):
    """A driver that publishes a zero K with every image got one warning per message and a closing
    "no camera_info in the bag"; a camera_info of another size got "undistorting each image" after the
    warning that the pairs were used without undistortion."""
    from types import SimpleNamespace

    pairs = small_pairs(sample_pairs)
    zero = SimpleNamespace(K=[0.0] * 9, D=[0.0] * 5, size=(96, 128), model="plumb_bob")
    k = [110, 0, 64, 0, 110, 48, 0, 0, 1]
    other_size = SimpleNamespace(K=k, D=[-0.2, 0, 0, 0, 0], size=(48, 64), model="plumb_bob")
    for name, cameras, expected in (("zero", (zero, zero), "no usable camera_info in the bag"),
                                    ("size", (other_size, other_size), "pairs whose size does not fit it used as "
                                                                       "recorded")):
        topics = write_bag(tmp_path / name, pairs, "sqlite3", False, cameras=cameras)[:2]
        r = cgrp("fuse", "--bag", tmp_path / name, "--visible-topic", topics[0], "--thermal-topic", topics[1],
                 "--out", tmp_path / f"{name}_out", "--device", "cpu", "--working-size", "96x128")
        assert r.returncode == 0, r.stderr
        output = r.stdout + r.stderr
        assert expected in output, output
        if name == "zero":
            ignored = [line for line in output.splitlines() if "ignored" in line]
            assert len(ignored) == 2 and all(f"{PAIRS} message(s) ignored" in line for line in ignored), ignored
        else:
            assert sum("used without undistortion" in line for line in output.splitlines()) == 1, output


def test_a_recording_cut_off_is_refused_with_what_to_do(tmp_path, sample_pairs):
    """An MCAP file whose recorder died (no footer): one line naming the likely cause and the repair tool."""
    topics = write_bag(tmp_path / "in", small_pairs(sample_pairs), "mcap", False)[:2]
    (mcap,) = (tmp_path / "in").glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size * 6 // 10])
    r = cgrp("fuse", "--bag", tmp_path / "in", "--visible-topic", topics[0], "--thermal-topic", topics[1],
             "--out", tmp_path / "out", "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cannot read bag" in r.stderr and "mcap recover" in r.stderr, r.stderr
