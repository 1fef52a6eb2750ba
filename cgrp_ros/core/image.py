"""Image normalisation and geometry helpers shared by the pipeline, training and evaluation.

Conventions: images are numpy arrays, H x W (mono) or H x W x 3 (BGR, OpenCV order);
network tensors are float32 in [0, 1], N x C x H x W.
"""
from __future__ import annotations

import numbers

import cv2
import numpy as np

from .errors import InputError

MIN_SIDE = 2  # smaller images carry no usable structure; they are rejected, not upsampled
MAX_SIDE = 32766  # OpenCV's remap and resize address pixels with 16-bit signed coordinates
MAX_PIXELS = 50_000_000  # above this the full-resolution outputs need several GB: refused, not run out of memory


def check_image(image, name: str, channels=(1, 3, 4)) -> np.ndarray:
    """Validate an input image and return it as an ndarray; raises InputError naming `name`."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in channels):
        raise InputError(f"{name}: expected H x W or H x W x {channels}, got shape {image.shape}")
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise InputError(f"{name}: image of {image.shape[1]}x{image.shape[0]} px is too small")
    if max(image.shape[:2]) > MAX_SIDE:
        raise InputError(f"{name}: image of {image.shape[1]}x{image.shape[0]} px is too large (a side above "
                         f"{MAX_SIDE} px, which OpenCV's resampling cannot address)")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise InputError(f"{name}: image of {image.shape[1]}x{image.shape[0]} px is too large (above "
                         f"{MAX_PIXELS // 1_000_000} MP, whose outputs at its resolution would need several GB)")
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise InputError(f"{name}: unsupported dtype {image.dtype}")
    return image


# two sizes whose width and height ratios differ by more than this (relative) differ in aspect: a crop, or
# another camera (1920x1080 -> 854x480, a driver's binning mode, is 0.1 %)
ASPECT_TOLERANCE = 0.01


def same_aspect(shape_a, shape_b) -> bool:
    """Whether two image sizes ((H, W, ...) each) have the same aspect ratio within ASPECT_TOLERANCE."""
    (ha, wa), (hb, wb) = shape_a[:2], shape_b[:2]
    return abs((wa / ha) / (wb / hb) - 1.0) <= ASPECT_TOLERANCE


FLOAT_VISIBLE_LIMIT = 1.5  # a float visible brighter than this (99th percentile) is on another scale, not [0, 1]


def visible_to_bgr01(visible: np.ndarray) -> np.ndarray:
    """Visible image (H x W, H x W x 3 BGR or H x W x 4 BGRA; uint8/uint16/float) -> H x W x 3 float32 in [0, 1]."""
    visible = check_image(visible, "visible")
    if visible.dtype in (np.uint8, np.uint16):  # (one pass: the cast is exact, the division float32)
        out = np.divide(visible, np.float32(np.iinfo(visible.dtype).max), dtype=np.float32)
    else:
        out = np.nan_to_num(visible.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        brightest = float(np.percentile(out[::4, ::4], 99))
        if brightest > FLOAT_VISIBLE_LIMIT:  # clipped to [0, 1] it would be a white image
            raise InputError(f"visible: a float image is expected in [0, 1], this one reaches {brightest:.4g} "
                             "(99th percentile): divide it by its full scale (255 for 8-bit values)")
        out = np.clip(out, 0.0, 1.0)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif out.shape[2] == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


def check_percentiles(percentiles) -> None:
    """InputError unless (low, high) satisfy 0 <= low < high <= 100: normalize_thermal's gain control."""
    low, high = percentiles
    if not 0.0 <= low < high <= 100.0:
        raise InputError(f"thermal percentiles must satisfy 0 <= low < high <= 100, got {tuple(percentiles)}")


def thermal_for_networks(thermal: np.ndarray, percentiles=(1.0, 99.0), agc_8bit: bool = False,
                         black_hot: bool = False) -> np.ndarray:
    """The thermal as the networks see it, H x W float32 in [0, 1] with hot bright: normalize_thermal,
    inverted for a black-hot camera. One place for the Pipeline and the rig calibration, so a rig is
    calibrated on the thermal it is then fused with."""
    th01 = normalize_thermal(thermal, percentiles, agc_8bit)
    return 1.0 - th01 if black_hot else th01


def normalize_thermal(thermal: np.ndarray, percentiles=(1.0, 99.0), agc_8bit: bool = False) -> np.ndarray:
    """Thermal image (H x W, or H x W x 3|4 whose luminance is taken; uint8, uint16 or float) -> H x W
    float32 in [0, 1].

    8-bit thermal is already display-scaled by the camera, so it is divided by 255 unless
    `agc_8bit`. 16-bit radiometric and float thermal get a robust automatic gain control: the
    `percentiles` (low, high) of the finite values map to 0 and 1, so a few hot or dead pixels do
    not flatten the image. NaN/inf are treated as missing and set to 0; a thermal with no finite
    pixel at all raises InputError.
    """
    thermal = check_image(thermal, "thermal", channels=(1, 3, 4))
    if thermal.ndim == 3:  # a colour-mapped thermal: its luminance carries the signal
        thermal = luminance(thermal)
    check_percentiles(percentiles)
    lo_p, hi_p = percentiles
    if thermal.dtype == np.uint8 and not agc_8bit:
        return thermal.astype(np.float32) / 255.0
    values = thermal.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():  # nothing measured: fusing it would only pass noise on
        raise InputError(f"thermal image {values.shape[1]}x{values.shape[0]} has no finite pixel")
    sample = values[finite]
    if sample.size > 65536:  # percentiles of a strided sample: same answer, a fraction of the time
        sample = sample[:: sample.size // 65536]
    lo, hi = np.percentile(sample, [lo_p, hi_p])
    if hi - lo < 1e-6:  # constant image: keep it mid-grey rather than dividing by zero
        out = np.full(values.shape, 0.5, np.float32)
    else:
        out = (values - lo) / (hi - lo)
    out[~finite] = 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def luminance(bgr: np.ndarray) -> np.ndarray:
    """H x W luminance, 0.299 R + 0.587 G + 0.114 B (the Y of YCrCb), of an H x W x 3 BGR image
    (x 4: the alpha is ignored) in its own scale: uint8, uint16, or float32 [0, 1]. An H x W image is
    grey already and comes back as it is. The one luminance of the package: what the registration,
    the calibration, the fusion and the evaluation's baselines see of the visible image."""
    if bgr.ndim == 2:
        return bgr
    if bgr.dtype.kind == "f" and bgr.dtype != np.float32:
        bgr = bgr.astype(np.float32)
    # GRAY, not YCrCb's first channel: the same weights (OpenCV rounds the two 1 grey level / 1 ulp apart)
    # without computing and copying out two chroma channels: 2.6x faster on a full-HD frame
    return cv2.cvtColor(np.ascontiguousarray(bgr[:, :, :3]), cv2.COLOR_BGR2GRAY)


def to_uint8(image01: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Float image in [0, 1] -> uint8 (rounded). `overwrite`: scale `image01` itself, a float
    temporary the caller no longer needs (no copy: a full-resolution frame is several ms less)."""
    if image01.dtype.kind != "f":
        image01, overwrite = image01.astype(np.float32), True
    scaled = np.clip(image01, 0.0, 1.0, out=image01 if overwrite else None)
    scaled *= 255.0
    scaled += 0.5
    return scaled.astype(np.uint8)


def working_shape(height: int, width: int, max_size, multiple: int, min_side: int = 16):
    """Aspect-preserving working resolution for an image of `height` x `width`.

    Returns ((h, w), (ph, pw)): the resized size that fits inside `max_size` (H, W), no side below
    `min_side`, and that size padded up to a multiple of `multiple` (what the networks need:
    networks.SIZE_MULTIPLE).
    """
    scale = min(max_size[0] / height, max_size[1] / width)
    h = max(min_side, int(round(height * scale)))
    w = max(min_side, int(round(width * scale)))
    ph = -(-h // multiple) * multiple
    pw = -(-w // multiple) * multiple
    return (h, w), (ph, pw)


def pad_to(image: np.ndarray, shape) -> np.ndarray:
    """Pad an H x W[ x C] image at the bottom/right to `shape` (H, W) by edge reflection."""
    dh, dw = shape[0] - image.shape[0], shape[1] - image.shape[1]
    if dh == 0 and dw == 0:
        return image
    mode = cv2.BORDER_REFLECT_101 if min(image.shape[:2]) > 1 else cv2.BORDER_REPLICATE
    return cv2.copyMakeBorder(image, 0, dh, 0, dw, mode)


def resize(image: np.ndarray, shape, interpolation=None) -> np.ndarray:
    """Resize to `shape` (H, W); area averaging when both sides shrink, else bilinear."""
    if image.shape[:2] == tuple(shape):
        return image
    if interpolation is None:
        shrinking = shape[0] < image.shape[0] and shape[1] < image.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (shape[1], shape[0]), interpolation=interpolation)


def resize_homography(from_size, to_size) -> np.ndarray:
    """3x3 pixel map of a resize from an image of `from_size` (H, W) to one of `to_size` (H, W), both
    seeing the same view, pixel centres at integers (OpenCV's convention): x' = sx x + (sx - 1) / 2."""
    (h0, w0), (h1, w1) = from_size, to_size
    sx, sy = w1 / w0, h1 / h0
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


HOMOGRAPHY_LIMIT = 1e6  # largest |entry| of a usable pixel homography scaled to h[2, 2] = 1 (pixels, scales)


def homography_problem(matrix) -> str | None:
    """Why `matrix` is no usable thermal -> visible pixel homography, or None where it is: a 3x3 of finite
    numbers, invertible, with h[2, 2] != 0 and, scaled to h[2, 2] = 1, entries within +-HOMOGRAPHY_LIMIT and
    perspective terms within +-1 per pixel (larger ones overflow the float32 sampling maps: a NaN flow)."""
    if isinstance(matrix, (list, tuple)) and not (
            len(matrix) == 3 and all(isinstance(row, (list, tuple, np.ndarray)) and len(row) == 3 for row in matrix)
            and all(isinstance(v, (numbers.Real, str)) for row in matrix for v in row)):  # ('1e-5': YAML's string)
        # checked before numpy sees it: YAML aliases nest a 500-byte file into 10^8 elements that
        # np.asarray would expand (a calibration_file set on a running node stalled it and took 1 GB)
        return "is not a 3x3 matrix of numbers"
    try:
        h = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        return "is not a 3x3 matrix of numbers"
    if h.shape != (3, 3):
        return f"must be a 3x3 matrix, got shape {h.shape}"
    if not np.all(np.isfinite(h)):
        return "must be finite (it holds NaN or inf)"
    if h[2, 2] == 0:
        return "maps the thermal's first pixel to infinity (h[2][2] is 0)"
    h = h / h[2, 2]
    if np.abs(h[:2]).max() > HOMOGRAPHY_LIMIT or np.abs(h[2, :2]).max() > 1.0:
        return (f"has entries too large for a camera rig (scaled to h[2][2] = 1: |entries| up to "
                f"{HOMOGRAPHY_LIMIT:g}, perspective terms up to 1)")
    if abs(np.linalg.det(h)) < 1e-12:
        return "must be invertible"
    return None


MIN_FOOTPRINT = 0.01  # share of the visible image a calibrated thermal must cover to be of use


def footprint_problem(homography, visible_shape, thermal_shape) -> str | None:
    """Why the thermal image (thermal_shape, H x W) mapped into the visible one (visible_shape) by
    `homography` (thermal px -> visible px) gives no usable view, or None: part of it beyond the horizon
    (a perspective term that large folds the image over), or under MIN_FOOTPRINT of the visible image
    covered (a scale or shift far off, sizes that do not belong to these cameras)."""
    (hv, wv), (ht, wt) = visible_shape[:2], thermal_shape[:2]
    corners = np.array([[0, wt - 1, wt - 1, 0], [0, 0, ht - 1, ht - 1], [1, 1, 1, 1]], np.float64)
    mapped = np.asarray(homography, np.float64) @ corners
    if not (np.all(mapped[2] > 0) or np.all(mapped[2] < 0)):
        return "maps part of the thermal image beyond the horizon (it folds the image over)"
    points = np.ascontiguousarray((mapped[:2] / mapped[2]).T, np.float32)
    frame = np.array([[0, 0], [wv, 0], [wv, hv], [0, hv]], np.float32)
    hull = cv2.convexHull(np.clip(points, -4.0 * max(hv, wv), 5.0 * max(hv, wv)))
    covered = cv2.intersectConvexConvex(hull, frame)[0] / float(hv * wv)
    if covered < MIN_FOOTPRINT:
        return (f"places the thermal image almost wholly outside the visible one ({100 * covered:.2g} % of it "
                "covered)")
    return None


SWAPPED_QUESTION = "are the visible and the thermal camera (folders, topics) swapped?"


def swapped_cameras_hint(visible: np.ndarray, thermal: np.ndarray) -> str | None:
    """A warning where the inputs look swapped: a single-channel 16-bit "visible" image (as thermal cores
    deliver) beside a colour "thermal" one whose channels differ (a palette thermal has a grey visible
    partner only on the rarest rigs). None otherwise."""
    if visible.ndim != 2 or visible.dtype != np.uint16 or not in_colour(thermal):
        return None
    return f"the visible image is 16-bit single channel and the thermal image is in colour: {SWAPPED_QUESTION}"


def in_colour(image: np.ndarray, spread: float = 2.0) -> bool:
    """Whether an image has three channels that differ (not grey stored as BGR), judged on every 8th pixel:
    the mean of |B - G| + |G - R| at least `spread` grey levels of 8 bits."""
    if image.ndim != 3 or image.shape[2] < 3:
        return False
    sample = image[::8, ::8, :3].astype(np.float64)
    found = np.abs(sample[..., 0] - sample[..., 1]).mean() + np.abs(sample[..., 1] - sample[..., 2]).mean()
    return found >= spread * (257.0 if image.dtype == np.uint16 else 1.0 / 255.0 if image.dtype.kind == "f" else 1.0)


PALETTE_SPREAD = 8.0  # in_colour's spread for a false-colour thermal: above a grey camera's channel noise


def same_picture(visible: np.ndarray, thermal: np.ndarray) -> bool:
    """Whether the two images are one and the same (a topic or folder given for both cameras)."""
    if visible.shape != thermal.shape or visible.dtype != thermal.dtype:
        return False
    return np.array_equal(visible[::16, ::16], thermal[::16, ::16]) and np.array_equal(visible, thermal)


def content_warnings(visible: np.ndarray, thermal: np.ndarray, where: str = "") -> list:
    """[(kind, text)] for a pair that is fused but carries little or no information, or looks swapped;
    kind: 'non_finite_thermal', 'non_finite_visible', 'swapped', 'same_picture', 'colour_thermal',
    'constant_visible' or 'constant_thermal'.
    `where` (e.g. 'at 12.300', a stamp) follows "image" / "pair" in the texts.

    NaN/inf thermal pixels are treated as missing (coldest) by the gain control; a thermal with no
    finite pixel at all is refused by the Pipeline (InputError), so it is not warned of here. A constant
    image (zero variance) is fused as it is: a lens cap or a camera's flat-field correction produces
    it, and the other camera still counts.
    """
    at = f" {where}" if where else ""
    warnings = []
    if thermal.dtype.kind == "f":
        finite = np.isfinite(thermal)
        if finite.any() and not finite.all():
            warnings.append(("non_finite_thermal", f"thermal image{at} has {finite.size - finite.sum()} NaN/inf "
                             "pixels: fused with them treated as missing"))
    if visible.dtype.kind == "f":
        bad = visible.size - int(np.isfinite(visible).sum())
        if bad:  # visible_to_bgr01: NaN and -inf black, +inf white
            warnings.append(("non_finite_visible", f"visible image{at} has {bad} NaN/inf values: fused with NaN "
                             "as black"))
    swapped = swapped_cameras_hint(visible, thermal)
    if swapped:
        warnings.append(("swapped", f"pair{at}: {swapped}" if at else swapped))
    elif same_picture(visible, thermal):
        same = "the visible and the thermal image are the same picture: is one camera's folder or topic given for both?"
        warnings.append(("same_picture", f"pair{at}: {same}" if at else same))
    elif in_colour(thermal, PALETTE_SPREAD):
        warnings.append(("colour_thermal", f"thermal image{at} is in colour (a false-colour palette?): fused from "
                         "its luminance, which does not order temperatures; set the camera to a grey (white-hot) "
                         "palette or record its raw values"))
    for name, image in (("visible", visible), ("thermal", thermal)):
        if image.size and image.min() == image.max():
            warnings.append((f"constant_{name}", f"{name} image{at} is constant (value {image.flat[0]}): fused, but "
                             "it carries no information"))
    return warnings


def scene_thumbnail(visible: np.ndarray) -> np.ndarray:
    """12 x 16 float32 in [0, 1]: a visible image shrunk, its colour channels averaged (not weighted as
    luminance: only changes of the scene matter); cheap enough for every frame."""
    visible = check_image(visible, "visible")
    small = cv2.resize(visible if visible.dtype != np.float64 else visible.astype(np.float32), (16, 12),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    if small.ndim == 3:
        small = small[:, :, :3].mean(axis=2)
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(visible.dtype, 1.0)
    return np.clip(np.nan_to_num(small / scale), 0.0, 1.0)
