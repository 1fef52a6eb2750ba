"""Rig calibration: one thermal -> visible homography estimated jointly from many pairs.

The cameras of a rig are bolted together, so (up to depth-dependent parallax) one homography maps
every thermal pixel to the visible pixel that sees the same direction. It is estimated from the
registration network's learned global matcher (:class:`~cgrp_ros.core.align.GlobalMatcher`),
which matches every 8 x 8 cell of the visible luminance against every cell of the thermal:

1. **placement**: the thermal is put on the visible grid by a centred, aspect-keeping resize
   (the pipeline's prior) scaled by s. The matcher absorbs only about +-6 % of scale, so a few
   scales are tried (``scales``; a visible camera with a 1.6x wider view needs s = 1/1.6) and
   the one with the best mean confidence over a subset of pairs wins;
2. **matches**: per pair, the visible region that the placed thermal covers is resampled to the
   working size (the thermal then fills the grid at close to its own resolution), the matcher's
   two-pass affine estimate gives a confidence, the global search's (its own threshold, not the
   per-pair registration's; pairs below ``min_confidence`` -- night, fog, a lens cap, another
   scene -- are skipped), the local matcher (:class:`~cgrp_ros.core.align.LocalMatcher`)
   refines that affine, and its matches of every 4 x 4 cell (without a local matcher: the global
   matcher's 8 x 8 cells) that have some mass at their peak are mapped back to full-resolution
   thermal pixel -> visible pixel correspondences;
3. **fit**: the confident matches of all pairs are pooled, a homography is fitted robustly
   (OpenCV USAC/RANSAC) and refitted by least squares on the inliers;
4. **refinement**: steps 2-3 are repeated with the fitted homography as the placement; the pairs
   are then nearly aligned (what the matcher was trained for) and the cells are matched directly,
   without the matcher's own affine in between. Each pass removes about half of what is left of
   a large misalignment; on pairs that were aligned from the start it adds a few tenths of a pixel
   (the matcher's own bias on resampled images), so the default is two passes.

The result's ``median_residual_px`` is the inliers' median reprojection error in visible pixels.
Nothing here imports rclpy; ``cgrp calibrate`` is a thin adapter.
"""
from __future__ import annotations

import datetime
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .data import replaced_on_success, unwritable_reason
from .errors import InputError
from .image import footprint_problem, homography_problem

log = logging.getLogger("cgrp_ros")

DEFAULT_SCALES = (1.0, 1 / 1.25, 1 / 1.6, 1 / 2.0, 1 / 2.5, 1.25, 1.6)
CELL = 8  # the matcher's cell size in working pixels
MIN_WORKING_AREA = 256 * 320  # px: the working size the calibration's match-confidence minimum holds at
EDGE_MARGIN = 1.5  # cells: matches closer than this to the placed thermal's frame are dropped
PRESHRINK = 0.6  # thermal shrunk by area averaging first when the placement shrinks it below this
AFFINE_MARGIN = 0.05  # a homography replaces the affine fit only if its median residual is 5 % lower
# Pairs whose visible thumbnails (core.image.scene_thumbnail) differ by at most this are one scene. Each
# scene biases the matches its own way: on M3SVD val's rigs one scene alone gave 1.05-2.91 thermal px of
# corner error, two scenes 2.16, its four scenes together 0.82 (2026-12-08, scratch script); at 0.1 those
# sets count 1, 2 and 4 scenes, RoadScene val's 36 pairs 25.
SCENE_DIFFERENCE = 0.1
FEW_SCENES = 3  # cgrp calibrate warns below this many scenes


def distinct_scenes(thumbnails) -> int:
    """How many scenes a sequence of scene thumbnails shows: greedily, a thumbnail more than SCENE_DIFFERENCE
    (mean absolute difference) from every scene so far starts a new one."""
    scenes = []
    for thumbnail in thumbnails:
        if all(float(np.mean(np.abs(thumbnail - seen))) > SCENE_DIFFERENCE for seen in scenes):
            scenes.append(thumbnail)
    return len(scenes)


class CalibrationError(InputError):
    """Not enough evidence for a calibration, or a malformed calibration file."""


@dataclass
class Calibration:
    homography: np.ndarray            # 3x3, thermal pixel -> visible pixel (full resolution)
    visible_size: tuple               # (height, width)
    thermal_size: tuple               # (height, width)
    pairs_used: int = 0
    pairs_skipped: int = 0
    median_residual_px: float = float("nan")  # of the fit (to the inlier matches, or to a flow), visible pixels
    matches: int | None = None        # inlier matches of the final fit (None: not fitted to matches)
    scale: float | None = None        # the placement scale the search chose (None: no search ran)
    skipped: dict = field(default_factory=dict)  # name -> why the pair was not used
    date: str = ""
    command: str = ""
    # the check of the result that needs no ground truth, when one ran (cgrp calibrate: see
    # evaluation.rig.calibration_edge_check): edge agreement with the plain resize and with the calibration
    edge_check: dict = field(default_factory=dict)
    scenes: int | None = None         # distinct scenes among the pairs used (distinct_scenes; None: not counted)

    def to_dict(self) -> dict:
        return dict(homography=[[float(v) for v in row] for row in np.asarray(self.homography)],
                    homography_direction="thermal pixel -> visible pixel",
                    visible_size=dict(height=int(self.visible_size[0]), width=int(self.visible_size[1])),
                    thermal_size=dict(height=int(self.thermal_size[0]), width=int(self.thermal_size[1])),
                    pairs_used=int(self.pairs_used), pairs_skipped=int(self.pairs_skipped),
                    median_residual_px=round(float(self.median_residual_px), 4),
                    # a self-calibration has neither: a file must not claim a search that never ran
                    **({"inlier_matches": int(self.matches)} if self.matches is not None else {}),
                    **({"placement_scale": round(float(self.scale), 4)} if self.scale is not None else {}),
                    **({"distinct_scenes": int(self.scenes)} if self.scenes is not None else {}),
                    **({"edge_check": dict(self.edge_check)} if self.edge_check else {}),
                    skipped={str(k): str(v) for k, v in sorted(dict(self.skipped).items())},
                    date=self.date, command=self.command)


# -- files -----------------------------------------------------------------------------------------
def calibration_path_problem(path) -> str | None:
    """Why a calibration cannot be written to `path` ('it is a folder: ...', 'x is not writable'), or None;
    checked before the work that makes one, and again by save_calibration."""
    if str(path).endswith(("/", os.sep)) or Path(path).is_dir():  # Path() would drop the slash: a file 'dir'
        return f"it is a folder: give the file to write, e.g. {Path(path) / 'rig.yaml'}"
    return unwritable_reason(Path(path))


def save_calibration(calibration: Calibration, path) -> None:
    import yaml

    problem = calibration_path_problem(path)
    if problem:
        raise CalibrationError(f"cannot write {path}: {problem}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = calibration.to_dict()
    # matrix rows inline, one skipped pair (name: reason) per line
    head = {k: v for k, v in data.items() if k not in ("skipped", "date", "command")}
    tail = {k: data[k] for k in ("skipped", "date", "command")}
    try:
        with replaced_on_success(path) as tmp:
            tmp.write_text("# cgrp calibrate: rig calibration (thermal pixel -> visible pixel)\n"
                           + yaml.safe_dump(head, sort_keys=False, default_flow_style=None, width=120)
                           + yaml.safe_dump(tail, sort_keys=False, default_flow_style=False, width=120))
    except OSError as exc:  # named by the file asked for, not by the temporary one beside it
        raise CalibrationError(f"cannot write {path}: {exc.strerror or exc}") from None


def load_calibration(path) -> np.ndarray:
    """The 3x3 homography (thermal px -> visible px) of a rig.yaml; CalibrationError when malformed."""
    return load_rig(path)[0]


def load_rig(path) -> tuple:
    """(homography, sizes) of a rig.yaml: the 3x3 homography (thermal px -> visible px) and the
    ((visible H, W), (thermal H, W)) it was made at, or None where the file does not say (one written
    by hand). CalibrationError when malformed."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise CalibrationError(f"calibration file {path}: is a folder, not a rig.yaml")
    if not path.is_file():
        raise CalibrationError(f"calibration file {path}: " + ("not a regular file (a device, a pipe?)"
                                                               if path.exists() else "no such file"))
    try:
        data = yaml.safe_load(path.read_text())
    except Exception as exc:
        raise CalibrationError(f"calibration file {path}: not readable YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict) or "homography" not in data:
        raise CalibrationError(f"calibration file {path}: no 'homography' key (expected a rig.yaml written "
                               "by cgrp calibrate)")
    problem = homography_problem(data["homography"])
    if problem:
        raise CalibrationError(f"calibration file {path}: 'homography' {problem}")
    h = np.asarray(data["homography"], dtype=np.float64)
    if "visible_size" not in data and "thermal_size" not in data:
        return h, None
    try:
        sizes = tuple((int(data[key]["height"]), int(data[key]["width"])) for key in ("visible_size", "thermal_size"))
    except (KeyError, TypeError, ValueError):
        sizes = None
    if sizes is None or min(min(size) for size in sizes) < 1:
        raise CalibrationError(f"calibration file {path}: 'visible_size' and 'thermal_size' must each hold a "
                               "positive height and width")
    problem = footprint_problem(h, *sizes)
    if problem:
        raise CalibrationError(f"calibration file {path}: 'homography' {problem} at the sizes it names")
    return h, sizes


# -- geometry --------------------------------------------------------------------------------------
def centred_placement(thermal_size, visible_size, scale: float = 1.0) -> np.ndarray:
    """3x3 thermal px -> visible px: the thermal centred on the visible grid, aspect kept, fitted
    inside it (same field of view when the aspects agree), then scaled by `scale` about the centre."""
    (ht, wt), (hv, wv) = thermal_size, visible_size
    k = min(wv / wt, hv / ht) * scale
    ct, cv = ((wt - 1) / 2, (ht - 1) / 2), ((wv - 1) / 2, (hv - 1) / 2)
    return np.array([[k, 0, cv[0] - k * ct[0]], [0, k, cv[1] - k * ct[1]], [0, 0, 1.0]])


def apply_homography(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """N x 2 points through a 3x3 homography."""
    p = np.asarray(points, np.float64)
    q = np.c_[p, np.ones(len(p))] @ np.asarray(h, np.float64).T
    return q[:, :2] / q[:, 2:3]


def _snap(size: float) -> int:
    return max(2 * CELL, int(round(size / CELL)) * CELL)


# -- estimation ------------------------------------------------------------------------------------
class RigCalibrator:
    """calibrate(pairs) with pairs = [(name, visible, thermal)] (arrays, or callables returning them)."""

    def __init__(self, model_path=None, device: str = "cpu", working_size=(256, 320), scales=DEFAULT_SCALES,
                 min_confidence: float | None = None, min_pairs: int = 1, min_matches: int = 40,
                 search_pairs: int = 8, refinements: int = 2, thermal_percentiles=(1.0, 99.0),
                 agc_8bit: bool = False, black_hot: bool = False):
        """thermal_percentiles, agc_8bit, black_hot: the thermal's normalisation, as PipelineConfig's (a rig
        is calibrated on the thermal it is fused with)."""
        import torch

        from .backends import resolve_device
        from .image import check_percentiles
        from .models import default_model_path, load_model

        check_percentiles(thermal_percentiles)
        if working_size[0] * working_size[1] < MIN_WORKING_AREA:
            # the match confidence that rejects lens-cap and featureless pairs was chosen at 256x320; with
            # fewer cells chance agreement passes it (measured: black frames 0.40-0.45 at 128x160, 0.06 at
            # 256x320, against the 0.28 minimum), and a wrong rig.yaml would be written
            raise InputError(f"working size {working_size[0]}x{working_size[1]} (HxW) is too small to calibrate: use at "
                             "least 256x320 (or the same area)")
        self.torch = torch
        self.device = torch.device(resolve_device(device))  # 'cuda' without a GPU: the CPU, with a warning
        path = model_path or default_model_path("registration")
        network = load_model(path, "registration").to(self.device).eval()
        self.matcher, self.local_matcher = network.global_stage, network.local_stage
        threshold = float(self.matcher.threshold)
        self.min_confidence = float(min_confidence) if min_confidence is not None else max(threshold, 0.15)
        self.working_size = tuple(working_size)
        self.scales = tuple(scales)
        self.min_pairs, self.min_matches = int(min_pairs), int(min_matches)
        self.search_pairs, self.refinements = int(search_pairs), int(refinements)
        self.thermal_normalization = (tuple(thermal_percentiles), bool(agc_8bit), bool(black_hot))

    def _size_hint(self) -> str:
        """For a 'not enough evidence' error at a working size above the default: the size may be why."""
        if self.working_size[0] * self.working_size[1] <= MIN_WORKING_AREA:
            return ""
        return (f", or the working size: the match-confidence minimum was chosen at 256x320, and at "
                f"{self.working_size[0]}x{self.working_size[1]} fewer pairs reach it (try the default)")

    # one pair, one placement ------------------------------------------------------------------
    def _prepare(self, visible, thermal):
        from .image import check_image, luminance, thermal_for_networks, visible_to_bgr01

        y = luminance(visible_to_bgr01(check_image(visible, "visible")))
        return y, thermal_for_networks(check_image(thermal, "thermal"), *self.thermal_normalization)

    def _view(self, vis_y, th, placement):
        """Resample the visible region inside the thermal placed by `placement` (thermal px -> visible px) and the thermal
        onto one working grid. -> (visible crop, placed thermal, W: visible px -> working px) or None."""
        (hv, wv), (ht, wt) = vis_y.shape, th.shape
        frame = apply_homography(placement, [[-0.5, -0.5], [wt - 0.5, -0.5], [wt - 0.5, ht - 0.5], [-0.5, ht - 0.5]])
        # the axis-aligned box inside the placed thermal's frame (corners TL, TR, BR, BL), within the
        # visible frame: black around a rotated thermal would be matched too, and bias the fit
        x0 = max(0, int(math.ceil(max(frame[0, 0], frame[3, 0]))))
        x1 = min(wv, int(math.floor(min(frame[1, 0], frame[2, 0]))))
        y0 = max(0, int(math.ceil(max(frame[0, 1], frame[1, 1]))))
        y1 = min(hv, int(math.floor(min(frame[2, 1], frame[3, 1]))))
        if x1 - x0 < 4 * CELL or y1 - y0 < 4 * CELL:
            return None
        k = min(self.working_size[0] / (y1 - y0), self.working_size[1] / (x1 - x0))
        h, w = _snap((y1 - y0) * k), _snap((x1 - x0) * k)
        sx, sy = w / (x1 - x0), h / (y1 - y0)
        to_work = np.array([[sx, 0, (0.5 - x0) * sx - 0.5], [0, sy, (0.5 - y0) * sy - 0.5], [0, 0, 1.0]])
        crop = cv2.resize(vis_y[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_AREA)
        t2w = to_work @ placement
        shrink = math.sqrt(abs(np.linalg.det(t2w[:2, :2])))
        source = th
        if shrink < PRESHRINK:  # pre-shrink so bilinear warping does not alias
            f = max(shrink * 1.25, 1.0 / min(th.shape))
            source = cv2.resize(th, (max(1, round(wt * f)), max(1, round(ht * f))), interpolation=cv2.INTER_AREA)
            fx, fy = source.shape[1] / wt, source.shape[0] / ht
            small_to_th = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1.0]])
            t2w_src = t2w @ small_to_th
        else:
            t2w_src = t2w
        placed = cv2.warpPerspective(source, t2w_src, (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return crop, placed, to_work, t2w

    def _tensors(self, crop, placed):
        """The visible crop and the placed thermal (H x W) as the matchers' 1 x 1 x H x W inputs."""
        return tuple(self.torch.from_numpy(np.ascontiguousarray(image))[None, None].to(self.device)
                     for image in (crop, placed))

    def _confidence(self, vis_y, th, placement) -> float:
        """The global search's confidence for one pair and placement (0 where the placement leaves too
        little overlap): what the scale search compares, and the first output of :meth:`_match`."""
        view = self._view(vis_y, th, placement)
        if view is None:
            return 0.0
        with self.torch.no_grad():
            return float(self.matcher.estimate(*self._tensors(*view[:2]))[1][0])

    def _match(self, vis_y, th, placement, direct: bool = False):
        """-> (confidence, thermal px N x 2, visible px N x 2) for one pair and placement."""
        from .align import apply_affine, pixels_per_unit, warp_affine
        torch = self.torch

        view = self._view(vis_y, th, placement)
        empty = np.zeros((0, 2))
        if view is None:
            return 0.0, empty, empty
        crop, placed, to_work, t2w = view
        # matches of the local matcher (1/4 resolution) where the network has one, else the global
        # matcher's (1/8); a match must lie within `consistent` cells of the pair's own affine
        local = self.local_matcher is not None
        matcher, consistent = (self.local_matcher, 2.5) if local else (self.matcher, 1.5)
        with torch.no_grad():
            v, t = self._tensors(crop, placed)
            params, confidence = self.matcher.estimate(v, t)
            if direct:  # the placement is already close: match the placed thermal itself
                params = torch.zeros_like(params)
            elif local:
                params, _ = self.local_matcher.refine(v, t, params)
            prob, cells = matcher.correlation(v, warp_affine(t, params))
            position, weight = matcher.matches(prob, cells)
            residual_cells = ((position - cells.flatten(2)) * pixels_per_unit(cells).flatten(2)).pow(2).sum(1).sqrt()
            position = apply_affine(params, position[:, :, :, None])[:, :, :, 0]  # into the placed thermal
        h, w = crop.shape
        uv = position[0].cpu().numpy().T.astype(np.float64)            # P x 2 normalised (placed thermal)
        cv = cells.flatten(2)[0].cpu().numpy().T.astype(np.float64)    # P x 2 normalised (visible crop)
        to_px = lambda q: np.c_[((q[:, 0] + 1) * w - 1) / 2, ((q[:, 1] + 1) * h - 1) / 2]  # noqa: E731
        thermal_px = apply_homography(np.linalg.inv(t2w), to_px(uv))
        visible_px = apply_homography(np.linalg.inv(to_work), to_px(cv))
        wts = weight[0].cpu().numpy().astype(np.float64)
        res = residual_cells[0].cpu().numpy()
        # only cells well inside the placed thermal, on both sides: near the thermal's frame (or in the
        # black around it) a cell can only match inwards, which biases the fit towards a smaller thermal
        margin = EDGE_MARGIN * CELL
        valid = cv2.warpPerspective(np.ones(th.shape, np.float32), t2w, (w, h), flags=cv2.INTER_NEAREST,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        valid = cv2.erode(valid, np.ones((2 * int(margin) + 1,) * 2, np.uint8), borderType=cv2.BORDER_CONSTANT,
                          borderValue=0) > 0.5  # the grid's own border counts as a frame too
        def inside(q):
            qx = np.clip(np.round(q[:, 0]).astype(int), 0, w - 1)
            qy = np.clip(np.round(q[:, 1]).astype(int), 0, h - 1)
            return valid[qy, qx] & (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)
        # a match consistent with the pair's own affine (within `consistent` cells) and with some mass at its peak
        keep = inside(to_px(uv)) & inside(to_px(cv)) & (res < consistent) & (wts > 0.05)
        return float(confidence[0]), thermal_px[keep], visible_px[keep]

    # all pairs ---------------------------------------------------------------------------------
    def calibrate(self, pairs, progress=None, command: str = "") -> Calibration:
        """pairs: [(name, visible, thermal)], images as arrays or zero-argument callables (loaded on
        demand, so a long folder is not held in memory). `progress(iterable, total, desc)` wraps loops
        (e.g. tqdm). Raises CalibrationError when the evidence does not suffice."""
        progress = progress or (lambda it, total, desc: it)
        pairs = list(pairs)
        if not pairs:
            raise CalibrationError("no visible/thermal pairs to calibrate from")
        if len(pairs) < self.min_pairs:  # not the scenes' fault: too few were given
            raise CalibrationError(f"{len(pairs)} pair(s) to calibrate from, fewer than the {self.min_pairs} asked "
                                   "for (min_pairs, cgrp calibrate --min-pairs): give more pairs")
        self.history = []  # the fitted homography of every round
        self.best_pair = None  # name of the most confident pair of the last round
        self.unreadable = []   # names of the pairs whose images could not be read (also in `skipped`)
        load = self._loader(pairs)
        skipped = {}
        usable, visible_size, thermal_size = self._rig_pairs(pairs, load, skipped)
        try:
            best_scale = self._placement_scale(usable, load, visible_size, thermal_size, progress)
            placement = centred_placement(thermal_size, visible_size, best_scale)
            h, inliers, residual, used = self._fit(pairs, usable, load, placement, visible_size, thermal_size,
                                                   skipped, progress)
        except CalibrationError as exc:
            if not skipped:
                raise
            # the evidence may be missing because pairs were never matched: say which and why
            reasons = "; ".join(f"{name}: {why}" for name, why in list(skipped.items())[:3])
            more = f"; ... {len(skipped) - 3} more" if len(skipped) > 3 else ""
            raise CalibrationError(f"{exc}. Not matched at all, {len(skipped)} of {len(pairs)} pair(s): "
                                   f"{reasons}{more}") from None
        names = set(used)
        scenes = distinct_scenes(self._thumbnails[i] for i, (name, _, _) in enumerate(pairs)
                                 if name in names and i in self._thumbnails)  # (a name twice, one unreadable)
        return Calibration(h, tuple(visible_size), tuple(thermal_size), len(used), len(pairs) - len(used),
                           float(np.median(residual)), int(inliers.sum()), best_scale, dict(sorted(skipped.items())),
                           datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), command,
                           scenes=scenes)

    def _loader(self, pairs):
        """load(i) -> (visible luminance, normalised thermal) of pairs[i], the last 64 kept in memory
        (recomputing is cheap), each pair's scene thumbnail kept in `_thumbnails`. Raises InputError for an
        unreadable pair."""
        from .image import scene_thumbnail

        cache, self._thumbnails = {}, {}

        def load(i):
            if i not in cache:
                name, v, t = pairs[i]
                v = v() if callable(v) else v
                t = t() if callable(t) else t
                cache[i] = self._prepare(v, t)
                self._thumbnails[i] = scene_thumbnail(v)
                if len(cache) > 64:
                    cache.pop(next(iter(cache)))
            return cache[i]
        return load

    def _rig_pairs(self, pairs, load, skipped):
        """-> (indices of the pairs of the rig's sizes, visible size, thermal size); the others go into
        `skipped` (name -> why). The rig's sizes are those most pairs have (the first pair's on a tie):
        one stray frame of another camera at the start of a folder must not make every other pair "the
        wrong size"."""
        sizes = {}
        for i, (name, _, _) in enumerate(pairs):
            try:
                v, t = load(i)
            except InputError as exc:
                skipped[name] = f"unreadable: {exc}"
                self.unreadable.append(name)
                continue
            sizes[i] = (v.shape, t.shape)
        if not sizes:
            raise CalibrationError("no usable pair: " + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]))
        (visible_size, thermal_size), _ = Counter(sizes.values()).most_common(1)[0]
        usable = []
        for i, (v_shape, t_shape) in sizes.items():
            if (v_shape, t_shape) != (visible_size, thermal_size):
                skipped[pairs[i][0]] = (f"size {v_shape[1]}x{v_shape[0]} / {t_shape[1]}x{t_shape[0]} differs from the "
                                        f"rig's {visible_size[1]}x{visible_size[0]} / "
                                        f"{thermal_size[1]}x{thermal_size[0]} (visible / thermal)")
                continue
            usable.append(i)
        return usable, visible_size, thermal_size

    def _placement_scale(self, usable, load, visible_size, thermal_size, progress) -> float:
        """Step 1: the placement scale with the best mean confidence over an evenly spread subset of
        `search_pairs` pairs. Raises CalibrationError when no pair is confident at any scale."""
        subset = [usable[int(j)] for j in np.unique(np.linspace(0, len(usable) - 1, min(self.search_pairs,
                                                                                       len(usable))).round())]
        scores = {}
        jobs = [(s, i) for s in self.scales for i in subset]
        for s, i in progress(jobs, len(jobs), "calibrate: scale search"):
            v, t = load(i)  # only the confidence counts here: the matches would be dropped
            scores.setdefault(s, []).append(self._confidence(v, t, centred_placement(thermal_size, visible_size, s)))
        best_scale = max(scores, key=lambda s: float(np.mean(scores[s])))
        if float(np.max(scores[best_scale])) < self.min_confidence:
            raise CalibrationError(
                f"not enough evidence: no pair reached match confidence {self.min_confidence:.2f} at any "
                f"placement scale (best {float(np.max(scores[best_scale])):.2f}); the pairs carry no structure "
                f"both cameras see (night, fog, a lens cap, featureless images?){self._size_hint()}")
        return best_scale

    def _fit(self, pairs, usable, load, placement, visible_size, thermal_size, skipped, progress):
        """Steps 2-4: the matches of every usable pair at `placement`, one robust fit of all of them,
        then `refinements` more rounds with the fit as the placement. A round that loses its evidence
        keeps the previous round's fit. Pairs too unsure in the last round go into `skipped`.
        -> (homography, inlier mask, inlier residuals in visible px, names of the pairs used)."""
        h = None
        for round_ in range(1 + self.refinements):
            src, dst, used, low, confidences = [], [], [], {}, {}
            desc = f"calibrate: matching, pass {round_ + 1} of {1 + self.refinements}"
            for i in progress(usable, len(usable), desc):
                name = pairs[i][0]
                v, t = load(i)
                conf, tp, vp = self._match(v, t, placement, direct=round_ > 0)
                if conf < self.min_confidence or len(tp) < 4:
                    low[name] = f"match confidence {conf:.2f} below {self.min_confidence:.2f}"
                    continue
                used.append(name)
                confidences[name] = conf
                src.append(tp), dst.append(vp)
            if len(used) < self.min_pairs or sum(len(s) for s in src) < self.min_matches:
                if h is not None:  # a refinement lost its evidence: keep the previous round's fit
                    break
                why = ("the pairs carry too little structure both cameras see" + self._size_hint()
                       if len(used) < len(usable) else
                       f"each of the {len(usable)} usable pair(s) matched: give more pairs")
                raise CalibrationError(
                    f"not enough evidence: {len(used)} of {len(pairs)} pair(s) matched with confidence >= "
                    f"{self.min_confidence:.2f} ({sum(len(s) for s in src)} matches; need {self.min_pairs} pair(s) "
                    f"and {self.min_matches} matches); {why}")
            src, dst = np.concatenate(src), np.concatenate(dst)
            fit = fit_homography(src, dst, placement, thermal_size, self.working_size)
            if fit is None:
                if h is not None:
                    break
                raise CalibrationError(f"not enough evidence: no consistent homography in {len(src)} matches "
                                       f"of {len(used)} pair(s)")
            h, inliers, residual = fit
            self.history.append(h)
            used_final, low_final = used, low
            self.best_pair = max(confidences, key=confidences.get)
            placement = h
        skipped.update(low_final)
        return h, inliers, residual, used_final


def fit_homography(src, dst, placement, thermal_size, working_size):
    """Robust homography src (N x 2 thermal px) -> dst (N x 2 visible px): USAC (RANSAC where OpenCV lacks
    it), then least squares on the inliers; `placement` (3x3, thermal px -> visible px), `thermal_size` and
    `working_size` ((H, W) each) set the threshold: half a working cell in visible px.
    -> (3x3 H, N bool inlier mask, inlier residuals in visible px) or None."""
    if len(src) < 8:
        return None
    # one working cell, in visible pixels, at the current placement: the matches' noise scale
    (ht, wt), k = thermal_size, math.sqrt(abs(np.linalg.det(np.asarray(placement)[:2, :2])))
    cell_px = CELL * max(wt * k / working_size[1], ht * k / working_size[0])
    threshold = max(1.0, 0.5 * cell_px)
    method = getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)
    h, mask = cv2.findHomography(src.astype(np.float32), dst.astype(np.float32), method, threshold,
                                 maxIters=5000, confidence=0.999)
    if h is None or mask is None or mask.sum() < 8:
        return None
    inliers = mask.ravel().astype(bool)
    s, d = src[inliers].astype(np.float64), dst[inliers].astype(np.float64)
    refit, _ = cv2.findHomography(s, d, 0)
    if refit is not None and np.all(np.isfinite(refit)):
        h = refit
    h = h / h[2, 2]
    residual = np.linalg.norm(apply_homography(h, s) - d, axis=1)
    # model selection: the perspective terms must earn their keep. With a few pairs' matches (their
    # errors correlated within a pair) a free homography turns that noise into a visible tilt at the
    # frame's corners; an affine least-squares fit is kept unless the homography explains the
    # inliers clearly better (median residual more than AFFINE_MARGIN lower).
    design = np.c_[s, np.ones(len(s))]
    coef, *_ = np.linalg.lstsq(design, d, rcond=None)
    affine = np.vstack((coef.T, [0.0, 0.0, 1.0]))
    affine_residual = np.linalg.norm(apply_homography(affine, s) - d, axis=1)
    if np.median(residual) > (1.0 - AFFINE_MARGIN) * np.median(affine_residual):
        h, residual = affine, affine_residual
    return h, inliers, residual


def homography_from_flow(flow: np.ndarray, visible_to_thermal: np.ndarray, thermal_size, step: int = 8):
    """The thermal px -> visible px homography that best explains a registration flow.

    flow: H x W x 2 (visible px) on top of the prior `visible_to_thermal` (3x3, visible px -> thermal
    px), i.e. visible pixel p sees thermal pixel prior(p + flow(p)). Sampled every `step` px where
    that lands inside the thermal. -> (H, median residual in visible px); CalibrationError when the
    flow lands in the thermal too rarely."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[step // 2:height:step, step // 2:width:step]
    visible = np.stack((xs.ravel(), ys.ravel()), axis=1).astype(np.float64)
    moved = visible + flow[ys.ravel(), xs.ravel()].astype(np.float64)
    thermal = apply_homography(visible_to_thermal, moved)
    (ht, wt) = thermal_size
    inside = (thermal[:, 0] >= 0) & (thermal[:, 0] <= wt - 1) & (thermal[:, 1] >= 0) & (thermal[:, 1] <= ht - 1)
    if inside.sum() < 16:
        raise CalibrationError("the rig estimate lands inside the thermal image at too few pixels")
    h, _ = cv2.findHomography(thermal[inside], visible[inside], 0)
    if h is None or not np.all(np.isfinite(h)):
        raise CalibrationError("no homography fits the rig estimate")
    h = h / h[2, 2]
    residual = np.linalg.norm(apply_homography(h, thermal[inside]) - visible[inside], axis=1)
    return h, float(np.median(residual))
