"""fuse_pair (cgrp_ros.ros.fusion_outputs): a pair of messages -> the node's output images, without a node.
The messages are plain objects with the Image fields / decoded CompressedImages, as a bag reader gives."""
from types import SimpleNamespace

import numpy as np
import pytest

from cgrp_ros.ros.compressed import DecodedImage
from cgrp_ros.ros.fusion_outputs import CORE_OUTPUT, fuse_pair, prepare_input
from cgrp_ros.ros.image_conversions import ImageConversionError, numpy_to_image


def header(sec):
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=500_000_000), frame_id="visible")


@pytest.fixture(scope="module")
def small_pipeline():
    """Every pair registered alone, as cgrp_fusion with self-calibration off."""
    from cgrp_ros.core.pipeline import Pipeline, PipelineConfig
    from cgrp_ros.core.stream import StreamPipeline

    return StreamPipeline(Pipeline(PipelineConfig(backend="torch", device="cpu", working_size=(64, 96))), registration_rate=0)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    scene = np.sin(xx / 9.0) * np.cos(yy / 7.0)
    visible = np.clip(np.stack([scene * 80 + 120] * 3, axis=2) + rng.normal(0, 3, (120, 160, 3)), 0, 255).astype(np.uint8)
    thermal = (30000 + 2000 * scene).astype(np.uint16)
    return visible, thermal


def test_every_output_from_a_raw_visible_and_a_decoded_16bit_thermal(small_pipeline, pair):
    visible, thermal = pair
    visible_msg = numpy_to_image(visible, "rgb8", SimpleNamespace, header(3))  # any object with the fields
    thermal_msg = DecodedImage(header(3), thermal, "16UC1")
    out = fuse_pair(small_pipeline, visible_msg, thermal_msg, set(CORE_OUTPUT), deformation_vis_max=5.0)
    assert out.stamp == 3.5 and out.warnings == [] and 0.0 <= out.confidence <= 1.0
    encodings = {name: encoding for name, (_, encoding) in out.images.items()}
    assert encodings == {"fused": "bgr8", "fused/compressed": "bgr8", "registered_thermal": "16UC1",
                         "deformation": "32FC2", "deformation_vis": "bgr8", "alignment_vis": "bgr8",
                         "pseudo_thermal": "mono8"}
    assert all(image.shape[:2] == (120, 160) for image, _ in out.images.values())


def test_an_input_in_the_deformation_outputs_encoding_is_an_unsupported_encoding(pair):
    """32FC2 (the ~/deformation flow) is an encoding the node writes, not a camera image it takes: refused
    as a bad message naming the encodings it takes, not fused into a 'bad pair' further on."""
    flow = np.zeros((120, 160, 2), np.float32)
    with pytest.raises(ImageConversionError) as err:
        prepare_input(numpy_to_image(flow, "32FC2", SimpleNamespace, header(1)), compressed=False)
    assert err.value.kind == "encoding" and "unsupported encoding '32FC2'" in str(err.value)
    assert "32FC2" not in str(err.value).split("supported:")[1] and "32FC1" in str(err.value)
    assert prepare_input(numpy_to_image(pair[1], "mono16", SimpleNamespace, header(1)), compressed=False)
    long = numpy_to_image(pair[1], "mono16", SimpleNamespace, header(1))
    long.encoding = "x" * 200_000  # logged every 5 s and put into /diagnostics: cut, not 200 kB each time
    with pytest.raises(ImageConversionError) as err:
        prepare_input(long, compressed=False)
    assert len(str(err.value)) < 400 and "(200000 characters)" in str(err.value)


def test_only_the_wanted_outputs_and_content_warnings(small_pipeline, pair):
    visible, _ = pair
    constant = np.full((120, 160), 30000, np.uint16)
    out = fuse_pair(small_pipeline, DecodedImage(header(1), visible, "bgr8"), DecodedImage(header(1), constant, "mono16"),
                    {"deformation_vis"})
    assert set(out.images) == {"deformation_vis"}
    assert [w[0] for w in out.warnings] == ["constant_images"]


def test_a_nan_visible_and_cameras_of_another_aspect_are_warned_of_as_the_node_logs_them(small_pipeline, pair):
    """README's fault table: a 32FC1 visible with NaN values, and a 5:4 thermal beside a 4:3 visible without a
    calibration, are fused, each with its warning (the node logs each at most every 5 s by its key)."""
    import cv2

    visible, thermal = pair
    grey = cv2.cvtColor(visible, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
    grey[:3, :4] = np.nan
    wide = cv2.resize(thermal, (160, 128))
    out = fuse_pair(small_pipeline, DecodedImage(header(2), grey, "32FC1"), DecodedImage(header(2), wide, "mono16"),
                    {"fused"})
    assert set(out.images) == {"fused"}
    (counter, key, text), (counter2, key2, text2) = out.warnings
    assert (counter, key) == (None, "non-finite visible") and "visible image at 2.500 has 12 NaN/inf values" in text
    assert (counter2, key2) == (None, "stretched") and text2.startswith(
        "pair at 2.500: the visible camera's 160x120 and the thermal's 160x128 differ in aspect ratio")


def white(picture):
    """Pixels where both cameras' edges are strong in an edge picture (green + magenta = white)."""
    return int((picture.min(axis=2) > 128).sum())


@pytest.fixture(scope="module")
def moved_thermal(cpu_pipeline, sample_pairs):
    """A sample pair whose thermal is 9 px right and 6 px up of the visible, fused once (every pair
    registered alone) into the outputs the tests below look at:
    (visible, moved thermal, the messages, the stream, the PairOutputs with deformation_vis_max 20 px)."""
    import cv2

    from cgrp_ros.core.stream import StreamPipeline

    _, visible, thermal = sample_pairs[0]
    shifted = cv2.warpAffine(thermal, np.float32([[1, 0, 9], [0, 1, -6]]), thermal.shape[::-1],
                             borderMode=cv2.BORDER_REFLECT)
    messages = DecodedImage(header(1), visible, "bgr8"), DecodedImage(header(1), shifted, "mono8")
    stream = StreamPipeline(cpu_pipeline, registration_rate=0)
    out = fuse_pair(stream, *messages, {"alignment_vis", "deformation", "deformation_vis"}, deformation_vis_max=20.0)
    return visible, shifted, messages, stream, out


def test_alignment_vis_shows_the_edges_of_both_cameras_lined_up(moved_thermal):
    """~/alignment_vis: a thermal 9 px right and 6 px up of the visible comes out with its edges on the
    visible's (white), where the thermal as received had them beside (green and magenta apart)."""
    from cgrp_ros.evaluation.alignment import visible_luminance
    from cgrp_ros.evaluation.report import edge_overlay

    visible, shifted, _, _, out = moved_thermal
    picture, encoding = out.images["alignment_vis"]
    assert encoding == "bgr8" and picture.shape == visible.shape and picture.dtype == np.uint8
    as_received = edge_overlay(visible_luminance(visible), shifted)
    assert white(picture) > 1.5 * white(as_received), (white(picture), white(as_received))


def test_deformation_vis_colours_the_flow_of_a_moved_thermal(moved_thermal):
    """~/deformation_vis of a thermal 9 px right and 6 px up of the visible: its hue is the flow's
    direction and its saturation the flow's magnitude on the `deformation_vis_max` scale (white would be
    no motion). The ROS test checks the topic carries this picture; here is what it shows. Measured
    2026-12-06: median flow (9.06, -6.39) px, hue 162 (expected 163), saturation 142 (expected 138)."""
    import cv2

    from cgrp_ros.core.warp import flow_to_color

    _, _, messages, stream, out = moved_thermal
    flow = out.images["deformation"][0]
    assert np.allclose(np.median(flow.reshape(-1, 2), axis=0), (9, -6), atol=1.5)  # the registration moved it
    picture = out.images["deformation_vis"][0]
    assert np.array_equal(picture, flow_to_color(flow, 20.0))
    hsv = cv2.cvtColor(picture, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(float)
    direction = np.degrees(np.arctan2(-6, 9)) % 360 / 2  # OpenCV hue: degrees / 2
    assert abs(np.median(hsv[:, 0]) - direction) < 5
    assert abs(np.median(hsv[:, 1]) - np.hypot(9, 6) / 20 * 255) < 25  # 10.8 px of 20: about half saturated
    own_scale = fuse_pair(stream, *messages, {"deformation_vis"}).images["deformation_vis"][0]  # 0: the image's maximum
    assert cv2.cvtColor(own_scale, cv2.COLOR_BGR2HSV)[:, :, 1].max() == 255


def test_alignment_vis_draws_no_thermal_edge_where_the_thermal_does_not_see(sample_pairs):
    """With a calibration whose thermal sees the middle of the visible view, the frame of its footprint
    is not drawn as a thermal edge: no magenta outside the footprint."""
    import cv2

    from cgrp_ros.evaluation.rig import synthetic_rig
    from cgrp_ros.core.pipeline import Pipeline, PipelineConfig
    from cgrp_ros.core.stream import StreamPipeline

    _, visible, thermal = sample_pairs[0]
    rig_visible, rig_thermal, truth = synthetic_rig(visible, thermal, fov=1.6)  # thermal: the central 1/1.6
    pipeline = Pipeline(PipelineConfig(backend="torch", device="cpu", homography=truth))
    stream = StreamPipeline(pipeline, registration_rate=0)
    out = fuse_pair(stream, DecodedImage(header(1), rig_visible, "bgr8"), DecodedImage(header(1), rig_thermal, "mono8"),
                    {"alignment_vis"})
    picture = out.images["alignment_vis"][0]
    height, width = rig_thermal.shape
    corners = cv2.perspectiveTransform(np.float32([[[0, 0], [width, 0], [width, height], [0, height]]]), truth)[0]
    footprint = np.zeros(picture.shape[:2], np.uint8)
    cv2.fillConvexPoly(footprint, np.round(corners).astype(np.int32), 1)
    kernel = np.ones((5, 5), np.uint8)
    border = cv2.dilate(footprint, kernel).astype(bool) & ~cv2.erode(footprint, kernel).astype(bool)  # +-2 px
    magenta = picture[:, :, 2]
    assert magenta[~footprint.astype(bool)].max() == 0  # nothing of the thermal outside its view
    assert magenta[border].max() == 0                    # nor the frame of its footprint
    assert (magenta[footprint.astype(bool)] > 128).mean() > 0.01  # its own edges inside it
