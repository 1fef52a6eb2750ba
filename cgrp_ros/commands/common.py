"""Options and checks shared by the commands: the pipeline options, argument types, output paths."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..core.errors import CgrpError, InputError


def size_arg(text: str):
    """'256x320' (H x W) -> (256, 320)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 256x320, got '{text}'") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"expected at least 32x32, got '{text}'")
    return h, w


def sizes_arg(text: str):
    """'256x320,512x640' -> [(256, 320), (512, 640)]."""
    return [size_arg(part) for part in text.split(",") if part.strip()]


def cameras_arg(text: str):
    """'1080x1920,512x640' -> ((1080, 1920), (512, 640)); one size: both cameras."""
    sizes = sizes_arg(text)
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected HxW or HxW,HxW (visible, thermal), got '{text}'")
    return sizes[0], sizes[-1]


def positive(kind):
    """An argparse type: `kind` (int or float) of the text, refused unless > 0."""
    return _bounded(kind, lambda value: value > 0, "> 0")


def non_negative(kind):
    """An argparse type: `kind` (int or float) of the text, refused unless >= 0."""
    return _bounded(kind, lambda value: value >= 0, ">= 0")


def unit_interval(text: str) -> float:
    """An argparse type: a number in 0..1 (a confidence)."""
    return _bounded(float, lambda value: 0.0 <= value <= 1.0, "in 0..1")(text)


def _bounded(kind, accept, bound: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got '{text}'") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="inference backend (default: torch; onnxruntime runs the graphs of cgrp export)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when available, else CPU (default: auto)")
    g.add_argument("--fp16", action="store_true", help="half precision (torch on CUDA; onnxruntime TensorRT)")
    g.add_argument("--working-size", type=size_arg, default=(256, 320), metavar="HxW",
                   help="largest resolution the networks run at (default: 256x320)")
    g.add_argument("--fusion-scale", type=float, default=0.5, metavar="S",
                   help="run the fusion network at the working size x S (0.1..1; the visible detail above it is "
                        "added back); 0.5 is about 4x faster than 1 and scored no worse on Qabf, SSIM and VIF (default: 0.5)")
    g.add_argument("--models", type=Path, help="folder with generator.pt, registration.pt, fusion.pt (default: shipped)")
    g.add_argument("--onnx-dir", type=Path, metavar="DIR",
                   help="--backend onnxruntime: the graphs of `cgrp export --out DIR` (graphs missing there are "
                        "exported into it; default: exported on first use to a cache)")
    prior = g.add_mutually_exclusive_group()
    prior.add_argument("--homography", type=Path, help="3x3 thermal->visible pixel homography (.npy or text)")
    prior.add_argument("--calibration", type=Path, metavar="RIG.yaml",
                       help="rig calibration written by cgrp calibrate (its thermal->visible homography)")
    add_thermal_arguments(g, fuses=True)


def add_thermal_arguments(g, fuses: bool = False) -> None:
    """How the thermal is normalised for the networks (PipelineConfig's fields of the same names): the same
    for cgrp calibrate as for the commands that fuse, so a rig is calibrated on the thermal it is fused with."""
    g.add_argument("--thermal-percentiles", type=float, nargs=2, default=(1.0, 99.0), metavar=("LOW", "HIGH"),
                   help="robust gain control for 16-bit/float thermal (default: 1 99)")
    g.add_argument("--black-hot", action="store_true",
                   help="the thermal camera shows hot as dark (a black-hot palette): inverted for the networks"
                        + (", so hot is bright in the fused image (registered/ keeps the camera's values)"
                           if fuses else ""))


def add_camera_file_arguments(g) -> None:
    """--visible-camera-info / --thermal-camera-info: lens calibrations for folders of images."""
    g.add_argument("--visible-camera-info", type=Path, metavar="YAML",
                   help="folders: the visible camera's calibration (camera_calibration's ost.yaml, camera_info_manager's "
                        "file); with --thermal-camera-info each image is undistorted first, as cgrp_fusion does with "
                        "camera_info")
    g.add_argument("--thermal-camera-info", type=Path, metavar="YAML", help="folders: the thermal camera's, likewise")


def cameras_from_args(args):
    """(visible, thermal) core.camera.Intrinsics from --visible/--thermal-camera-info, or None."""
    from ..core.camera import load_camera_yaml

    files = (getattr(args, "visible_camera_info", None), getattr(args, "thermal_camera_info", None))
    if not any(files):
        return None
    if not all(files):
        raise CgrpError("give both --visible-camera-info and --thermal-camera-info (cgrp_fusion, too, undistorts "
                        "only with both cameras' camera_info)")
    return tuple(load_camera_yaml(f) for f in files)


def load_homography(path) -> np.ndarray:
    """--homography: a 3 x 3 matrix from a .npy file or a text file of numbers. InputError naming the file
    when it cannot be read or is no usable homography (core.image.homography_problem)."""
    from ..core.image import homography_problem

    path = Path(path)
    try:
        matrix = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path)
    except (OSError, ValueError) as exc:
        hint = ("; a rig.yaml of cgrp calibrate goes to --calibration" if path.suffix.lower() in (".yaml", ".yml")
                else "")
        raise InputError(f"homography file {path}: cannot read a 3x3 matrix ({getattr(exc, 'strerror', None) or exc})"
                         f"{hint}") from None
    problem = homography_problem(matrix)
    if problem:
        raise InputError(f"homography file {path}: the matrix {problem}")
    return matrix


def pipeline_from_args(args):
    from ..core.models import model_files
    from ..core.pipeline import Pipeline, PipelineConfig

    cfg = PipelineConfig(backend=args.backend, device=args.device, fp16=args.fp16, working_size=args.working_size,
                         thermal_percentiles=tuple(args.thermal_percentiles), fusion_scale=args.fusion_scale,
                         black_hot=getattr(args, "black_hot", False),
                         onnx_dir=str(args.onnx_dir) if args.onnx_dir else None,
                         **(model_files(args.models) if args.models else {}))
    if args.homography:
        cfg.homography = load_homography(args.homography)
    if getattr(args, "calibration", None):
        from ..core.calibrate import load_rig
        cfg.homography, cfg.homography_sizes = load_rig(args.calibration)  # malformed: CalibrationError, exit 2
    return Pipeline(cfg)
