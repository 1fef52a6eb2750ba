"""cgrp export: ONNX models (dynamic batch/height/width) for the onnxruntime backend."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# of the 8-bit outputs: float rounding moves pixels by 1 grey level (measured: 1 at most over 16 pairs and
# presets); flows a few hundredths of a pixel apart (tied matches) move a few edge pixels more. A graph of
# other weights moves most pixels (up to 67 levels in an audit).
GREY_LEVELS_TOLERANCE, SHARE_TOLERANCE = 2, 0.01

HELP = ("export generator/registration/fusion to ONNX (dynamic H/W; registration also without its global search, "
        "for calibrated rigs) and check them against torch")


def add_arguments(p):
    p.add_argument("--out", type=Path, default=Path("models/onnx"), help="output folder (default: models/onnx)")
    p.add_argument("--models", type=Path, help="folder with the .pt weights (default: shipped)")
    p.add_argument("--no-check", action="store_true", help="skip the torch vs onnxruntime comparison")


def run(args) -> int:
    from ..core.backends import export_onnx, flow_agreement
    from ..core.models import model_files
    from ..core.pipeline import Pipeline, PipelineConfig
    from ..evaluation.evaluate import misaligned_sample

    from ..core.data import unwritable_reason
    from ..core.errors import CgrpError

    problem = unwritable_reason(args.out / "generator.onnx")
    if problem:  # ("File exists" for an --out that is a file)
        raise CgrpError(f"cannot write --out {args.out}: {problem}")
    cfg = PipelineConfig(**(model_files(args.models) if args.models else {}))
    written = export_onnx(cfg.model_paths(), args.out)
    for stage, path in written.items():
        print(f"{stage}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.no_check:
        return 0
    # the first bundled pair misaligned by `moderate`, so every stage of the registration moves the flow
    # (on an aligned pair both backends keep the identity and agree trivially)
    _, visible, thermal = misaligned_sample("moderate")
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
        # the generator and the fusion network as well: the flow alone passed a fusion.onnx of other weights
        for name in ("pseudo_thermal", "fused"):
            difference = np.abs(getattr(a, name).astype(int) - getattr(b, name))
            share = float((difference > GREY_LEVELS_TOLERANCE).mean())
            ok &= share <= SHARE_TOLERANCE
            verdict = "within" if share <= SHARE_TOLERANCE else "OUTSIDE"
            print(f"torch vs onnxruntime {name} difference{label}: max {int(difference.max())} grey level(s), "
                  f"{share:.2%} of pixels above {GREY_LEVELS_TOLERANCE} ({verdict} tolerance, {SHARE_TOLERANCE:.0%})")
    if not ok:
        print(f"cgrp export: the graphs in {args.out} do not match the weights: do not use them", file=sys.stderr)
    return 0 if ok else 1
