"""cgrp demo: cgrp_player + cgrp_fusion on the bundled sample, frames saved as PNG (cgrp_ros.ros.demo)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from .common import positive

HELP = "ROS 2 demo: player + fusion node on the bundled sample (thermal misaligned), frames saved to out/demo"


def add_arguments(p):
    p.add_argument("--frames", type=positive(int), default=12, help="fused frames to receive (default: 12)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    p.add_argument("--deform", default="moderate", choices=["none", "mild", "moderate", "severe"],
                   help="misalignment of the thermal stream (default: moderate)")
    p.add_argument("--rate", type=positive(float), default=4.0, help="player rate, pairs/s (default: 4)")
    p.add_argument("--timeout", type=positive(float), default=90.0,
                   help="give up when no output arrived after this many seconds (default: 90)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--models", type=Path, help="folder with generator.pt, registration.pt, fusion.pt (default: shipped)")


def run(args) -> int:
    from ..ros.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)}))
