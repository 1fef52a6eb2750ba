"""Image <-> numpy conversions: every supported encoding, row padding, byte order, broken messages."""
from types import SimpleNamespace

import numpy as np
import pytest

from cgrp_ros.core.errors import InputError
from cgrp_ros.ros.image_conversions import (ENCODINGS, ImageConversionError, encoding_for, image_to_numpy,
                                        numpy_to_image, to_bgr)


class FakeImage(SimpleNamespace):
    """Has the sensor_msgs/Image fields; stands in for the message class."""

    def __init__(self, **fields):
        super().__init__(header=None, height=0, width=0, encoding="", is_bigendian=False, step=0, data=b"")
        self.__dict__.update(fields)


def random_image(encoding, height=5, width=7, seed=0):
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == np.float32:
        return rng.standard_normal(shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_round_trip_every_encoding(encoding):
    image = random_image(encoding)
    msg = numpy_to_image(image, encoding, FakeImage)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step == image.strides[0] and len(msg.data) == msg.step * msg.height
    back = image_to_numpy(msg)
    assert back.dtype == image.dtype and back.shape == image.shape
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("encoding", ["mono8", "mono16", "bgr8", "rgba8", "32FC1", "32FC2"])
def test_row_padding_is_skipped_without_copy(encoding):
    image = random_image(encoding, 4, 6, seed=1)
    row = image.strides[0] if image.flags.c_contiguous else None
    padded_step = row + 13  # odd padding: the view must not assume aligned rows
    data = bytearray(padded_step * 4)
    for y in range(4):
        data[y * padded_step:y * padded_step + row] = image[y].tobytes()
    msg = FakeImage(height=4, width=6, encoding=encoding, step=padded_step, data=bytes(data))
    back = image_to_numpy(msg)
    np.testing.assert_array_equal(back, image)
    assert np.shares_memory(back, np.frombuffer(msg.data, np.uint8))  # a view, not a copy


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1", "32FC2"])
def test_big_endian_data(encoding):
    image = random_image(encoding, seed=2)
    big = image.astype(image.dtype.newbyteorder(">"))
    msg = FakeImage(height=5, width=7, encoding=encoding, is_bigendian=True, step=big.strides[0], data=big.tobytes())
    back = image_to_numpy(msg)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, image)


def test_little_endian_is_a_view_of_the_message():
    image = random_image("mono16")
    msg = numpy_to_image(image, "mono16", FakeImage)
    assert np.shares_memory(image_to_numpy(msg), np.frombuffer(msg.data, np.uint8))


def test_channel_order():
    rgb = random_image("rgb8")
    np.testing.assert_array_equal(to_bgr(rgb, "rgb8"), rgb[:, :, ::-1])
    rgba = random_image("rgba8")
    np.testing.assert_array_equal(to_bgr(rgba, "rgba8")[:, :, :3], rgba[:, :, 2::-1])
    bgr = random_image("bgr8")
    assert to_bgr(bgr, "bgr8") is bgr


@pytest.mark.parametrize("fields, kind, words", [
    (dict(encoding="yuv422", height=2, width=2, step=4, data=bytes(8)), "encoding", "yuv422"),
    (dict(encoding="mono8", height=0, width=4, step=4, data=b""), "size", "zero size"),
    (dict(encoding="bgr8", height=2, width=4, step=0, data=bytes(24)), "step", "step"),
    (dict(encoding="bgr8", height=2, width=4, step=11, data=bytes(24)), "step", "step >= 12"),
    (dict(encoding="mono16", height=3, width=4, step=8, data=bytes(23)), "data", "needs 24 bytes"),
])
def test_broken_messages_raise_input_error(fields, kind, words):
    with pytest.raises(ImageConversionError) as info:
        image_to_numpy(FakeImage(**fields))
    assert isinstance(info.value, InputError) and info.value.kind == kind and words in str(info.value)


def test_encoding_for_prefers_the_given_encoding():
    mono16 = np.zeros((2, 2), np.uint16)
    assert encoding_for(mono16, "16UC1") == "16UC1"
    assert encoding_for(mono16, "mono8") == "mono16"  # mono8 does not fit uint16
    assert encoding_for(np.zeros((2, 2, 3), np.uint8)) == "bgr8"
    assert encoding_for(np.zeros((2, 2, 2), np.float32)) == "32FC2"
    with pytest.raises(ImageConversionError):
        encoding_for(np.zeros((2, 2), np.int64))
    with pytest.raises(ImageConversionError):
        numpy_to_image(np.zeros((2, 2), np.uint16), "mono8", FakeImage)


def test_real_message_class():
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    image = random_image("bgr8", 48, 64)
    msg = numpy_to_image(image, "bgr8", Image, Header(frame_id="cam"))
    assert msg.header.frame_id == "cam" and msg.step == 64 * 3
    np.testing.assert_array_equal(image_to_numpy(msg), image)
