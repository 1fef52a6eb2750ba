"""CompressedImage decoding and encoding (cgrp_ros.ros.compressed), without a node."""
import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from sensor_msgs.msg import CompressedImage  # noqa: E402

from cgrp_ros.ros.compressed import decode_compressed, encode_compressed  # noqa: E402
from cgrp_ros.ros.image_conversions import ImageConversionError  # noqa: E402


def message(image, ext, fmt):
    return CompressedImage(format=fmt, data=cv2.imencode(ext, image)[1].tobytes())


def test_16bit_png_is_lossless_and_keeps_its_encoding():
    thermal = (np.arange(120 * 160).reshape(120, 160) * 3).astype(np.uint16)
    image, encoding = decode_compressed(message(thermal, ".png", "16UC1; png compressed 16UC1"))
    assert encoding == "16UC1" and image.dtype == np.uint16 and np.array_equal(image, thermal)
    assert decode_compressed(message(thermal, ".png", "png"))[1] == "mono16"


def test_jpeg_colour_and_mono():
    rng = np.random.default_rng(0)
    colour = cv2.GaussianBlur(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (0, 0), 2)
    image, encoding = decode_compressed(message(colour, ".jpg", "rgb8; jpeg compressed bgr8"))
    assert encoding == "bgr8" and image.shape == (60, 80, 3)  # decoded in BGR order whatever the camera sent
    blue = np.zeros((60, 80, 3), np.uint8)
    blue[..., 0] = 255
    image, _ = decode_compressed(message(blue, ".jpg", "rgb8; jpeg compressed bgr8"))
    # blue stays in channel 0, not swapped for the rgb8 named (measured 2026-12-06: every pixel (254, 0, 0))
    assert image[..., 0].min() > 240 and image[..., 1:].max() < 15
    assert decode_compressed(message(colour[:, :, 0].copy(), ".jpg", "mono8; jpeg compressed mono8"))[1] == "mono8"


@pytest.mark.parametrize("payload, fmt, kind", [
    (b"", "jpeg", "payload"),
    (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "bgr8; jpeg compressed bgr8", "payload"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "mono16; png compressed mono16", "payload"),
    (bytes(100), "16UC1; compressedDepth png", "format"),
])
def test_unreadable_payloads_raise_a_conversion_error(payload, fmt, kind):
    with pytest.raises(ImageConversionError) as err:
        decode_compressed(CompressedImage(format=fmt, data=payload))
    assert err.value.kind == kind


def declaring(ext, height, width, padding=0):
    """A small PNG or JPEG whose header declares height x width (the payload stays a few hundred bytes);
    `padding` bytes of a JPEG comment before the frame header (a JPEG segment holds at most 65533)."""
    data = bytearray(cv2.imencode(ext, np.zeros((8, 8), np.uint8))[1].tobytes())
    if ext == ".png":
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        return bytes(data)
    frame = data.find(b"\xff\xc0")
    data[frame + 5:frame + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    comments = b"".join(b"\xff\xfe" + (65535).to_bytes(2, "big") + bytes(65533) for _ in range(padding))
    return bytes(data[:2]) + comments + bytes(data[2:])


@pytest.mark.parametrize("ext, padding", [(".png", 0), (".jpg", 0), (".jpg", 2)])
def test_a_payload_declaring_a_huge_image_is_refused_not_decoded(ext, padding):
    # 40000 x 40000: a few hundred bytes that would decode to 1.6-4.8 GB (OpenCV raised cv2.error on it, which
    # crashed the node); also with the frame header 128 KB in (the first 64 KB were read: OpenCV decoded a
    # 12000 x 12000 JPEG declared there, 144 MP held per queued message)
    with pytest.raises(ImageConversionError) as err:
        decode_compressed(CompressedImage(format="png", data=declaring(ext, 40000, 40000, padding)))
    assert err.value.kind == "payload"
    assert "declares a 40000x40000 image" in str(err.value)
    image, _ = decode_compressed(CompressedImage(format="png", data=declaring(ext, 8, 8)))
    assert image.shape == (8, 8)


def test_a_jpeg_too_short_for_the_size_it_declares_is_refused_and_flat_jpegs_are_read():
    # an 8x8 JPEG whose header says 7000x7000: libjpeg filled the rest with grey (a warning on stderr only)
    # and 600 bytes became a 147 MB image held in the pairing queue, 10 per stream
    with pytest.raises(ImageConversionError) as err:
        decode_compressed(CompressedImage(format="bgr8; jpeg compressed bgr8", data=declaring(".jpg", 7000, 7000)))
    assert err.value.kind == "payload" and "too short for the 7000x7000 image its header declares" in str(err.value)
    # the least a real encoder spends: a flat image, optimised Huffman tables, progressive or not
    flat = np.full((3072, 4096), 128, np.uint8)
    for options in ([cv2.IMWRITE_JPEG_OPTIMIZE, 1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_OPTIMIZE, 1]):
        data = cv2.imencode(".jpg", flat, options)[1].tobytes()
        image, _ = decode_compressed(CompressedImage(format="jpeg", data=data))
        assert image.shape == flat.shape


@pytest.mark.parametrize("ext", [".webp", ".bmp"])
def test_a_payload_that_is_neither_jpeg_png_nor_tiff_is_refused(ext):
    # OpenCV decodes these too, but their size is not known before: a 5 KB WebP decoded to 12000 x 12000 x 3
    data = cv2.imencode(ext, np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageConversionError) as err:
        decode_compressed(CompressedImage(format="bgr8; jpeg compressed bgr8", data=data))
    assert err.value.kind == "payload" and "neither JPEG, PNG nor TIFF" in str(err.value)


def tiff_declaring(image, height, width):
    """A TIFF of `image` whose first directory declares height x width (the pixels stay those of `image`)."""
    data = bytearray(cv2.imencode(".tiff", image)[1].tobytes())
    order = "little" if data[:2] == b"II" else "big"
    at = int.from_bytes(data[4:8], order)
    for entry in range(int.from_bytes(data[at:at + 2], order)):
        field = at + 2 + 12 * entry
        tag, kind = int.from_bytes(data[field:field + 2], order), int.from_bytes(data[field + 2:field + 4], order)
        if tag in (256, 257):
            value = width if tag == 256 else height
            data[field + 8:field + 8 + (2 if kind == 3 else 4)] = value.to_bytes(2 if kind == 3 else 4, order)
    return bytes(data)


def test_tiff_as_compressed_image_transport_publishes_it_is_read_with_its_size_checked_first():
    thermal = (np.arange(60 * 80).reshape(60, 80) * 7).astype(np.uint16)
    image, encoding = decode_compressed(CompressedImage(format="mono16; tiff compressed mono16",
                                                        data=cv2.imencode(".tiff", thermal)[1].tobytes()))
    assert encoding == "mono16" and np.array_equal(image, thermal)
    with pytest.raises(ImageConversionError, match="declares a 40000x30000 image"):
        decode_compressed(CompressedImage(format="tiff", data=tiff_declaring(thermal, 30000, 40000)))


def test_a_32bit_float_and_a_16bit_colour_tiff_are_read_and_a_float64_rgba_one_is_refused_undecoded():
    # compressed_image_transport's TIFF is mostly for 32FC1 (a radiometric thermal); float64 x 4 would allocate
    # 8x what a 16-bit mono PNG of the same size does before being refused as no input encoding
    kelvin = (290 + np.arange(60 * 80, dtype=np.float32).reshape(60, 80) / 100).astype(np.float32)
    image, encoding = decode_compressed(CompressedImage(format="32FC1; tiff compressed 32FC1",
                                                        data=cv2.imencode(".tiff", kelvin)[1].tobytes()))
    assert encoding == "32FC1" and np.array_equal(image, kelvin)
    colour16 = np.full((60, 80, 3), 40000, np.uint16)
    assert decode_compressed(CompressedImage(format="tiff", data=cv2.imencode(".tiff", colour16)[1].tobytes()))[1] \
        == "bgr16"
    rgba64 = np.zeros((60, 80, 4), np.float64)
    with pytest.raises(ImageConversionError, match="a TIFF whose first directory gives no image size, or more than 64"):
        decode_compressed(CompressedImage(format="tiff", data=cv2.imencode(".tiff", rgba64)[1].tobytes()))


def test_a_jpeg_with_stray_bytes_between_segments_is_read_as_libjpeg_reads_it():
    data = cv2.imencode(".jpg", np.full((8, 8), 90, np.uint8))[1].tobytes()
    frame = data.find(b"\xff\xc0")
    for stray in (b"\x00\x00", b"\x12\xff\x00\x34"):  # the second with a stuffed FF 00 among them
        image, _ = decode_compressed(CompressedImage(format="jpeg", data=data[:frame] + stray + data[frame:]))
        assert image.shape == (8, 8)


def test_encode_is_a_jpeg_of_the_same_size():
    fused = np.full((50, 70, 3), 120, np.uint8)
    msg = encode_compressed(fused, "bgr8", CompressedImage, quality=75)
    assert msg.format == "bgr8; jpeg compressed bgr8"
    assert decode_compressed(msg)[0].shape == (50, 70, 3)


def test_the_node_queues_a_compressed_image_undecoded_and_decodes_it_once_paired():
    """A 7000x7000 16-bit PNG of zeros is a few hundred kB that decodes to ~294 MB: decoded at arrival,
    twelve unpaired ones pinned 2.3 GB in the pairing queue (an audit). prepare_input(decode_later=True)
    checks the header and keeps the payload; the pixels appear when first read (the node: once paired)."""
    import tracemalloc

    from cgrp_ros.ros.fusion_outputs import as_array, prepare_input

    thermal = np.zeros((2000, 2000), np.uint16)
    thermal[::97, ::89] = 40000
    msg = message(thermal, ".png", "16UC1; png compressed 16UC1")
    tracemalloc.start()
    try:
        queued = [prepare_input(msg, True, decode_later=True) for _ in range(12)]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < thermal.nbytes  # twelve queued, less than one decoded image held
    assert np.array_equal(as_array(queued[0]), thermal) and queued[0].encoding == "16UC1"
    corrupt = bytearray(msg.data)
    corrupt[60:] = bytes(len(corrupt) - 60)  # a sound header, a body zlib refuses
    pending = prepare_input(CompressedImage(format="png", data=bytes(corrupt)), True, decode_later=True)
    with pytest.raises(ImageConversionError, match="cannot decode the png payload"):
        as_array(pending)


def test_a_long_format_string_is_quoted_cut():
    """A 200 kB `format` was quoted whole in the log and in /diagnostics, every second."""
    with pytest.raises(ImageConversionError) as err:
        decode_compressed(CompressedImage(format="x" * 200_000, data=bytes(64)))
    assert len(str(err.value)) < 300 and "(200000 characters)" in str(err.value)
