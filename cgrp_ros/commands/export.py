"""cgrp export: ONNX models (dynamic batch/height/width) for the onnxruntime backend."""
from __future__ import annotations

from pathlib import Path

import numpy as np

HELP = ("export generator/registration/fusion to ONNX (dynamic H/W; registration also without its global search, "
        "for calibrated rigs) and check them against torch")


def add_arguments(p):
    p.add_argument("--out", type=Path, default=Path("models/onnx"), help="output folder (default: models/onnx)")
    p.add_argument("--models", type=Path, help="folder with the .pt weights (default: shipped)")
    p.add_argument("--no-check", action="store_true", help="skip the torch vs onnxruntime comparison")


def _check_pair():
    """A bundled RoadScene pair when the sample folder is there, else a smooth synthetic scene; its
    thermal misaligned by the `moderate` preset, so that every stage of the registration moves the
    flow (on an aligned pair both backends keep the identity and agree trivially)."""
    import cv2

    from ..core.data import REPO_ROOT, find_pairs, read_image
    from ..core.deform import misalign, rng_for
    from ..evaluation.evaluate import thermal_to_uint8

    try:
        name, v, t = find_pairs(REPO_ROOT / "sample" / "visible", REPO_ROOT / "sample" / "thermal").pairs[0]
        visible, thermal = read_image(v), read_image(t)
    except Exception:
        name = "synthetic"
        noise = np.random.default_rng(0).random((200, 300)).astype(np.float32)
        thermal = (cv2.GaussianBlur(noise, (0, 0), 4) * 255 * 4).clip(0, 255).astype(np.uint8)
        visible = cv2.cvtColor(thermal, cv2.COLOR_GRAY2BGR)
    aligned = thermal_to_uint8(thermal, visible.shape[:2])  # as `cgrp eval` prepares a pair to misalign
    return visible, misalign(aligned, "moderate", rng_for(0, name)).misaligned


def run(args) -> int:
    from ..core.backends import export_onnx, flow_agreement
    from ..core.models import model_files
    from ..core.pipeline import Pipeline, PipelineConfig

    cfg = PipelineConfig(**(model_files(args.models) if args.models else {}))
    written = export_onnx(cfg.model_paths(), args.out)
    for stage, path in written.items():
        print(f"{stage}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.no_check:
        return 0
    visible, thermal = _check_pair()
    ok = True
    # a calibration (here a 3 px shift) runs the graph without the global search
    for label, homography in (("", None), (" with a calibration", np.array([[1, 0, 3], [0, 1, -2], [0, 0, 1.0]]))):
        cfg.homography = homography
        a = Pipeline(cfg, backend="torch", device="cpu")(visible, thermal)
        b = Pipeline(cfg, backend="onnxruntime", device="cpu", onnx_dir=str(args.out))(visible, thermal)
        agree = flow_agreement(a.flow, b.flow)
        ok &= agree["ok"]
        print(f"torch vs onnxruntime flow difference{label} (pair misaligned by `moderate`): max {agree['max']:.1e} px, "
              f"p99 {agree['p99']:.1e} px, mean {agree['mean']:.1e} px "
              f"({'within' if agree['ok'] else 'OUTSIDE'} tolerance)")
    return 0 if ok else 1
