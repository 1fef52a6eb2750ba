"""cgrp_fusion's parameter table: names, defaults, meanings, accepted values, and their checks.

`PARAMETERS` is the one source for the node's declarations, `config/cgrp_fusion.yaml` and the
parameter table in docs/ros.md (the tests compare them).
"""
from __future__ import annotations

import array
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from .sync import DEFAULT_QUEUE_SIZE, DEFAULT_SLOP

OUTPUTS = ("fused", "registered_thermal", "deformation", "deformation_vis", "alignment_vis", "pseudo_thermal")


MIN_STATS_PERIOD = 1.0  # s: stats lines any more often would flood the log


@dataclass(frozen=True)
class Param:
    """One node parameter: default, meaning and the values it accepts."""
    name: str
    default: object
    description: str
    choices: tuple = ()        # allowed values (strings, or items of a string array)
    range: tuple = ()          # (min, max) for numbers and number arrays
    rebuild: bool = False      # changing it builds a new Pipeline (beside the running one)
    read_only: bool = False    # fixed at startup (e.g. QoS)
    any_type: bool = False     # rclpy does not check the type: `used_value` and `check_parameter` do


PARAMETERS = (
    Param("autostart", True, "configure and activate at start-up; false: wait for a lifecycle manager (read only)",
          read_only=True),
    Param("backend", "torch", "inference backend", choices=("torch", "onnxruntime"), rebuild=True),
    Param("device", "auto", "auto: CUDA when available, else CPU; cuda without a GPU falls back to CPU "
          "with a warning unless require_gpu", choices=("auto", "cuda", "cpu"), rebuild=True),
    Param("require_gpu", False, "fail instead of falling back to the CPU", rebuild=True),
    Param("fp16", False, "half precision (torch on CUDA; onnxruntime with TensorRT)", rebuild=True),
    Param("working_size", [256, 320], "[height, width] px: the largest resolution the networks run at; "
          "outputs are always at the visible resolution", range=(32, 4096)),
    Param("generator_model", "", "generator weights (.pt); empty: the shipped models/generator.pt", rebuild=True),
    Param("registration_model", "", "registration weights (.pt); empty: the shipped one", rebuild=True),
    Param("fusion_model", "", "fusion weights (.pt); empty: the shipped one", rebuild=True),
    Param("onnx_dir", "", "exported ONNX files for backend onnxruntime; empty: exported once to a cache",
          rebuild=True),
    Param("fusion_scale", 0.5, "the fusion network runs at working_size x this; the visible detail above it is "
          "added back (0.5: 4x faster than 1, no worse on Qabf/SSIM/VIF)", range=(0.1, 1.0)),
    Param("self_calibrate", True, "keep a running, robust estimate of the rig's flow from registrations at "
          "registration_rate and fuse every pair with it (converging / converged / drifting in /diagnostics; "
          "~/save_calibration writes it); false: register every pair alone (slower, the flow shimmers)"),
    Param("registration_rate", 0.5, "with self_calibrate: full registrations (generator + registration) per "
          "second of stream time once the estimate has converged (2 per second while it converges or drifts; a "
          "scene change registers at once)", range=(0.01, 100.0)),
    Param("scene_change", 0.15, "with self_calibrate: change of a 12x16 thumbnail of the visible image (mean, "
          "0..1) since the last registration that registers at once; 0: off", range=(0.0, 1.0)),
    Param("calibration_file", "", "rig.yaml from cgrp calibrate or ~/save_calibration: its homography is the "
          "prior the networks correct; a path that does not exist yet is only where ~/save_calibration writes",
          rebuild=True),
    Param("thermal_percentiles", [1.0, 99.0], "[low, high] percentiles of the robust gain control for "
          "16-bit and float thermal", range=(0.0, 100.0)),
    Param("agc_8bit", False, "apply the gain control to 8-bit thermal too"),
    Param("black_hot", False, "the thermal camera shows hot as dark (a black-hot palette): inverted for fusion, so "
                              "hot is bright in ~/fused (~/registered_thermal keeps the camera's values)"),
    Param("slop", DEFAULT_SLOP, "largest stamp difference (s) of a visible/thermal pair", range=(0.0, 10.0)),
    Param("queue_size", DEFAULT_QUEUE_SIZE,
          "messages per stream kept for pairing (each holds its image, a compressed one undecoded: up to 2 x "
          "queue_size images)",
          range=(1, 1000)),
    Param("reliability", "best_effort", "deprecated alias: the inputs' default QoS reliability; prefer the standard "
          "qos_overrides.<topic>.subscription.reliability, which wins (read only)", choices=("best_effort", "reliable"),
          read_only=True),
    Param("image_transport", "raw", "input transport: raw subscribes <topic> (sensor_msgs/Image), compressed "
          "<topic>/compressed (sensor_msgs/CompressedImage: JPEG, PNG incl. 16-bit) (read only)",
          choices=("raw", "compressed"), read_only=True),
    Param("use_camera_info", True, "undistort each image with its own camera's sensor_msgs/CameraInfo "
          "(<camera>/camera_info beside its image topic) once both have arrived, and publish ~/camera_info; "
          "until then, and with false, images are fused as they are"),
    Param("jpeg_quality", 90, "JPEG quality of ~/fused/compressed", range=(1, 100)),
    Param("deformation_vis_max", 0.0, "flow magnitude (px) shown at full colour in ~/deformation_vis; 0: each "
          "image's own maximum (as cgrp fuse's flow_vis)", range=(0.0, 10000.0)),
    # any_type: `outputs:=[]` reaches rclpy as no value (at start-up) or as an empty array of bytes or booleans
    # (at run time), which a string-array parameter would refuse ("Wrong parameter type, expected '9' got '5'")
    Param("outputs", list(OUTPUTS), "outputs to publish; each is computed only while it has subscribers; "
          "[] publishes nothing", choices=OUTPUTS, any_type=True),
    Param("stream_timeout", 2.0, "s without a message or pair before diagnostics warn", range=(0.1, 3600.0)),
    Param("drop_rate_warn", 0.5, "fraction of dropped pairs that makes diagnostics warn", range=(0.0, 1.0)),
    Param("stats_period", 10.0, "s between statistics log lines (at least 1); 0 turns them off", range=(0.0, 3600.0)),
)
PARAMETERS_BY_NAME = {p.name: p for p in PARAMETERS}

# Reliable inputs through the standard QoS override parameters (topics as the node resolves them, i.e.
# after remapping): large images over shared memory need them.
RELIABLE_INPUTS = {f"qos_overrides./{stream}/image.subscription.reliability": "reliable"
                   for stream in ("visible", "thermal")}


def model_parameters(models) -> dict:
    """cgrp_fusion's *_model parameters for a folder holding generator.pt, registration.pt and
    fusion.pt (absolute paths: the node runs in its own process); {} for None (the shipped weights)."""
    if not models:
        return {}
    from ..core.models import model_files  # (torch: only when a folder is given)

    return {f"{stage}_model": str(Path(path).resolve()) for stage, path in model_files(models).items()}


def describe(param: Param) -> ParameterDescriptor:
    """A ParameterDescriptor that rclpy enforces (type, range, read-only) and `ros2 param describe` shows."""
    text = param.description
    if param.choices:
        text += f" (one of: {', '.join(param.choices)})"
    descriptor = ParameterDescriptor(description=text, read_only=param.read_only, dynamic_typing=param.any_type)
    if param.range and isinstance(param.default, (int, float)) and not isinstance(param.default, bool):
        low, high = param.range
        if isinstance(param.default, int):
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=0)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
    elif param.range:
        descriptor.additional_constraints = f"each value in [{param.range[0]}, {param.range[1]}]"
    return descriptor


def used_value(name: str, raw):
    """Parameter `name`'s value as the node uses it: `outputs` as a list of names ([] for an empty array of
    any type, or for no value); `raw` otherwise."""
    if name == "outputs":
        if raw is None or (isinstance(raw, (list, tuple, array.array, bytes, np.ndarray)) and len(raw) == 0):
            return []
    return raw


def check_parameter(name: str, value) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None when it is."""
    param = PARAMETERS_BY_NAME.get(name)
    if param is None:
        return None
    value = used_value(name, value)
    if name == "outputs" and not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        return f"outputs: expected a list of names such as [fused, deformation], or [], not {value!r}"
    values = list(value) if isinstance(value, (list, tuple, array.array, np.ndarray)) else [value]
    if param.choices:
        bad = [v for v in values if v not in param.choices]
        if bad:
            return f"{name}: {bad[0]!r} is not one of {', '.join(param.choices)}"
    if param.range:
        low, high = param.range
        bad = [v for v in values if not (low <= v <= high)]
        if bad:
            return f"{name}: {bad[0]} is outside [{low}, {high}]"
    if name == "working_size" and len(values) != 2:
        return "working_size: expected [height, width]"
    if name == "thermal_percentiles" and (len(values) != 2 or values[0] >= values[1]):
        return "thermal_percentiles: expected [low, high] with low < high"
    if name == "outputs" and len(set(values)) != len(values):
        return "outputs: duplicate names"
    if name.endswith("_model") and value:
        if not os.path.isfile(value):
            return f"{name}: no such file '{value}'"
        from ..core.models import model_file_problem  # (a rebuild with a file it cannot load would fail later)
        problem = model_file_problem(value, name[:-len("_model")])
        if problem:
            return f"{name}: '{value}' {problem}"
    if name == "stats_period" and 0.0 < value < MIN_STATS_PERIOD:
        return f"stats_period: {value} s would flood the log: 0 (off) or at least {MIN_STATS_PERIOD:g} s"
    if name == "calibration_file" and value and os.path.exists(value):
        from ..core.calibrate import CalibrationError, load_calibration
        try:
            load_calibration(value)
        except CalibrationError as exc:
            return str(exc)
    if name == "onnx_dir" and value and not os.path.isdir(value):
        return f"onnx_dir: no such folder '{value}'"
    return None


def pipeline_config(values: dict, prior: dict):
    """PipelineConfig from the node's parameter values (a dict name -> value); `prior`: the calibration
    as calibration_prior read it (the node reads the file once, when the parameter is set)."""
    from ..core.pipeline import PipelineConfig

    return PipelineConfig(
        backend=values["backend"], device=values["device"], fp16=values["fp16"], require_gpu=values["require_gpu"],
        working_size=tuple(int(v) for v in values["working_size"]),
        generator=values["generator_model"] or None, registration=values["registration_model"] or None,
        fusion=values["fusion_model"] or None, onnx_dir=values["onnx_dir"] or None,
        thermal_percentiles=tuple(float(v) for v in values["thermal_percentiles"]), agc_8bit=values["agc_8bit"],
        black_hot=values["black_hot"],
        fusion_scale=float(values["fusion_scale"]),
        **prior)


def calibration_prior(path: str) -> dict:
    """PipelineConfig's homography and homography_sizes from an existing calibration file; none where no
    file is given or it is not written yet."""
    if not path or not os.path.exists(path):
        return {}
    from ..core.calibrate import load_rig
    homography, sizes = load_rig(path)
    return dict(homography=homography, homography_sizes=sizes)


def stream_settings(values: dict) -> dict:
    """StreamPipeline settings from the node's parameter values: registration_rate 0 = every pair alone."""
    rate = float(values["registration_rate"]) if values["self_calibrate"] else 0.0
    return dict(registration_rate=rate, scene_change=float(values["scene_change"]))
