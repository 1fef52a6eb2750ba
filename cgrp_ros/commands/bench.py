"""cgrp bench: per-stage latency, fps and memory for every backend/device; --ros: the node over ROS 2."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import CgrpError
from .common import cameras_arg, non_negative, positive, sizes_arg

HELP = ("latency (per stage, p50/p95), fps, peak memory and start-up time of every available backend/device, "
        "beside the peers homography+blend and ecc+blend; --ros: node end to end")


def add_arguments(p):
    p.add_argument("--runs", type=int, default=20, help="timed runs per configuration and size (default: 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: 3)")
    p.add_argument("--sizes", type=sizes_arg, default=[(256, 320), (512, 640), (720, 1280)], metavar="HxW,...",
                   help="working sizes (default: 256x320,512x640,720x1280)")
    p.add_argument("--backends", default=None, metavar="LIST",
                   help="comma-separated configurations (default: all): torch-cpu, torch-cuda, torch-cuda-fp16, "
                        "onnxruntime-cpu, onnxruntime-cuda, onnxruntime-tensorrt")
    p.add_argument("--no-startup", action="store_true",
                   help="skip the start-up times (seconds to build a Pipeline per backend, ONNX cache warm and cold)")
    p.add_argument("--out", type=Path, default=Path("out/bench"),
                   help="folder for bench.json and bench.md (default: out/bench in the current folder)")
    p.add_argument("--threads", type=non_negative(int), default=0,
                   help="torch and OpenCV CPU threads (default 0: their own choice); also OMP_NUM_THREADS of the "
                        "--ros node")
    p.add_argument("--deform", default="moderate", choices=["none", "mild", "moderate", "severe"],
                   help="misalignment of the thermal: of the timed pair (the first bundled pair, resized to each "
                        "working size) or, with --ros, of the played sequence, one for all frames (default: moderate)")
    p.add_argument("--cameras", type=cameras_arg, default=None, metavar="HxW[,HxW]",
                   help="the resolutions of your visible [and thermal] camera, e.g. 1080x1920,512x640: the timed "
                        "pair (or the played sequence) is resized to them, so full-resolution conversions and "
                        "outputs are timed too (default: the working size; with --ros the sequence as stored, "
                        "240x320)")
    g = p.add_argument_group("ROS 2 (--ros)")
    g.add_argument("--ros", action="store_true",
                   help="measure cgrp_player -> cgrp_fusion -> subscriber instead (first --backends entry, first size)")
    g.add_argument("--rate", type=positive(float), default=30.0, help="player rate, pairs/s (default: 30)")
    g.add_argument("--duration", type=positive(float), default=20.0, help="measured seconds after the first output (default: 20)")


def _selected(configs, wanted: str | None):
    if not wanted:
        return configs
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    known = {c.label: c for c in configs}
    if not names:
        raise CgrpError(f"--backends names no configuration; expected some of {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CgrpError(f"unknown configuration(s) {', '.join(unknown)}; expected {', '.join(known)}")
    return [known[n] for n in names]


def run(args) -> int:
    import cv2
    import torch

    from ..evaluation.bench import bench_markdown, bench_targets, configurations, run_benchmarks
    from ..evaluation.evaluate import machine_description

    if args.runs < 1 or args.warmup < 0:
        raise CgrpError("--runs must be >= 1 and --warmup >= 0")
    configs = _selected(configurations(), args.backends)
    if not any(c.available for c in configs):  # nothing would be measured: say why instead of an empty table
        raise CgrpError("none of the selected configurations is available on this machine: "
                        + "; ".join(f"{c.label}: {c.reason}" for c in configs))
    from ..core.data import unwritable_reason
    from ..core.pipeline import working_size_problem

    problem = unwritable_reason(args.out / "bench.json")
    if problem:  # ("File exists" for an --out that is a file), before minutes of measuring
        raise CgrpError(f"cannot write --out {args.out}: {problem}")

    measured = [c for c in configs if c.available][:1] if args.ros else configs  # (--ros: the first, one size)
    for size in args.sizes[:1] if args.ros else args.sizes:  # before any is measured, not when it comes
        problem = any(c.available and c.device == "cpu" for c in measured) and working_size_problem(size, "cpu")
        if problem:
            raise CgrpError(f"--sizes: {problem}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)  # the pipeline's conversions and the peers
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the --ros node
    machine = machine_description()
    machine["torch_threads"] = torch.get_num_threads()
    if args.ros:
        from ..ros.bench import ros_markdown, run_ros_bench

        available = [c for c in configs if c.available]
        document = run_ros_bench(available[0], args.sizes[0], args.rate, args.duration, args.deform, args.out,
                                 cameras=args.cameras)
        document["machine"] = machine
        name, table = "bench_ros", ros_markdown(document)
    else:
        document = run_benchmarks(configs, args.sizes, args.runs, args.warmup,
                                  progress=lambda text: print(f"cgrp bench: {text}", flush=True),
                                  startup=not args.no_startup, deform=args.deform, cameras=args.cameras)
        document["machine"] = machine
        document["targets"] = [dict(target=t, verdict=v) for t, v in bench_targets(document)]
        name, table = "bench", bench_markdown(document)
    header = (f"Machine: {machine['cpu']}, {machine['cores']} cores, GPU {machine['gpu']}; "
              f"torch {machine['torch']} ({machine['torch_threads']} threads), Python {machine['python']}; "
              f"load average at start {machine['load_average']}")
    (args.out / f"{name}.json").write_text(json.dumps(document, indent=1))
    (args.out / f"{name}.md").write_text(f"{header}\n\n{table}\n")
    print(table)
    print(f"cgrp bench: written {args.out / (name + '.json')} and {args.out / (name + '.md')}")
    return 0
