"""Lens intrinsics and undistortion (ROS-free): each camera's image onto its own ideal pinhole grid.

    camera = Intrinsics.from_matrix(K, D, "plumb_bob", size=(480, 640))
    camera = load_camera_yaml("ost.yaml")         # or camera_calibration's / camera_info_manager's file
    rectified = undistort(image, camera)          # same size, same K, no lens distortion

The rectified image keeps the camera's own camera matrix K (no new camera matrix, no alpha): the
field of view, focal length and principal point stay, only the distortion goes. A barrel-distorted
lens (k1 < 0, fisheye) loses a thin rim of its widest view; a pincushion lens gets zero borders.
The thermal -> visible prior of the Pipeline (a resize, or a rig homography) therefore still
applies after undistortion.

Models (ROS sensor_msgs/CameraInfo names, OpenCV coefficient order):
    plumb_bob            k1 k2 p1 p2 [k3]                     (cv2.initUndistortRectifyMap)
    rational_polynomial  k1 k2 p1 p2 k3 k4 k5 k6             (cv2.initUndistortRectifyMap)
    equidistant          k1 k2 k3 k4                          (cv2.fisheye)
Pixel coordinates: pixel centres at integers, (x, y) = (column, row), as OpenCV.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InputError, shortened

# model -> accepted numbers of distortion coefficients (0: no distortion)
COEFFICIENTS = {"plumb_bob": (0, 4, 5), "rational_polynomial": (0, 8), "equidistant": (0, 4)}
MAP_CACHE_SIZE = 8  # undistortion maps kept (two cameras, a few resolutions)
MIN_SHARE_INSIDE = 0.5  # of the undistorted image that must come from the raw one (a pincushion lens: black corners)
_POINT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)  # iterative inversion


@dataclass(frozen=True)
class Intrinsics:
    """One camera's calibration for images of `size` = (height, width) px.

    K: the 3x3 camera matrix, row-major 9-tuple (fx 0 cx, 0 fy cy, 0 0 1), px (no skew). D: the distortion
    coefficients of `model` (see the module docstring). Hashable: the undistortion maps are cached by it.
    InputError when a value is unusable (non-finite, fx or fy <= 0, a coefficient count the model has not).
    """
    K: tuple
    D: tuple
    model: str
    size: tuple

    def __post_init__(self):
        k = np.asarray(self.K, dtype=np.float64)
        if k.shape != (9,) or not np.isfinite(k).all():
            raise InputError(f"camera matrix K must be 9 finite numbers, got {list(self.K)}")
        if not (k[0] > 0 and k[4] > 0) or not np.allclose(k[[1, 3, 6, 7, 8]], [0, 0, 0, 0, 1]):
            raise InputError(f"camera matrix K must be [fx 0 cx, 0 fy cy, 0 0 1] with fx, fy > 0 "
                             f"(an all-zero K means an uncalibrated camera), got {[float(v) for v in k]}")
        if self.model not in COEFFICIENTS:
            raise InputError(f"unsupported distortion model '{shortened(self.model)}': expected one of "
                             f"{', '.join(COEFFICIENTS)}")
        if len(self.D) not in COEFFICIENTS[self.model]:
            raise InputError(f"{self.model} takes {' or '.join(map(str, COEFFICIENTS[self.model][1:]))} "
                             f"distortion coefficients, got {len(self.D)}")
        if not np.isfinite(np.asarray(self.D, float)).all():
            raise InputError(f"distortion coefficients D must be finite, got {[float(v) for v in self.D]}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise InputError(f"image size must be (height, width) >= 1, got {self.size}")
        if self.distorted:
            inside = self._share_inside()
            if inside < MIN_SHARE_INSIDE:  # the undistorted image would be black where this leaves it
                raise InputError(f"{self.model} distortion {[float(v) for v in self.D]} maps {1 - inside:.0%} of "
                                 f"the undistorted image outside the raw one: not a lens this camera has")

    def _share_inside(self) -> float:
        """The share of a 9 x 9 grid over the undistorted image that the lens model maps into the raw image."""
        h, w = self.size
        grid = np.stack(np.meshgrid(np.linspace(0, w - 1, 9), np.linspace(0, h - 1, 9)), axis=2).reshape(-1, 2)
        with np.errstate(all="ignore"):
            raw = distort_points(grid, self)
        inside = np.isfinite(raw).all(axis=1) & (raw[:, 0] >= -0.5) & (raw[:, 0] <= w - 0.5) \
            & (raw[:, 1] >= -0.5) & (raw[:, 1] <= h - 0.5)
        return float(inside.mean())

    @classmethod
    def from_matrix(cls, K, D, model: str = "plumb_bob", size=(0, 0)) -> "Intrinsics":
        """From a 3x3 (or 9-element) K and a sequence D; `size` = (height, width) px."""
        return cls(tuple(float(v) for v in np.asarray(K, dtype=np.float64).ravel()),
                   tuple(float(v) for v in np.asarray(D, dtype=np.float64).ravel()),
                   model, tuple(int(v) for v in size))

    @property
    def matrix(self) -> np.ndarray:
        """K as a 3x3 float64 array."""
        return np.asarray(self.K, dtype=np.float64).reshape(3, 3)

    @property
    def distorted(self) -> bool:
        """True when undistortion changes the image (some coefficient is non-zero)."""
        return any(self.D)

    def rectified(self) -> "Intrinsics":
        """The intrinsics of `undistort`'s output: the same K and size, no distortion (plumb_bob, D = 0)."""
        return Intrinsics(self.K, (0.0,) * 5, "plumb_bob", self.size)


def load_camera_yaml(path) -> Intrinsics:
    """The Intrinsics of a camera calibration file as ROS' camera_calibration and camera_info_manager
    write it (image_width, image_height, camera_matrix, distortion_model, distortion_coefficients).
    InputError naming the file when it cannot be read or lacks a field."""
    import yaml

    try:
        data = yaml.safe_load(open(path).read())
        return Intrinsics.from_matrix(data["camera_matrix"]["data"], data["distortion_coefficients"]["data"],
                                      data.get("distortion_model", "plumb_bob"),
                                      (data["image_height"], data["image_width"]))
    except InputError as exc:
        raise InputError(f"camera file {path}: {exc}") from None
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        what = (f"no {exc} field" if isinstance(exc, KeyError) else "its fields are not of that form"
                if isinstance(exc, TypeError) else (getattr(exc, "strerror", None) or str(exc)))
        raise InputError(f"camera file {path}: not a camera calibration YAML (image_width, image_height, "
                         f"camera_matrix, distortion_coefficients): {what}") from None


@functools.lru_cache(maxsize=MAP_CACHE_SIZE)
def undistortion_maps(camera: Intrinsics):
    """(map1, map2): cv2.remap's fixed-point maps from the rectified grid (size, K) into the raw image."""
    h, w = camera.size
    K, D = camera.matrix, np.asarray(camera.D, dtype=np.float64)
    if camera.model == "equidistant":
        return cv2.fisheye.initUndistortRectifyMap(K, D, np.eye(3), K, (w, h), cv2.CV_16SC2)
    return cv2.initUndistortRectifyMap(K, D, np.eye(3), K, (w, h), cv2.CV_16SC2)


def undistort(image: np.ndarray, camera: Intrinsics, name: str = "") -> np.ndarray:
    """`image` (H x W [x C], uint8 / uint16 / float32 / float64) resampled onto its camera's ideal
    pinhole grid with the same K and size (bilinear, zero outside the raw image). Returned unchanged
    when the camera has no distortion. InputError when the image is not of `camera.size` (naming the
    camera `name`, e.g. "visible")."""
    if image.shape[:2] != tuple(camera.size):
        which = f"{name} " if name else ""
        raise InputError(f"{which}image is {image.shape[1]}x{image.shape[0]} but its camera_info is for "
                         f"{camera.size[1]}x{camera.size[0]}")
    if not camera.distorted:
        return image
    map1, map2 = undistortion_maps(camera)
    source = image.astype(np.float32) if image.dtype == np.float64 else image
    return cv2.remap(source, map1, map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _normalized(points, camera: Intrinsics) -> np.ndarray:
    """N x 2 pixel coordinates -> N x 1 x 2 ideal normalised coordinates (K^-1)."""
    k = camera.matrix
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.stack(((p[:, 0] - k[0, 2]) / k[0, 0], (p[:, 1] - k[1, 2]) / k[1, 1]), axis=1)[:, None, :]


def distort_points(points, camera: Intrinsics) -> np.ndarray:
    """Rectified pixel coordinates (N x 2, x y) -> where the lens puts them in the raw image (N x 2, px)."""
    normalized, D = _normalized(points, camera), np.asarray(camera.D, dtype=np.float64)
    if camera.model == "equidistant":
        return cv2.fisheye.distortPoints(normalized, camera.matrix, D).reshape(-1, 2)
    xyz = np.concatenate((normalized[:, 0], np.ones((len(normalized), 1))), axis=1)
    return cv2.projectPoints(xyz, np.zeros(3), np.zeros(3), camera.matrix, D)[0].reshape(-1, 2)


def undistort_points(points, camera: Intrinsics) -> np.ndarray:
    """Raw pixel coordinates (N x 2, x y) -> rectified pixel coordinates (N x 2, px; same K), iterated
    to 1e-10 (OpenCV's default stops after 5 iterations, pixels off for strong distortion)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
    K, D = camera.matrix, np.asarray(camera.D, dtype=np.float64)
    if camera.model == "equidistant":
        return cv2.fisheye.undistortPoints(p, K, D, R=np.eye(3), P=K, criteria=_POINT_CRITERIA).reshape(-1, 2)
    return cv2.undistortPoints(p, K, D, R=np.eye(3), P=K, criteria=_POINT_CRITERIA).reshape(-1, 2)


def distort(image: np.ndarray, camera: Intrinsics) -> np.ndarray:
    """The raw image a camera with these intrinsics takes of the ideal pinhole `image` (the inverse
    of `undistort`, for simulation and tests): H x W [x C] of `camera.size`, zero where the lens sees
    beyond `image` (crop the result, shifting K's principal point, for a raw image without such corners)."""
    h, w = camera.size
    if image.shape[:2] != (h, w):
        raise InputError(f"image is {image.shape[1]}x{image.shape[0]} but the camera is {w}x{h}")
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), axis=2)
    ideal = undistort_points(grid.reshape(-1, 2), camera).reshape(h, w, 2).astype(np.float32)
    source = image.astype(np.float32) if image.dtype == np.float64 else image
    return cv2.remap(source, ideal[:, :, 0], ideal[:, :, 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
