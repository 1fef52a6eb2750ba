"""Synthetic misalignment: random affine + smooth elastic warps with their exact displacement.

A misalignment is a displacement field d (H x W x 2, pixels) applied with the core's flow
convention, ``misaligned = warp(thermal, d)``; the registration that undoes it is
``flow = invert_flow(d)`` (``warp(misaligned, flow) == thermal`` inside the valid region).
Magnitudes are relative to the image width W so a preset means the same at any resolution,
except where a preset says otherwise (``peer`` follows a published protocol: translation per
axis by W and H, rotation bound growing with max(H, W)).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, asdict

import cv2
import numpy as np

from .warp import invert_flow, valid_mask, warp_numpy


@dataclass(frozen=True)
class Preset:
    """Upper bounds of a random misalignment; each drawn uniformly within +-bound."""
    translation: float   # per axis, fraction of W (of W for x and H for y with translation_by_axis)
    rotation_deg: float  # about the image centre
    scale: float         # relative, e.g. 0.03 = +-3 %
    elastic: float       # peak elastic displacement, fraction of W
    shear_deg: float = 0.0
    rotation_deg_per_500px: float = 0.0  # added to rotation_deg, times max(H, W) / 500
    translation_by_axis: bool = False    # y translation bound by H instead of W

    def rotation_bound(self, height: int, width: int) -> float:
        """Largest rotation (degrees) drawn for an image of height x width pixels."""
        return self.rotation_deg + self.rotation_deg_per_500px * max(height, width) / 500.0

    def translation_bounds(self, height: int, width: int) -> tuple:
        """(largest |tx|, largest |ty|) in pixels for an image of height x width pixels."""
        return self.translation * width, self.translation * (height if self.translation_by_axis else width)


PRESETS = {
    # already aligned input: the registration must leave it alone
    "none": Preset(0.0, 0.0, 0.0, 0.0),
    # the paper's protocol: few-pixel shifts and a mild elastic field
    "mild": Preset(translation=0.01, rotation_deg=0.0, scale=0.0, elastic=0.01),
    "moderate": Preset(translation=0.03, rotation_deg=2.0, scale=0.03, elastic=0.02),
    "severe": Preset(translation=0.06, rotation_deg=5.0, scale=0.06, elastic=0.03),
    # SuperFusion's protocol (Tang et al., 2022) as issue 9 states it: rotation up to 7 deg x max(H, W) / 500
    # (about 9 deg at 640x480, 18 deg at 1280x1024), translation up to +-7 % of W in x and of H in y, and a
    # smooth random elastic field. The protocol gives no elastic amplitude in pixels; we use a peak of up to
    # 2 % of W, the same as `moderate`.
    "peer": Preset(translation=0.07, rotation_deg=0.0, scale=0.0, elastic=0.02,
                   rotation_deg_per_500px=7.0, translation_by_axis=True),
}


def get_preset(preset) -> Preset:
    """A Preset from its name or itself; unknown names raise ValueError listing the known ones."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown deform preset '{preset}', expected one of {sorted(PRESETS)}") from None


def rng_for(seed: int, key: str = "") -> np.random.Generator:
    """A generator that depends only on (seed, key): the same image gets the same warp in every run."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def smooth_field(height: int, width: int, amplitude: float, rng: np.random.Generator,
                 control_spacing: int = 64) -> np.ndarray:
    """Smooth random H x W x 2 field whose largest vector has length `amplitude` (pixels)."""
    if amplitude <= 0:
        return np.zeros((height, width, 2), np.float32)
    grid_h = max(2, int(np.ceil(height / control_spacing)) + 1)
    grid_w = max(2, int(np.ceil(width / control_spacing)) + 1)
    coarse = rng.standard_normal((grid_h, grid_w, 2)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    peak = float(np.max(np.linalg.norm(field, axis=2)))
    return field * (amplitude / max(peak, 1e-6))


def random_displacement(height: int, width: int, preset="moderate", rng=None):
    """Draw a displacement d (H x W x 2 float32, pixels) and the parameters that made it.

    ``d(p) = A (p - c) + c + t - p + e(p)``: A = scale * rotation * shear about the centre c,
    t a translation, e a smooth elastic field. Returns (d, params) with params in pixels/degrees;
    params["rotation_bound_deg"] is the rotation bound at this size (see Preset.rotation_bound).
    """
    p = get_preset(preset)
    rng = rng if rng is not None else np.random.default_rng()
    uni = lambda bound: float(rng.uniform(-bound, bound)) if bound > 0 else 0.0  # noqa: E731
    tx = uni(p.translation) * width
    ty = uni(p.translation) * (height if p.translation_by_axis else width)
    angle = uni(p.rotation_bound(height, width))
    scale = 1.0 + uni(p.scale)
    shear = uni(p.shear_deg)
    elastic_px = float(rng.uniform(0.0, p.elastic)) * width if p.elastic > 0 else 0.0

    theta, phi = np.deg2rad(angle), np.deg2rad(shear)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    shear_m = np.array([[1.0, np.tan(phi)], [0.0, 1.0]])
    a = scale * rotation @ shear_m
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64) - cx, np.arange(height, dtype=np.float64) - cy)
    dx = a[0, 0] * xs + a[0, 1] * ys - xs + tx
    dy = a[1, 0] * xs + a[1, 1] * ys - ys + ty
    d = np.stack((dx, dy), axis=2).astype(np.float32)
    d += smooth_field(height, width, elastic_px, rng)
    params = dict(translation_px=(tx, ty), rotation_deg=angle, scale=scale, shear_deg=shear,
                  elastic_px=elastic_px, rotation_bound_deg=p.rotation_bound(height, width), preset=asdict(p))
    return d, params


@dataclass
class Misalignment:
    """A thermal image misaligned on purpose, with everything needed to score a registration."""
    misaligned: np.ndarray    # H x W, same dtype as the input thermal
    displacement: np.ndarray  # d, H x W x 2: misaligned = warp(thermal, d)
    flow: np.ndarray          # ground-truth registration flow = invert_flow(d)
    valid: np.ndarray         # H x W bool: pixels whose aligned value is observable in `misaligned`
    params: dict


def misalign(thermal: np.ndarray, preset="moderate", rng=None) -> Misalignment:
    """Warp `thermal` (H x W[ x C]) by a random displacement drawn from `preset`."""
    height, width = thermal.shape[:2]
    d, params = random_displacement(height, width, preset, rng)
    misaligned = warp_numpy(thermal, d)
    flow = invert_flow(d)
    # observable: the registration samples inside `misaligned` AND that pixel came from inside `thermal`
    inside_source = valid_mask(d).astype(np.float32)
    valid = valid_mask(flow) & (warp_numpy(inside_source, flow) > 0.999)
    return Misalignment(misaligned, d, flow, valid, params)
