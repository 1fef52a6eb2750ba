"""cgrp_fusion end to end: the node in its own process, this process publishes and listens (real rclpy)."""
import re
import signal
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from cgrp_ros.image_conversions import image_to_numpy, numpy_to_image  # noqa: E402
from ros_helpers import STARTUP_TIMEOUT, Spinner, make_images, start_node, stop_node  # noqa: E402

OUTPUTS = ("fused", "registered_thermal", "deformation", "pseudo_thermal")
SLOP = 0.05
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class Harness:
    """The node process plus a test node publishing both streams and recording every output."""

    def __init__(self, log_path):
        self.log_path = log_path
        self.proc = start_node("cgrp_ros.fusion_node", log_path, "-p", "reliability:=reliable",
                               "-p", f"slop:={SLOP}", "-p", "stats_period:=1.0", "-p", "stream_timeout:=1.0",
                               "-p", "working_size:=[64,96]")
        self.spinner = Spinner("cgrp_fusion_tester")
        node = self.spinner.node
        self.visible_pub = node.create_publisher(Image, "visible/image", RELIABLE)
        self.thermal_pub = node.create_publisher(Image, "thermal/image", RELIABLE)
        self.received = {name: [] for name in OUTPUTS}
        for name in OUTPUTS:
            node.create_subscription(Image, f"cgrp_fusion/{name}", lambda m, n=name: self.received[n].append(m), RELIABLE)
        self.diagnostics = []
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.set_parameters = node.create_client(SetParameters, "cgrp_fusion/set_parameters")
        self.visible, self.thermal = make_images()
        self.wait_for(lambda: self.visible_pub.get_subscription_count() and self.thermal_pub.get_subscription_count()
                      and all(node.count_publishers(f"cgrp_fusion/{n}") for n in OUTPUTS),
                      STARTUP_TIMEOUT, "the node's topics")

    def wait_for(self, predicate, timeout, what):
        self.spinner.wait_for(predicate, timeout, what, self.proc, self.log_path)

    def stamp(self, offset=0.0):
        return rclpy.time.Time(nanoseconds=self.spinner.node.get_clock().now().nanoseconds
                               + int(offset * 1e9)).to_msg()

    def publish_pair(self, thermal_offset=0.0, visible=None, thermal=None, visible_encoding="bgr8",
                     thermal_encoding="mono16", visible_msg=None, thermal_msg=None):
        """Publish one pair; returns the visible stamp in ns. Ready-made (broken) messages replace the arrays."""
        stamp = self.stamp()
        header = Header(stamp=stamp, frame_id="test_visible")
        if visible_msg is None:
            visible_msg = numpy_to_image(self.visible if visible is None else visible, visible_encoding, Image)
        visible_msg.header = header
        if thermal_msg is None:
            thermal_msg = numpy_to_image(self.thermal if thermal is None else thermal, thermal_encoding, Image)
        thermal_msg.header = Header(stamp=rclpy.time.Time(nanoseconds=stamp.sec * 10**9 + stamp.nanosec
                                                          + int(thermal_offset * 1e9)).to_msg(), frame_id="test_thermal")
        self.visible_pub.publish(visible_msg)
        self.thermal_pub.publish(thermal_msg)
        return stamp.sec * 10**9 + stamp.nanosec

    def outputs_for(self, stamp_ns):
        return {name: m for name in OUTPUTS for m in self.received[name]
                if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == stamp_ns}

    def wait_outputs(self, stamp_ns, timeout=30.0, what="all four outputs"):
        self.wait_for(lambda: len(self.outputs_for(stamp_ns)) == len(OUTPUTS), timeout, what)
        return self.outputs_for(stamp_ns)

    def log(self):
        return open(self.log_path, errors="replace").read()

    def last_diagnostic(self):
        statuses = [s for array in self.diagnostics for s in array.status if s.name.startswith("cgrp_fusion")]
        return statuses[-1] if statuses else None

    def diagnostic_value(self, key):
        status = self.last_diagnostic()
        return None if status is None else {kv.key: kv.value for kv in status.values}.get(key)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    rclpy.init()
    h = Harness(tmp_path_factory.mktemp("fusion") / "cgrp_fusion.log")
    yield h
    if h.proc.poll() is None:
        stop_node(h.proc, signal.SIGKILL)
    h.spinner.node.destroy_node()
    rclpy.try_shutdown()


def test_all_four_outputs_with_encodings_sizes_and_stamps(harness):
    stamp = harness.publish_pair(thermal_offset=0.01)
    out = harness.wait_outputs(stamp, timeout=STARTUP_TIMEOUT)
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
    unsupported.encoding = "yuv422"
    wrong_step = numpy_to_image(harness.visible, "bgr8", Image)
    wrong_step.step = 100                             # < 160 * 3
    truncated = numpy_to_image(harness.thermal, "mono16", Image)
    truncated.data = truncated.data[:1000]
    for broken in (dict(visible_msg=unsupported), dict(visible_msg=wrong_step), dict(thermal_msg=truncated)):
        assert harness.outputs_for(harness.publish_pair(**broken)) == {}
        harness.spinner.spin(0.1)
    stamp = harness.publish_pair(visible_msg=good)    # the node keeps serving
    harness.wait_outputs(stamp, what="outputs after the broken messages")
    for pattern in ("unsupported encoding 'yuv422'", r"needs step >= 480 bytes, got 100", r"needs 38400 bytes of data"):
        harness.wait_for(lambda: re.search(pattern, harness.log()), 5.0, f"a log line matching {pattern!r}")
    harness.wait_for(lambda: int(harness.diagnostic_value("bad messages") or 0) >= 3, 5.0,
                     "bad messages >= 3 in /diagnostics")


def test_invalid_parameters_are_rejected_with_a_reason(harness):
    harness.wait_for(lambda: harness.set_parameters.service_is_ready(), 10.0, "the set_parameters service")

    def set_parameter(name, value):
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        future = harness.set_parameters.call_async(request)
        harness.wait_for(future.done, 10.0, f"the answer to setting {name}")
        return future.result().results[0]

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
    end = time.monotonic() + 2.5
    while time.monotonic() < end:                      # visible only, thermal silent
        harness.visible_pub.publish(numpy_to_image(harness.visible, "bgr8", Image, Header(stamp=harness.stamp())))
        harness.spinner.spin(0.1)
    status = harness.last_diagnostic()
    assert status.level == DiagnosticStatus.WARN and "thermal/image silent" in status.message, status.message


def test_stats_are_logged(harness):
    assert re.search(r"stats: [\d.]+ fps, latency p50 \d+ ms p95 \d+ ms, pairs \d+, dropped \d+", harness.log())
    assert "cgrp_fusion ready: backend torch" in harness.log() and "working size 64x96" in harness.log()


def test_sigint_shuts_down_cleanly(harness):
    code, seconds = stop_node(harness.proc, signal.SIGINT, timeout=5.0)
    assert code == 0, f"exit code {code}\n{harness.log()[-2000:]}"
    assert seconds < 2.0, f"shutdown took {seconds:.2f} s"
    assert "Traceback" not in harness.log()
