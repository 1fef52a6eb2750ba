"""Measure `cgrp calibrate` on synthetic rigs built from aligned data sets (issue 10, 'Calibrate').

    python -m cgrp_ros.measure_calibration --data ../shared/datasets/roadscene --list val.txt \
        --size 320x480 --out out/calibration/roadscene

Each aligned pair becomes a pair of one synthetic rig (cgrp_ros.core.calibrate.synthetic_rig): the
thermal sees the central 1/FOV of the view, moved by ONE fixed 'severe'-sized transform (rotation
5 deg, scale 1.06, shift 6 % of the width in x and y about the centre; the preset's bounds, without
its elastic part, which no homography models), the visible camera sees the whole view at VISIBLE_PIXELS
times the thermal's pixels. The rig folders are written to OUT/rig/, `cgrp calibrate` runs on them
through the CLI, and the mean corner error of OUT/rig.yaml against the truth is printed, in thermal px.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np


def main(argv=None) -> int:
    from .cli import main as cgrp
    from .commands.common import size_arg
    from .core.calibrate import centred_placement, corner_error, load_calibration, similarity_about_centre, synthetic_rig
    from .core.data import load_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--list", default="val", help="split name (val -> DATA/val.txt)")
    p.add_argument("--size", type=size_arg, default=(320, 480), metavar="HxW", help="thermal size of the rig")
    p.add_argument("--fov", type=float, default=1.6, help="visible field of view / thermal field of view")
    p.add_argument("--visible-pixels", type=float, default=2.0, help="visible pixels / thermal pixels, per axis")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--epe", action="store_true",
                   help="also fuse every rig pair with the calibration (Pipeline, torch) and report the flow "
                   "end-point error in visible px against the truth, where the thermal sees")
    p.add_argument("extra", nargs="*", help="more cgrp calibrate options after --")
    args = p.parse_args(argv)
    h, w = args.size
    misalignment = similarity_about_centre(args.size, 5.0, 1.06, (0.06 * w, 0.06 * w))
    rig = args.out / "rig"
    for sub in ("visible", "thermal"):
        (rig / sub).mkdir(parents=True, exist_ok=True)
    truth = None
    for name, visible, thermal in load_split(args.data, args.list):
        v, t, truth = synthetic_rig(visible, thermal, misalignment, args.fov, args.visible_pixels, args.size)
        cv2.imwrite(str(rig / "visible" / f"{name}.png"), v)
        cv2.imwrite(str(rig / "thermal" / f"{name}.png"), t)
    np.save(args.out / "truth.npy", truth)
    command = ["calibrate", "--visible", str(rig / "visible"), "--thermal", str(rig / "thermal"),
               "--out", str(args.out / "rig.yaml"), "--device", args.device, *args.extra]
    t0 = time.time()
    code = cgrp(command)
    if code:
        return code
    estimate = load_calibration(args.out / "rig.yaml")
    error = corner_error(estimate, truth, args.size)
    prior = corner_error(centred_placement(args.size, cv2.imread(str(next((rig / "visible").iterdir()))).shape[:2]),
                         truth, args.size)
    epe = endpoint_error(rig, estimate, truth, args.device) if args.epe else None
    result = dict(data=str(args.data), split=args.list, thermal_size=list(args.size), fov=args.fov,
                  visible_pixels=args.visible_pixels, corner_error_thermal_px=round(error, 3),
                  corner_error_prior_thermal_px=round(prior, 3), fuse_epe_visible_px=epe,
                  seconds=round(time.time() - t0, 1), command="cgrp " + " ".join(command))
    (args.out / "measurement.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


def endpoint_error(rig: Path, estimate, truth, device: str) -> dict:
    """Mean over pairs of the mean |H_true(H_est^-1(p + flow(p))) - p| (visible px) where the rig's
    thermal sees p: the end-point error of `cgrp fuse --calibration`'s registration ('fuse'), and
    the same with flow = 0 ('calibration_only': the homography alone)."""
    from tqdm import tqdm

    from .core.calibrate import apply_homography
    from .core.pipeline import Pipeline, PipelineConfig

    pipeline = Pipeline(PipelineConfig(device=device, homography=estimate))
    errors, alone = [], []
    for path in tqdm(sorted((rig / "visible").iterdir()), desc="fuse --calibration", unit="pair"):
        visible = cv2.imread(str(path))
        thermal = cv2.imread(str(rig / "thermal" / path.name), cv2.IMREAD_GRAYSCALE)
        flow = pipeline(visible, thermal, outputs=frozenset({"flow"})).flow
        hv, wv = flow.shape[:2]
        ys, xs = np.mgrid[0:hv, 0:wv]
        p = np.c_[xs.ravel(), ys.ravel()].astype(np.float64)
        th_true = apply_homography(np.linalg.inv(truth), p)
        ht, wt = thermal.shape
        seen = (th_true[:, 0] >= 0) & (th_true[:, 0] <= wt - 1) & (th_true[:, 1] >= 0) & (th_true[:, 1] <= ht - 1)
        q = apply_homography(truth @ np.linalg.inv(estimate), p + flow.reshape(-1, 2))
        errors.append(float(np.linalg.norm(q - p, axis=1)[seen].mean()))
        q0 = apply_homography(truth @ np.linalg.inv(estimate), p)
        alone.append(float(np.linalg.norm(q0 - p, axis=1)[seen].mean()))
    return dict(fuse=round(float(np.mean(errors)), 3), calibration_only=round(float(np.mean(alone)), 3))


if __name__ == "__main__":
    raise SystemExit(main())
