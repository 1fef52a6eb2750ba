"""cgrp export: ONNX models (dynamic batch/height/width) for the onnxruntime backend."""
from __future__ import annotations

from pathlib import Path

import numpy as np

HELP = "export generator/registration/fusion to ONNX (dynamic H/W) and check them against torch"


def add_arguments(p):
    p.add_argument("--out", type=Path, default=Path("models/onnx"), help="output folder (default: models/onnx)")
    p.add_argument("--models", type=Path, help="folder with the .pt weights (default: shipped)")
    p.add_argument("--no-check", action="store_true", help="skip the torch vs onnxruntime comparison")


def run(args) -> int:
    from ..core.backends import export_onnx
    from ..core.pipeline import Pipeline, PipelineConfig

    cfg = PipelineConfig()
    if args.models:
        cfg.generator, cfg.registration, cfg.fusion = (str(args.models / f"{s}.pt")
                                                       for s in ("generator", "registration", "fusion"))
    written = export_onnx(cfg.model_paths(), args.out)
    for stage, path in written.items():
        print(f"{stage}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.no_check:
        return 0
    rng = np.random.default_rng(0)
    visible = (rng.random((200, 300, 3)) * 255).astype(np.uint8)
    thermal = (rng.random((200, 300)) * 255).astype(np.uint8)
    a = Pipeline(cfg, backend="torch", device="cpu")(visible, thermal)
    b = Pipeline(cfg, backend="onnxruntime", device="cpu", onnx_dir=str(args.out))(visible, thermal)
    diff = float(np.max(np.abs(a.flow - b.flow)))
    print(f"torch vs onnxruntime: max flow difference {diff:.2e} px")
    return 0 if diff < 1e-3 else 1
