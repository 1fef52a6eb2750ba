"""The one inference entry point: visible + thermal of any size -> fused, registered, flow.

    pipeline = Pipeline(PipelineConfig(backend="torch", device="auto"))
    result = pipeline(visible_bgr, thermal)      # FusionResult at the visible image's resolution

A pair costs generation + registration + fusion. For a stream from one rig the first two can be
amortised: `pipeline.register(visible, thermal)` runs them alone, and
`pipeline(visible, thermal, registration=r)` fuses with a given flow (cgrp_ros.core.stream does this).

The CLI, the ROS node, the evaluation and the benchmarks all call this class.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import cv2
import numpy as np

from .backends import make_backend
from .errors import InputError
from .image import (SWAPPED_QUESTION, check_image, check_percentiles, content_warnings, footprint_problem,
                    homography_problem, luminance, pad_to, resize, resize_homography, same_aspect,
                    thermal_for_networks, to_uint8, visible_to_bgr01, working_shape)
from .models import STAGES, default_model_path, model_config
from .networks import SIZE_MULTIPLE, RegistrationNet
from .warp import remap, resize_flow, sample_maps, warp_numpy

log = logging.getLogger("cgrp_ros")

ALL_OUTPUTS = frozenset({"fused", "registered_thermal", "flow", "pseudo_thermal"})
COVERED = 0.999  # _coverage: a registered thermal with at least this coverage everywhere counts as complete
SHAPE_CACHE_SIZE = 16  # Pipeline._per_shapes: entries kept (a rig has one or two image sizes)
FLOW_CACHE_SIZE = 12  # Pipeline.per_flow: values kept per estimate (a rig's frames need about six)
FADE_SIGMA = 1.5  # fusion pixels over which the fused image fades to the visible one at the thermal's border
MIN_WORKING_SIDE = 32  # pixels: fewer leave the global matcher (8 x 8 cells) too few cells to fit an affine
# The share of matches that agree with one affine by chance grows as the grid of 8 x 8 cells shrinks,
# about as 1/sqrt(cells) (a binomial share): featureless pairs (a black or noisy visible image, both
# images zero) scored up to 2.5/sqrt(cells) at every working size from 64x96 to 256x320, while real
# training pairs mostly score far above it (out/s24/conf2.py, 2026-12-07). Below about 600 cells (160x240
# has 600) the bar 2.8/sqrt(cells) is above the shipped confidence threshold (0.114); at small sizes
# featureless frames moved by 6-45 px; a confidence below CHANCE_CONFIDENCE / sqrt(cells) is therefore a
# fallback too. Above 600 cells this bound is below the threshold: nothing changes there.
CHANCE_CONFIDENCE = 2.8
# The global search compares every 8 x 8 cell of the visible image with every cell of the thermal, so its
# memory grows with the square of the working area: a working size too large for the machine would have
# the kernel kill the process (a GPU refuses the allocation instead: an error of that pair). Measured on
# CPU, torch, peak RSS of one pair: 5.3 GB at 720x1280, 10.3 GB at 1024x1280 (2026-12-06).
SEARCH_BYTES_PER_CELL_PAIR = 25
MEMORY_SHARE = 0.75  # of the machine's memory that a working size may need on a CPU


def search_memory_bytes(working_size) -> int:
    """About how much memory the registration's global search needs at `working_size` (H, W) on a CPU."""
    cells = -(-int(working_size[0]) // 8) * -(-int(working_size[1]) // 8)
    return SEARCH_BYTES_PER_CELL_PAIR * cells * cells


def machine_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def working_size_problem(working_size, device: str, total_bytes: int | None = None) -> str | None:
    """Why `working_size` (H, W) cannot run on `device` ('cpu' | 'cuda'), or None. On a CPU the global
    search may need at most MEMORY_SHARE of the machine's memory (`total_bytes`, default this machine's)."""
    total = machine_memory_bytes() if total_bytes is None else total_bytes
    need = search_memory_bytes(working_size)
    if device != "cpu" or total is None or need <= MEMORY_SHARE * total:
        return None
    h, w = working_size
    shrink = (MEMORY_SHARE * total / need) ** 0.25  # memory grows with the fourth power of the side
    fits = (int(h * shrink) // 8 * 8, int(w * shrink) // 8 * 8)
    return (f"working_size {h}x{w} (HxW) needs about {need / 1e9:.0f} GB for the registration's global search on the "
            f"CPU (it grows with the square of the area), more than {MEMORY_SHARE:.0%} of this machine's "
            f"{total / 1e9:.0f} GB: use at most about {fits[0]}x{fits[1]}")


@dataclass
class PipelineConfig:
    backend: str = "torch"                 # torch | onnxruntime
    device: str = "auto"                   # auto | cuda | cpu
    fp16: bool = False                     # torch on CUDA; onnxruntime with TensorRT
    require_gpu: bool = False              # fail instead of falling back to CPU
    working_size: tuple = (256, 320)       # largest (H, W) the networks run at; aspect is kept
    generator: str | None = None           # model files; None = the shipped ones in models/
    registration: str | None = None
    fusion: str | None = None
    onnx_dir: str | None = None            # exported ONNX files (default: exported on first use to a cache)
    onnx_providers: tuple | None = None    # onnxruntime provider order on GPU (default TensorRT -> CUDA -> CPU)
    thermal_percentiles: tuple = (1.0, 99.0)  # robust AGC for 16-bit / float thermal
    agc_8bit: bool = False                 # also apply the AGC to 8-bit thermal
    black_hot: bool = False                # the thermal shows hot as dark (a "black hot" palette): inverted after
                                           # the AGC, so the fused image shows hot as bright (registered_thermal
                                           # keeps the camera's values)
    homography: object = None              # 3x3, thermal pixel -> visible pixel (rig calibration)
    homography_sizes: tuple | None = None  # ((visible H, W), (thermal H, W)) it was made at (None: any);
                                           # other sizes of the same aspects: rescaled, else InputError
    fusion_scale: float = 0.5              # the fusion network runs at working_size x this (the visible
                                           # detail above it is added back); < 1 trades thermal detail for speed

    def model_paths(self) -> dict:
        return {stage: str(getattr(self, stage) or default_model_path(stage)) for stage in STAGES}


def _pair_of_ints(value, name: str, minimum: int) -> tuple:
    """(a, b) of a 2-sequence of integers >= minimum; InputError naming `name` otherwise."""
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be (height, width), got {value!r}") from None
    if a < minimum or b < minimum:
        raise InputError(f"{name} must be at least {minimum}x{minimum}, got {a}x{b}")
    return a, b


def _required(thermal):
    """The thermal of a call that registers: None is an input error, not a missing attribute later."""
    if thermal is None:
        raise InputError("thermal: expected a numpy array, got None")
    return thermal


def _homography_sizes(sizes) -> tuple:
    """((visible H, W), (thermal H, W)) of PipelineConfig.homography_sizes, checked."""
    try:
        visible, thermal = sizes
    except (TypeError, ValueError):
        raise InputError(f"homography_sizes must be ((visible H, W), (thermal H, W)), got {sizes!r}") from None
    return _pair_of_ints(visible, "homography_sizes' visible size", 1), \
        _pair_of_ints(thermal, "homography_sizes' thermal size", 1)


@dataclass
class Registration:
    """Where the thermal lands in the visible camera, at the visible image's resolution (H x W)."""
    flow: np.ndarray                        # H x W x 2 float32, visible pixels, core convention
    confidence: float = 1.0                 # in [0, 1]: the share of matches that agree with the affine
    fallback: bool = False                  # True: too little evidence, the flow is the prior (zero)
    timings: dict = field(default_factory=dict)  # ms: preprocess, generator, registration


@dataclass
class FusionResult:
    """Everything at the visible image's resolution (H x W) and in its camera frame."""
    fused: np.ndarray | None                # H x W uint8 fused luminance
    fused_color: np.ndarray | None          # H x W x 3 uint8 BGR (None when the visible is mono)
    registered_thermal: np.ndarray | None   # H x W, raw values in the input thermal's dtype (float64: float32)
    flow: np.ndarray                        # H x W x 2 float32, pixels, core convention
    pseudo_thermal: np.ndarray | None       # H x W uint8
    timings: dict = field(default_factory=dict)  # ms per stage + 'total'
    registration_confidence: float = 1.0    # the registration's confidence in [0, 1] (the affine fit's inlier score)
    registration_fallback: bool = False     # True: too little evidence, the flow is the prior (zero)

    @property
    def fused_image(self) -> np.ndarray | None:
        """The fused picture to show or publish: fused_color where the visible camera has colour, else fused."""
        return self.fused_color if self.fused_color is not None else self.fused


# PipelineConfig fields that every call reads afresh: `Pipeline.reconfigure` changes them without a rebuild
PER_CALL_FIELDS = ("working_size", "thermal_percentiles", "agc_8bit", "black_hot", "fusion_scale")


def _check_per_call_fields(c: PipelineConfig) -> None:
    """Check (and normalise, in place) `c`'s PER_CALL_FIELDS that can be wrong; InputError says which."""
    c.working_size = _pair_of_ints(c.working_size, "working_size", MIN_WORKING_SIDE)
    try:
        scale_ok = 0.1 <= float(c.fusion_scale) <= 1.0
    except (TypeError, ValueError):
        scale_ok = False
    if not scale_ok:
        raise InputError(f"fusion_scale must be a number in [0.1, 1], got {c.fusion_scale!r}")
    try:
        percentiles = tuple(float(v) for v in c.thermal_percentiles)
    except (TypeError, ValueError):
        percentiles = ()
    if len(percentiles) != 2:
        raise InputError(f"thermal_percentiles must be (low, high), got {c.thermal_percentiles!r}")
    check_percentiles(percentiles)  # a configuration error: said once, now, not per image


def calibration_size_problem(sizes, visible_shape, thermal_shape) -> str | None:
    """Why a calibration made at `sizes` ((visible H, W), (thermal H, W)) cannot map a pair of these
    shapes ((H, W) each), or None: the same view at another resolution is rescaled (a driver's binning
    mode), another aspect ratio is a crop, and the calibration no longer says where the thermal lands."""
    (vh, vw), (th, tw) = sizes
    for (h0, w0), (h1, w1) in ((sizes[0], visible_shape), (sizes[1], thermal_shape)):
        if not same_aspect((h1, w1), (h0, w0)):
            made = f"the calibration was made for a visible image of {vw}x{vh} and a thermal of {tw}x{th}; "
            if (tuple(sizes[1]), tuple(sizes[0])) == (tuple(visible_shape), tuple(thermal_shape)):
                return made + f"this pair has the two sizes the other way round: {SWAPPED_QUESTION}"
            return (made + f"this pair is {visible_shape[1]}x{visible_shape[0]} and {thermal_shape[1]}x"
                    f"{thermal_shape[0]}, a different aspect ratio (cropped?): calibrate at the resolutions you run at")
    return None


class Pipeline:
    """Generation -> registration -> fusion on one backend.

    Inference calls may overlap (StreamPipeline registers in a thread of its own while frames are
    fused): the networks run in inference mode and keep no state between calls. The config is not
    changed in place: `reconfigure` swaps in a changed copy, and each call works with the config it
    started with."""

    def __init__(self, config: PipelineConfig | None = None, **overrides):
        """`overrides`: PipelineConfig fields that replace those of `config` (a copy: `config` is kept)."""
        unknown = set(overrides) - {f.name for f in fields(PipelineConfig)}
        if unknown:
            raise InputError(f"unknown PipelineConfig field(s): {', '.join(sorted(unknown))}")
        self.config = replace(config or PipelineConfig(), **overrides)
        c = self.config
        _check_per_call_fields(c)
        h, w = c.working_size
        if c.homography_sizes is not None:
            c.homography_sizes = _homography_sizes(c.homography_sizes)
        self.homography = None
        if c.homography is not None:
            problem = homography_problem(c.homography)
            if problem:
                raise InputError(f"the homography {problem}")
            self.homography = np.asarray(c.homography, dtype=np.float64)
        self._shape_cache = {}  # _per_shapes
        self._flow_cache = (None, {})  # per_flow: (the flow, {key: value})
        self.model_paths = c.model_paths()
        # registration confidence below which the registration falls back to the prior
        self.confidence_threshold = float(model_config(self.model_paths["registration"]).get(
            "confidence_threshold", RegistrationNet.DEFAULT_THRESHOLD))
        self.backend = make_backend(c.backend, self.model_paths, c.device, c.fp16, c.require_gpu, c.onnx_dir,
                                    c.onnx_providers, calibrated=self.homography is not None)
        problem = working_size_problem(c.working_size, self.backend.device)
        if problem:
            raise InputError(problem)
        weights = "models" if c.backend == "torch" else f"graphs in {self.backend.onnx_dir} exported from"
        log.info("cgrp pipeline: %s, working size %dx%d (HxW), %s %s", self.backend.description, h, w, weights,
                 ", ".join(Path(p).name for p in self.model_paths.values()))

    @property
    def description(self) -> str:
        return self.backend.description

    def reconfigure(self, **changes) -> bool:
        """Change PER_CALL_FIELDS (e.g. working_size=(H, W)) without a rebuild, checked as at construction
        (InputError; nothing changes then). The changed config is a copy swapped in whole, so a call in
        flight (a background registration) goes on with the values it started with. True if one changed."""
        unknown = set(changes) - set(PER_CALL_FIELDS)
        if unknown:
            raise InputError(f"not changeable without a new Pipeline: {', '.join(sorted(unknown))}")
        c = replace(self.config, **changes)
        _check_per_call_fields(c)
        if all(getattr(c, name) == getattr(self.config, name) for name in PER_CALL_FIELDS):
            return False
        problem = working_size_problem(c.working_size, self.backend.device)
        if problem:
            raise InputError(problem)
        self.config = c
        return True


    @staticmethod
    def chance_confidence(h: int, w: int) -> float:
        """The confidence that matches reach by chance on a working image of h x w px (CHANCE_CONFIDENCE):
        below it a registration falls back to the prior whatever the model's threshold."""
        return CHANCE_CONFIDENCE / math.sqrt(max(1, (h // 8) * (w // 8)))

    # -- geometry ----------------------------------------------------------------------------------
    def visible_to_thermal(self, visible_shape, thermal_shape) -> np.ndarray:
        """3x3 map from visible pixel coordinates to thermal pixel coordinates (the prior alignment)."""
        if self.homography is None:
            return resize_homography(visible_shape, thermal_shape)  # same field of view
        shapes = (tuple(visible_shape[:2]), tuple(thermal_shape[:2]))
        return self._per_shapes(("visible_to_thermal", shapes), lambda: self._calibrated_visible_to_thermal(*shapes))

    def input_warnings(self, visible: np.ndarray, thermal: np.ndarray, where: str = "") -> list:
        """[(kind, text)] for a pair as received: core.image.content_warnings, and ('stretched', ...) where
        stretch_warning says the cameras' aspect ratios need a calibration (`where` as there)."""
        warnings = content_warnings(visible, thermal, where)
        stretch = self.stretch_warning(visible.shape, thermal.shape)
        if stretch:
            warnings.append(("stretched", f"pair {where}: {stretch}" if where else stretch))
        return warnings

    def stretch_warning(self, visible_shape, thermal_shape) -> str | None:
        """Why a pair of these sizes will stay misaligned, or None: without a calibration the thermal is
        stretched onto the visible frame, and the registration corrects rotation, one scale and shifts but
        not a stretch of one axis (align.py), so cameras of another aspect ratio need `cgrp calibrate`."""
        if self.homography is not None:
            return None
        (hv, wv), (ht, wt) = visible_shape[:2], thermal_shape[:2]
        if same_aspect(visible_shape, thermal_shape):
            return None
        return (f"the visible camera's {wv}x{hv} and the thermal's {wt}x{ht} differ in aspect ratio ({wv / hv:.3f} "
                f"against {wt / ht:.3f}): without a calibration the thermal is stretched onto the visible frame, a "
                "distortion the registration does not undo; calibrate the rig once (cgrp calibrate) and give the "
                "calibration")

    def _calibrated_visible_to_thermal(self, visible_shape, thermal_shape) -> np.ndarray:
        homography = self._homography_at(visible_shape, thermal_shape)
        problem = footprint_problem(homography, visible_shape, thermal_shape)
        if problem:
            raise InputError(f"the calibration {problem}")
        return np.linalg.inv(homography)

    def _per_shapes(self, key, make) -> np.ndarray:
        """make() once per key (image sizes): what depends on the cameras' sizes alone is not worked out
        again for every frame. Read-only arrays; a stream whose sizes keep changing starts the cache over."""
        value = self._shape_cache.get(key)
        if value is None:
            if len(self._shape_cache) >= SHAPE_CACHE_SIZE:
                self._shape_cache.clear()
            value = make()
            value.setflags(write=False)
            self._shape_cache[key] = value
        return value

    def per_flow(self, flow: np.ndarray, key, make):
        """make() once per key for a read-only `flow` (a rig's running estimate: the same array frame
        after frame), so that what derives from the flow alone (its working-size copy, resampling maps)
        is not worked out again between registrations; the value is returned read-only. A writable flow
        (its owner may change it in place) is not cached; keys beyond FLOW_CACHE_SIZE (a thermal whose size,
        or a setting, changes with every frame) start the cache over, so memory stays bounded. Thread-safe:
        a value is only ever stored with the flow it was made from."""
        if flow.flags.writeable:
            return make()
        entry = self._flow_cache
        if entry[0] is not flow:  # a new estimate: the old one's values go
            entry = self._flow_cache = (flow, {})
        if key not in entry[1]:
            if len(entry[1]) >= FLOW_CACHE_SIZE:  # keys of sizes or settings that keep changing: start over
                entry[1].clear()
            value = make()
            for array in value if isinstance(value, tuple) else (value,):
                if isinstance(array, np.ndarray):
                    array.setflags(write=False)
            entry[1][key] = value
        return entry[1][key]

    def _homography_at(self, visible_shape, thermal_shape) -> np.ndarray:
        """The calibration for images of these sizes: as made, or rescaled where a camera delivers the
        same view at another resolution (a driver's binning mode); InputError where an aspect changed
        (a crop: the calibration no longer says where the thermal lands)."""
        sizes = self.config.homography_sizes
        if sizes is None or (tuple(sizes[0]), tuple(sizes[1])) == (visible_shape, thermal_shape):
            return self.homography
        problem = calibration_size_problem(sizes, visible_shape, thermal_shape)
        if problem:
            raise InputError(problem)
        return (resize_homography(sizes[0], visible_shape) @ self.homography
                @ resize_homography(thermal_shape, sizes[1]))

    def _prepare(self, visible, thermal=None):
        """Validate, normalise and resize the inputs to the padded working resolution."""
        c = self.config
        f = _Frame()
        f.config = c  # this call's config, to the end (`reconfigure` swaps in another)
        f.visible = check_image(visible, "visible")
        f.vis01 = visible_to_bgr01(f.visible)
        f.hv, f.wv = f.vis01.shape[:2]
        (f.h, f.w), f.padded = working_shape(f.hv, f.wv, c.working_size, SIZE_MULTIPLE)
        vis_w = resize(f.vis01, (f.h, f.w))
        f.y_w = luminance(vis_w)
        f.vis_in, f.y_in = self._nchw(vis_w, f.padded), self._nchw(f.y_w, f.padded)
        if thermal is not None:
            f.thermal = check_image(thermal, "thermal")
            f.th01 = thermal_for_networks(f.thermal, c.thermal_percentiles, c.agc_8bit, c.black_hot)
            f.v2t = self.visible_to_thermal((f.hv, f.wv), f.th01.shape[:2])
            if self.homography is None:
                f.th_in = self._nchw(resize(f.th01, (f.h, f.w)), f.padded)
            else:  # fused: nothing (0) where the thermal does not see
                f.th_in = self._placed_thermal(f, cv2.BORDER_CONSTANT)
        return f

    @staticmethod
    def _placed(f, image, border) -> np.ndarray:
        """A thermal-sized image on the working grid through the calibration (working px -> visible px ->
        thermal px), H x W; outside its footprint `border` (an OpenCV border mode)."""
        work_to_vis = resize_homography((f.h, f.w), (f.hv, f.wv))
        return cv2.warpPerspective(image, f.v2t @ work_to_vis, (f.w, f.h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=border)

    @staticmethod
    def _placed_thermal(f, border) -> np.ndarray:
        """The thermal on the padded working grid through the calibration, 1 x 1 x pH x pW (see _placed)."""
        return Pipeline._nchw(Pipeline._placed(f, f.th01, border), f.padded)

    @staticmethod
    def _nchw(image, padded):
        """H x W[ x C] float32 -> 1 x C x pH x pW, reflect-padded to the networks' multiple."""
        image = pad_to(image, padded)
        return np.ascontiguousarray(image.reshape(padded + (-1,)).transpose(2, 0, 1)[None])

    def _to_visible(self, f, image):
        """A 1 x 1 x pH' x pW' network output on the padded working grid (pH x pW, or scaled by the
        fusion scale) -> H x W float32 at the visible resolution."""
        (ph, pw), (height, width) = f.padded, image.shape[2:]
        valid_h, valid_w = round(height * f.h / ph), round(width * f.w / pw)
        return cv2.resize(image[0, 0, :valid_h, :valid_w], (f.wv, f.hv), interpolation=cv2.INTER_LINEAR)

    def _fusion(self, f, registered_w, coverage=None):
        """The fusion network at the working resolution x config.fusion_scale:
        (fused luminance, the visible luminance it saw), both 1 x 1 x pH' x pW'.

        `coverage` (H x W, see _coverage): where the thermal has no data the fused luminance is the
        visible one. The network would read the missing thermal as the coldest scene and darken the
        picture there, with a seam along the thermal's border; it sees the visible luminance in the
        missing share of each pixel instead."""
        visible_y, thermal = f.y_in, registered_w
        if coverage is not None:
            coverage = self._nchw(coverage, f.padded)
            thermal = thermal + (1.0 - coverage) * visible_y
        scale = float(f.config.fusion_scale)
        if scale < 1.0:
            (ph, pw) = f.padded
            size = (max(8, round(ph * scale)), max(8, round(pw * scale)))
            visible_y, thermal, coverage = (None if x is None else np.ascontiguousarray(resize(x[0, 0], size)[None, None])
                                            for x in (visible_y, thermal, coverage))
        fused = self.backend("fusion", visible_y, thermal)
        if coverage is None:
            return fused, visible_y
        # faded in over a few pixels inside the thermal's border: the network answers the step at the border
        # with a dark line (measured on a narrower calibrated thermal)
        weight = np.clip(2.0 * cv2.GaussianBlur(coverage[0, 0], (0, 0), FADE_SIGMA) - 1.0, 0.0, 1.0) * coverage[0, 0]
        return visible_y + weight[None, None] * (fused - visible_y), visible_y

    def _fused_outputs(self, f, fused_w, visible_y):
        """(fused uint8, fused_color uint8 or None): the network's fused luminance plus the visible
        detail above the resolution it ran at, with the visible chroma when it has colour.

        The colour image is the visible one with its luminance changed: in YCrCb every channel of
        B, G, R moves by the luminance's change, so it is added to them (no round trip through
        YCrCb: a full-resolution frame path costs half as much)."""
        y = luminance(f.vis01)
        fused_y = y + self._to_visible(f, fused_w - visible_y)
        np.clip(fused_y, 0.0, 1.0, out=fused_y)
        fused_color = None
        if f.visible.ndim == 3:
            change = cv2.cvtColor(fused_y - y, cv2.COLOR_GRAY2BGR)  # (faster than numpy's broadcast)
            fused_color = to_uint8(cv2.add(f.vis01, change, dst=change), overwrite=True)
        return to_uint8(fused_y, overwrite=True), fused_color

    def thermal_in_visible(self, thermal: np.ndarray, flow: np.ndarray):
        """The raw thermal (h x w, or a colour-mapped h x w x 3: its luminance) resampled into the visible
        camera with one bilinear sample per pixel: visible p -> p + flow(p) -> the prior map -> thermal
        pixel. flow: H x W x 2 visible pixels (zeros: the prior alone). Returns H x W in the thermal's
        dtype, 0 where the sample falls outside the thermal."""
        maps = self.per_flow(flow, ("thermal maps", thermal.shape[:2]),
                              lambda: self._thermal_maps(flow, thermal.shape[:2]))
        return remap(luminance(thermal), *maps)  # a colour-mapped thermal: its luminance

    def _thermal_maps(self, flow: np.ndarray, thermal_shape) -> tuple:
        """cv2.remap maps (map_x, map_y), H x W float32 thermal px, of thermal_in_visible."""
        hv, wv = flow.shape[:2]
        v2t = self.visible_to_thermal((hv, wv), thermal_shape)
        map_x, map_y = sample_maps(flow)
        if self.homography is None:  # axis-aligned scale: two multiply-adds, no 3 x N product (in place)
            map_x *= np.float32(v2t[0, 0])
            map_x += np.float32(v2t[0, 2])
            map_y *= np.float32(v2t[1, 1])
            map_y += np.float32(v2t[1, 2])
        else:
            pts = v2t @ np.stack((map_x.ravel(), map_y.ravel(), np.ones(map_x.size, np.float32)))
            map_x = (pts[0] / pts[2]).reshape(hv, wv).astype(np.float32)
            map_y = (pts[1] / pts[2]).reshape(hv, wv).astype(np.float32)
        return map_x, map_y

    def _run_registration(self, f):
        """Registration on a prepared frame: (pseudo-thermal 1 x 1 x pH x pW, or None where the generator
        did not run, Registration at the visible resolution, registered thermal 1 x 1 x pH x pW, the flow
        at the working resolution H x W x 2 in working pixels).

        The affine stages first; the generator and the dense levels only where they moved the pair: a
        pair that keeps its prior (an aligned one, a calibrated rig's usual frame, a fallback) would drop
        the dense levels' flow (measured with torch on 2 cores: such a pair in 0.4-0.7 x the time)."""
        t0 = time.perf_counter()
        run = self.backend
        # through a calibration the thermal's border is replicated for the registration: the frame of its
        # footprint is an edge the visible image lacks, and the matchers matched it (measured: pairs of
        # calibrated synthetic rigs moved by up to 8 working px)
        calibrated = self.homography is not None
        thermal = self._placed_thermal(f, cv2.BORDER_REPLICATE) if calibrated else f.th_in
        # a calibration is a close prior: the local stage starts from it, not from the global search,
        # and keeps it unless the fine matches clearly contradict it
        search = np.full(1, 0.0 if calibrated else 1.0, np.float32)
        affine_w, registered_w, confidence, fallback = run("registration_affine", f.y_in, thermal, search)
        if float(confidence.reshape(-1)[0]) < self.chance_confidence(f.h, f.w):  # no evidence: keep the prior
            affine_w, fallback = np.zeros_like(affine_w), np.ones_like(fallback)
        flow_w, pseudo, generator_ms = affine_w, None, 0.0
        if np.any(affine_w):
            run.synchronize()
            t1 = time.perf_counter()
            pseudo = run("generator", f.vis_in)
            run.synchronize()
            generator_ms = (time.perf_counter() - t1) * 1e3
            flow_w, registered_w = run("registration_dense", pseudo, f.y_in, thermal, affine_w)
        run.synchronize()
        t2 = time.perf_counter()
        confidence = float(np.clip(confidence.reshape(-1)[0], 0.0, 1.0))
        fallback = bool(fallback.reshape(-1)[0] > 0.5)
        if not (np.isfinite(flow_w).all() and np.isfinite(confidence)):  # never published: the prior, as without evidence
            flow_w, registered_w, confidence, fallback = np.zeros_like(flow_w), thermal, 0.0, True
        flow_working = flow_w[0, :, :f.h, :f.w].transpose(1, 2, 0)
        flow = resize_flow(flow_working, (f.hv, f.wv))  # visible pixels
        registration = Registration(flow, confidence, fallback,
                                    dict(generator=generator_ms, registration=(t2 - t0) * 1e3 - generator_ms))
        return pseudo, registration, registered_w, flow_working

    def _coverage(self, f, flow_working):
        """H x W float32 on the working grid: the share of real thermal in each registered thermal pixel's
        bilinear sample; 0 where the sample falls outside the thermal (a narrower thermal view, a border
        the registration moved in), where the registered thermal is 0. None where it is 1 everywhere."""
        moved = np.any(flow_working)
        if self.homography is None:
            if not moved:
                return None
            footprint = np.ones((f.h, f.w), np.float32)
        else:  # where the calibration places the thermal on the working grid
            key = ("footprint", (f.h, f.w), (f.hv, f.wv), f.th01.shape[:2])
            footprint = self._per_shapes(key, lambda: self._placed(f, np.ones(f.th01.shape[:2], np.float32),
                                                                   cv2.BORDER_CONSTANT))
        coverage = warp_numpy(footprint, flow_working) if moved else footprint
        return None if coverage.min() >= COVERED else coverage

    def register(self, visible: np.ndarray, thermal: np.ndarray) -> Registration:
        """Registration only: where this pair's thermal lands in the visible camera (the inputs as for
        __call__). -> Registration: its flow is H x W x 2 float32 visible px at the visible image's size
        (core convention: the thermal, mapped by the prior, is sampled at p + flow(p)), with confidence
        0..1, fallback and per-stage timings (ms)."""
        t0 = time.perf_counter()
        f = self._prepare(visible, _required(thermal))
        t1 = time.perf_counter()
        registration = self._run_registration(f)[1]
        registration.timings["preprocess"] = (t1 - t0) * 1e3
        return registration

    def __call__(self, visible: np.ndarray, thermal: np.ndarray, outputs=ALL_OUTPUTS,
                 registration: Registration | None = None) -> FusionResult:
        """Fuse one pair. visible: H x W (x3 BGR / x4 BGRA) uint8/uint16, or float in [0, 1] (clipped);
        thermal: h x w uint8/uint16/float (any unit: a percentile gain control normalises it).

        `outputs` names the results to compute ('fused', 'registered_thermal', 'flow',
        'pseudo_thermal'); the flow is always returned. `registration`: a flow (at this visible
        resolution) to fuse with instead of registering the pair, e.g. a rig's running estimate;
        the generator then runs only for 'pseudo_thermal'. Raises InputError for unusable input.
        """
        t0 = time.perf_counter()
        f = self._prepare(visible, _required(thermal))
        t1 = time.perf_counter()
        if registration is None:
            pseudo, registration, registered_w, flow_working = self._run_registration(f)
        else:
            flow = np.asarray(registration.flow)
            if flow.shape != (f.hv, f.wv, 2):
                raise InputError(f"the registration's flow is {flow.shape[:2]}, the visible image {(f.hv, f.wv)}")
            flow = flow.astype(np.float32, copy=False)  # (OpenCV's remap takes float32 maps only)
            flow_working = self.per_flow(flow, ("working", f.h, f.w), lambda: resize_flow(flow, (f.h, f.w)))
            registered_w = pseudo = None
            # this pair's registration cost is the resample of the thermal
            registration = Registration(flow, registration.confidence, registration.fallback,
                                        dict(generator=0.0, registration=(time.perf_counter() - t1) * 1e3))
        if pseudo is None and "pseudo_thermal" in outputs:  # only as an output: the registration did not need it
            t_generator = time.perf_counter()
            pseudo = self.backend("generator", f.vis_in)
            self.backend.synchronize()
            registration.timings["generator"] += (time.perf_counter() - t_generator) * 1e3
        t2 = time.perf_counter()
        flow = registration.flow
        fused_w = fusion_y = None
        if "fused" in outputs:
            shapes = (f.h, f.w, f.hv, f.wv, f.th01.shape[:2])
            coverage = self.per_flow(flow, ("coverage", shapes), lambda: self._coverage(f, flow_working))
            # the graphs' registered thermal has the padding's reflection, or the calibrated placement's
            # replicated border, where the thermal has no data
            if registered_w is None or coverage is not None:  # (0 where the sample falls outside the thermal)
                maps = self.per_flow(flow, ("working maps", f.h, f.w), lambda: sample_maps(flow_working))
                registered_w = self._nchw(remap(f.th_in[0, 0, :f.h, :f.w], *maps), f.padded)
            fused_w, fusion_y = self._fusion(f, registered_w, coverage)
        self.backend.synchronize()
        t3 = time.perf_counter()
        registered = self.thermal_in_visible(f.thermal, flow) if "registered_thermal" in outputs else None
        fused, fused_color = self._fused_outputs(f, fused_w, fusion_y) if fused_w is not None else (None, None)
        pseudo_full = to_uint8(self._to_visible(f, pseudo), overwrite=True) if "pseudo_thermal" in outputs else None
        t4 = time.perf_counter()
        timings = dict(preprocess=(t1 - t0) * 1e3, generator=registration.timings["generator"],
                       registration=registration.timings["registration"], fusion=(t3 - t2) * 1e3,
                       postprocess=(t4 - t3) * 1e3, total=(t4 - t0) * 1e3)
        return FusionResult(fused, fused_color, registered, flow, pseudo_full, timings,
                            registration.confidence, registration.fallback)

    def fuse(self, visible: np.ndarray, thermal: np.ndarray):
        """Fusion network only, for a thermal already in the visible camera's frame (no registration).

        Returns (fused H x W uint8, fused_color H x W x 3 uint8 or None). Used by the evaluation's
        baselines (other registrars, or none) so they share the exact same fusion.
        """
        f = self._prepare(visible, thermal)
        return self._fused_outputs(f, *self._fusion(f, f.th_in))

    def pseudo_thermal(self, visible: np.ndarray) -> np.ndarray:
        """The generator alone: H x W float32 pseudo-thermal in [0, 1] at the visible resolution."""
        f = self._prepare(visible)
        return np.clip(self._to_visible(f, self.backend("generator", f.vis_in)), 0.0, 1.0)


class _Frame:
    """Per-call working state shared by the pipeline's steps."""
