"""Misaligned-fusion benchmark: misalign aligned pairs on purpose, register and fuse, score.

For every aligned pair (visible, thermal) the thermal is warped by a deterministic random
misalignment (``deform.misalign`` with ``rng_for(seed, name)``) and each method registers it
back into the visible frame and fuses:

    cgrp      the full Pipeline (generator -> registration network -> fusion network)
    none      no registration: the fusion network on the misaligned pair
    ecc       OpenCV ECC affine on gradient-magnitude images, then the fusion network
    dis       OpenCV DIS optical flow from CGRP's pseudo-thermal to the thermal, then the fusion network
    cgrp_avg  CGRP's registered thermal fused by plain averaging with the visible luminance

Every image is scored in the visible camera's frame at the visible resolution, on 8-bit
intensities (thermal of other depths goes through the pipeline's gain control first).
Registration metrics compare each method's registered thermal with the aligned thermal on
one region shared by all methods: pixels where the aligned value is observable in the
misaligned image (``Misalignment.valid``) AND every method's flow samples inside the
misaligned image. Fusion metrics compare the fused luminance with the visible luminance and
the *aligned* thermal over the whole image.
"""
from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import metrics as M
from .data import find_pairs, read_image, read_split
from .deform import misalign, rng_for
from .errors import InputError
from .image import normalize_thermal, to_uint8
from .warp import valid_mask, warp_numpy

log = logging.getLogger("cgrp_ros")

METHODS = ("cgrp", "none", "ecc", "dis", "cgrp_avg")
REGISTRARS = ("cgrp", "none", "ecc", "dis")  # cgrp_avg shares cgrp's registration
METHOD_DESCRIPTIONS = {
    "cgrp": "CGRP pipeline: registration network + fusion network",
    "none": "no registration, fusion network on the misaligned pair",
    "ecc": "OpenCV ECC affine on gradient magnitudes + fusion network",
    "dis": "OpenCV DIS flow pseudo-thermal -> thermal + fusion network",
    "cgrp_avg": "CGRP registration + plain averaging fusion",
}
COLUMNS = ("image", "method") + tuple(M.REGISTRATION_COLUMNS) + tuple(M.FUSION_COLUMNS)
EPE_BINS = np.linspace(0.0, 20.0, 81)       # px; the last bin also holds everything above
ABS_ERROR_BINS = np.linspace(0.0, 128.0, 65)  # grey levels


# -- classical registrars -----------------------------------------------------------------------------
def luminance(bgr_or_grey: np.ndarray) -> np.ndarray:
    """H x W uint8 luminance (Y of YCrCb, the channel the fusion network replaces)."""
    if bgr_or_grey.ndim == 2:
        return bgr_or_grey
    return cv2.cvtColor(bgr_or_grey[:, :, :3], cv2.COLOR_BGR2YCrCb)[:, :, 0]


def gradient_magnitude(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """H x W float32 Sobel gradient magnitude of a lightly smoothed grey image."""
    smooth = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma)
    return cv2.magnitude(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))


def affine_to_flow(matrix: np.ndarray, shape) -> np.ndarray:
    """2 x 3 affine (visible pixel -> thermal pixel) -> H x W x 2 float32 flow in the core convention."""
    height, width = shape
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    m = np.asarray(matrix, np.float64)
    fx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs
    fy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys
    return np.stack((fx, fy), axis=2).astype(np.float32)


def _rescale_affine(matrix: np.ndarray, factor: float) -> np.ndarray:
    """Express a 2 x 3 pixel affine at an image `factor` times smaller (pixel centres kept)."""
    offset = (factor - 1.0) / 2.0  # full-res x = factor * small x + offset
    to_full = np.array([[factor, 0, offset], [0, factor, offset], [0, 0, 1]])
    full = np.vstack((matrix, [0, 0, 1]))
    return (np.linalg.inv(to_full) @ full @ to_full)[:2].astype(np.float32)


def ecc_affine(template: np.ndarray, moving: np.ndarray, levels: int = 3, iterations: int = 100,
               tolerance: float = 1e-5) -> np.ndarray:
    """2 x 3 affine mapping `template` pixels to `moving` pixels, coarse to fine (float32 images).

    A level where ECC does not converge keeps the previous estimate (identity at worst), so the
    baseline always returns a usable warp.
    """
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, tolerance)
    matrix = np.eye(2, 3, dtype=np.float32)
    for level in reversed(range(levels)):
        factor = 2.0 ** level
        size = (max(8, round(template.shape[1] / factor)), max(8, round(template.shape[0] / factor)))
        t = cv2.resize(template, size, interpolation=cv2.INTER_AREA)
        m = cv2.resize(moving, size, interpolation=cv2.INTER_AREA)
        guess = _rescale_affine(matrix, factor)
        try:
            _, found = cv2.findTransformECC(t, m, guess, cv2.MOTION_AFFINE, criteria, None, 5)
        except cv2.error:
            continue  # did not converge at this level
        matrix = _rescale_affine(found, 1.0 / factor)
    return matrix


def ecc_flow(visible_y: np.ndarray, thermal: np.ndarray) -> np.ndarray:
    """Baseline (b): ECC affine registration of gradient magnitudes, as a dense flow."""
    matrix = ecc_affine(gradient_magnitude(visible_y), gradient_magnitude(thermal))
    return affine_to_flow(matrix, visible_y.shape)


def dis_flow(pseudo_thermal: np.ndarray, thermal: np.ndarray) -> np.ndarray:
    """Baseline (c): DIS optical flow, both uint8 H x W, in the core convention.

    DIS returns f with I0(p) ~ I1(p + f(p)), which with I0 = pseudo-thermal (visible frame)
    and I1 = thermal is exactly ``registered(p) = thermal(p + flow(p))``.
    """
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(pseudo_thermal, thermal, None).astype(np.float32)


def average_fusion(visible_y: np.ndarray, thermal: np.ndarray) -> np.ndarray:
    """Baseline (d): (visible + thermal) / 2, uint8."""
    return ((visible_y.astype(np.uint16) + thermal.astype(np.uint16) + 1) // 2).astype(np.uint8)


# -- one pair -------------------------------------------------------------------------------------------
@dataclass
class PairResult:
    """Scores of every method on one pair, plus what the figures need."""
    name: str
    rows: list                       # one dict per method, keys COLUMNS
    epe: dict                        # method -> per-pixel EPE on the scored region (1-D)
    abs_error: dict                  # method -> per-pixel |registered - aligned| on the scored region
    panel: dict = field(default_factory=dict)  # images for the example figure


def thermal_to_uint8(thermal: np.ndarray, shape) -> np.ndarray:
    """Any thermal (uint8/uint16/float, mono or colour) -> H x W uint8 at the visible resolution."""
    grey = to_uint8(normalize_thermal(thermal))
    if grey.shape != tuple(shape):  # the pairs are aligned: same field of view
        grey = cv2.resize(grey, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return grey


def evaluate_pair(pipeline, name: str, visible: np.ndarray, thermal: np.ndarray, preset: str, seed: int,
                  keep_panel: bool = False) -> PairResult:
    """Misalign `thermal`, run every method, return its scores (see the module docstring)."""
    visible_y = luminance(visible)
    aligned = thermal_to_uint8(thermal, visible_y.shape)
    truth = misalign(aligned, preset, rng_for(seed, name))
    moving = truth.misaligned

    result = pipeline(visible, moving)
    flows = {"cgrp": result.flow, "none": np.zeros_like(result.flow),
             "ecc": ecc_flow(visible_y, moving), "dis": dis_flow(result.pseudo_thermal, moving)}
    registered = {"cgrp": result.registered_thermal, "none": moving}
    for method in ("ecc", "dis"):
        registered[method] = warp_numpy(moving, flows[method])
    fused = {"cgrp": result.fused, "cgrp_avg": average_fusion(visible_y, result.registered_thermal)}
    for method in ("none", "ecc", "dis"):
        fused[method] = pipeline.fuse(visible, registered[method])[0]

    inside = {method: valid_mask(flow) for method, flow in flows.items()}
    region = truth.valid.copy()
    for mask in inside.values():
        region &= mask
    n_valid = max(int(truth.valid.sum()), 1)

    rows, epe, abs_error = [], {}, {}
    for method in METHODS:
        registrar = "cgrp" if method == "cgrp_avg" else method
        row = dict(image=name, method=method)
        row.update(M.registration_metrics(registered[registrar], aligned, region, flows[registrar], truth.flow))
        row["coverage"] = float(np.sum(inside[registrar] & truth.valid) / n_valid)
        row.update(M.fusion_metrics(fused[method], visible_y, aligned))
        rows.append(row)
        if method in REGISTRARS:
            epe[method] = M.endpoint_error(flows[method], truth.flow)[region]
            abs_error[method] = np.abs(registered[method].astype(np.float32) - aligned)[region]
    panel = {}
    if keep_panel:
        panel = dict(visible=visible, misaligned=moving, registered=result.registered_thermal,
                     fused=result.fused_color if result.fused_color is not None else result.fused,
                     flow=result.flow, truth_flow=truth.flow, visible_y=visible_y, aligned=aligned,
                     registered_by_method=registered, fused_by_method=fused)
    return PairResult(name, rows, epe, abs_error, panel)


# -- whole data set -------------------------------------------------------------------------------------
def list_pairs(data, list_file=None, limit=None):
    """[(name, visible_path, thermal_path)] of DATA/visible + DATA/thermal, optionally a split's names."""
    data = Path(data)
    if not (data / "visible").is_dir() or not (data / "thermal").is_dir():
        raise InputError(f"{data}: expected visible/ and thermal/ folders of aligned pairs")
    names = read_split(list_file) if list_file else None
    pairs = find_pairs(data / "visible", data / "thermal", names).pairs
    if limit:
        pairs = pairs[:limit]
    if not pairs:
        raise InputError(f"{data}: no visible/thermal pairs found" + (f" for the names in {list_file}" if list_file else ""))
    return pairs


def summarize(rows) -> dict:
    """{method: {metric: {mean, std, n}}} over images, ignoring NaN (undefined) values."""
    out = {}
    for method in METHODS:
        chosen = [r for r in rows if r["method"] == method]
        out[method] = {}
        for column in COLUMNS[2:]:
            values = np.array([r[column] for r in chosen], np.float64)
            values = values[np.isfinite(values)]
            out[method][column] = dict(mean=float(values.mean()) if values.size else float("nan"),
                                       std=float(values.std()) if values.size else float("nan"),
                                       n=int(values.size))
    return out


def check_targets(summary: dict, preset: str) -> list:
    """The issue's acceptance targets that apply to `preset`: [(target, holds, detail)]."""
    mean = lambda method, column: summary[method][column]["mean"]  # noqa: E731
    targets = []
    if preset == "moderate":
        for column, higher in (("ncc", True), ("mae", False)):
            ours = mean("cgrp", column)
            others = {m: mean(m, column) for m in ("none", "ecc", "dis")}
            holds = all((ours > v) if higher else (ours < v) for v in others.values())
            detail = f"cgrp {ours:.4g} vs " + ", ".join(f"{m} {v:.4g}" for m, v in others.items())
            targets.append((f"moderate: CGRP registration beats every baseline on {column.upper()}", holds, detail))
    if preset == "severe":
        ours, none = mean("cgrp", "mae"), mean("none", "mae")
        cut = 1.0 - ours / none if none > 0 else float("nan")
        targets.append(("severe: CGRP cuts registered-vs-aligned MAE by >= 40 % against no registration",
                        bool(cut >= 0.40), f"MAE cgrp {ours:.4g} vs none {none:.4g}: {100 * cut:.1f} % lower"))
    for column in ("ssim", "cc"):
        ours, none = mean("cgrp", column), mean("none", column)
        targets.append((f"fused {column.upper()} with CGRP registration higher than with no registration",
                        bool(ours > none), f"cgrp {ours:.4g} vs none {none:.4g}"))
    return targets


def machine_description() -> dict:
    """CPU model, usable cores, OS and library versions: enough to compare two reports."""
    import torch
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return dict(cpu=cpu, cores=cores, gpu=gpu, load_average=load, os=platform.platform(),
                python=platform.python_version(),
                torch=torch.__version__, opencv=cv2.__version__, numpy=np.__version__)


def weights_description(pipeline) -> dict:
    """The model files used and whether they are the shipped ones (no $CGRP_MODELS / --models override)."""
    from .models import REPO_MODELS
    paths = {stage: str(p) for stage, p in pipeline.model_paths.items()}
    shipped = all(Path(p).parent.resolve() == REPO_MODELS.resolve() for p in paths.values())
    return dict(paths=paths, shipped=shipped)


@dataclass
class Evaluation:
    preset: str
    seed: int
    rows: list
    summary: dict
    targets: list
    info: dict          # command, machine, pipeline, weights, data
    files: list         # written paths


def evaluate(pipeline, pairs, out, preset: str = "moderate", seed: int = 0, figures: int = 3,
             info: dict | None = None, progress: bool = True) -> Evaluation:
    """Run every method on `pairs` ([(name, visible_path, thermal_path)]) and write the report to `out`."""
    from . import report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    epe_hist = {m: np.zeros(len(EPE_BINS) - 1) for m in REGISTRARS}
    err_hist = {m: np.zeros(len(ABS_ERROR_BINS) - 1) for m in REGISTRARS}
    files = []
    for index, (name, visible_path, thermal_path) in enumerate(
            tqdm(pairs, desc=f"eval {preset}", unit="pair", disable=not progress)):
        visible = read_image(visible_path, cv2.IMREAD_COLOR)
        thermal = read_image(thermal_path)
        pair = evaluate_pair(pipeline, name, visible, thermal, preset, seed, keep_panel=index < figures)
        rows.extend(pair.rows)
        for method in REGISTRARS:
            epe_hist[method] += _histogram(pair.epe[method], EPE_BINS)
            err_hist[method] += _histogram(pair.abs_error[method], ABS_ERROR_BINS)
        if pair.panel:
            path = out / f"example_{name}.png"
            cv2.imwrite(str(path), report.example_panel(pair.panel))
            compare = out / f"compare_{name}.png"
            cv2.imwrite(str(compare), report.comparison_panel(pair.panel))
            files += [path, compare]
    summary = summarize(rows)
    info = dict(info or {})
    info.update(preset=preset, seed=seed, pairs=len(pairs), pipeline=pipeline.description,
                weights=weights_description(pipeline), machine=machine_description(),
                region="Misalignment.valid AND every method's flow samples inside the misaligned thermal")
    evaluation = Evaluation(preset, seed, rows, summary, check_targets(summary, preset), info, files)
    files += report.write_all(evaluation, out, epe_hist, err_hist)
    return evaluation


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts over `edges`; values beyond the last edge go to the last bin."""
    return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0]
