"""Image <-> numpy conversions: every supported encoding, row padding, byte order, broken messages."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from cgrp_ros.core.errors import InputError
from cgrp_ros.ros.image_conversions import (BAYER_TO_BGR, ENCODINGS, YUV422_TO_BGR, ImageConversionError,
                                            encoding_for, image_to_numpy, numpy_to_image, to_bgr)


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
    width = 8 if encoding in YUV422_TO_BGR else 7  # YUV 4:2:2 pairs its pixels
    image = random_image(encoding, width=width)
    msg = numpy_to_image(image, encoding, FakeImage)
    assert (msg.height, msg.width, msg.encoding) == (5, width, encoding)
    assert msg.step == image.strides[0] and len(msg.data) == msg.step * msg.height
    back = image_to_numpy(msg)
    assert back.dtype == image.dtype and back.shape == image.shape
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("padding", [16, 13])
@pytest.mark.parametrize("encoding", ["mono8", "mono16", "bgr8", "bgr16", "rgba8", "32FC1", "32FC2"])
def test_row_padding_is_skipped_without_copy_where_rows_stay_aligned(encoding, padding):
    image = random_image(encoding, 4, 6, seed=1)
    row = image.strides[0]
    padded_step = row + padding
    data = bytearray(padded_step * 4)
    for y in range(4):
        data[y * padded_step:y * padded_step + row] = image[y].tobytes()
    msg = FakeImage(height=4, width=6, encoding=encoding, step=padded_step, data=bytes(data))
    back = image_to_numpy(msg)
    np.testing.assert_array_equal(back, image)
    # a view where every row starts on an element; rows at odd byte offsets (legal, rare) are copied once,
    # since OpenCV refuses such strides ("Step must be a multiple of esz1", which failed a bgr16 pair)
    aligned = padded_step % image.dtype.itemsize == 0
    assert np.shares_memory(back, np.frombuffer(msg.data, np.uint8)) == aligned
    assert cv2.resize(to_bgr(back, encoding), (3, 2)).shape[:2] == (2, 3)


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
    rgb16 = random_image("rgb16")
    np.testing.assert_array_equal(to_bgr(rgb16, "rgb16"), rgb16[:, :, ::-1])
    rgba16 = random_image("rgba16")
    np.testing.assert_array_equal(to_bgr(rgba16, "rgba16")[:, :, :3], rgba16[:, :, 2::-1])


@pytest.mark.parametrize("fields, kind, words", [
    (dict(encoding="nv12", height=2, width=2, step=2, data=bytes(6)), "encoding", "nv12"),
    (dict(encoding="yuv422", height=2, width=3, step=6, data=bytes(12)), "size", "odd width (3)"),
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
    # an output (the registered thermal of a raw camera) is never labelled as a raw camera image
    assert encoding_for(np.zeros((2, 2), np.uint8), "bayer_rggb8") == "mono8"


def mosaic(bgr: np.ndarray, pattern: str) -> np.ndarray:
    """The Bayer mosaic a sensor with colour filter `pattern` ('rggb': R at (0, 0)) records of `bgr`."""
    channel = {"b": 0, "g": 1, "r": 2}
    out = np.empty(bgr.shape[:2], bgr.dtype)
    for index, colour in enumerate(pattern):
        y, x = divmod(index, 2)
        out[y::2, x::2] = bgr[y::2, x::2, channel[colour]]
    return out


@pytest.mark.parametrize("encoding", sorted(BAYER_TO_BGR))
def test_bayer_images_are_demosaiced_to_bgr(encoding, sample_dir):
    """A raw camera driver's Bayer mosaic comes out as the colours the scene had, for every filter layout."""
    pattern, bits = encoding[len("bayer_"):-2 if encoding.endswith("16") else -1], 16 if encoding.endswith("16") else 8
    scale = 257 if bits == 16 else 1
    flat = np.empty((8, 10, 3), np.uint16 if bits == 16 else np.uint8)
    flat[:] = np.array([30, 100, 200]) * scale                           # B, G, R
    msg = numpy_to_image(mosaic(flat, pattern), encoding, FakeImage)
    bgr = to_bgr(image_to_numpy(msg), encoding)
    assert bgr.dtype == flat.dtype and bgr.shape == flat.shape
    np.testing.assert_array_equal(bgr[2:-2, 2:-2], flat[2:-2, 2:-2])   # a flat colour exactly, away from the border

    scene = cv2.resize(cv2.imread(str(sorted((sample_dir / "visible").glob("*.jpg"))[0])), (160, 120),
                       interpolation=cv2.INTER_AREA).astype(flat.dtype) * scale
    back = to_bgr(image_to_numpy(numpy_to_image(mosaic(scene, pattern), encoding, FakeImage)), encoding)
    error = np.abs(back.astype(np.float64) - scene)[2:-2, 2:-2].mean(axis=(0, 1)) / scale
    assert (error < 6).all(), error                                     # grey levels per channel (3.3 on R and B; the wrong layout: 16)


@pytest.mark.parametrize("encoding", sorted(YUV422_TO_BGR))
def test_yuv422_images_are_converted_to_bgr(encoding, sample_dir):
    scene = cv2.resize(cv2.imread(str(sorted((sample_dir / "visible").glob("*.jpg"))[0])), (160, 120),
                       interpolation=cv2.INTER_AREA)
    uyvy = encoding in ("yuv422", "uyvy")
    yuv = cv2.cvtColor(scene, cv2.COLOR_BGR2YUV_UYVY if uyvy else cv2.COLOR_BGR2YUV_YUY2)
    msg = numpy_to_image(yuv, encoding, FakeImage)
    assert msg.step == 2 * 160
    bgr = to_bgr(image_to_numpy(msg), encoding)
    assert bgr.shape == scene.shape and bgr.dtype == np.uint8
    assert np.abs(bgr.astype(int) - scene).mean() < 4  # the chroma is shared by two pixels


def test_real_message_class():
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    image = random_image("bgr8", 48, 64)
    msg = numpy_to_image(image, "bgr8", Image, Header(frame_id="cam"))
    assert msg.header.frame_id == "cam" and msg.step == 64 * 3
    np.testing.assert_array_equal(image_to_numpy(msg), image)
