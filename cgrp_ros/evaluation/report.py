"""Writing evaluation results: report.md, metrics.csv, metrics.json and PNG figures (OpenCV drawing) per run;
the cross-domain report.md, summary.json/csv and pairs.csv over several runs; the block in docs/benchmarks.md."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np

from . import metrics as M
from .protocol import ABS_ERROR_BINS, COLUMNS, EPE_BINS, METHOD_DESCRIPTIONS, METHODS, REGISTRARS, WORSE_MARGIN_PX
from ..core.image import check_image, luminance, normalize_thermal, resize_homography, to_uint8, visible_to_bgr01
from ..core.warp import flow_to_color

TILE_HEIGHT = 200                       # px, height of every tile in an example panel
LABEL_HEIGHT = 22
CHECKER_TILE = 32                       # px, checkerboard square size at the visible resolution
METHOD_COLORS = {"cgrp": (40, 40, 220), "none": (90, 90, 90), "ecc": (200, 120, 0), "dis": (0, 160, 0),
                 "cgrp_avg": (180, 0, 180)}  # BGR


# -- markdown --------------------------------------------------------------------------------------------
def markdown_table(header, rows) -> str:
    """GitHub markdown table from a header and rows of cells (already strings)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _best(values: dict, higher_is_better: bool) -> set:
    """Methods holding the best finite value (ties all win)."""
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if not finite:
        return set()
    best = max(finite.values()) if higher_is_better else min(finite.values())
    return {k for k, v in finite.items() if np.isclose(v, best, rtol=1e-9, atol=1e-12)}


def summary_table(summary: dict, methods, columns: dict) -> str:
    """mean ± std per method (rows) and metric (columns), best mean per column in bold."""
    rows = [[f"`{m}`"] for m in methods]
    for column, (_, higher) in columns.items():
        best = _best({m: summary[m][column]["mean"] for m in methods}, higher)
        for row, method in zip(rows, methods):
            stat = summary[method][column]
            cell = f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["n"] else "n/a"
            row.append(f"**{cell}**" if method in best else cell)
    arrows = {c: ("↑" if higher else "↓") for c, (_, higher) in columns.items()}
    return markdown_table(["method"] + [f"{c} {arrows[c]}" for c in columns], rows)


def _weights_line(weights: dict) -> str:
    return (f"{', '.join(Path(p).name for p in weights['paths'].values())} in "
            f"`{Path(next(iter(weights['paths'].values()))).parent}`"
            + ("" if weights["shipped"] else " — **not the shipped weights**"))


def _machine_line(machine: dict) -> str:
    return (f"{machine['cpu']}, {machine['cores']} cores, GPU {machine['gpu']}, load average "
            f"{machine['load_average']} at start; {machine['os']}, "
            f"Python {machine['python']}, torch {machine['torch']}, OpenCV {machine['opencv']}")


def _published_edges(rows) -> str:
    values = [r["edge_agreement_published"] for r in rows if r["method"] == "cgrp"]
    values = [v for v in values if math.isfinite(v)]
    return f"{np.mean(values):.3f} on average" if values else "not scored"


def report_markdown(evaluation, level: int = 1, links: bool = True) -> str:
    """One data set x preset run's report. `level`: markdown level of the title (sections one below);
    `links`: refer to the run's figures and the cross-domain report.md beside it (False: the text stands
    alone, e.g. in docs/benchmarks.md)."""

    info, summary = evaluation.info, evaluation.summary
    methods = [m for m in evaluation.methods]
    registrars = [m for m in REGISTRARS if m in methods]
    machine, weights = info["machine"], info["weights"]
    title = f"`{evaluation.dataset}`, preset" if evaluation.dataset else "preset"
    h1, h2 = "#" * level, "#" * (level + 1)
    lines = [f"{h1} cgrp eval: {title} `{evaluation.preset}`, seed {evaluation.seed}", "",
             f"- command: `{info.get('command', 'n/a')}`",
             f"- data: `{info.get('data', 'n/a')}`" + (f" (`{info['list']}`)" if info.get("list") else "")
             + f", {info['pairs']} pairs",
             f"- pipeline: {info['pipeline']}, working size {info.get('working_size', 'n/a')}",
             f"- weights: {_weights_line(weights)}",
             f"- machine: {_machine_line(machine)}",
             "", f"{h2} Targets", ""]
    for target, holds, detail in evaluation.targets:
        lines.append(f"- {'**holds**' if holds else '**MISSED**'}: {target} ({detail})")
    if not evaluation.targets:
        where = "cross-domain [report](../../report.md)" if links else "cross-domain table"
        lines.append(f"- none of this report's targets applies to this preset (the cross-domain targets: the {where})")
    confidence = [r["registration_confidence"] for r in evaluation.rows if r["method"] == "cgrp"]
    fallbacks = sum(bool(r["registration_fallback"]) for r in evaluation.rows if r["method"] == "cgrp")
    if confidence:
        lines += ["", f"CGRP registration confidence: mean {np.mean(confidence):.3f}, min {np.min(confidence):.3f}; "
                  f"{fallbacks} of {len(confidence)} pairs fell back to the prior (threshold "
                  f"{info.get('confidence_threshold', float('nan')):.3g})."]
    lines += ["", f"{h2} Registration (registered vs aligned thermal)", "",
              f"Scored region: {info['region']}. Intensities in grey levels (0-255); EPE in pixels "
              "against the exact inverse of the applied displacement; `edge_agreement` against the visible image "
              "instead (no ground truth; the published alignment's: "
              f"{_published_edges(evaluation.rows)}, on this preset's scored region, so it differs a little "
              "between presets). `cgrp_avg` shares `cgrp`'s registration.",
              "", summary_table(summary, registrars, M.REGISTRATION_COLUMNS), "",
              f"{h2} Fusion (fused luminance vs visible luminance and the aligned thermal)", "",
              "fmi and vif are sums over the two sources, cc and ssim their means (see docs/metrics.md).", "",
              summary_table(summary, methods, M.FUSION_COLUMNS), "", f"{h2} Methods", ""]
    lines += [f"- `{m}`: {METHOD_DESCRIPTIONS[m]}" for m in methods]
    lines += ["", "mean ± standard deviation over images; ↑ higher is better, ↓ lower is better; best in bold."]
    if links:
        lines.append("Figures: `example_*.png` (visible | misaligned thermal | CGRP registered | CGRP fused | CGRP "
                     "flow | ground-truth flow | checkerboard of visible and registered thermal), `compare_*.png` "
                     "(per method: checkerboard of visible and registered thermal, fused image), `hist_epe.png`, "
                     "`hist_abs_error.png`; `alignment_*.png` (edges of the published alignment, the input and "
                     "cgrp's registration) for every pair behind a per-pair miss.")
    lines.append("")
    return "\n".join(lines)


# -- figures ---------------------------------------------------------------------------------------------
def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[:, :, :3]


def stretched_uint8(image: np.ndarray) -> np.ndarray:
    """A uint8 picture of a thermal image: uint8 as it is, 16-bit and float stretched min..max (NaN as 0)."""
    if image.dtype == np.uint8:
        return image
    return cv2.normalize(np.nan_to_num(image.astype(np.float32)), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _label(text: str, width: int) -> np.ndarray:
    strip = np.full((LABEL_HEIGHT, width, 3), 32, np.uint8)
    cv2.putText(strip, text, (4, LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def labelled_tile(image: np.ndarray, label: str, height: int = TILE_HEIGHT, width: int | None = None) -> np.ndarray:
    """Scale to `height` (and `width`; default: the aspect kept) and put a label strip above."""
    image = _bgr(image)
    width = width or max(1, round(image.shape[1] * height / image.shape[0]))
    interpolation = cv2.INTER_AREA if height < image.shape[0] else cv2.INTER_LINEAR
    return np.vstack((_label(label, width), cv2.resize(image, (width, height), interpolation=interpolation)))


def flow_picture(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """flow_to_color with its key drawn in, for people: the scale in pixels at the top left and a colour
    wheel at the bottom right (a flow pointing from the wheel's centre to a spot has that spot's colour;
    the rim is the scale). H x W x 2 flow (pixels) -> H x W x 3 BGR uint8."""
    if max_magnitude is None:
        max_magnitude = float(np.hypot(flow[:, :, 0], flow[:, :, 1]).max()) if flow.size else 0.0
    picture = flow_to_color(flow, max_magnitude)
    height, width = picture.shape[:2]
    radius = max(10, min(height, width) // 12)
    margin = max(2, radius // 4)
    if 2 * (radius + margin) < min(height, width):
        ys, xs = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(np.float32)
        wheel = flow_to_color(np.dstack((xs, ys)) * (max(max_magnitude, 1e-6) / radius), max(max_magnitude, 1e-6))
        disc = xs ** 2 + ys ** 2 <= radius ** 2
        corner = picture[height - margin - 2 * radius - 1:height - margin, width - margin - 2 * radius - 1:width - margin]
        corner[disc] = wheel[disc]
        cv2.circle(picture, (width - margin - radius - 1, height - margin - radius - 1), radius, (96, 96, 96), 1,
                   cv2.LINE_AA)
    text = f"flow: 0 to {max_magnitude:.1f} px" if max_magnitude > 0 else "flow: 0 px (white: no motion)"
    scale = max(0.35, min(1.0, width / 900))
    (text_w, text_h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(picture, (0, 0), (text_w + 8, text_h + base + 8), (32, 32, 32), -1)
    cv2.putText(picture, text, (4, text_h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return picture


def checkerboard(a: np.ndarray, b: np.ndarray, square: int = CHECKER_TILE) -> np.ndarray:
    """Alternate squares of two same-size images (misregistration shows as broken edges)."""
    ys, xs = np.indices(a.shape[:2])
    pick_a = ((ys // square + xs // square) % 2 == 0)
    if a.ndim == 3:
        pick_a = pick_a[:, :, None]
    return np.where(pick_a, a, b)


def checkerboard_picture(visible, thermal, homography, tiles: int = 8, max_width: int = 1400,
                         thermal_percentiles=(1.0, 99.0), name: str = "") -> np.ndarray:
    """BGR uint8 picture: visible/thermal checkerboard with the resize prior (left) and with
    `homography` (right), each at the visible resolution, side by side, titled, over a key that names
    the pair `name`."""
    y = luminance(visible_to_bgr01(check_image(visible, "visible")))
    th = normalize_thermal(check_image(thermal, "thermal"), thermal_percentiles)
    hv, wv = y.shape
    ht, wt = th.shape
    prior = resize_homography((ht, wt), (hv, wv))
    yy, xx = np.mgrid[0:hv, 0:wv]
    board = ((yy * tiles // hv + xx * tiles // wv) % 2).astype(bool)
    panels = []
    for title, m in (("before (resize)", prior), ("after (calibration)", np.asarray(homography, np.float64))):
        warped = cv2.warpPerspective(th.astype(np.float32), m, (wv, hv), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        panel = cv2.cvtColor(to_uint8(np.where(board, warped, y)), cv2.COLOR_GRAY2BGR)
        panel[board] = (panel[board] * np.array([0.55, 0.75, 1.0])).astype(np.uint8)  # thermal tiles warm-tinted
        cv2.putText(panel, title, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, max(0.6, wv / 900), (0, 255, 255), 2)
        panels.append(panel)
    picture = np.concatenate((panels[0], np.full((hv, 8, 3), 255, np.uint8), panels[1]), axis=1)
    if picture.shape[1] > max_width:
        f = max_width / picture.shape[1]
        picture = cv2.resize(picture, (max_width, round(picture.shape[0] * f)), interpolation=cv2.INTER_AREA)
    key = (f"{name + ': ' if name else ''}grey squares: visible camera, orange squares: thermal camera. "
           "Aligned where edges run on straight across the squares' borders.")
    strip = np.full((28, picture.shape[1], 3), 32, np.uint8)
    cv2.putText(strip, key, (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack((picture, strip))


def edge_overlay(visible_y: np.ndarray, thermal: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
    """BGR picture of where two same-size grey images have edges: the visible image's green, the
    thermal's magenta, both white. Each gradient magnitude is scaled by its own 98th percentile, so the
    strongest edges of either modality show whatever its contrast (fine texture stays dim). `seen`:
    H x W bool, where the thermal camera sees; its edges elsewhere (the border of its footprint, not
    the scene's) are left out."""
    sigma = max(1.0, visible_y.shape[1] / 800)  # about one pixel of a 800-px-wide view

    def strength(image, where=None):
        magnitude = M.gradient_magnitude(image, sigma)
        if where is not None:
            magnitude *= where
        # the percentile of at most ~65k evenly spread pixels: the same scale, a fraction of the time on a
        # camera's full resolution (this picture is drawn per frame by the node's ~/alignment_vis)
        sample = magnitude.ravel()[::max(1, magnitude.size // 65536)]
        return cv2.convertScaleAbs(magnitude, alpha=255.0 / (np.percentile(sample, 98) + 1e-6))  # saturated uint8
    inside = None
    if seen is not None:  # a few pixels in from the footprint's border, past the blur of its edge
        margin = 2 * int(np.ceil(2 * sigma)) + 1
        inside = cv2.erode(seen.astype(np.uint8), np.ones((margin, margin), np.uint8)).astype(np.float32)
    visible, thermal = strength(visible_y), strength(thermal, inside)
    return cv2.merge((thermal, visible, thermal))


VIDEO_TILE_HEIGHT = 360   # px, fusion_frame's tiles


def thermal_view(images, seen: np.ndarray) -> list:
    """Same-size float thermal images (raw values, any range) -> uint8 pictures stretched alike: the 1st and
    99th percentiles of all of them where the thermal is seen (`seen`, H x W bool) map to 0 and 255."""
    values = np.concatenate([image[seen] for image in images]) if seen.any() else np.zeros(1, np.float32)
    low, high = np.percentile(values, (1, 99))
    return [np.clip((image - low) * (255.0 / max(high - low, 1e-6)), 0, 255).astype(np.uint8) for image in images]


def fusion_frame(visible: np.ndarray, visible_y: np.ndarray, received: np.ndarray, registered: np.ndarray,
                 seen: np.ndarray, fused: np.ndarray, title: str, registered_label: str = "registered thermal") -> np.ndarray:
    """One frame of `cgrp fuse --video` (BGR uint8): visible | thermal as it came (through the prior alone) |
    registered thermal | fused | edges after registration (visible green, thermal magenta), each
    VIDEO_TILE_HEIGHT px high. All inputs in the visible camera's pixels (H x W): `received` and
    `registered` float thermal (alignment.ReceivedAndRegistered), `seen` where the thermal sees."""
    received_view, registered_view = thermal_view((received, registered), seen)
    tiles = [(to_uint8(visible_to_bgr01(visible)), title), (received_view, "thermal as received"),
             (registered_view, registered_label), (fused, "fused"),
             (edge_overlay(visible_y, registered, seen), "edges: visible green, thermal magenta")]
    return np.hstack([labelled_tile(image, label, VIDEO_TILE_HEIGHT) for image, label in tiles])


ALIGNMENT_TILE_HEIGHT = 300   # px, alignment_panel's tiles
ALIGNMENT_ZOOM = 3            # the lower row shows 1 / ALIGNMENT_ZOOM of the image's width and height


def alignment_panel(visible_y: np.ndarray, views, title: str, seen: np.ndarray | None = None) -> np.ndarray:
    """Edges of the visible image over the thermal's, for a person to judge how well each view lines
    the two cameras up: the whole view above, below a window 1/ALIGNMENT_ZOOM of the size where both
    modalities have the most strong edges. `views`: [(thermal in the visible camera, H x W grey;
    label)], side by side; `seen`: as for edge_overlay."""
    height, width = visible_y.shape
    overlays = [edge_overlay(visible_y, thermal, seen) for thermal, _ in views]
    crop_w, crop_h = max(1, width // ALIGNMENT_ZOOM), max(1, height // ALIGNMENT_ZOOM)
    both = np.max([o[:, :, 1].astype(np.float32) * o[:, :, 0] for o in overlays], axis=0)
    density = cv2.boxFilter(both, -1, (crop_w, crop_h), normalize=True, borderType=cv2.BORDER_CONSTANT)
    cy, cx = np.unravel_index(int(np.argmax(density)), density.shape)
    x0, y0 = int(np.clip(cx - crop_w // 2, 0, width - crop_w)), int(np.clip(cy - crop_h // 2, 0, height - crop_h))
    top, bottom = [], []
    for overlay, (_, label) in zip(overlays, views):
        framed = overlay.copy()
        cv2.rectangle(framed, (x0, y0), (x0 + crop_w - 1, y0 + crop_h - 1), (0, 200, 255), max(1, width // 400))
        top.append(labelled_tile(framed, label, ALIGNMENT_TILE_HEIGHT))
        bottom.append(labelled_tile(overlay[y0:y0 + crop_h, x0:x0 + crop_w], f"zoom {ALIGNMENT_ZOOM}x (orange box)",
                            ALIGNMENT_TILE_HEIGHT, top[-1].shape[1]))
    rows = np.vstack((np.hstack(top), np.hstack(bottom)))
    legend = f"{title}   green: visible edges, magenta: thermal edges, white: both"
    return np.vstack((_label(legend, rows.shape[1]), rows))


def evaluation_alignment_panel(alignment: dict, scores: dict, title: str) -> np.ndarray:
    """alignment_panel of one evaluated pair behind a missed target: the published alignment (the
    evaluation's truth), the unregistered input (if it differs) and cgrp's registration.
    `alignment`: PairResult.alignment; `scores`: {method: row} of the pair."""
    views = [(alignment["published"], f"published alignment, edges {scores['cgrp']['edge_agreement_published']:.3f}")]
    if scores["none"]["epe"] > 0:
        views.append((alignment["unregistered"], f"unregistered, EPE {scores['none']['epe']:.2f} px, "
                                                 f"edges {scores['none']['edge_agreement']:.3f}"))
    views.append((alignment["registered"], f"cgrp, EPE {scores['cgrp']['epe']:.2f} px, "
                                           f"edges {scores['cgrp']['edge_agreement']:.3f}"))
    return alignment_panel(alignment["visible_y"], views, title)


def example_panel(panel: dict) -> np.ndarray:
    """One row: visible | misaligned | registered | fused | flow | true flow | checkerboard."""
    scale = max(float(np.max(np.hypot(panel["truth_flow"][..., 0], panel["truth_flow"][..., 1]))), 1.0)
    tiles = [labelled_tile(panel["visible"], "visible"), labelled_tile(panel["misaligned"], "misaligned thermal"),
             labelled_tile(panel["registered"], "registered (cgrp)"), labelled_tile(panel["fused"], "fused (cgrp)"),
             labelled_tile(flow_to_color(panel["flow"], scale), "flow (cgrp)"),
             labelled_tile(flow_to_color(panel["truth_flow"], scale), f"true flow (max {scale:.0f} px)"),
             labelled_tile(checkerboard(panel["visible_y"], panel["registered"]), "visible / registered")]
    return np.hstack(tiles)


def comparison_panel(panel: dict) -> np.ndarray:
    """Two rows over the methods: checkerboards of visible and registered thermal (the aligned
    thermal first, as the ideal), then each method's fused image (the aligned-pair row left blank)."""

    methods = [m for m in METHODS if m in panel["fused_by_method"]]  # the methods that ran
    registrar = lambda m: "cgrp" if m == "cgrp_avg" else m  # noqa: E731
    top = [labelled_tile(checkerboard(panel["visible_y"], panel["aligned"]), "visible / aligned (ideal)")]
    top += [labelled_tile(checkerboard(panel["visible_y"], panel["registered_by_method"][registrar(m)]), f"visible / {m}")
            for m in methods]
    bottom = [np.zeros_like(top[0])] + [labelled_tile(panel["fused_by_method"][m], f"fused {m}") for m in methods]
    return np.vstack((np.hstack(top), np.hstack(bottom)))


def line_figure(lines, x_range, y_range, title: str, xlabel: str, ylabel: str = "", size=(720, 420),
                legend=None, y_format="{:.2f}") -> np.ndarray:
    """Line plot with axes (BGR uint8). `lines`: [(xs, ys, BGR colour, thickness)]; `legend`:
    [(label, BGR colour)] drawn top right (default none)."""
    width, height = size
    left, right, top, bottom = 60, 20, 40, 50
    image = np.full((height, width, 3), 255, np.uint8)
    plot_w, plot_h = width - left - right, height - top - bottom
    (x0, x1), (y0, y1) = x_range, y_range
    to_x = lambda v: int(left + (v - x0) / max(x1 - x0, 1e-9) * plot_w)  # noqa: E731
    to_y = lambda v: int(top + plot_h - (min(max(v, y0), y1) - y0) / max(y1 - y0, 1e-9) * plot_h)  # noqa: E731
    black, font = (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(image, (left, top), (left + plot_w, top + plot_h), black, 1)
    for i in range(6):
        x, y = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        cv2.putText(image, f"{x:g}", (to_x(x) - 10, top + plot_h + 18), font, 0.4, black, 1, cv2.LINE_AA)
        cv2.putText(image, y_format.format(y), (8, to_y(y) + 4), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(image, title, (left, 25), font, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(image, xlabel, (left, height - 12), font, 0.45, black, 1, cv2.LINE_AA)
    if ylabel:
        cv2.putText(image, ylabel, (left + 6, top + 14), font, 0.4, black, 1, cv2.LINE_AA)
    for xs, ys, color, thickness in lines:
        points = np.array([[to_x(x), to_y(y)] for x, y in zip(xs, ys) if np.isfinite(y)], np.int32)
        if len(points):
            cv2.polylines(image, [points], False, color, thickness, cv2.LINE_AA)
    for row, (label, color) in enumerate(legend or []):
        y = top + 18 + 18 * row
        cv2.line(image, (left + plot_w - 150, y - 4), (left + plot_w - 125, y - 4), color, 2)
        cv2.putText(image, label, (left + plot_w - 120, y), font, 0.45, black, 1, cv2.LINE_AA)
    return image


def histogram_figure(counts: dict, edges: np.ndarray, title: str, xlabel: str,
                     size=(720, 420)) -> np.ndarray:
    """Line plot of normalised histograms, one line per method, with axes and a legend (BGR uint8)."""
    shares = {m: c / max(c.sum(), 1) for m, c in counts.items()}
    peak = max([float(s.max()) for s in shares.values()] + [1e-6])
    centres = (edges[:-1] + edges[1:]) / 2
    colors = {m: METHOD_COLORS.get(m, (0, 0, 0)) for m in shares}
    # dashed-looking overlaps are hard to draw with OpenCV: thinner lines for the later methods instead, so
    # one lying on another (none under dis on aligned input) still shows
    thickness = {m: max(1, 4 - i) for i, m in enumerate(shares)}
    return line_figure([(centres, share, colors[m], thickness[m]) for m, share in shares.items()],
                       (edges[0], edges[-1]), (0.0, peak), title, xlabel + " (last bin: and above)",
                       "share of pixels", size=size, legend=[(m, colors[m]) for m in shares])


# -- files -----------------------------------------------------------------------------------------------
def _json_safe(value):
    """NaN/inf -> None (strict JSON), tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _csv_cell(value):
    """Floats with 6 significant digits, booleans as 0/1 (so every column but the names reads as a number)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    return value


def write_all(evaluation, out: Path, epe_hist: dict, err_hist: dict) -> list:
    """report.md, metrics.csv, metrics.json, hist_epe.png, hist_abs_error.png; returns their paths."""

    paths = {name: out / name for name in ("report.md", "metrics.csv", "metrics.json", "hist_epe.png",
                                           "hist_abs_error.png")}
    with open(paths["metrics.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in evaluation.rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    document = dict(dataset=evaluation.dataset, preset=evaluation.preset, seed=evaluation.seed, info=evaluation.info,
                    columns={**{k: d for k, (d, _) in M.REGISTRATION_COLUMNS.items()},
                             **{k: d for k, (d, _) in M.FUSION_COLUMNS.items()},
                             "edge_agreement_published": "edge_agreement of the published (aligned) thermal "
                                                         "with the visible image, the methods' yardstick",
                             "registration_confidence": "confidence of cgrp's registration of the pair, 0..1",
                             "registration_fallback": "cgrp's registration fell back to the prior (identity "
                                                      "or --homography) for the pair"},
                    summary=evaluation.summary,
                    targets=[dict(target=t, holds=h, detail=d) for t, h, d in evaluation.targets],
                    per_image=evaluation.rows)
    paths["metrics.json"].write_text(json.dumps(_json_safe(document), indent=1))
    paths["report.md"].write_text(report_markdown(evaluation))
    where = f"{evaluation.dataset}, preset {evaluation.preset}" if evaluation.dataset else f"preset {evaluation.preset}"
    cv2.imwrite(str(paths["hist_epe.png"]), histogram_figure(
        epe_hist, EPE_BINS, f"{where}: per-pixel flow end-point error", "EPE (px)"))
    cv2.imwrite(str(paths["hist_abs_error.png"]), histogram_figure(
        err_hist, ABS_ERROR_BINS, f"{where}: per-pixel |registered - aligned| thermal",
        "absolute error (grey levels)"))
    return list(paths.values())


# -- several data sets x presets (cgrp eval with repeated --data / --preset) ------------------------------
BENCHMARKS_BEGIN = "<!-- cgrp eval cross-domain: begin -->"
BENCHMARKS_END = "<!-- cgrp eval cross-domain: end -->"
RIG_BEGIN = "<!-- cgrp eval rig: begin -->"
RIG_END = "<!-- cgrp eval rig: end -->"
RIG_CALIBRATION_BEGIN = "<!-- cgrp eval rig calibration: begin -->"
RIG_CALIBRATION_END = "<!-- cgrp eval rig calibration: end -->"


def _num(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float, np.floating)) and math.isfinite(value) else "—"


def _targets_cell(targets: list) -> str:
    if not targets:
        return "—"
    missed = [t for t in targets if not t["holds"]]
    return "holds" if not missed else f"**MISSED** {len(missed)} of {len(targets)}"


def cross_domain_markdown(result, level: int = 1, links: bool = True) -> str:
    """The cross-domain report: one row per data set x preset, issue 9's targets, the confidence check.

    `level` is the markdown level of the title (sections one below); `links` adds links to the per-run reports.
    """
    h2 = "#" * (level + 1)
    lines = _cross_domain_header(result, level)
    lines += ["", f"{h2} Results", "", _cross_domain_table(result.info, result.rows), ""]
    lines += [f"{h2} Targets (registration across cameras)", ""] + _targets_section(result, links)
    lines += ["", f"{h2} Confidence", ""] + _confidence_section(result.confidence)
    if links:
        lines += [f"{h2} Per-run reports", "",
                  "Figures, histograms and fusion metrics of each data set x preset (per-pair rows in each "
                  "run's metrics.csv):", ""]
        lines += [f"- [`{e.dataset}` `{e.preset}`]({e.dataset}/{e.preset}/report.md)" for e in result.evaluations]
        lines.append("")
    return "\n".join(lines)


def _cross_domain_header(result, level: int) -> list:
    """Title, how the run was made (command, date, data, pipeline, weights, machine) and the columns' legend."""

    info = result.info
    # a --limit run scores the first pairs in name order: one camera of a folder of rigs may stand for all
    subset = f", the first {info['limit']} in name order only (--limit)" if info.get("limit") else ""
    data = "; ".join(f"`{d['name']}` = `{d['data']}`"
                     + (f" (`{Path(d['list']).name}`{subset})" if d["list"] else f" (every pair{subset})")
                     + f", {d['pairs']} pairs" for d in info["datasets"])
    single = single_dataset(result)
    title = f"`{single}`" if single else "cross-domain"
    return [f"{'#' * level} cgrp eval: {title}, seed {info['seed']}", "",
            f"- command: `{info.get('command', 'n/a')}`",
            f"- date: {info['date']}",
            f"- data: {data}",
            f"- pipeline: {info['pipeline']}, working size {info.get('working_size', 'n/a')}",
            f"- weights: {_weights_line(info['weights'])}",
            f"- machine: {_machine_line(info['machine'])}",
            f"- methods: {', '.join(f'`{m}`' for m in info['methods'])}",
            "",
            "EPE: flow end-point error in pixels of the visible image against the exact inverse of the applied "
            "misalignment, averaged over each pair's scored region, then over pairs. `none` = no registration "
            "(for the `none` preset its EPE is 0 and the cgrp EPE is how far the registration moves an aligned "
            "pair). ratio = mean EPE cgrp / mean EPE none. max pair: the largest per-pair mean EPE of cgrp. "
            f"worse: pairs where cgrp's EPE exceeds no registration's by more than {WORSE_MARGIN_PX:g} px. "
            "MAE: registered vs aligned thermal, grey levels. confidence: mean registration confidence; "
            f"fallbacks: pairs registered with the prior (confidence below {info['confidence_threshold']:.3g}). "
            "edges: how well the thermal's edges coincide with the visible image's (`edge_agreement`, "
            "docs/metrics.md; no ground truth involved), for the published alignment and for cgrp's registered "
            "thermal: an independent check of the published alignment the EPE takes as the truth."]


def _cross_domain_table(info, rows) -> str:
    """The results table: a row per data set x preset (the ECC / DIS columns where those methods ran)."""
    extra = [m for m in ("ecc", "dis") if m in info["methods"]]
    header = ["dataset", "preset", "pairs", "EPE none", "EPE cgrp", "ratio"] + [f"EPE {m}" for m in extra] + \
        ["MAE none / cgrp", "max pair EPE", "worse", "edges published / cgrp", "confidence", "fallbacks", "targets"]
    table = []
    for r in rows:
        table.append([f"`{r['dataset']}`", f"`{r['preset']}`", r["pairs"], _num(r["epe_none"]), _num(r["epe_cgrp"]),
                      _num(r["ratio"])] + [_num(r.get(f"epe_{m}")) for m in extra] +
                     [f"{_num(r['mae_none'])} / {_num(r['mae_cgrp'])}", _num(r["max_pair_epe"]), r["worse_pairs"],
                      f"{_num(r['edge_agreement_published'], 3)} / {_num(r['edge_agreement_cgrp'], 3)}",
                      _num(r["confidence_mean"], 3), r["fallbacks"], _targets_cell(r["targets"])])
    return markdown_table(header, table)


def _targets_section(result, links: bool) -> list:
    """Issue 9's targets, one line each with its verdict, how many hold, and the pictures of per-pair misses."""
    checked = [(r, t) for r in result.rows for t in r["targets"]]
    lines = [f"- {'**holds**' if t['holds'] else '**MISSED**'}: `{r['dataset']}` `{r['preset']}`: "
             f"{t['target']} ({t['detail']})" for r, t in checked]
    held = sum(t["holds"] for _, t in checked)
    if not checked:
        lines.append("- no target applies to these data sets and presets")
    lines += ["", f"{held} of {len(checked)} targets hold. Targets with a data-set-specific bound apply to "
              "`roadscene` and `m3svd` (in-domain val splits) and `other_cameras` (out-of-domain); the others to "
              "any data set."]
    pictures = [(e, Path(f).name) for e in result.evaluations for f in e.files if Path(f).name.startswith("alignment_")]
    if pictures:
        lines += ["", "Every pair behind a per-pair miss has a picture of its edges (published alignment, "
                  "unregistered input, cgrp's registration) for a person to judge: "
                  + ", ".join(f"[`{e.dataset}/{e.preset}/{name}`]({e.dataset}/{e.preset}/{name})" if links
                              else f"`{e.dataset}/{e.preset}/{name}`" for e, name in pictures) + "."]
    return lines


def _confidence_section(conf) -> list:
    """Mean EPE below and above the fallback threshold, and the verdict on issue 9's confidence target."""
    verdict = {True: "**holds**", False: "**MISSED**", None: "not testable (one of the groups is empty)"}[conf["holds"]]
    return [f"Over all pairs of all rows above, the CGRP registration's confidence against the fallback threshold "
            f"{conf['threshold']:.3g}:", "",
            markdown_table(["confidence", "pairs", "mean EPE cgrp (px)"],
                           [[f"below {conf['threshold']:.3g}", conf["pairs_below"], _num(conf["epe_below"])],
                            [f"{conf['threshold']:.3g} or above", conf["pairs_above"], _num(conf["epe_above"])]]),
            "", f"- {verdict}: {conf['target']}", ""]


def write_cross_domain(result, out: Path) -> list:
    """OUT/report.md, summary.json, summary.csv (a row per data set x preset), pairs.csv (a row per pair)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("report.md", "summary.json", "summary.csv", "pairs.csv")}
    paths["report.md"].write_text(cross_domain_markdown(result))
    document = dict(info=result.info, rows=result.rows, confidence=result.confidence,
                    runs=[str(Path(e.dataset) / e.preset) for e in result.evaluations])
    paths["summary.json"].write_text(json.dumps(_json_safe(document), indent=1))
    fields = list(dict.fromkeys(k for r in result.rows for k in r if k != "targets"))
    with open(paths["summary.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields + ["targets_checked", "targets_missed", "missed"])
        writer.writeheader()
        for r in result.rows:
            missed = [t for t in r["targets"] if not t["holds"]]
            writer.writerow({**{k: _csv_cell(r.get(k, "")) for k in fields}, "targets_checked": len(r["targets"]),
                             "targets_missed": len(missed), "missed": "; ".join(f"{t['target']} ({t['detail']})"
                                                                                for t in missed)})
    extra = [m for m in ("ecc", "dis") if m in result.info["methods"]]
    pair_fields = ["dataset", "preset", "image", "epe_none", "epe_cgrp"] + [f"epe_{m}" for m in extra] + \
        ["mae_none", "mae_cgrp", "registration_confidence", "registration_fallback"]
    with open(paths["pairs.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=pair_fields)
        writer.writeheader()
        for evaluation in result.evaluations:
            pairs = {}
            for row in evaluation.rows:
                pairs.setdefault(row["image"], {})[row["method"]] = row
            for name, by_method in pairs.items():
                cgrp = by_method["cgrp"]
                cells = dict(dataset=evaluation.dataset, preset=evaluation.preset, image=name,
                             epe_none=by_method["none"]["epe"], epe_cgrp=cgrp["epe"],
                             mae_none=by_method["none"]["mae"], mae_cgrp=cgrp["mae"],
                             registration_confidence=cgrp["registration_confidence"],
                             registration_fallback=cgrp["registration_fallback"])
                cells.update({f"epe_{m}": by_method[m]["epe"] for m in extra})
                writer.writerow({k: _csv_cell(v) for k, v in cells.items()})
    return list(paths.values())


def replace_marked_block(path: Path, block: str, begin: str = BENCHMARKS_BEGIN, end: str = BENCHMARKS_END) -> str:
    """Put `block` between the `begin` and `end` marker lines of the file at `path`, replacing what was there;
    -> 'replaced' or 'appended' (a file without the markers gets them and the block at its end; a missing
    file is created). InputError, nothing written, where the markers are not one pair in order (an edit
    that lost one: what lay between the orphan and the next run's marker would be lost). The file is
    replaced whole (an interruption leaves the old one)."""
    from ..core.data import replaced_on_success
    from ..core.errors import InputError

    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    problem = marked_block_problem(path, begin, end)
    if problem:
        raise InputError(f"{problem} (nothing was written there)")
    marked = f"{begin}\n{block.strip()}\n{end}"
    if begin in text:
        start, stop = text.find(begin), text.find(end)
        text, done = text[:start] + marked + text[stop + len(end):], "replaced"
    else:
        text, done = (text.rstrip("\n") + "\n\n" if text.strip() else "") + marked + "\n", "appended"
    with replaced_on_success(path) as tmp:
        tmp.write_text(text)
    return done


def marked_block_problem(path: Path, begin: str, end: str) -> str | None:
    """Why replace_marked_block cannot write into the file at `path`: its markers are not one pair in
    order, nor absent (an edit that lost one: what lay between the orphan and the next run's marker would be
    lost). None for a missing file. Checked before an evaluation as well as when writing."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    counts = (text.count(begin), text.count(end))
    if counts == (0, 0) or (counts == (1, 1) and text.find(begin) < text.find(end)):
        return None
    return (f"{path}: its markers '{begin}' ({counts[0]}x) and '{end}' ({counts[1]}x) are not one pair in order: "
            "fix them by hand")


def section_markers(names) -> tuple:
    """(begin, end) marker lines of the section --write-benchmarks replaces for data sets `names`: the
    cross-domain section for several, a section of the data set's own for one (e.g. the baselines on
    RoadScene val), so a single-data-set run never overwrites the cross-domain table."""
    names = list(names)
    if len(names) != 1:
        return BENCHMARKS_BEGIN, BENCHMARKS_END
    return f"<!-- cgrp eval {names[0]}: begin -->", f"<!-- cgrp eval {names[0]}: end -->"


def single_dataset(result) -> str | None:
    """The data set's name when `result` (a CrossDomain) covers one, else None."""
    names = [d["name"] for d in result.info["datasets"]]
    return names[0] if len(names) == 1 else None


def benchmarks_block(result) -> str:
    """What --write-benchmarks puts between the markers: the cross-domain report without links to OUT;
    for a single data set also each preset's report (every method's table), two levels down."""
    note = ("*Written by `cgrp eval --write-benchmarks` (command and date below): run the command again "
            "rather than editing this section.*")
    parts = [note, cross_domain_markdown(result, level=3, links=False)]
    if single_dataset(result):
        parts += [report_markdown(evaluation, level=4, links=False) for evaluation in result.evaluations]
    return "\n\n".join(parts)
