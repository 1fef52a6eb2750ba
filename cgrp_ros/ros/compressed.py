"""sensor_msgs/CompressedImage <-> numpy, as image_transport's `compressed` plugin writes them.

    image, encoding = decode_compressed(msg)     # JPEG, PNG or TIFF (8- or 16-bit; TIFF float), BGR order
    msg = encode_compressed(array, "bgr8", CompressedImage, header, quality=90)   # JPEG

`format` follows image_transport: "<original encoding>; <jpeg|png> compressed <encoding>"; a bare
"jpeg" / "png" / "tiff" is read too. The payload decides what the image is (OpenCV reads its header): a
JPEG is mono8 or bgr8, a PNG mono8, mono16, bgr8 or bgra8, a TIFF also 32FC1 or bgr16. A payload of another kind (OpenCV
would decode a WebP too, whose size is not checked first), that cannot be decoded, or whose header
declares more than MAX_DECODED_PIXELS (a few bytes can declare gigabytes), or a JPEG too short for the
size it declares (`jpeg_least_bytes`), raises
ImageConversionError (kind 'payload'), like a broken raw message. `compressedDepth` (a different
header in front of the PNG) is not supported.
"""
from __future__ import annotations

import array as _array
from dataclasses import dataclass

import cv2
import numpy as np

from ..core.image import MAX_PIXELS
from ..core.errors import shortened
from .image_conversions import ImageConversionError

# decoded (dtype, channels) -> encoding
DECODED_ENCODINGS = {(np.uint8, 1): "mono8", (np.uint8, 3): "bgr8", (np.uint8, 4): "bgra8", (np.uint16, 1): "mono16",
                     (np.uint16, 3): "bgr16", (np.uint16, 4): "bgra16", (np.float32, 1): "32FC1"}  # (16-bit colour,
                     # float: TIFF)
# an original encoding named in `format` that the decoded image may keep (same dtype and channels)
SAME_AS = {"8UC1": "mono8", "16UC1": "mono16", "mono8": "mono8", "mono16": "mono16", "bgr8": "bgr8", "bgra8": "bgra8",
           "bgr16": "bgr16", "bgra16": "bgra16", "32FC1": "32FC1"}
# the largest image a payload may declare: above an 8K camera (33 MP), far below what OpenCV would allocate
MAX_DECODED_PIXELS = MAX_PIXELS  # the core refuses larger images anyway
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the size); 0xC4, 0xC8 and 0xCC are other segments
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_ARITHMETIC_MARKERS = frozenset((0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
MAX_JPEG_SEGMENTS = 1000  # read before the frame header; a camera writes a handful (EXIF, ICC, XMP)
MAX_JPEG_STRAY_BYTES = 65536  # skipped between segments, as libjpeg does ("extraneous bytes before marker")
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")  # little- and big-endian (compressed_image_transport's 'tiff')
TIFF_WIDTH, TIFF_LENGTH, TIFF_BITS, TIFF_SAMPLES = 256, 257, 258, 277  # IFD tags: size, bits per sample, samples
MAX_TIFF_TAGS = 1000
MAX_TIFF_PIXEL_BITS = 64  # bgra16; a float32 mono is 32: more (float64 RGBA: 256) is no input, refused undecoded


@dataclass
class DecodedImage:
    """A decoded CompressedImage: what the synchronizer and the worker need of a message."""
    header: object
    image: np.ndarray
    encoding: str


class PendingDecode:
    """A CompressedImage whose header passed `check_compressed`, decoded when its `image` or `encoding` is
    first read (cgrp_fusion's worker, for a pair it takes and someone listens to). The pairing queues hold payloads,
    not pixels: a 286 kB PNG can declare 392 MB of them (an audit pinned 2.3 GB with 12 such messages), and
    a frame that never pairs is never decoded. ImageConversionError from `image` / `encoding`: a bad message."""

    def __init__(self, msg):
        self.header, self._msg, self._decoded = msg.header, msg, None

    def _decode(self) -> tuple:
        if self._decoded is None:
            self._decoded = decode_compressed(self._msg)
            self._msg = None  # the payload is not needed again
        return self._decoded

    @property
    def image(self) -> np.ndarray:
        return self._decode()[0]

    @property
    def encoding(self) -> str:
        return self._decode()[1]


def _payload(data) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview, _array.array)):
        return np.frombuffer(data, np.uint8)
    return np.asarray(data, np.uint8)


def payload_kind(payload: np.ndarray) -> str | None:
    """'PNG', 'JPEG' or 'TIFF' by the payload's signature; None for anything else."""
    head = bytes(payload[:8])
    if head == PNG_SIGNATURE:
        return "PNG"
    if head[:4] in TIFF_SIGNATURES:
        return "TIFF"
    return "JPEG" if head[:2] == b"\xff\xd8" else None


def declared_size(payload: np.ndarray):
    """((height, width), least bytes) a PNG, JPEG or TIFF header declares, or None where the header does
    not say (another kind of payload, cut short, a JPEG frame header after MAX_JPEG_SEGMENTS segments, or
    a TIFF of more than MAX_TIFF_PIXEL_BITS per pixel). `least bytes`: the fewest a complete payload of
    that size can have (jpeg_least_bytes; 0 for PNG and TIFF)."""
    payload = np.ascontiguousarray(payload)
    data = memoryview(payload)  # no copy: a JPEG's segments are skipped, not read
    kind = payload_kind(payload)
    if kind == "PNG":
        return ((int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")), 0) \
            if bytes(data[12:16]) == b"IHDR" and len(data) >= 24 else None
    if kind == "TIFF":
        size = _tiff_size(data)
        return None if size is None else (size, 0)
    if kind is None:
        return None
    frame = _jpeg_frame(payload, data)
    return None if frame is None else (frame[1:], jpeg_least_bytes(*frame))


def _jpeg_frame(payload: np.ndarray, data: memoryview):
    """(start-of-frame marker, height, width) of a JPEG, or None (see declared_size)."""
    at = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if at + 1 < len(data) and (data[at] != 0xFF or data[at + 1] == 0x00):
            # stray bytes: on to the next marker, an FF not followed by 00 (a stuffed byte), as libjpeg's next_marker
            window = payload[at:at + MAX_JPEG_STRAY_BYTES]
            markers = np.flatnonzero((window[:-1] == 0xFF) & (window[1:] != 0x00))
            if not markers.size:
                return None
            at += int(markers[0])
        if at + 4 > len(data):
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a segment
            at += 2
            continue
        if marker in JPEG_FRAME_MARKERS and at + 9 <= len(data):
            return marker, int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
        if marker == 0xDA:  # the scan starts: no frame header before it
            return None
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return None


def _tiff_size(data: memoryview):
    """(height, width) from a TIFF's first image file directory, or None."""
    order = "little" if bytes(data[:2]) == b"II" else "big"
    number = lambda at, size: int.from_bytes(data[at:at + size], order)  # noqa: E731
    at = number(4, 4)
    if at + 2 > len(data):
        return None
    tags = {TIFF_BITS: 1, TIFF_SAMPLES: 1}  # (the TIFF defaults)
    for entry in range(min(number(at, 2), MAX_TIFF_TAGS)):
        field = at + 2 + 12 * entry
        if field + 12 > len(data):
            return None
        tag, kind, count = number(field, 2), number(field + 2, 2), number(field + 4, 4)
        if tag in tags or tag in (TIFF_WIDTH, TIFF_LENGTH) and kind in (3, 4):  # SHORT or LONG
            value = field + 8  # held in the entry, or (more than 4 bytes) where it points: the first of them
            if count * (2 if kind == 3 else 4) > 4:
                value = number(field + 8, 4)
            if value + 4 > len(data):
                return None
            tags[tag] = number(value, 2 if kind == 3 else 4)
    if TIFF_WIDTH not in tags or TIFF_LENGTH not in tags or tags[TIFF_BITS] * tags[TIFF_SAMPLES] > MAX_TIFF_PIXEL_BITS:
        return None
    return tags[TIFF_LENGTH], tags[TIFF_WIDTH]


def jpeg_least_bytes(marker: int, height: int, width: int) -> int:
    """The fewest bytes a complete Huffman-coded JPEG (start-of-frame `marker`) of height x width can have:
    one bit for each 8x8 block of its full-resolution component (its DC difference, a Huffman code of at
    least one bit, in a sequential and a progressive frame alike); 0 for an arithmetic-coded one (which
    can spend less). A JPEG declaring millions of pixels in a few hundred bytes would otherwise be
    decoded, grey-filled, to a full-size image held in the pairing queue."""
    if marker in JPEG_ARITHMETIC_MARKERS:
        return 0
    return -(-height // 8) * -(-width // 8) // 8


def check_compressed(msg) -> tuple:
    """What can be checked of a CompressedImage without decoding it: the format, the payload's kind and
    the size its header declares (at most MAX_DECODED_PIXELS), a payload long enough for that size.
    -> (payload, (H, W), kind, format); ImageConversionError: a bad message."""
    fmt = (msg.format or "").strip()
    shown = shortened(fmt)
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError("format", f"format '{shown}' (compressedDepth) is not supported: "
                                             "publish the thermal as 'compressed' (PNG)")
    payload = _payload(msg.data)
    if payload.size == 0:
        raise ImageConversionError("payload", "empty compressed payload")
    kind = shortened((fmt.split(";")[-1].split() or ["compressed"])[0])
    declared = declared_size(payload)
    if declared is None:  # decoding it would be the only way to learn its size
        found = payload_kind(payload)
        what = ("neither JPEG, PNG nor TIFF" if found is None else
                f"a TIFF whose first directory gives no image size, or more than {MAX_TIFF_PIXEL_BITS} bits a pixel"
                if found == "TIFF" else f"a {found} whose header gives no image size (cut short or corrupt)")
        raise ImageConversionError("payload", f"the {kind} payload of {payload.size} bytes is {what} "
                                              f"(format '{shown}'): not decoded")
    size, least = declared
    if size[0] * size[1] > MAX_DECODED_PIXELS:
        raise ImageConversionError("payload", f"the {kind} payload declares a {size[1]}x{size[0]} image, more "
                                              f"than {MAX_DECODED_PIXELS // 1_000_000} MP: not decoded")
    if payload.size < least:  # libjpeg would fill the rest with grey, saying so only on stderr
        raise ImageConversionError("payload", f"the {kind} payload of {payload.size} bytes is too short for the "
                                              f"{size[1]}x{size[0]} image its header declares (at least {least} "
                                              "bytes): cut short or corrupt, not decoded")
    return payload, size, kind, fmt


def decode_compressed(msg) -> tuple:
    """CompressedImage -> (H x W or H x W x C array, encoding)."""
    payload, size, kind, fmt = check_compressed(msg)
    shown = shortened(fmt)
    try:
        image = cv2.imdecode(payload, cv2.IMREAD_UNCHANGED)
    except cv2.error:  # e.g. a header OpenCV refuses (its own pixel limit)
        image = None
    if image is None or image.size == 0:
        raise ImageConversionError("payload", f"cannot decode the {kind} payload of {payload.size} bytes "
                                              f"(format '{shown}')")
    if image.shape[:2] != tuple(size):  # a second frame header, or one the decoder read otherwise
        raise ImageConversionError("payload", f"the {kind} payload declares a {size[1]}x{size[0]} image and "
                                              f"decodes to {image.shape[1]}x{image.shape[0]}: not used")
    channels = 1 if image.ndim == 2 else image.shape[2]
    encoding = DECODED_ENCODINGS.get((image.dtype.type, channels))
    if encoding is None:
        raise ImageConversionError("encoding", f"decoded a {image.dtype} image with {channels} channels "
                                               f"(format '{shown}'): not supported")
    original = fmt.split(";")[0].strip() if ";" in fmt else ""
    if SAME_AS.get(original) == encoding:
        encoding = original  # e.g. 16UC1 stays 16UC1, as raw messages do
    return image, encoding


def decode_message(msg) -> DecodedImage:
    image, encoding = decode_compressed(msg)
    return DecodedImage(msg.header, image, encoding)


def encode_compressed(image: np.ndarray, encoding: str, message_cls, header=None, quality: int = 90):
    """An 8-bit mono or BGR array -> a JPEG CompressedImage ("<encoding>; jpeg compressed <encoding>")."""
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageConversionError("encoding", f"cannot JPEG-encode a {image.dtype} image of shape {image.shape}")
    msg = message_cls()
    if header is not None:
        msg.header = header
    msg.format = f"{encoding}; jpeg compressed {encoding}"
    data = _array.array("B")
    data.frombytes(buffer.tobytes())
    msg.data = data
    return msg
