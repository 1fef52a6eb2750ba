"""Fixed-rig evaluation: one misalignment for a whole sequence, per-frame vs amortised registration.

A rig keeps one misalignment, so `cgrp eval --rig` warps every thermal frame of a sequence by the
same displacement (drawn once per sequence and preset from ``rng_for(seed, sequence + preset)``)
and plays the frames in order at `fps`. Each mode registers the stream:

    per-frame   StreamPipeline(registration_rate=0): every frame registered alone
    amortised   StreamPipeline(registration_rate=R): full registration at R Hz (stream time) or on a
                scene change, the running rig estimate (core.stream.RigFlow) used for every frame

and is scored per frame against the one true flow:

    EPE        mean end-point error (visible px) over the observable pixels, averaged over frames
    shimmer    mean frame-to-frame change of the flow (px): how much a static rig's output trembles
    jump       the largest frame-to-frame change (px), e.g. when the amortised estimate updates
    converged  stream time (s) from the first frame until the rig estimate first reports
               'converged' (amortised mode only)

Sequences are the names' common prefix before a trailing frame number (``val_0111_1753_0004`` ->
``val_0111_1753``), frames sorted by that number.
"""
from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from ..core.calibrate import RigCalibrator, apply_homography, centred_placement
from ..core.data import read_image
from ..core.deform import misalign, rng_for
from ..core.errors import InputError
from ..core.image import luminance, normalize_thermal, resize_homography
from ..core.warp import valid_mask, warp_numpy
from . import metrics as M
from .evaluate import thermal_to_uint8

MODES = ("per-frame", "amortised")


# -- synthetic rigs: one data set seen by a rig of known geometry ---------------------------------------
def corner_error(estimate: np.ndarray, truth: np.ndarray, thermal_size) -> float:
    """Mean distance, in thermal pixels, between the thermal frame's corners and where they land when
    mapped to the visible image by `estimate` and back by `truth`."""
    ht, wt = thermal_size
    corners = np.array([[0, 0], [wt - 1, 0], [wt - 1, ht - 1], [0, ht - 1]], np.float64)
    back = apply_homography(np.linalg.inv(truth) @ estimate, corners)
    return float(np.linalg.norm(back - corners, axis=1).mean())


def similarity_about_centre(size, rotation_deg=0.0, scale=1.0, shift=(0.0, 0.0)) -> np.ndarray:
    """3x3 pixel map of an image of `size` (H, W): rotate and scale about its centre, then shift (px)."""
    h, w = size
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = math.radians(rotation_deg)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = c - r @ c + np.asarray(shift, np.float64)
    return m


def synthetic_rig(visible, thermal, misalignment=None, fov: float = 1.0, visible_pixels: float = 1.0, size=None):
    """Turn an aligned pair into a pair of a synthetic rig with a known thermal -> visible homography.

    Both images are first resized to `size` (H, W; default the thermal's). The rig's thermal sees the
    central 1/`fov` of that view at `size` pixels, moved by `misalignment` (3x3: rig thermal px ->
    px of that central view); the rig's visible camera sees the whole view at `visible_pixels` times
    `size`. Returns (visible, thermal, truth: 3x3 rig thermal px -> rig visible px)."""
    size = tuple(size or thermal.shape[:2])
    h, w = size
    vb = cv2.resize(visible, (w, h), interpolation=cv2.INTER_AREA)
    tb = cv2.resize(thermal, (w, h), interpolation=cv2.INTER_AREA)
    g = np.eye(3) if misalignment is None else np.asarray(misalignment, np.float64)
    crop = similarity_about_centre(size, 0.0, 1.0 / fov)        # central view px -> base px
    th = cv2.warpPerspective(tb, crop @ g, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    hv, wv = round(h * visible_pixels), round(w * visible_pixels)
    vis = cv2.resize(vb, (wv, hv), interpolation=cv2.INTER_AREA if visible_pixels < 1 else cv2.INTER_LINEAR)
    return vis, th, resize_homography((h, w), (hv, wv)) @ crop @ g


def sequences(pairs) -> dict:
    """{sequence: [(name, visible_path, thermal_path)] in frame order} from list_pairs' triples."""
    grouped = defaultdict(list)
    for name, visible, thermal in pairs:
        match = re.fullmatch(r"(.*?)[_-]?(\d+)", name)
        key, frame = (match.group(1), int(match.group(2))) if match else (name, 0)
        grouped[key].append((frame, name, visible, thermal))
    return {key: [item[1:] for item in sorted(frames)] for key, frames in sorted(grouped.items())}


@dataclass
class ModeResult:
    """One mode on one sequence: per-frame EPE (px) and the flow changes between frames (px)."""
    epe: list = field(default_factory=list)
    changes: list = field(default_factory=list)
    registrations: int = 0
    converged_s: float | None = None
    ms_per_frame: float = 0.0

    def summary(self) -> dict:
        mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
        return dict(epe=mean(self.epe), shimmer=mean(self.changes),
                    jump=float(max(self.changes)) if self.changes else float("nan"),
                    registrations=self.registrations, frames=len(self.epe), converged_s=self.converged_s,
                    ms_per_frame=self.ms_per_frame)


def _load_sequence(frames, preset: str, seed: int, key: str):
    """[(visible, misaligned thermal)] of one sequence, all warped by its one Misalignment (the truth)."""
    loaded, truth = [], None
    for name, visible_path, thermal_path in frames:
        visible = read_image(visible_path)
        aligned = thermal_to_uint8(read_image(thermal_path), luminance(visible).shape)
        if truth is None:
            truth = misalign(aligned, preset, rng_for(seed, key + preset))
        elif aligned.shape != truth.misaligned.shape:  # not frames of one video: no one misalignment fits
            first = truth.misaligned.shape
            raise InputError(f"--rig: sequence '{key}' (frames named {key}_NNNN) mixes image sizes: {name} is "
                             f"{aligned.shape[1]}x{aligned.shape[0]}, its first frame {first[1]}x{first[0]}; "
                             "--rig takes video sequences of one camera pair")
        loaded.append((visible, warp_numpy(aligned, truth.displacement)))
    return loaded, truth


def run_mode(pipeline, frames, truth, registration_rate: float, fps: float) -> ModeResult:
    """Play `frames` [(visible, thermal)] at `fps` through a StreamPipeline; score every frame."""
    from ..core.stream import CONVERGED, StreamPipeline  # here: it loads torch, which `cgrp eval`'s checks do without

    stream = StreamPipeline(pipeline, registration_rate)
    result = ModeResult()
    previous = None
    start = time.perf_counter()
    for index, (visible, thermal) in enumerate(frames):
        stamp = index / fps
        flow = stream(visible, thermal, outputs=frozenset({"fused"}), stamp=stamp).flow
        region = truth.valid & valid_mask(flow)
        result.epe.append(float(M.endpoint_error(flow, truth.flow)[region].mean()) if region.any() else float("nan"))
        if previous is not None:
            result.changes.append(float(M.endpoint_error(flow, previous).mean()))
        previous = flow
        if result.converged_s is None and registration_rate > 0 and stream.rig.state == CONVERGED:
            result.converged_s = stamp
    result.ms_per_frame = (time.perf_counter() - start) * 1e3 / max(len(frames), 1)
    result.registrations = stream.registrations
    return result


def evaluate_rig(pipeline, pairs, presets, seed: int = 0, fps: float = 10.0, registration_rate: float = 1.0,
                 progress: bool = True) -> dict:
    """{'rows': [{sequence, preset, mode, epe, shimmer, jump, ...}], 'per_frame_epe': {...}} for
    every sequence of `pairs` x preset x mode, plus one 'all' row per preset and mode (frame-weighted)."""
    grouped = sequences(pairs)
    rows, curves = [], {}
    jobs = [(key, preset) for preset in presets for key in grouped]
    for index, (key, preset) in enumerate(tqdm(jobs, desc="cgrp eval --rig", unit="sequence", disable=not progress)):
        frames, truth = _load_sequence(grouped[key], preset, seed, key)
        if index == 0:  # warm-up, so the first sequence's ms per frame is not the models' first call
            pipeline(*frames[0])
        for mode in MODES:
            rate = 0.0 if mode == "per-frame" else registration_rate
            result = run_mode(pipeline, frames, truth, rate, fps)
            rows.append(dict(sequence=key, preset=preset, mode=mode, **result.summary(),
                             epe_none=float(M.endpoint_error(np.zeros_like(truth.flow), truth.flow)[truth.valid].mean())))
            curves[f"{key}/{preset}/{mode}"] = result.epe
    for preset in presets:
        for mode in MODES:
            mine = [r for r in rows if r["preset"] == preset and r["mode"] == mode and r["sequence"] != "all"]
            frames = np.array([r["frames"] for r in mine], np.float64)
            weighted = lambda column: float(np.sum([r[column] * r["frames"] for r in mine]) / frames.sum())  # noqa: E731
            converged = [r["converged_s"] for r in mine if r["converged_s"] is not None]
            rows.append(dict(sequence="all", preset=preset, mode=mode, epe=weighted("epe"),
                             shimmer=weighted("shimmer"), jump=max(r["jump"] for r in mine),
                             registrations=sum(r["registrations"] for r in mine), frames=int(frames.sum()),
                             converged_s=max(converged) if len(converged) == len(mine) and mine and mode != "per-frame"
                             else None,
                             ms_per_frame=weighted("ms_per_frame"), epe_none=weighted("epe_none")))
    return dict(rows=rows, per_frame_epe=curves, fps=fps, registration_rate=registration_rate, seed=seed)


def rig_markdown(document: dict) -> str:
    """The 'all' rows of each preset side by side: per-frame vs amortised, and the ratio."""
    from .report import markdown_table

    header = ["preset", "mode", "frames", "registrations", "EPE px (unregistered)", "shimmer px", "largest jump px",
              "converged after s", "ms per frame"]
    table = []
    for row in document["rows"]:
        if row["sequence"] != "all":
            continue
        converged = "—" if row["mode"] == "per-frame" else (
            f"{row['converged_s']:.1f}" if row["converged_s"] is not None else "not in every sequence")
        table.append([row["preset"], row["mode"], row["frames"], row["registrations"],
                      f"{row['epe']:.2f} ({row['epe_none']:.2f})", f"{row['shimmer']:.3f}", f"{row['jump']:.2f}",
                      converged, f"{row['ms_per_frame']:.0f}"])
    lines = [markdown_table(header, table), ""]
    per_sequence = sorted({r["sequence"] for r in document["rows"]} - {"all"})
    if len(per_sequence) > 1:
        cells = {(r["sequence"], r["preset"], r["mode"]): r for r in document["rows"]}
        presets = list(dict.fromkeys(r["preset"] for r in document["rows"]))
        lines += ["Per sequence: EPE px per-frame / amortised (unregistered):", "",
                  markdown_table(["sequence"] + presets, [
                      [f"`{seq}`"] + [f"{cells[seq, pr, 'per-frame']['epe']:.2f} / {cells[seq, pr, 'amortised']['epe']:.2f} "
                                      f"({cells[seq, pr, 'per-frame']['epe_none']:.2f})" for pr in presets]
                      for seq in per_sequence]), ""]
    for preset in dict.fromkeys(r["preset"] for r in document["rows"]):
        by_mode = {r["mode"]: r for r in document["rows"] if r["preset"] == preset and r["sequence"] == "all"}
        per_frame, amortised = by_mode["per-frame"], by_mode["amortised"]
        if per_frame["epe"] > 0:
            ratio = amortised["epe"] / per_frame["epe"]
            epe = f"amortised EPE = {ratio:.2f} × per-frame ({'within' if ratio <= 1.1 else 'NOT within'} 10 %)"
        else:
            epe = f"amortised EPE {amortised['epe']:.2f} px, per-frame {per_frame['epe']:.2f} px"
        higher = "not higher" if amortised["shimmer"] <= per_frame["shimmer"] else "HIGHER"
        lines.append(f"- `{preset}`: {epe}; shimmer {amortised['shimmer']:.3f} vs {per_frame['shimmer']:.3f} px "
                     f"({higher})")
    return "\n".join(lines)


def epe_over_time_figure(document: dict, preset: str) -> np.ndarray:
    """BGR picture: EPE (px) against stream time (s) of every sequence of `preset`, per-frame registration
    (grey) and amortised (red), the unregistered EPE dashed-level in light grey for scale."""
    from .report import line_figure

    fps, lines, top, longest = document["fps"], [], 1.0, 1.0
    colors = {"per-frame": (150, 150, 150), "amortised": (40, 40, 220)}
    for row in document["rows"]:
        if row["preset"] != preset or row["sequence"] == "all":
            continue
        curve = document["per_frame_epe"][f"{row['sequence']}/{preset}/{row['mode']}"]
        times = np.arange(len(curve)) / fps
        lines.append((times, curve, colors[row["mode"]], 2 if row["mode"] == "amortised" else 1))
        top = max(top, float(np.nanmax(curve)) if len(curve) else 0.0, row["epe_none"])
        longest = max(longest, float(times[-1]) if len(times) else 0.0)
        lines.insert(0, ([0.0, times[-1]], [row["epe_none"]] * 2, (215, 215, 215), 1))
    return line_figure(lines, (0.0, longest), (0.0, top * 1.05), f"flow EPE over time, one fixed {preset} "
                       f"misalignment per sequence", "stream time (s)", "EPE px",
                       legend=[("per-frame", colors["per-frame"]), ("amortised", colors["amortised"]),
                               ("unregistered", (215, 215, 215))], y_format="{:.1f}")


# -- calibration on a synthetic rig of another resolution and field of view -----------------------------
def synthetic_rig_misalignment(size) -> np.ndarray:
    """ONE fixed `severe`-sized similarity (3x3, rig thermal px -> central view px): rotation 5 deg,
    scale 1.06, a shift of 6 % of the width in x and y about the centre (the preset's bounds without
    its elastic part, which no homography models)."""
    return similarity_about_centre(size, 5.0, 1.06, (0.06 * size[1], 0.06 * size[1]))


def thermal_through(visible: np.ndarray, thermal: np.ndarray, homographies):
    """The thermal in the visible camera through each 3x3 homography (thermal px -> visible px), one
    interpolation each, cut to the box around where all of them see: (visible luminance, [thermal],
    seen: bool), all of the box's size; None where they share no pixel."""
    visible_y = luminance(visible)
    size = visible_y.shape[::-1]
    seen = np.ones(visible_y.shape, bool)
    warped = []
    for homography in homographies:
        warped.append(cv2.warpPerspective(thermal, homography, size, flags=cv2.INTER_LINEAR))
        seen &= cv2.warpPerspective(np.full(thermal.shape[:2], 255, np.uint8), homography, size,
                                    flags=cv2.INTER_NEAREST) > 0
    if not seen.any():
        return None
    ys, xs = np.nonzero(seen)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return visible_y[box], [image[box] for image in warped], seen[box]


def footprint_edge_agreement(visible: np.ndarray, thermal: np.ndarray, homographies) -> list:
    """metrics.edge_agreement of the visible luminance with the thermal mapped by each 3x3 homography,
    on thermal_through's box (so the mappings compare fairly): which mapping lines the two cameras'
    edges up best, no ground truth needed."""
    mapped = thermal_through(visible, thermal, homographies)
    return [float("nan")] * len(homographies) if mapped is None else _edge_scores(*mapped)


def _edge_scores(visible_y, warped, seen) -> list:
    return [M.edge_agreement(visible_y, image, seen) for image in warped]


def resize_and_calibration(calibration) -> tuple:
    """The two thermal -> visible homographies `cgrp calibrate`'s edge check compares: the plain resize
    (what an uncalibrated run assumes) and the calibration's."""
    return resize_homography(calibration.thermal_size, calibration.visible_size), calibration.homography


def calibration_edges_picture(visible: np.ndarray, thermal: np.ndarray, calibration, title: str):
    """report.alignment_panel of one pair through the plain resize and through the calibration, on the
    box where both see (BGR uint8; None where they share no pixel): `cgrp calibrate`'s rig_edges.jpg."""
    from .report import alignment_panel

    mapped = thermal_through(visible, normalize_thermal(thermal), resize_and_calibration(calibration))
    if mapped is None:
        return None
    scores = _edge_scores(*mapped)
    visible_y, warped, seen = mapped
    views = [(warped[0], f"plain resize, edges {scores[0]:.3f}"), (warped[1], f"calibration, edges {scores[1]:.3f}")]
    return alignment_panel(visible_y, views, title, seen)


def calibration_edge_check(pairs, calibration, progress=None) -> dict:
    """`cgrp calibrate`'s check of its own result, no ground truth needed: on every pair the
    calibration used (pairs: [(name, visible, thermal)], arrays or zero-argument loaders),
    footprint_edge_agreement of the plain resize and of the calibration's homography. Returns the two
    means (`resize`, `calibration`), on how many pairs the calibration scored better / worse by more
    than metrics.EDGE_MARGIN_OF_DIFFERENCE, and how many pairs were scored."""

    progress = progress or (lambda it, total, desc: it)
    used = [p for p in pairs if p[0] not in calibration.skipped]
    mappings = resize_and_calibration(calibration)
    scores = []
    for name, visible, thermal in progress(used, len(used), "calibrate: edge check"):
        visible = visible() if callable(visible) else visible
        thermal = normalize_thermal(thermal() if callable(thermal) else thermal)
        scores.append(footprint_edge_agreement(visible, thermal, mappings))
    compared = M.edge_comparison(*np.array(scores, np.float64).reshape(-1, 2).T)
    return dict(resize=round(compared["before"], 4), calibration=round(compared["after"], 4),
                calibration_better_on=compared["better"], calibration_worse_on=compared["worse"],
                pairs_scored=compared["scored"])


MUTUAL_INFORMATION_BINS = 64  # grey levels per axis of the joint histogram (256 would leave it sparse)


def footprint_mutual_information(visible: np.ndarray, thermal: np.ndarray, homographies,
                                 bins: int = MUTUAL_INFORMATION_BINS) -> list:
    """metrics.mutual_information (bits) of the visible luminance with the thermal mapped by each 3x3
    homography, on thermal_through's box less its outer 2 px (where the warp blends in the black beyond
    the thermal's frame): a judge of the mapping that reads grey levels, not edges, so it shares no
    bias with the edge check or the networks' matchers."""

    mapped = thermal_through(visible, normalize_thermal(thermal) * 255.0, homographies)
    if mapped is None:
        return [float("nan")] * len(homographies)
    visible_y, warped, seen = mapped
    seen = cv2.erode(seen.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    if not seen.any():
        return [float("nan")] * len(homographies)
    return [M.mutual_information(visible_y, image, seen, bins) for image in warped]


# The judges alignment_fit can search with: name -> (score function, name in reports)
FIT_JUDGES = {"edge": (footprint_edge_agreement, "edge fit"), "mi": (footprint_mutual_information, "MI fit")}

# (shift step in thermal px, scale step, steps to each side): a coarse grid, then a fine one around its best
FIT_GRIDS = ((0.5, 0.004, (3, 2)), (0.125, 0.001, (2, 2)))


def alignment_fit(rig, start: np.ndarray, thermal_size, judge: str = "edge", progress=None) -> np.ndarray | None:
    """The thermal -> visible homography near `start` (3x3) that a no-ground-truth judge scores best
    over all pairs of one rig together, without the networks: `start` after a shift (dx, dy) and one
    scale of the thermal about its centre, searched on FIT_GRIDS (±1.5 px, ±0.8 %) by the sum over the
    pairs of FIT_JUDGES[judge] (edge: footprint_edge_agreement; mi: footprint_mutual_information).
    rig: [(name, visible, thermal)]; pairs without a score at every candidate are left out; None when
    no pair is left.

    A second opinion on where a data set's own alignment lies, for `cgrp eval --rig --calibrate
    --edge-fit / --mi-fit`: a local search around a known mapping, not an estimator to ship (searched
    widely, a hand-made cross-modal score can peak at wrong warps, issue 9). About 370 warps per pair."""
    score, label = FIT_JUDGES[judge]
    progress = progress or (lambda it, total, desc: it)
    best = (0.0, 0.0, 1.0)
    for level, (shift_step, scale_step, (shift_steps, scale_steps)) in enumerate(FIT_GRIDS):
        shifts = np.arange(-shift_steps, shift_steps + 1) * shift_step
        scales = np.arange(-scale_steps, scale_steps + 1) * scale_step
        grid = [(best[0] + dx, best[1] + dy, best[2] + ds) for dx in shifts for dy in shifts for ds in scales]
        candidates = [start @ similarity_about_centre(thermal_size, 0.0, scale, (dx, dy)) for dx, dy, scale in grid]
        total, scored = np.zeros(len(grid)), 0
        for _, visible, thermal in progress(rig, len(rig), f"{label} {level + 1}/{len(FIT_GRIDS)}"):
            scores = np.array(score(visible, thermal, candidates), np.float64)
            if np.isfinite(scores).all():
                total, scored = total + scores, scored + 1
        if not scored:
            return None
        best = grid[int(np.argmax(total))]
    return start @ similarity_about_centre(thermal_size, 0.0, best[2], best[:2])


def synthetic_rig_frames(pairs, size, fov: float, visible_pixels: float, one_modality: bool = False) -> tuple:
    """pairs [(name, visible path, thermal path)] -> ([(name, visible BGR, thermal)], truth 3x3): every
    pair a frame of one synthetic_rig moved by synthetic_rig_misalignment. one_modality:
    the thermal image on both sides (as BGR for the visible camera), so the data set's own alignment
    plays no part and the truth is exact: what is left is the estimator's own error."""
    misalignment = synthetic_rig_misalignment(size)
    rig, truth = [], None
    for name, visible_path, thermal_path in pairs:
        thermal = read_image(thermal_path, cv2.IMREAD_GRAYSCALE)
        visible = cv2.cvtColor(thermal, cv2.COLOR_GRAY2BGR) if one_modality else \
            read_image(visible_path, cv2.IMREAD_COLOR)
        v, t, truth = synthetic_rig(visible, thermal, misalignment, fov, visible_pixels, size)
        rig.append((name, v, t))
    return rig, truth


def evaluate_calibration(pairs, size=(320, 480), fov: float = 1.6, visible_pixels: float = 2.0, device: str = "cpu",
                         models=None, working_size=(256, 320), progress: bool = True,
                         fits=(), one_modality: bool = False) -> dict:
    """Every aligned pair of `pairs` becomes a frame of one synthetic rig (synthetic_rig):
    the thermal (`size`) sees the central 1/`fov` of the view moved by synthetic_rig_misalignment, the
    visible camera the whole view at `visible_pixels` x the pixels. `cgrp calibrate`'s estimator runs
    on all of them; scored: the mean corner error (thermal px) of its homography against the truth,
    and the flow end-point error (visible px, where the thermal sees) of the Pipeline with that
    calibration ('fuse') and of the homography alone ('calibration_only'). fits: names of FIT_JUDGES;
    for each, alignment_fit around the truth and its corner error against the truth and against the
    calibration (`JUDGE_fit_vs_truth_px`, `JUDGE_fit_vs_calibration_px`). one_modality: also the
    estimator's corner error on the same rig with the thermal on both sides (synthetic_rig_frames;
    `one_modality_corner_error_px`, `one_modality_pairs_used`)."""
    from ..core.pipeline import Pipeline, PipelineConfig

    rig, truth = synthetic_rig_frames(pairs, size, fov, visible_pixels)
    bar = (lambda it, total, desc: tqdm(it, total=total, desc=desc, unit="pair", leave=False)) if progress else None
    calibrator = RigCalibrator(models, device, working_size)
    calibration = calibrator.calibrate(rig, bar, "cgrp eval --rig --calibrate")
    estimate = calibration.homography
    pipeline = Pipeline(PipelineConfig(device=device, working_size=tuple(working_size), homography=estimate,
                                       registration=models))
    fused, edges = [], []
    for name, visible, thermal in tqdm(rig, desc="fuse --calibration", unit="pair", disable=not progress):
        edges.append(footprint_edge_agreement(visible, thermal, (truth, estimate)))
        flow = pipeline(visible, thermal, outputs=frozenset({"flow"})).flow
        fused.append(calibrated_flow_error(flow, estimate, truth, size))
    visible_shape = rig[0][1].shape[:2]
    # the homography alone: the same for every frame of the rig (one size, one mapping)
    alone = calibrated_flow_error(np.zeros((*visible_shape, 2), np.float32), estimate, truth, size)
    compared = M.edge_comparison(*np.array(edges, np.float64).reshape(-1, 2).T)
    checks = {}
    for judge in fits:
        fit = alignment_fit(rig, truth, size, judge, bar)
        found = fit is not None
        checks[f"{judge}_fit_vs_truth_px"] = corner_error(fit, truth, size) if found else float("nan")
        checks[f"{judge}_fit_vs_calibration_px"] = corner_error(estimate, fit, size) if found else float("nan")
    if one_modality:
        control = calibrator.calibrate(synthetic_rig_frames(pairs, size, fov, visible_pixels, True)[0], bar,
                                       "cgrp eval --rig --calibrate --one-modality")
        checks.update(one_modality_corner_error_px=corner_error(control.homography, truth, size),
                      one_modality_pairs_used=control.pairs_used)
    return dict(pairs=len(rig), pairs_used=calibration.pairs_used, thermal_size=list(size), fov=fov,
                visible_pixels=visible_pixels, visible_size=list(visible_shape),
                corner_error_px=corner_error(estimate, truth, size),
                corner_error_prior_px=corner_error(centred_placement(size, visible_shape), truth, size),
                epe_fuse_px=float(np.mean(fused)), epe_calibration_only_px=alone,
                edge_agreement_truth=compared["before"], edge_agreement_calibration=compared["after"],
                edges_calibration_better=compared["better"], edges_calibration_worse=compared["worse"],
                edges_scored=compared["scored"], **checks)


def calibrated_flow_error(flow: np.ndarray, estimate: np.ndarray, truth: np.ndarray, thermal_size) -> float:
    """Mean end-point error (visible px) of a flow on top of a calibration, where the thermal really sees.

    flow: H x W x 2 (visible px) as the Pipeline returns it with `estimate` (3x3 thermal px -> visible
    px) as its prior; truth: the rig's true 3x3 mapping. Zero flow scores the calibration alone."""
    hv, wv = flow.shape[:2]
    ys, xs = np.mgrid[0:hv, 0:wv]
    points = np.c_[xs.ravel(), ys.ravel()].astype(np.float64)
    seen_from = apply_homography(np.linalg.inv(truth), points)  # where the thermal really sees p
    ht, wt = thermal_size
    seen = (seen_from[:, 0] >= 0) & (seen_from[:, 0] <= wt - 1) & (seen_from[:, 1] >= 0) & (seen_from[:, 1] <= ht - 1)
    back = truth @ np.linalg.inv(estimate)
    return float(np.linalg.norm(apply_homography(back, points + flow.reshape(-1, 2).astype(np.float64)) - points,
                                axis=1)[seen].mean())


def calibration_markdown(results: dict) -> str:
    """{data set: evaluate_calibration result} -> a table with issue 10's targets checked."""
    from .report import markdown_table

    fits = [judge for judge in FIT_JUDGES if any(f"{judge}_fit_vs_truth_px" in r for r in results.values())]
    control = any("one_modality_corner_error_px" in r for r in results.values())
    rows = []
    for name, r in results.items():
        rows.append([name, f"{r['pairs_used']} / {r['pairs']}",
                     f"{r['thermal_size'][1]}x{r['thermal_size'][0]} → {r['visible_size'][1]}x{r['visible_size'][0]}, "
                     f"view {r['fov']:g}×",
                     f"{r['corner_error_px']:.2f} ({r['corner_error_prior_px']:.0f})",
                     "holds" if r["corner_error_px"] <= 1.0 else "MISSED",
                     f"{r['epe_fuse_px']:.2f}", f"{r['epe_calibration_only_px']:.2f}",
                     "holds" if r["epe_fuse_px"] <= 1.5 else "MISSED",
                     f"{r['edge_agreement_truth']:.4f} / {r['edge_agreement_calibration']:.4f} "
                     f"({r['edges_calibration_better']} / {r['edges_calibration_worse']} of {r['edges_scored']})"]
                    + [f"{r.get(f'{judge}_fit_vs_truth_px', float('nan')):.2f} / "
                       f"{r.get(f'{judge}_fit_vs_calibration_px', float('nan')):.2f}" for judge in fits]
                    + ([f"{r['one_modality_corner_error_px']:.2f} ({r['one_modality_pairs_used']} / {r['pairs']})"]
                       if control else []))
    header = ["data set", "pairs used", "thermal → visible", "corner error thermal px (plain resize)",
              "≤ 1 px", "fuse --calibration EPE px", "calibration alone EPE px", "≤ 1.5 px",
              f"edges truth / calibration (calibration better / worse by > {M.EDGE_MARGIN_OF_DIFFERENCE:g})"]
    header += [f"{FIT_JUDGES[judge][1]}'s corner error px: vs truth / vs calibration" for judge in fits]
    if control:
        header.append("thermal on both sides (exact truth): corner error px (pairs used)")
    return markdown_table(header, rows)
