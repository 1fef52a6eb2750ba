"""cgrp_fusion with camera_info (real rclpy, the node in its own process): it subscribes both cameras'
CameraInfo, undistorts each image with its own, publishes ~/camera_info with the outputs' header."""
import signal

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402

from cgrp_ros.core.camera import Intrinsics, distort, undistort  # noqa: E402
from cgrp_ros.ros.fusion_node import NO_PAIR_YET  # noqa: E402
from cgrp_ros.ros.image_conversions import image_to_numpy  # noqa: E402
from cgrp_ros.ros.sync import THERMAL, VISIBLE  # noqa: E402
from ros_helpers import RELIABLE, STARTUP_TIMEOUT, Harness, stop_node  # noqa: E402

SIZE = (120, 160)  # Harness images
VISIBLE_CAMERA = Intrinsics.from_matrix([[110, 0, 79.5], [0, 110, 59.5], [0, 0, 1]], [-0.3, 0.05, 0, 0, 0],
                                        "plumb_bob", SIZE)
THERMAL_CAMERA = Intrinsics.from_matrix([[95, 0, 81.0], [0, 96, 58.0], [0, 0, 1]], [0.05, -0.02, 0.01, 0.0],
                                        "equidistant", SIZE)


def camera_info(camera: Intrinsics, **fields) -> CameraInfo:
    values = dict(height=camera.size[0], width=camera.size[1], distortion_model=camera.model, d=list(camera.D),
                  k=list(camera.K))
    return CameraInfo(**{**values, **fields})


def chroma(image):
    return cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb)[:, :, 1:].astype(np.float32)


def periodic_thermal():
    """A 16-bit thermal of a periodic scene that shares nothing with colour_pattern (the bounds below were
    measured with it)."""
    yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]].astype(np.float32)
    return (30000 + 2000 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.uint16)


def colour_pattern():
    """A visible image whose chroma varies across the image and whose values stay mid-range (the
    fused luminance then never clips the visible chroma that the fused image keeps)."""
    yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]].astype(np.float32)
    image = np.stack([128 + 45 * np.sin(xx / 11.0), 128 + 10 * np.cos((xx + yy) / 9.0),
                      128 + 45 * np.cos(yy / 8.0)], axis=2)
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    rclpy.init()
    h = Harness(tmp_path_factory.mktemp("camera_info") / "cgrp_fusion.log", outputs=("fused", "registered_thermal"))
    node = h.spinner.node
    h.info_pubs = [node.create_publisher(CameraInfo, f"{stream}/camera_info", RELIABLE)
                   for stream in ("visible", "thermal")]
    h.camera_infos = []
    node.create_subscription(CameraInfo, "cgrp_fusion/camera_info", h.camera_infos.append, RELIABLE)
    h.wait_for(lambda: all(p.get_subscription_count() for p in h.info_pubs)
               and node.count_publishers("cgrp_fusion/camera_info"), STARTUP_TIMEOUT,
               "the node's camera_info subscriptions and ~/camera_info")
    yield h
    if h.proc.poll() is None:
        stop_node(h.proc, signal.SIGKILL)
    node.destroy_node()
    rclpy.try_shutdown()


def _info_for(harness, stamp_ns):
    return [m for m in harness.camera_infos if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == stamp_ns]


def _publish_until(harness, predicate, what, infos=(), **pair):
    """Publish `infos` (visible, thermal CameraInfo) and a pair until predicate(stamp) holds; returns the stamp."""
    found = []

    def attempt():
        for publisher, info in zip(harness.info_pubs, infos):
            publisher.publish(info)
        harness.spinner.spin(0.05)
        stamp = harness.publish_pair(**pair)
        harness.spinner.spin(0.5)
        if predicate(stamp):
            found.append(stamp)
        return bool(found)

    harness.wait_for(attempt, 60.0, what)
    return found[0]


def test_without_camera_info_images_are_fused_as_they_are_and_no_camera_info_published(harness):
    def diagnostics_say(text):
        harness.spinner.spin(0.3)
        return harness.diagnostic_value("camera_info") == text
    # use_camera_info is true: before a pair, /diagnostics said "not used" (meaning: false)
    harness.wait_for(lambda: diagnostics_say(NO_PAIR_YET), 10.0,
                     "/diagnostics 'camera_info' before the first pair")
    harness.wait_first_output("the first outputs")
    harness.spinner.spin(0.5)
    assert not harness.camera_infos
    harness.wait_for(lambda: diagnostics_say("not undistorting: no visible/camera_info; no thermal/camera_info"),
                     10.0, "/diagnostics 'camera_info' saying why the pair was not undistorted")


def test_each_image_is_undistorted_and_camera_info_has_the_outputs_header(harness):
    raw_visible = distort(colour_pattern(), VISIBLE_CAMERA)
    raw_thermal = distort(periodic_thermal(), THERMAL_CAMERA)
    infos = (camera_info(VISIBLE_CAMERA), camera_info(THERMAL_CAMERA))
    stamp = _publish_until(harness, lambda s: any(not any(m.d) for m in _info_for(harness, s)),
                           "a rectified ~/camera_info", infos, visible=raw_visible, thermal=raw_thermal)
    out = harness.wait_outputs(stamp, what="the outputs of the undistorted pair")
    info = _info_for(harness, stamp)[-1]
    fused = out["fused"]
    assert info.header == fused.header and info.header.frame_id == "test_visible"
    assert (info.height, info.width) == (fused.height, fused.width) == SIZE
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    assert list(info.k) == list(VISIBLE_CAMERA.K) and list(info.r) == [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    assert list(info.p) == [110, 0, 79.5, 0, 0, 110, 59.5, 0, 0, 0, 1, 0]
    # the fused image keeps the visible chroma: that of the undistorted visible, not of the raw one
    fused_chroma = chroma(image_to_numpy(fused))
    error_rectified = np.abs(fused_chroma - chroma(undistort(raw_visible, VISIBLE_CAMERA))).mean()
    error_raw = np.abs(fused_chroma - chroma(raw_visible)).mean()
    assert error_rectified < 1.5 and error_raw > 4 * error_rectified, (error_rectified, error_raw)
    # and the thermal with its own: the pair shares no scene, so the registration keeps the prior and the
    # registered thermal is the undistorted thermal (raw 16-bit values kept), not the raw one. Measured
    # 2026-12-06: 0.0 against the undistorted thermal, 306 inside a 20-px margin against the raw one
    registered = image_to_numpy(out["registered_thermal"]).astype(np.float32)
    thermal_rectified = np.abs(registered - undistort(raw_thermal, THERMAL_CAMERA).astype(np.float32)).mean()
    thermal_raw = np.abs(registered - raw_thermal.astype(np.float32))[20:-20, 20:-20].mean()
    assert thermal_rectified < 1.0 and thermal_raw > 100, (thermal_rectified, thermal_raw)
    log = harness.log()
    assert "undistorting each image with its own intrinsics (visible plumb_bob, thermal equidistant)" in log
    assert "camera_info /visible/camera_info, /thermal/camera_info" in log
    harness.wait_for(lambda: harness.diagnostic_value("camera_info") == "undistorting (visible plumb_bob, thermal "
                     "equidistant)", 5.0, "/diagnostics 'camera_info' saying so")


def test_a_camera_info_of_another_size_warns_and_the_pair_is_fused_without_undistortion(harness):
    wrong = camera_info(Intrinsics.from_matrix(np.diag([100.0, 100.0, 1.0]) + [[0, 0, 160], [0, 0, 120], [0, 0, 0]],
                                               [-0.2, 0, 0, 0, 0], "plumb_bob", (240, 320)))
    visible_info = camera_info(VISIBLE_CAMERA)
    # the visible camera's own (distorted) CameraInfo still describes the outputs: it is published
    stamp = _publish_until(harness, lambda s: any(any(m.d) for m in _info_for(harness, s)),
                           "the visible camera's own camera_info", (visible_info, wrong))
    assert list(_info_for(harness, stamp)[-1].d) == list(VISIBLE_CAMERA.D)
    harness.wait_for(lambda: "thermal/camera_info is for 320x240 images but the thermal image is 160x120: "
                     "fused without undistortion" in harness.log(), 10.0, "the size warning")
    uncalibrated = camera_info(THERMAL_CAMERA, k=[0.0] * 9)
    harness.info_pubs[1].publish(uncalibrated)
    harness.wait_for(lambda: "ignoring thermal/camera_info: camera matrix K must be" in harness.log(), 10.0,
                     "the warning about an all-zero K")
    harness.publish_pair()  # /diagnostics says why the pairs are not undistorted, not only the log

    def says_ignored():
        harness.spinner.spin(0.3)
        return (harness.diagnostic_value("camera_info") or "").startswith(
            "not undistorting: thermal/camera_info ignored: camera matrix K must be")
    harness.wait_for(says_ignored, 10.0, "/diagnostics 'camera_info' naming the ignored CameraInfo")


def test_a_camera_info_that_keeps_changing_is_one_warning_not_a_line_per_pair(harness):
    """A stale static publisher beside the driver on thermal/camera_info: undistortion goes on and off with every
    pair. It was an INFO line per pair; now the first changes are said, then one warning naming likely causes."""
    good = (camera_info(VISIBLE_CAMERA), camera_info(THERMAL_CAMERA))
    stale = (good[0], camera_info(THERMAL_CAMERA, height=240, width=320))
    said = lambda: harness.log().count("camera_info of both cameras known")  # noqa: E731
    before, sent = said(), []

    def flip():  # one pair at a time, each fused before the next (the node's slot keeps only the latest)
        infos = (good, stale)[len(sent) % 2]
        sent.append(infos)
        for publisher, info in zip(harness.info_pubs, infos):
            publisher.publish(info)
        harness.spinner.spin(0.05)
        harness.wait_outputs(harness.publish_pair(), what="the pair after a camera_info change")
        return "undistortion switched on and off" in harness.log()

    harness.wait_for(flip, 60.0, "the warning of a camera_info that keeps changing")
    for _ in range(6):
        flip()
    assert said() - before <= 2, harness.log()          # the first changes only, not one per pair
    assert harness.log().count("undistortion switched on and off") == 1  # at most every 30 s


def test_use_camera_info_false_unsubscribes_at_run_time(harness):
    request = SetParameters.Request(parameters=[Parameter("use_camera_info", value=False).to_parameter_msg()])
    assert harness.call(harness.set_parameters, request, "the answer to setting use_camera_info").results[0].successful
    harness.wait_for(lambda: not any(p.get_subscription_count() for p in harness.info_pubs), 10.0,
                     "the camera_info subscriptions to go")
    harness.camera_infos.clear()
    stamp = harness.publish_pair()
    harness.wait_outputs(stamp, what="outputs with use_camera_info false")
    harness.spinner.spin(0.5)
    assert not harness.camera_infos


def test_camera_info_topics_sit_beside_the_remapped_image_topics_unless_remapped_themselves(harness):
    from cgrp_ros.ros.fusion_node import FusionNode

    node = FusionNode(cli_args=["--ros-args", "-r", "__ns:=/topic_check", "-r", "visible/image:=/cam/color/image_raw",
                                "-r", "thermal/camera_info:=/ir/info"])
    try:
        assert node._camera_info_topic(VISIBLE) == "/cam/color/camera_info"  # as image_transport's camera subscribers
        assert node._camera_info_topic(THERMAL) == "/ir/info"
    finally:
        node.stop()
        node.destroy_node()
