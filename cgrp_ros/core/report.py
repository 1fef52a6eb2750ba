"""Writing evaluation results: report.md, metrics.csv, metrics.json and PNG figures (OpenCV drawing)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np

from . import metrics as M
from .warp import flow_to_color

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


def report_markdown(evaluation) -> str:
    from .evaluate import METHOD_DESCRIPTIONS, REGISTRARS, METHODS

    info, summary = evaluation.info, evaluation.summary
    machine, weights = info["machine"], info["weights"]
    lines = [f"# cgrp eval: preset `{evaluation.preset}`, seed {evaluation.seed}", "",
             f"- command: `{info.get('command', 'n/a')}`",
             f"- data: `{info.get('data', 'n/a')}`, {info['pairs']} pairs",
             f"- pipeline: {info['pipeline']}, working size {info.get('working_size', 'n/a')}",
             f"- weights: {', '.join(Path(p).name for p in weights['paths'].values())} in "
             f"`{Path(next(iter(weights['paths'].values()))).parent}`"
             + ("" if weights["shipped"] else " — **not the shipped weights**"),
             f"- machine: {machine['cpu']}, {machine['cores']} cores, GPU {machine['gpu']}, load average "
             f"{machine['load_average']} at start; {machine['os']}, "
             f"Python {machine['python']}, torch {machine['torch']}, OpenCV {machine['opencv']}",
             "", "## Targets", ""]
    for target, holds, detail in evaluation.targets:
        lines.append(f"- {'**holds**' if holds else '**MISSED**'}: {target} ({detail})")
    lines += ["", "## Registration (registered vs aligned thermal)", "",
              f"Scored region: {info['region']}. Intensities in grey levels (0-255); EPE in pixels "
              "against the exact inverse of the applied displacement. `cgrp_avg` shares `cgrp`'s registration.",
              "", summary_table(summary, REGISTRARS, M.REGISTRATION_COLUMNS), "",
              "## Fusion (fused luminance vs visible luminance and the aligned thermal)", "",
              "fmi and vif are sums over the two sources, cc and ssim their means (see docs/metrics.md).", "",
              summary_table(summary, METHODS, M.FUSION_COLUMNS), "", "## Methods", ""]
    lines += [f"- `{m}`: {METHOD_DESCRIPTIONS[m]}" for m in METHODS]
    lines += ["", "mean ± standard deviation over images; ↑ higher is better, ↓ lower is better; best in bold.",
              "Figures: `example_*.png` (visible | misaligned thermal | CGRP registered | CGRP fused | CGRP flow | "
              "ground-truth flow | checkerboard of visible and registered thermal), `compare_*.png` (per method: "
              "checkerboard of visible and registered thermal, fused image), `hist_epe.png`, "
              "`hist_abs_error.png`.", ""]
    return "\n".join(lines)


# -- figures ---------------------------------------------------------------------------------------------
def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[:, :, :3]


def _tile(image: np.ndarray, label: str) -> np.ndarray:
    """Scale to TILE_HEIGHT and put a label strip above."""
    image = _bgr(image)
    width = max(1, round(image.shape[1] * TILE_HEIGHT / image.shape[0]))
    body = cv2.resize(image, (width, TILE_HEIGHT), interpolation=cv2.INTER_AREA)
    strip = np.full((LABEL_HEIGHT, width, 3), 32, np.uint8)
    cv2.putText(strip, label, (4, LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack((strip, body))


def checkerboard(a: np.ndarray, b: np.ndarray, square: int = CHECKER_TILE) -> np.ndarray:
    """Alternate squares of two same-size images (misregistration shows as broken edges)."""
    ys, xs = np.indices(a.shape[:2])
    pick_a = ((ys // square + xs // square) % 2 == 0)
    if a.ndim == 3:
        pick_a = pick_a[:, :, None]
    return np.where(pick_a, a, b)


def example_panel(panel: dict) -> np.ndarray:
    """One row: visible | misaligned | registered | fused | flow | true flow | checkerboard."""
    scale = max(float(np.max(np.hypot(panel["truth_flow"][..., 0], panel["truth_flow"][..., 1]))), 1.0)
    tiles = [_tile(panel["visible"], "visible"), _tile(panel["misaligned"], "misaligned thermal"),
             _tile(panel["registered"], "registered (cgrp)"), _tile(panel["fused"], "fused (cgrp)"),
             _tile(flow_to_color(panel["flow"], scale), "flow (cgrp)"),
             _tile(flow_to_color(panel["truth_flow"], scale), f"true flow (max {scale:.0f} px)"),
             _tile(checkerboard(panel["visible_y"], panel["registered"]), "visible / registered")]
    return np.hstack(tiles)


def comparison_panel(panel: dict) -> np.ndarray:
    """Two rows over the methods: checkerboards of visible and registered thermal (the aligned
    thermal first, as the ideal), then each method's fused image (the aligned-pair row left blank)."""
    from .evaluate import METHODS

    registrar = lambda m: "cgrp" if m == "cgrp_avg" else m  # noqa: E731
    top = [_tile(checkerboard(panel["visible_y"], panel["aligned"]), "visible / aligned (ideal)")]
    top += [_tile(checkerboard(panel["visible_y"], panel["registered_by_method"][registrar(m)]), f"visible / {m}")
            for m in METHODS]
    bottom = [np.zeros_like(top[0])] + [_tile(panel["fused_by_method"][m], f"fused {m}") for m in METHODS]
    return np.vstack((np.hstack(top), np.hstack(bottom)))


def histogram_figure(counts: dict, edges: np.ndarray, title: str, xlabel: str,
                     size=(720, 420)) -> np.ndarray:
    """Line plot of normalised histograms, one line per method, with axes and a legend (BGR uint8)."""
    width, height = size
    left, right, top, bottom = 60, 20, 40, 50
    image = np.full((height, width, 3), 255, np.uint8)
    plot_w, plot_h = width - left - right, height - top - bottom
    shares = {m: c / max(c.sum(), 1) for m, c in counts.items()}
    peak = max([float(s.max()) for s in shares.values()] + [1e-6])
    centres = (edges[:-1] + edges[1:]) / 2
    to_x = lambda v: int(left + (v - edges[0]) / (edges[-1] - edges[0]) * plot_w)  # noqa: E731
    to_y = lambda s: int(top + plot_h - s / peak * plot_h)  # noqa: E731
    black, font = (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(image, (left, top), (left + plot_w, top + plot_h), black, 1)
    for i in range(6):
        value = edges[0] + (edges[-1] - edges[0]) * i / 5
        cv2.putText(image, f"{value:g}", (to_x(value) - 10, top + plot_h + 18), font, 0.4, black, 1, cv2.LINE_AA)
        share = peak * i / 5
        cv2.putText(image, f"{share:.2f}", (8, to_y(share) + 4), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(image, title, (left, 25), font, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(image, xlabel + " (last bin: and above)", (left, height - 12), font, 0.45, black, 1, cv2.LINE_AA)
    for row, (method, share) in enumerate(shares.items()):
        color = METHOD_COLORS.get(method, black)
        points = np.array([[to_x(c), to_y(s)] for c, s in zip(centres, share)], np.int32)
        cv2.polylines(image, [points], False, color, 2, cv2.LINE_AA)
        y = top + 18 + 18 * row
        cv2.line(image, (left + plot_w - 110, y - 4), (left + plot_w - 85, y - 4), color, 2)
        cv2.putText(image, method, (left + plot_w - 80, y), font, 0.45, black, 1, cv2.LINE_AA)
    return image


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


def write_all(evaluation, out: Path, epe_hist: dict, err_hist: dict) -> list:
    """report.md, metrics.csv, metrics.json, hist_epe.png, hist_abs_error.png; returns their paths."""
    from .evaluate import ABS_ERROR_BINS, COLUMNS, EPE_BINS

    paths = {name: out / name for name in ("report.md", "metrics.csv", "metrics.json", "hist_epe.png",
                                           "hist_abs_error.png")}
    with open(paths["metrics.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in evaluation.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    document = dict(preset=evaluation.preset, seed=evaluation.seed, info=evaluation.info,
                    columns={**{k: d for k, (d, _) in M.REGISTRATION_COLUMNS.items()},
                             **{k: d for k, (d, _) in M.FUSION_COLUMNS.items()}},
                    summary=evaluation.summary,
                    targets=[dict(target=t, holds=h, detail=d) for t, h, d in evaluation.targets],
                    per_image=evaluation.rows)
    paths["metrics.json"].write_text(json.dumps(_json_safe(document), indent=1))
    paths["report.md"].write_text(report_markdown(evaluation))
    cv2.imwrite(str(paths["hist_epe.png"]), histogram_figure(
        epe_hist, EPE_BINS, f"per-pixel flow end-point error, {evaluation.preset}", "EPE (px)"))
    cv2.imwrite(str(paths["hist_abs_error.png"]), histogram_figure(
        err_hist, ABS_ERROR_BINS, f"per-pixel |registered - aligned| thermal, {evaluation.preset}",
        "absolute error (grey levels)"))
    return list(paths.values())
