"""cgrp_fusion end to end: the node in its own process, this process publishes and listens (real rclpy)."""
import re
import signal
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from cgrp_ros.ros.image_conversions import image_to_numpy, numpy_to_image  # noqa: E402
from ros_helpers import SLOP, Harness, stop_node  # noqa: E402


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    rclpy.init()
    h = Harness(tmp_path_factory.mktemp("fusion") / "cgrp_fusion.log", "-p", "stream_timeout:=1.0")
    yield h
    h.close(signal.SIGKILL)


def test_all_four_outputs_with_encodings_sizes_and_stamps(harness):
    _, out = harness.wait_first_output("all four outputs", thermal_offset=0.01)
    expected = {"fused": "bgr8", "registered_thermal": "mono16", "deformation": "32FC2", "pseudo_thermal": "mono8"}
    for name, msg in out.items():
        assert msg.encoding == expected[name], name
        assert (msg.height, msg.width) == (120, 160), name
        assert msg.header.frame_id == "test_visible", name
    flow = image_to_numpy(out["deformation"])
    assert flow.shape == (120, 160, 2) and np.isfinite(flow).all()
    assert image_to_numpy(out["registered_thermal"]).dtype == np.uint16


def test_mono_visible_and_8bit_thermal_keep_their_families(harness):
    gray = harness.visible[:, :, 1].copy()
    stamp = harness.publish_pair(visible=gray, visible_encoding="mono8", thermal=(harness.thermal >> 8).astype(np.uint8),
                                 thermal_encoding="8UC1")
    out = harness.wait_outputs(stamp)
    assert out["fused"].encoding == "mono8" and out["registered_thermal"].encoding == "8UC1"


def test_raw_bayer_and_yuv_cameras_are_fused_without_image_proc(harness):
    """A machine-vision camera's Bayer mosaic and a USB camera's YUV 4:2:2 come out as colour outputs of
    the same scene as the BGR image (no debayer node in front of cgrp_fusion)."""
    import cv2

    reference = image_to_numpy(harness.wait_outputs(harness.publish_pair())["fused"])
    bayer = np.empty(harness.visible.shape[:2], np.uint8)
    for index, channel in enumerate((2, 1, 1, 0)):  # R G / G B: bayer_rggb8
        y, x = divmod(index, 2)
        bayer[y::2, x::2] = harness.visible[y::2, x::2, channel]
    yuyv = cv2.cvtColor(harness.visible, cv2.COLOR_BGR2YUV_YUY2)
    for image, encoding in ((bayer, "bayer_rggb8"), (yuyv, "yuv422_yuy2")):
        out = harness.wait_outputs(harness.publish_pair(visible=image, visible_encoding=encoding))
        fused = image_to_numpy(out["fused"])
        assert out["fused"].encoding == "bgr8" and fused.shape == (120, 160, 3), encoding
        assert np.abs(fused.astype(int) - reference).mean() < 8, encoding  # colours the same as from bgr8


def test_the_pictures_for_rviz_while_subscribed(harness):
    """~/deformation_vis is the colour-coded flow; ~/alignment_vis both cameras' edges (bgr8, same header).
    The harness's pair is aligned, so the flow here is zero (white); test_fusion_outputs.py checks the
    colours of a moved thermal."""
    from cgrp_ros.core.warp import flow_to_color
    from ros_helpers import RELIABLE

    pictures = {"deformation_vis": [], "alignment_vis": []}
    node = harness.spinner.node
    subscriptions = [node.create_subscription(Image, f"cgrp_fusion/{name}", got.append, RELIABLE)
                     for name, got in pictures.items()]
    try:
        harness.wait_for(lambda: all(node.count_subscribers(f"cgrp_fusion/{name}") >= 1 for name in pictures), 10.0,
                         "the picture subscriptions")
        stamp = harness.publish_pair()
        out = harness.wait_outputs(stamp)
        stamp_msg = out["fused"].header.stamp
        harness.wait_for(lambda: all(any(m.header.stamp == stamp_msg for m in got) for got in pictures.values()), 10.0,
                         "deformation_vis and alignment_vis")
        msgs = {name: next(m for m in got if m.header.stamp == stamp_msg) for name, got in pictures.items()}
        for msg in msgs.values():
            assert msg.encoding == "bgr8" and (msg.height, msg.width) == (120, 160)
            assert msg.header.frame_id == "test_visible"
        flow = image_to_numpy(out["deformation"])
        assert np.array_equal(image_to_numpy(msgs["deformation_vis"]), flow_to_color(flow))
        assert image_to_numpy(msgs["alignment_vis"]).max() > 0  # edges drawn
    finally:
        for subscription in subscriptions:
            node.destroy_subscription(subscription)


def test_pairs_inside_the_slop_are_fused_outside_are_not(harness):
    outside = harness.publish_pair(thermal_offset=4 * SLOP)
    harness.spinner.spin(0.3)
    inside = harness.publish_pair(thermal_offset=-0.5 * SLOP)
    harness.wait_outputs(inside, what="the outputs of the pair inside the slop")
    harness.spinner.spin(0.5)
    assert harness.outputs_for(outside) == {}, "a pair further apart than the slop was fused"


def test_broken_messages_are_logged_and_skipped(harness):
    good = numpy_to_image(harness.visible, "bgr8", Image)
    unsupported = numpy_to_image(harness.visible, "bgr8", Image)
    unsupported.encoding = "nv12"
    wrong_step = numpy_to_image(harness.visible, "bgr8", Image)
    wrong_step.step = 100                             # < 160 * 3
    truncated = numpy_to_image(harness.thermal, "mono16", Image)
    truncated.data = truncated.data[:1000]
    broken_stamps = []
    for broken in (dict(visible_msg=unsupported), dict(visible_msg=wrong_step), dict(thermal_msg=truncated)):
        broken_stamps.append(harness.publish_pair(**broken))
        harness.spinner.spin(0.1)
    stamp = harness.publish_pair(visible_msg=good)    # the node keeps serving
    harness.wait_outputs(stamp, what="outputs after the broken messages")
    harness.spinner.spin(0.5)
    assert all(harness.outputs_for(s) == {} for s in broken_stamps), "a pair with a broken message was fused"
    for pattern in ("unsupported encoding 'nv12'", r"needs step >= 480 bytes, got 100", r"needs 38400 bytes of data"):
        harness.wait_for(lambda: re.search(pattern, harness.log()), 5.0, f"a log line matching {pattern!r}")
    harness.wait_for(lambda: int(harness.diagnostic_value("bad messages") or 0) >= 3, 5.0,
                     "bad messages >= 3 in /diagnostics")


def test_invalid_parameters_are_rejected_with_a_reason(harness):
    def set_parameter(name, value):
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return harness.call(harness.set_parameters, request, f"the answer to setting {name}").results[0]

    result = set_parameter("backend", "tensorflow")
    assert not result.successful and "tensorflow" in result.reason
    result = set_parameter("working_size", [16, 2000000])
    assert not result.successful and "working_size" in result.reason
    assert not set_parameter("slop", -1.0).successful              # outside the declared range
    assert not set_parameter("generator_model", "/no/such/file.pt").successful
    assert not set_parameter("reliability", "reliable").successful  # read only
    assert set_parameter("slop", SLOP).successful
    stamp = harness.publish_pair()
    harness.wait_outputs(stamp, what="outputs after the rejected parameters")


def test_burst_of_100_pairs_drops_stale_pairs_and_ends_on_a_recent_one(harness):
    stamps = []
    for _ in range(100):
        stamps.append(harness.publish_pair())
        harness.spinner.spin(0.002)
    last_stamps = set(stamps[-3:])
    harness.wait_for(lambda: any(harness.outputs_for(s) for s in last_stamps), 30.0,
                     "an output of one of the last 3 pairs of the burst")
    fused = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in harness.received["fused"]]
    assert fused[-1] in last_stamps
    assert harness.proc.poll() is None
    harness.wait_for(lambda: int(harness.diagnostic_value("dropped pairs") or 0) > 0, 5.0,
                     "dropped pairs > 0 in /diagnostics")
    assert sum(s in stamps for s in fused) < 100


def test_one_silent_stream_warns(harness):
    end = time.monotonic() + 12.0
    while "thermal/image silent" not in getattr(harness.last_diagnostic(), "message", ""):  # visible only
        assert time.monotonic() < end, f"no warning; last: {getattr(harness.last_diagnostic(), 'message', None)}"
        harness.visible_pub.publish(numpy_to_image(harness.visible, "bgr8", Image, Header(stamp=harness.stamp())))
        harness.spinner.spin(0.1)
    assert harness.last_diagnostic().level == DiagnosticStatus.WARN


def test_stats_are_logged(harness):
    harness.wait_outputs(harness.publish_pair())  # a pair of its own: the test does not rely on the others'
    pattern = r"stats: [\d.]+ fps, latency p50 \d+ ms p95 \d+ ms, pairs \d+, dropped \d+"
    harness.wait_for(lambda: re.search(pattern, harness.log()), 5.0, "a stats line (stats_period 1 s)")
    assert "cgrp_fusion ready: backend torch" in harness.log() and "working size 64x96" in harness.log()
    # what the registration starts from, and whether the rig estimate is kept
    assert "prior: none (no calibration_file), self-calibration on (registrations at 0.5 Hz" in harness.log()


def test_sigint_shuts_down_cleanly(harness):
    code, seconds = stop_node(harness.proc, signal.SIGINT, timeout=5.0)
    assert code == 0, f"exit code {code} after {seconds:.2f} s\n{harness.log()[-2000:]}"  # a hang: stop_node's timeout
    assert "Traceback" not in harness.log()
