"""cgrp eval: misaligned-fusion benchmark of CGRP against classical baselines on aligned pairs."""
from __future__ import annotations

from pathlib import Path

from ..core.data import default_dataset_root
from ..core.deform import PRESETS
from .common import add_pipeline_arguments, pipeline_from_args

HELP = "misalign aligned pairs on purpose, register + fuse with CGRP and baselines, write metrics and a report"


def add_arguments(p):
    p.add_argument("--data", type=Path, default=None,
                   help="folder with visible/ and thermal/ aligned pairs (default: the RoadScene data set)")
    p.add_argument("--list", type=Path, default=None, metavar="FILE",
                   help="evaluate only the names listed in FILE, e.g. DATA/val.txt (default: every pair)")
    p.add_argument("--preset", default="moderate", choices=[k for k in PRESETS if k != "none"],
                   help="synthetic misalignment strength (default: moderate)")
    p.add_argument("--seed", type=int, default=0, help="misalignment seed; each image's warp depends on (seed, name)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N pairs (by name)")
    p.add_argument("--figures", type=int, default=3, metavar="N", help="example panels for the first N pairs")
    p.add_argument("--out", type=Path, required=True, help="output folder for report.md, metrics.* and figures")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's own choice)")
    add_pipeline_arguments(p)


def command_line(args) -> str:
    """The invocation, rebuilt from the parsed options (also right when called from Python)."""
    parts = ["cgrp eval", f"--data {args.data}"]
    if args.list:
        parts.append(f"--list {args.list}")
    parts += [f"--preset {args.preset}", f"--seed {args.seed}"]
    if args.limit:
        parts.append(f"--limit {args.limit}")
    parts += [f"--out {args.out}", f"--backend {args.backend}", f"--device {args.device}",
              "--working-size {}x{}".format(*args.working_size)]
    if args.fp16:
        parts.append("--fp16")
    if args.models:
        parts.append(f"--models {args.models}")
    return " ".join(parts)


def run(args) -> int:
    from ..core.evaluate import evaluate, list_pairs

    args.data = args.data or default_dataset_root()
    pairs = list_pairs(args.data, args.list, args.limit)  # data problems raise before the models load
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    pipeline = pipeline_from_args(args)
    info = dict(command=command_line(args), data=str(args.data), working_size="{}x{}".format(*args.working_size))
    evaluation = evaluate(pipeline, pairs, args.out, args.preset, args.seed, args.figures, info)
    for target, holds, detail in evaluation.targets:
        print(f"cgrp eval: {'holds' if holds else 'MISSED'}: {target} ({detail})")
    print(f"cgrp eval: {len(pairs)} pair(s), report in {args.out / 'report.md'}")
    return 0
