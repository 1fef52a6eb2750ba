"""cgrp_fusion under bad input and stream faults (issue 5): one node process, the cases fed in sequence.

Every case ends with a good pair that must still be fused: the node keeps serving. Only `fused`
is subscribed, so the node computes just that (the 4096x3072 cases stay affordable).
"""
import re
import signal
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from cgrp_ros.evaluation.bench import cpu_seconds, rss_mb  # noqa: E402
from cgrp_ros.ros.image_conversions import image_to_numpy, numpy_to_image  # noqa: E402
from ros_helpers import Harness  # noqa: E402

STREAM_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    rclpy.init()
    h = Harness(tmp_path_factory.mktemp("faults") / "cgrp_fusion.log", "-p", f"stream_timeout:={STREAM_TIMEOUT}",
                outputs=("fused",))
    h.wait_first_output("the first output")
    yield h
    h.close(signal.SIGKILL)


def counter(h, key) -> int:
    return int(h.diagnostic_value(key) or 0)


def wait_counter(h, key, at_least):
    h.wait_for(lambda: counter(h, key) >= at_least, 5.0, f"'{key}' >= {at_least} in /diagnostics")


def wait_log(h, pattern, timeout=10.0):
    h.wait_for(lambda: re.search(pattern, h.log()), timeout, f"a log line matching {pattern!r}")


def still_fusing(h):
    """A good pair after the fault is fused: the node is alive and serving."""
    h.wait_outputs(h.publish_pair(), what="the output of the good pair after the fault")
    assert h.proc.poll() is None


def raw_image(encoding, width, height, step, data_bytes):
    return Image(encoding=encoding, width=width, height=height, step=step, data=bytes(data_bytes))


# -- messages that cannot be read: skipped in the subscription callback, 'bad messages' --------------
UNREADABLE = {
    # case: (which stream, message, log line)
    "zero width": ("visible", lambda: raw_image("bgr8", 0, 120, 0, 0), r"skipping visible image: .*zero size \(0x120\)"),
    "zero height": ("thermal", lambda: raw_image("mono16", 160, 0, 320, 0),
                    r"skipping thermal image: .*zero size \(160x0\)"),
    "step below width x pixel size": ("visible", lambda: raw_image("bgr8", 160, 120, 100, 12000),
                                      r"skipping visible image: .*needs step >= 480 bytes, got 100"),
    "data shorter than step x height": ("thermal", lambda: raw_image("mono16", 160, 120, 320, 1000),
                                        r"skipping thermal image: .*needs 38400 bytes of data, got 1000"),
    "unsupported encoding": ("thermal", lambda: raw_image("nv12", 160, 120, 160, 28800),
                             r"skipping thermal image: unsupported encoding 'nv12'"),
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_message_is_skipped_logged_counted(harness, case):
    stream, make, log_line = UNREADABLE[case]
    before = counter(harness, "bad messages")
    harness.publish_pair(**{f"{stream}_msg": make()})
    wait_log(harness, log_line)
    still_fusing(harness)
    wait_counter(harness, "bad messages", before + 1)


def test_a_repeated_fault_is_logged_once_but_counted_every_time(harness):
    before = counter(harness, "bad messages")
    for _ in range(6):  # a driver sending the same broken message at 20 Hz
        harness.publish_pair(visible_msg=raw_image("rgb8", 160, 120, 480, 100))
        harness.spinner.spin(0.05)
    wait_counter(harness, "bad messages", before + 6)
    lines = re.findall(r"skipping visible image: rgb8 image .* needs 57600 bytes of data", harness.log())
    assert len(lines) == 1, lines
    still_fusing(harness)


# -- pairs the core cannot use: skipped in the worker, 'bad pairs' --------------------------------------
def test_1x1_images_are_skipped_as_bad_pairs(harness):
    before = counter(harness, "bad pairs")
    harness.publish_pair(visible=np.full((1, 1, 3), 90, np.uint8))
    wait_log(harness, r"skipping pair at [\d.]+: visible: image of 1x1 px is too small")
    harness.publish_pair(thermal=np.full((1, 1), 30000, np.uint16))
    wait_log(harness, r"skipping pair at [\d.]+: thermal: image of 1x1 px is too small")
    still_fusing(harness)
    wait_counter(harness, "bad pairs", before + 2)


def test_all_nan_thermal_is_skipped(harness):
    before = counter(harness, "bad pairs")
    harness.publish_pair(thermal=np.full((120, 160), np.nan, np.float32), thermal_encoding="32FC1")
    wait_log(harness, r"thermal image 160x120 has no finite pixel")
    still_fusing(harness)
    wait_counter(harness, "bad pairs", before + 1)


# -- unusual but usable input: fused, at the visible resolution ----------------------------------------
def fused_shape(h, **pair):
    out = h.wait_outputs(h.publish_pair(**pair), what="the output of the unusual pair")
    return image_to_numpy(out["fused"]).shape


def test_nan_and_inf_in_32fc1_thermal_are_fused_with_a_warning(harness):
    thermal = harness.thermal.astype(np.float32)
    thermal[10:20, 10:30] = np.nan
    thermal[50, :] = np.inf
    thermal[60, :] = -np.inf
    before = counter(harness, "non-finite thermal")
    assert fused_shape(harness, thermal=thermal, thermal_encoding="32FC1") == (120, 160, 3)
    wait_log(harness, r"thermal image at [\d.]+ has 520 NaN/inf pixels: fused with them treated as missing")
    wait_counter(harness, "non-finite thermal", before + 1)


def test_constant_images_are_fused_with_a_warning(harness):
    before = counter(harness, "constant images")
    assert fused_shape(harness, visible=np.full((120, 160, 3), 77, np.uint8),
                       thermal=np.full((120, 160), 30000, np.uint16)) == (120, 160, 3)
    wait_log(harness, r"visible image at [\d.]+ is constant \(value 77\)")
    wait_log(harness, r"thermal image at [\d.]+ is constant \(value 30000\)")
    wait_counter(harness, "constant images", before + 2)
    still_fusing(harness)


@pytest.mark.parametrize("visible_shape, thermal_shape", [
    ((7, 13, 3), (7, 13)),          # tiny
    ((120, 160, 3), (300, 40)),     # very different sizes and aspect ratios
    ((40, 300, 3), (512, 640)),
])
def test_odd_sizes_and_aspect_ratios_are_fused(harness, visible_shape, thermal_shape):
    rng = np.random.default_rng(1)
    visible = rng.integers(0, 255, visible_shape, dtype=np.uint8)
    thermal = rng.integers(20000, 40000, thermal_shape, dtype=np.uint16)
    assert fused_shape(harness, visible=visible, thermal=thermal) == visible_shape


def test_4096x3072_images_are_fused(harness):
    rng = np.random.default_rng(2)
    big_thermal = rng.integers(20000, 40000, (3072, 4096), dtype=np.uint16)    # 25 MB
    assert fused_shape(harness, thermal=big_thermal) == (120, 160, 3)
    big_visible = rng.integers(0, 255, (3072, 4096), dtype=np.uint8)           # 12.6 MB, fused at full size
    assert fused_shape(harness, visible=big_visible, visible_encoding="mono8") == (3072, 4096)
    still_fusing(harness)


def test_stamps_jumping_backwards_recover_without_restart(harness):
    pid = harness.proc.pid
    resets = counter(harness, "synchronizer resets")
    now = harness.spinner.node.get_clock().now().nanoseconds
    for loop in range(2):  # a bag looping twice: stamps jump 100 s back, then run forwards again
        for i in range(3):
            stamp = rclpy.time.Time(nanoseconds=now - 100 * 10**9 + i * 10**8).to_msg()
            harness.wait_outputs(harness.publish_pair(stamp=stamp), what=f"the output of loop {loop}, pair {i}")
    wait_counter(harness, "synchronizer resets", resets + 2)
    still_fusing(harness)                      # and forwards to the live clock again
    assert harness.proc.pid == pid and harness.proc.poll() is None
    assert "stamps went back in time" in harness.log()  # said in the log too, not only counted


# -- stream faults ---------------------------------------------------------------------------------------
def publish_for(h, seconds, visible=True, thermal=True, rate=4.0, thermal_offset=0.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if visible:
            h.visible_pub.publish(numpy_to_image(h.visible, "bgr8", Image, Header(stamp=h.stamp())))
        if thermal:
            h.thermal_pub.publish(numpy_to_image(h.thermal, "mono16", Image, Header(stamp=h.stamp(thermal_offset))))
        h.spinner.spin(1.0 / rate)


def publish_until(h, text, what, publish=None, timeout=STREAM_TIMEOUT + 8.0, **publishing):
    """Publish (publish(), or as publish_for does) until the last /diagnostics status says `text`, and
    return it: waited for, not read once after a fixed time (the 1 s diagnostics timer may run late)."""
    end = time.monotonic() + timeout
    while True:
        if publish is None:
            publish_for(h, 0.25, **publishing)
        else:
            publish()
            h.spinner.spin(0.25)
        status = h.last_diagnostic()
        if status is not None and text in status.message:
            return status
        assert time.monotonic() < end, f"timed out waiting for {what}; last: {status.message if status else None}"


def test_one_stream_stops_warns_then_ok_when_it_resumes(harness):
    status = publish_until(harness, "thermal/image silent", "the silent thermal", thermal=False)
    assert status.level == DiagnosticStatus.WARN and "thermal/image silent for more than 1 s" in status.message
    end = time.monotonic() + 6.0
    while harness.last_diagnostic().level != DiagnosticStatus.OK and time.monotonic() < end:
        publish_for(harness, 0.5)
    status = harness.last_diagnostic()
    assert status.level == DiagnosticStatus.OK and status.message == "fusing", status.message


def test_a_stream_of_unreadable_messages_is_an_error_naming_why_not_silence(harness):
    """Every visible message arrives but none can be read: /diagnostics says so with the reason (not
    'silent', which points at a topic or QoS problem), and is OK again once readable ones come."""
    status = publish_until(harness, "every message", "the unreadable visible stream",
                           publish=lambda: harness.publish_pair(visible_msg=raw_image("nv12", 160, 120, 160, 28800)))
    assert status.level == DiagnosticStatus.ERROR, status.message
    assert "visible/image: every message for more than 1 s skipped: unsupported encoding 'nv12'" in status.message
    end = time.monotonic() + 6.0
    while harness.last_diagnostic().level != DiagnosticStatus.OK and time.monotonic() < end:
        publish_for(harness, 0.5)
    assert harness.last_diagnostic().message == "fusing"


def test_stamps_that_never_meet_are_reported_with_their_offset(harness):
    """A thermal driver stamping 0.12 s late (beyond the slop of 0.05 s): both streams arrive, nothing
    pairs, and /diagnostics says by how much, so the fix (slop, or the driver) is obvious."""
    status = publish_until(harness, "no synchronized pair for", "pairs that never meet", thermal_offset=0.12)
    assert status.level == DiagnosticStatus.WARN, status.message
    values = {kv.key: kv.value for kv in status.values}
    assert 0.11 <= float(values["stamp offset s"]) <= 0.13, values["stamp offset s"]  # thermal later
    assert re.search(r"the closest stamps are 0\.1[123]\d s apart \(thermal later; slop 0\.05 s\)", status.message)
    still_fusing(harness)
    harness.wait_for(lambda: abs(float(harness.diagnostic_value("stamp offset s"))) < 0.01, 5.0,
                     "the stamp offset of pairs that meet")


def test_both_streams_stop_node_idles(harness):
    harness.wait_for(lambda: "no input on" in getattr(harness.last_diagnostic(), "message", ""),
                     STREAM_TIMEOUT + 8.0, "the idle warning")
    assert harness.last_diagnostic().level == DiagnosticStatus.WARN
    before, start = cpu_seconds(harness.proc.pid), time.monotonic()
    harness.spinner.spin(3.0)
    busy = (cpu_seconds(harness.proc.pid) - before) / (time.monotonic() - start)
    assert busy < 0.1, f"the idle node uses {busy:.0%} of a core"


def test_burst_keeps_the_latest_pair_and_memory_bounded(harness):
    rng = np.random.default_rng(3)
    visible = rng.integers(0, 255, (512, 640, 3), dtype=np.uint8)        # 1 MB
    thermal = rng.integers(20000, 40000, (512, 640), dtype=np.uint16)    # 0.66 MB
    for _ in range(2):  # warm up at this size: first-use allocations are not growth
        harness.wait_outputs(harness.publish_pair(visible=visible, thermal=thermal), what="a warm-up output")
    rss_before = rss_mb(harness.proc.pid)
    dropped_before = counter(harness, "dropped pairs")
    stamps = []
    for _ in range(200):  # ~330 MB of input, far faster than the node fuses
        stamps.append(harness.publish_pair(visible=visible, thermal=thermal))
        harness.spinner.spin(0.002)
    harness.wait_for(lambda: any(harness.outputs_for(s) for s in stamps[-3:]), 30.0,
                     "an output of one of the last 3 pairs of the burst")
    growth = rss_mb(harness.proc.pid) - rss_before
    fused = sum(bool(harness.outputs_for(s)) for s in stamps)
    # a frame between registrations takes a few ms at this size, so many are fused; some must be dropped
    assert fused < len(stamps), f"{fused} of {len(stamps)} burst pairs fused: no latest-wins dropping?"
    assert growth < 60, f"resident memory grew by {growth:.0f} MB over the burst"
    wait_counter(harness, "dropped pairs", dropped_before + 1)
    still_fusing(harness)


def test_an_exception_in_a_callback_is_logged_and_the_node_goes_on(harness):
    """With use_sim_time on, a /clock message of negative time (any process may publish /clock) raises in
    rclpy's own time source; rclpy would end the node with it."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock

    def use_sim_time(on: bool):
        request = SetParameters.Request(parameters=[Parameter("use_sim_time", value=on).to_parameter_msg()])
        assert harness.call(harness.set_parameters, request, "the answer to setting use_sim_time").results[0].successful

    clock = harness.spinner.node.create_publisher(Clock, "/clock", 10)
    use_sim_time(True)
    try:
        harness.wait_for(lambda: clock.get_subscription_count() > 0, 10.0, "the node's /clock subscription")
        clock.publish(Clock(clock=rclpy.time.Time(seconds=5).to_msg()))
        bad = Clock()
        bad.clock.sec = -1
        clock.publish(bad)
        wait_log(harness, r"a callback failed, the node goes on: ValueError: .*negative")
        assert harness.proc.poll() is None
    finally:
        use_sim_time(False)
        harness.spinner.node.destroy_publisher(clock)
    still_fusing(harness)
