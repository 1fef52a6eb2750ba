"""Compressed transport (issue 11): cgrp_fusion with image_transport:=compressed takes JPEG (bgr8) and
PNG (mono16) from <topic>/compressed, skips a corrupt payload like a broken raw message (throttled
error, counter) and offers ~/fused/compressed (JPEG) while someone subscribes."""
import re

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import CompressedImage  # noqa: E402

from cgrp_ros.ros.image_conversions import image_to_numpy  # noqa: E402
from ros_helpers import RELIABLE, STARTUP_TIMEOUT, Harness  # noqa: E402
from test_compressed import declaring  # noqa: E402


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    rclpy.init()
    h = Harness(tmp_path_factory.mktemp("compressed") / "cgrp_fusion.log", "-p", "jpeg_quality:=80",
                transport="compressed")
    h.compressed = []
    h.spinner.node.create_subscription(CompressedImage, "cgrp_fusion/fused/compressed", h.compressed.append, RELIABLE)
    h.wait_for(lambda: h.spinner.node.count_publishers("cgrp_fusion/fused/compressed"), STARTUP_TIMEOUT,
               "the ~/fused/compressed publisher")
    yield h
    h.close()


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_jpeg_visible_and_16bit_png_thermal_give_every_output(harness):
    stamp, out = harness.wait_first_output("every output", thermal_offset=0.01)
    assert out["fused"].encoding == "bgr8" and (out["fused"].height, out["fused"].width) == (120, 160)
    registered = image_to_numpy(out["registered_thermal"])
    assert out["registered_thermal"].encoding == "mono16" and registered.dtype == np.uint16
    assert registered.max() > 255, "the 16-bit PNG lost its range"
    assert image_to_numpy(out["deformation"]).shape == (120, 160, 2)

    harness.wait_for(lambda: any(stamp_of(m) == stamp for m in harness.compressed), 10.0, "~/fused/compressed")
    jpeg = next(m for m in harness.compressed if stamp_of(m) == stamp)
    assert jpeg.format == "bgr8; jpeg compressed bgr8"
    decoded = cv2.imdecode(np.frombuffer(jpeg.data, np.uint8), cv2.IMREAD_UNCHANGED)
    fused = image_to_numpy(out["fused"])
    assert decoded.shape == fused.shape
    assert np.abs(decoded.astype(int) - fused.astype(int)).mean() < 8  # JPEG at quality 80


def test_corrupt_jpeg_is_skipped_counted_and_the_next_pair_fused(harness):
    def counter():
        return int(harness.diagnostic_value("bad messages") or 0)

    before = counter()
    rng = np.random.default_rng(0)
    corrupt = CompressedImage(format="bgr8; jpeg compressed bgr8",
                              data=b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    bad = harness.publish_pair(visible_msg=corrupt)
    harness.wait_for(lambda: re.search(r"skipping visible image: the jpeg payload of 3004 bytes is a JPEG whose header gives no image size",
                                       harness.log()), 10.0, "the error line for the corrupt JPEG")
    good = harness.publish_pair()
    harness.wait_outputs(good, what="the output of the pair after the corrupt one")
    harness.wait_for(lambda: counter() >= before + 1, 5.0, "'bad messages' counted in /diagnostics")
    assert harness.outputs_for(bad) == {}
    for _ in range(3):  # the same fault again: counted every time, logged once per 5 s
        harness.publish_pair(visible_msg=corrupt)
        harness.spinner.spin(0.05)
    harness.wait_for(lambda: counter() >= before + 4, 5.0, "every corrupt payload counted")
    assert len(re.findall(r"skipping visible image: the jpeg payload", harness.log())) == 1
    # a PNG of a few hundred bytes declaring 40000 x 40000 pixels (OpenCV raised on it, which killed the node)
    bomb = CompressedImage(format="mono16; png compressed mono16", data=declaring(".png", 40000, 40000))
    harness.publish_pair(thermal_msg=bomb)
    harness.wait_for(lambda: "declares a 40000x40000 image" in harness.log(), 10.0, "the error line for the PNG")
    good = harness.publish_pair()
    harness.wait_outputs(good, what="the output of the pair after the PNG declaring 1.6 G pixels")


def test_mono_visible_and_8bit_thermal_keep_their_families(harness):
    stamp = harness.publish_pair(visible=harness.visible[:, :, 1].copy(), visible_encoding="mono8",
                                 thermal=(harness.thermal >> 8).astype(np.uint8), thermal_encoding="mono8")
    out = harness.wait_outputs(stamp)
    assert out["fused"].encoding == "mono8" and out["registered_thermal"].encoding == "mono8"
