"""fuse_pair (cgrp_ros.ros.fusion_outputs): a pair of messages -> the node's output images, without a node.
The messages are plain objects with the Image fields / decoded CompressedImages, as a bag reader gives."""
from types import SimpleNamespace

import numpy as np
import pytest

from cgrp_ros.ros.compressed import DecodedImage
from cgrp_ros.ros.fusion_outputs import CORE_OUTPUT, fuse_pair
from cgrp_ros.ros.image_conversions import numpy_to_image


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
                         "deformation": "32FC2", "deformation_vis": "bgr8", "pseudo_thermal": "mono8"}
    assert all(image.shape[:2] == (120, 160) for image, _ in out.images.values())


def test_only_the_wanted_outputs_and_content_warnings(small_pipeline, pair):
    visible, _ = pair
    constant = np.full((120, 160), 30000, np.uint16)
    out = fuse_pair(small_pipeline, DecodedImage(header(1), visible, "bgr8"), DecodedImage(header(1), constant, "mono16"),
                    {"deformation_vis"})
    assert set(out.images) == {"deformation_vis"}
    assert [w[0] for w in out.warnings] == ["constant_images"]
