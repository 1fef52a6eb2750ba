"""cgrp soak: cgrp_player + cgrp_fusion for M minutes at 30 Hz, watched from outside (cgrp_ros.ros.soak)."""
from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

HELP = ("soak test: player + fusion node at 30 Hz for M minutes; throughput, drops, latency, self-calibration, "
        "memory growth, and a picture of them")


def add_arguments(p):
    from ..ros.soak import CAMERAS_WARMUP_S, SoakConfig
    from .common import cameras_arg, positive

    d = SoakConfig()
    p.add_argument("--minutes", type=positive(float), default=d.minutes,
                   help="soak duration after the first output (default: %(default)s)")
    p.add_argument("--rate", type=positive(float), default=d.rate, help="player rate, pairs/s (default: %(default)s)")
    p.add_argument("--out", type=Path, default=d.out, help="report and logs (default: %(default)s)")
    p.add_argument("--window", type=positive(float), default=d.window, help="seconds per reported window (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=None,
                   help=f"seconds after the first output before the memory baseline is taken (default: {d.warmup:g}; "
                        f"with --cameras {CAMERAS_WARMUP_S:g}, at most half the run: the node's output queues of "
                        "large images take about a minute to fill)")
    p.add_argument("--max-growth-mb", type=float, default=d.max_growth_mb,
                   help="fail when resident memory grows more than this after warm-up (default: %(default)s)")
    p.add_argument("--startup-timeout", type=positive(float), default=d.startup_timeout,
                   help="seconds to wait for the first output (default: %(default)s)")
    p.add_argument("--max-width", type=int, default=d.max_width,
                   help="player downscales wider images (default 0: as stored)")
    p.add_argument("--source", default=d.source, choices=["rig", "pairs"],
                   help="rig (default): the bundled 10-frame sequence of one rig, misaligned by ONE fixed transform, "
                        "the node with its defaults (self-calibration); pairs: the six unrelated bundled pairs of "
                        "different sizes, each misaligned its own way, every pair registered alone")
    p.add_argument("--cameras", type=cameras_arg, default=None, metavar="HxW[,HxW]",
                   help="with --source rig: the sequence resized to your visible [and thermal] camera's resolution, "
                        "e.g. 1080x1920,512x640 (default: as stored, 240x320)")
    p.add_argument("--backend", default=d.backend, choices=["torch", "onnxruntime"])
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--models", type=Path, help="folder with generator.pt, registration.pt, fusion.pt (default: shipped)")


def run(args) -> int:
    from ..ros.soak import SoakConfig, run_soak, warmup_for

    if args.warmup is None:
        args.warmup = warmup_for(args.cameras, args.minutes)
    if args.cameras and args.source != "rig":
        print("cgrp soak: error: --cameras resizes the rig's sequence: use it with --source rig", file=sys.stderr)
        return 2
    if args.warmup < 0 or args.warmup >= args.minutes * 60:
        # memory growth is measured after the warm-up: a run that ends inside it can only fail, minutes later
        print(f"cgrp soak: error: --warmup {args.warmup:g} s must be >= 0 and shorter than --minutes "
              f"{args.minutes:g} ({args.minutes * 60:g} s)", file=sys.stderr)
        return 2
    return run_soak(SoakConfig(**{f.name: getattr(args, f.name) for f in fields(SoakConfig)}))
