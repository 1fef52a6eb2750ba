"""sensor_msgs/Image <-> numpy without cv_bridge (ROS-free: works on any object with the Image fields).

    array = image_to_numpy(msg)                  # a view of msg.data where possible
    msg = numpy_to_image(array, "bgr8", Image, header)

Arrays keep the message's layout (an rgb8 image comes back as H x W x 3 RGB, a Bayer mosaic as
H x W, YUV 4:2:2 as H x W x 2); use ``to_bgr`` for what the core expects (BGR, or mono as it is):
it also demosaics Bayer images and converts YUV 4:2:2, as cv_bridge would, so raw camera drivers
need no image_proc in front of the node. Single-channel images are H x W, others H x W x C.
Anything that cannot be read raises ImageConversionError (an InputError) naming the problem.
"""
from __future__ import annotations

import array as _array
import sys

import cv2
import numpy as np

from ..core.errors import InputError, shortened

# encoding -> (element dtype, channels)
ENCODINGS = {
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "bgr8": (np.uint8, 3),
    "rgb8": (np.uint8, 3),
    "bgra8": (np.uint8, 4),
    "rgba8": (np.uint8, 4),
    "bgr16": (np.uint16, 3),
    "rgb16": (np.uint16, 3),
    "bgra16": (np.uint16, 4),
    "rgba16": (np.uint16, 4),
    "32FC1": (np.float32, 1),
    "32FC2": (np.float32, 2),
}
# raw camera encodings (sensor_msgs/image_encodings.hpp) -> the OpenCV conversion to BGR. Bayer: the
# colour filter's first row and column named as ROS names them (bayer_rggb8: R at (0, 0)); YUV 4:2:2:
# two bytes a pixel, "yuv422" is UYVY, "yuv422_yuy2" is YUYV
BAYER_TO_BGR = {f"bayer_{pattern}{bits}": getattr(cv2, f"COLOR_Bayer{pattern.upper()}2BGR")
                for pattern in ("rggb", "bggr", "gbrg", "grbg") for bits in (8, 16)}
YUV422_TO_BGR = {"yuv422": cv2.COLOR_YUV2BGR_UYVY, "uyvy": cv2.COLOR_YUV2BGR_UYVY,
                 "yuv422_yuy2": cv2.COLOR_YUV2BGR_YUY2, "yuyv": cv2.COLOR_YUV2BGR_YUY2}
ENCODINGS.update({name: (np.uint16 if name.endswith("16") else np.uint8, 1) for name in BAYER_TO_BGR})
ENCODINGS.update({name: (np.uint8, 2) for name in YUV422_TO_BGR})
RAW_CAMERA = frozenset(BAYER_TO_BGR) | frozenset(YUV422_TO_BGR)
# what a camera input may be: every encoding but the two-channel float of the node's ~/deformation output
INPUT_ENCODINGS = tuple(name for name in ENCODINGS if name != "32FC2")
HOST_IS_BIGENDIAN = sys.byteorder == "big"


class ImageConversionError(InputError):
    """An Image message cannot be converted. ``kind`` says why: 'encoding', 'size', 'step' or 'data'."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def unsupported_encoding(encoding: str, supported) -> ImageConversionError:
    """The error for a message of an encoding not in `supported` (quoted `shortened`)."""
    return ImageConversionError("encoding", f"unsupported encoding '{shortened(encoding)}' (supported: "
                                            f"{', '.join(supported)})")


def image_to_numpy(msg) -> np.ndarray:
    """Image message -> H x W (one channel) or H x W x C array in the message's channel order.

    The result is a view of ``msg.data`` (row padding from ``step`` is skipped by strides, not
    copied); only data in the non-native byte order is copied, once, to swap it.
    """
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise unsupported_encoding(encoding, ENCODINGS)
    dtype, channels = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError("size", f"{encoding} image has zero size ({width}x{height})")
    if encoding in YUV422_TO_BGR and width % 2:
        raise ImageConversionError("size", f"{encoding} image has an odd width ({width}): two pixels share "
                                           "their colour in YUV 4:2:2")
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    pixel_bytes = dtype.itemsize * channels
    if step < width * pixel_bytes:
        raise ImageConversionError("step", f"{encoding} image of width {width} needs step >= "
                                           f"{width * pixel_bytes} bytes, got {step}")
    data = msg.data
    if len(data) < step * height:
        raise ImageConversionError("data", f"{encoding} image {width}x{height} with step {step} needs "
                                           f"{step * height} bytes of data, got {len(data)}")
    shape, strides = (height, width), (step, pixel_bytes)
    if channels > 1:
        shape, strides = shape + (channels,), strides + (dtype.itemsize,)
    # a strided view straight onto the message buffer: no copy, padding bytes skipped
    image = np.ndarray(shape, dtype=dtype, buffer=memoryview(data).cast("B"), strides=strides)
    if not dtype.isnative:
        image = image.astype(dtype.newbyteorder("="))
    elif step % dtype.itemsize:  # rows not aligned to the element size: legal, but OpenCV refuses such strides
        image = image.copy()
    return image


def to_bgr(image: np.ndarray, encoding: str) -> np.ndarray:
    """What the core takes (BGR / BGRA, or a single channel as it is) for an array read from an image of
    ``encoding``: RGB reordered (a view), Bayer demosaiced and YUV 4:2:2 converted to BGR (new arrays,
    8- or 16-bit as the mosaic)."""
    if encoding in BAYER_TO_BGR:
        return cv2.cvtColor(np.ascontiguousarray(image), BAYER_TO_BGR[encoding])
    if encoding in YUV422_TO_BGR:
        return cv2.cvtColor(np.ascontiguousarray(image), YUV422_TO_BGR[encoding])
    if encoding in ("rgb8", "rgb16"):
        return image[:, :, ::-1]  # a view
    if encoding in ("rgba8", "rgba16"):
        return image[:, :, [2, 1, 0, 3]]
    return image


def encoding_for(image: np.ndarray, preferred: str | None = None) -> str:
    """The encoding that describes ``image``: ``preferred`` when it fits (never a Bayer or YUV encoding: an
    output is not a raw camera image), else mono8/mono16/32FC1/bgr8/32FC2."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    if preferred in ENCODINGS and preferred not in RAW_CAMERA and ENCODINGS[preferred] == (image.dtype.type, channels):
        return preferred
    for encoding in ("mono8", "mono16", "32FC1", "bgr8", "bgra8", "32FC2"):
        if ENCODINGS[encoding] == (image.dtype.type, channels):
            return encoding
    raise ImageConversionError("encoding", f"no image encoding for a {image.dtype} array of shape {image.shape}")


def numpy_to_image(image: np.ndarray, encoding: str, image_cls, header=None):
    """H x W (x C) array -> a new ``image_cls`` (sensor_msgs.msg.Image) message; one copy of the pixels.

    ``encoding`` must match the array's dtype and channel count; ``header`` is copied by reference.
    """
    if encoding not in ENCODINGS:
        raise ImageConversionError("encoding", f"unsupported encoding '{encoding}'")
    dtype, channels = ENCODINGS[encoding]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    found = 1 if image.ndim == 2 else image.shape[2]
    if image.ndim not in (2, 3) or found != channels or image.dtype != dtype:
        raise ImageConversionError("encoding", f"a {image.dtype} array of shape {image.shape} "
                                               f"is not a {encoding} image")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageConversionError("size", f"{encoding} image has zero size {image.shape[:2]}")
    image = np.ascontiguousarray(image)
    msg = image_cls()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = HOST_IS_BIGENDIAN
    msg.step = int(image.strides[0])
    data = _array.array("B")
    data.frombytes(image.reshape(-1).view(np.uint8))  # array.array is what the generated setter keeps as is
    msg.data = data
    return msg
