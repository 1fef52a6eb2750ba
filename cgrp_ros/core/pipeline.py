"""The one inference entry point: visible + thermal of any size -> fused, registered, flow.

    pipeline = Pipeline(PipelineConfig(backend="torch", device="auto"))
    result = pipeline(visible_bgr, thermal)      # FusionResult at the visible image's resolution

The CLI, the ROS node, the evaluation and the benchmarks all call this class.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .backends import make_backend
from .errors import InputError
from .image import (bgr_to_ycrcb, check_image, normalize_thermal, pad_to, resize, to_uint8,
                    visible_to_bgr01, working_shape, ycrcb_to_bgr)
from .models import STAGES, default_model_path
from .networks import SIZE_MULTIPLE
from .warp import remap

log = logging.getLogger("cgrp_ros")

ALL_OUTPUTS = frozenset({"fused", "registered_thermal", "flow", "pseudo_thermal"})


@dataclass
class PipelineConfig:
    backend: str = "torch"                 # torch | onnxruntime
    device: str = "auto"                   # auto | cuda | cpu
    fp16: bool = False                     # torch on CUDA only
    require_gpu: bool = False              # fail instead of falling back to CPU
    working_size: tuple = (256, 320)       # largest (H, W) the networks run at; aspect is kept
    generator: str | None = None           # model files; None = the shipped ones in models/
    registration: str | None = None
    fusion: str | None = None
    onnx_dir: str | None = None            # exported ONNX files (default: exported on first use to a cache)
    thermal_percentiles: tuple = (1.0, 99.0)  # robust AGC for 16-bit / float thermal
    agc_8bit: bool = False                 # also apply the AGC to 8-bit thermal
    homography: object = None              # 3x3, thermal pixel -> visible pixel (rig calibration)

    def model_paths(self) -> dict:
        return {stage: str(getattr(self, stage) or default_model_path(stage)) for stage in STAGES}


@dataclass
class FusionResult:
    """Everything at the visible image's resolution (H x W) and in its camera frame."""
    fused: np.ndarray | None                # H x W uint8 fused luminance
    fused_color: np.ndarray | None          # H x W x 3 uint8 BGR (None when the visible is mono)
    registered_thermal: np.ndarray | None   # H x W, the input thermal's dtype, raw values
    flow: np.ndarray                        # H x W x 2 float32, pixels, core convention
    pseudo_thermal: np.ndarray | None       # H x W uint8
    timings: dict = field(default_factory=dict)  # ms per stage + 'total'


class Pipeline:
    """Generation -> registration -> fusion on one backend. Not thread-safe: one caller at a time."""

    def __init__(self, config: PipelineConfig | None = None, **overrides):
        self.config = config or PipelineConfig()
        for key, value in overrides.items():
            setattr(self.config, key, value)
        c = self.config
        h, w = c.working_size
        if h < SIZE_MULTIPLE or w < SIZE_MULTIPLE:
            raise InputError(f"working_size must be at least {SIZE_MULTIPLE}x{SIZE_MULTIPLE}, got {h}x{w}")
        self.homography = None
        if c.homography is not None:
            hm = np.asarray(c.homography, dtype=np.float64)
            if hm.shape != (3, 3) or not np.all(np.isfinite(hm)) or abs(np.linalg.det(hm)) < 1e-12:
                raise InputError("homography must be a finite, invertible 3x3 matrix")
            self.homography = hm
        self.model_paths = c.model_paths()
        self.backend = make_backend(c.backend, self.model_paths, c.device, c.fp16, c.require_gpu, c.onnx_dir)
        log.info("cgrp pipeline: %s, working size %dx%d, models %s", self.backend.description, h, w,
                 ", ".join(Path(p).name for p in self.model_paths.values()))

    @property
    def description(self) -> str:
        return self.backend.description

    # -- geometry ----------------------------------------------------------------------------------
    def _visible_to_thermal(self, visible_shape, thermal_shape) -> np.ndarray:
        """3x3 map from visible pixel coordinates to thermal pixel coordinates (the prior alignment)."""
        if self.homography is not None:
            return np.linalg.inv(self.homography)
        (hv, wv), (ht, wt) = visible_shape, thermal_shape
        sx, sy = wt / wv, ht / hv  # same field of view, pixel centres at integers
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])

    def __call__(self, visible: np.ndarray, thermal: np.ndarray, outputs=ALL_OUTPUTS) -> FusionResult:
        """Fuse one pair. visible: H x W (x3 BGR / x4 BGRA), thermal: h x w uint8/uint16/float32.

        `outputs` names the results to compute ('fused', 'registered_thermal', 'flow',
        'pseudo_thermal'); the flow is always returned. Raises InputError for unusable input.
        """
        timings, t0 = {}, time.perf_counter()
        c = self.config
        visible = check_image(visible, "visible")
        thermal = check_image(thermal, "thermal")
        vis01 = visible_to_bgr01(visible)
        th01 = normalize_thermal(thermal, c.thermal_percentiles, c.agc_8bit)
        hv, wv = vis01.shape[:2]
        (h, w), padded = working_shape(hv, wv, c.working_size, SIZE_MULTIPLE)
        v2t = self._visible_to_thermal((hv, wv), th01.shape[:2])

        vis_w = resize(vis01, (h, w))
        if self.homography is None:
            th_w = resize(th01, (h, w))
        else:  # working pixel -> visible pixel -> thermal pixel
            work_to_vis = np.array([[wv / w, 0, 0.5 * wv / w - 0.5], [0, hv / h, 0.5 * hv / h - 0.5], [0, 0, 1]])
            th_w = cv2.warpPerspective(th01, v2t @ work_to_vis, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        y_w = bgr_to_ycrcb(vis_w)[:, :, 0]
        nchw = lambda a: np.ascontiguousarray(pad_to(a, padded).reshape(padded + (-1,)).transpose(2, 0, 1)[None])  # noqa: E731
        vis_in, th_in, y_in = nchw(vis_w), nchw(th_w), nchw(y_w)
        t1 = time.perf_counter()
        timings["preprocess"] = (t1 - t0) * 1e3

        run = self.backend
        pseudo = run("generator", vis_in)
        run.synchronize()
        t2 = time.perf_counter()
        flow_w, registered_w = run("registration", pseudo, th_in)
        run.synchronize()
        t3 = time.perf_counter()
        fused_w = run("fusion", y_in, registered_w) if "fused" in outputs else None
        run.synchronize()
        t4 = time.perf_counter()
        timings.update(generator=(t2 - t1) * 1e3, registration=(t3 - t2) * 1e3, fusion=(t4 - t3) * 1e3)

        # flow at the visible resolution, in visible pixels
        flow = cv2.resize(flow_w[0, :, :h, :w].transpose(1, 2, 0), (wv, hv), interpolation=cv2.INTER_LINEAR)
        flow[:, :, 0] *= wv / w
        flow[:, :, 1] *= hv / h
        flow = np.ascontiguousarray(flow, dtype=np.float32)

        registered = None
        if "registered_thermal" in outputs:
            # one resample of the raw thermal: visible p -> p + flow(p) -> prior map -> thermal pixel
            map_x = np.arange(wv, dtype=np.float32)[None, :] + flow[:, :, 0]
            map_y = np.arange(hv, dtype=np.float32)[:, None] + flow[:, :, 1]
            if self.homography is None:  # axis-aligned scale: two multiply-adds, no 3 x N product
                map_x = map_x * np.float32(v2t[0, 0]) + np.float32(v2t[0, 2])
                map_y = map_y * np.float32(v2t[1, 1]) + np.float32(v2t[1, 2])
            else:
                pts = v2t @ np.stack((map_x.ravel(), map_y.ravel(), np.ones(map_x.size, np.float32)))
                map_x = (pts[0] / pts[2]).reshape(hv, wv).astype(np.float32)
                map_y = (pts[1] / pts[2]).reshape(hv, wv).astype(np.float32)
            raw = thermal if thermal.ndim == 2 else cv2.cvtColor(thermal[:, :, :3], cv2.COLOR_BGR2GRAY)
            registered = remap(raw, map_x, map_y)

        fused = fused_color = None
        if fused_w is not None:
            # the network sees the working resolution; the visible detail above it is added back
            y_full = bgr_to_ycrcb(vis01)
            y_up = resize(y_w, (hv, wv), cv2.INTER_LINEAR)
            detail = cv2.resize(fused_w[0, 0, :h, :w], (wv, hv), interpolation=cv2.INTER_LINEAR) - y_up
            fused_y = np.clip(y_full[:, :, 0] + detail, 0.0, 1.0)
            fused = to_uint8(fused_y)
            if visible.ndim == 3:
                y_full[:, :, 0] = fused_y
                fused_color = to_uint8(ycrcb_to_bgr(y_full))

        pseudo_full = None
        if "pseudo_thermal" in outputs:
            pseudo_full = to_uint8(cv2.resize(pseudo[0, 0, :h, :w], (wv, hv), interpolation=cv2.INTER_LINEAR))
        t5 = time.perf_counter()
        timings["postprocess"] = (t5 - t4) * 1e3
        timings["total"] = (t5 - t0) * 1e3
        return FusionResult(fused, fused_color, registered, flow, pseudo_full, timings)
