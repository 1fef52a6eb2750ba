"""Inference backends: the same three stage functions on torch (CPU/CUDA, fp16) or onnxruntime.

A backend maps float32 NCHW numpy arrays to float32 NCHW numpy arrays:

    generator(visible_bgr)            -> pseudo_thermal                  (N x 3 -> N x 1)
    registration(pseudo, visible_y, thermal, search) -> (flow, registered_thermal, confidence, fallback)
                                      (3 x N x 1, N -> N x 2, N x 1, N, N)
    fusion(visible_y, registered)     -> fused_y                         (N x 1, N x 1 -> N x 1)
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .errors import BackendError, ModelLoadError
from .models import STAGES, load_model
from .warp import warp

log = logging.getLogger("cgrp_ros")

ONNX_OPSET = 17
ONNX_IO = {
    "generator": (["visible"], ["pseudo_thermal"]),
    "registration": (["pseudo_thermal", "visible_y", "thermal", "search"],
                     ["flow", "registered_thermal", "confidence", "fallback"]),
    "fusion": (["visible_y", "registered_thermal"], ["fused"]),
}
PER_PAIR = ("search", "confidence", "fallback")  # one number per pair (N), not an image


class RegistrationExport(torch.nn.Module):
    """RegistrationNet with the resampler attached:
    (pseudo, visible_y, thermal, search) -> (flow, registered, confidence, fallback); search N: 1 to
    search globally, 0 to refine from the prior (a rig calibration)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pseudo_thermal, visible_y, thermal, search):
        out = self.net(pseudo_thermal, visible_y, thermal, search=search)
        return out.flow, warp(thermal, out.flow), out.confidence, out.fallback


# torch vs onnxruntime flow agreement that `cgrp export` and the tests require (pixels): every
# pixel within 1e-3 px. Measured on RoadScene val pairs at full size: max 4.3e-5 px.
FLOW_AGREEMENT_PX = {"mean": 1e-3, "max": 1e-3}


def flow_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """max / p99 / mean of |a - b| over the pixels of two H x W x 2 flows, and whether they are
    within FLOW_AGREEMENT_PX."""
    diff = np.abs(a - b).max(axis=-1)
    stats = {"max": float(diff.max()), "p99": float(np.percentile(diff, 99)), "mean": float(diff.mean())}
    stats["ok"] = all(stats[k] <= v for k, v in FLOW_AGREEMENT_PX.items())
    return stats


def stage_module(stage: str, model: torch.nn.Module) -> torch.nn.Module:
    return RegistrationExport(model) if stage == "registration" else model


def nvidia_driver_present() -> bool:
    """True when the NVIDIA driver library loads (a GPU provider can only work then)."""
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def resolve_device(device: str, require_gpu: bool = False) -> str:
    """'auto' | 'cpu' | 'cuda' -> the device to use; cuda without a GPU falls back (or raises)."""
    if device not in ("auto", "cpu", "cuda"):
        raise BackendError(f"unknown device '{device}', expected auto, cpu or cuda")
    has_cuda = torch.cuda.is_available()
    if require_gpu and not has_cuda:
        raise BackendError("require_gpu is set but no CUDA GPU is available")
    if device == "cuda" and not has_cuda:
        log.warning("device 'cuda' requested but no CUDA GPU is available: falling back to CPU")
        return "cpu"
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    return device


class TorchBackend:
    name = "torch"

    def __init__(self, model_paths: dict, device: str = "auto", fp16: bool = False, require_gpu: bool = False):
        self.device = resolve_device(device, require_gpu)
        self.fp16 = bool(fp16) and self.device == "cuda"
        if fp16 and not self.fp16:
            log.warning("fp16 needs CUDA: running in float32 on %s", self.device)
        self.dtype = torch.float16 if self.fp16 else torch.float32
        self.modules = {stage: stage_module(stage, load_model(model_paths[stage], stage)).to(self.device, self.dtype)
                        for stage in STAGES}
        self.description = f"torch {torch.__version__} on {self.device}" + (" fp16" if self.fp16 else " fp32")

    @torch.inference_mode()
    def __call__(self, stage: str, *inputs: np.ndarray):
        args = [torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype) for x in inputs]
        out = self.modules[stage](*args)
        outs = out if isinstance(out, tuple) else (out,)
        result = tuple(o.float().cpu().numpy() for o in outs)
        return result if isinstance(out, tuple) else result[0]

    def synchronize(self):
        if self.device == "cuda":
            torch.cuda.synchronize()


def export_onnx(model_paths: dict, out_dir, opset: int = ONNX_OPSET) -> dict:
    """Write generator.onnx, registration.onnx and fusion.onnx (dynamic batch, H and W) to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = {"generator": (torch.rand(1, 3, 64, 96),),
              "registration": (torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96),
                               torch.ones(1)),
              "fusion": (torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96))}
    written = {}
    for stage in STAGES:
        module = stage_module(stage, load_model(model_paths[stage], stage)).eval()
        inputs, outputs = ONNX_IO[stage]
        axes = {name: {0: "batch"} if name in PER_PAIR else {0: "batch", 2: "height", 3: "width"}
                for name in inputs + outputs}
        path = out_dir / f"{stage}.onnx"
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, sample[stage], str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        written[stage] = path
    return written


# the code the graphs are traced from: a change to it is another export, even with the same weights
GRAPH_SOURCES = ("networks.py", "align.py", "warp.py", "backends.py")


def _models_digest(model_paths: dict) -> str:
    h = hashlib.sha1(repr((ONNX_OPSET, ONNX_IO)).encode())  # a graph with other inputs is another export
    for source in GRAPH_SOURCES:
        h.update(Path(__file__).with_name(source).read_bytes())
    for stage in STAGES:
        h.update(Path(model_paths[stage]).read_bytes())
    return h.hexdigest()[:16]


def onnx_cache_dir(model_paths: dict) -> Path:
    """Per-weights cache for exported ONNX files ($CGRP_CACHE or ~/.cache/cgrp_ros)."""
    base = Path(os.environ.get("CGRP_CACHE", Path.home() / ".cache" / "cgrp_ros"))
    return base / f"onnx-{_models_digest(model_paths)}"


class OnnxBackend:
    name = "onnxruntime"
    PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, model_paths: dict, device: str = "auto", onnx_dir=None, require_gpu: bool = False,
                 threads: int = 0, providers=None, fp16: bool = False):
        """`providers`: an explicit onnxruntime provider order for GPU devices (e.g. only
        CUDAExecutionProvider to leave TensorRT out); default TensorRT -> CUDA -> CPU. The CPU
        provider is always appended as the last resort."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime is not installed ({exc})") from None
        ort.set_default_logger_severity(3)
        for stage in STAGES:  # fail early with the .pt file's name if the weights are bad
            if not Path(model_paths[stage]).is_file():
                raise ModelLoadError(model_paths[stage], "file not found")
        onnx_dir = Path(onnx_dir) if onnx_dir else onnx_cache_dir(model_paths)
        if not all((onnx_dir / f"{s}.onnx").is_file() for s in STAGES):
            log.info("exporting ONNX models to %s", onnx_dir)
            export_onnx(model_paths, onnx_dir)
        if device not in ("auto", "cpu", "cuda"):
            raise BackendError(f"unknown device '{device}', expected auto, cpu or cuda")
        if device != "cpu" and not nvidia_driver_present():
            if device == "cuda":
                log.warning("device 'cuda' requested but no NVIDIA driver was found: falling back to CPU")
            device = "cpu"
        available = ort.get_available_providers()
        order = list(providers or self.PREFERRED)
        missing = [p for p in order if p not in available]
        if missing and device != "cpu":
            log.warning("onnxruntime providers %s are not available (have %s)", missing, available)
        wanted = [p for p in order if p in available and p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]
        if device == "cpu":
            wanted = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # The registration graph holds thousands of tiny element-wise ops (the affine fits, written out
        # for ONNX); onnxruntime's memory-reuse planner searches its free list for each of their outputs,
        # which took 8-9 s of the session's creation on 2 CPU cores (0.7 s without it), for no measured
        # gain on CPU (same run time and peak RSS at 256x320 and 512x640; docs/benchmarks.md). GPU
        # sessions keep the planner: not measured there.
        fast_start = ort.SessionOptions()
        fast_start.intra_op_num_threads = options.intra_op_num_threads
        fast_start.enable_mem_reuse = False

        def stage_options(stage, providers):
            return fast_start if stage == "registration" and providers == ["CPUExecutionProvider"] else options

        self.sessions = {}
        for stage in STAGES:
            path = onnx_dir / f"{stage}.onnx"
            try:
                session = ort.InferenceSession(str(path), stage_options(stage, wanted),
                                               providers=provider_settings(wanted, onnx_dir, fp16))
            except Exception as exc:  # a GPU provider that cannot start: CPU still works
                if wanted == ["CPUExecutionProvider"]:
                    raise ModelLoadError(path, f"onnxruntime cannot load it ({exc})") from None
                log.warning("onnxruntime providers %s failed (%s): falling back to CPU", wanted, exc)
                wanted = ["CPUExecutionProvider"]
                session = ort.InferenceSession(str(path), stage_options(stage, wanted), providers=wanted)
            self.sessions[stage] = session
        self.providers = self.sessions["generator"].get_providers()
        if self.providers[0] == "CPUExecutionProvider" and len(wanted) > 1:
            log.warning("onnxruntime: no GPU provider could start (asked for %s): running on CPU", wanted)
        self.device = "cpu" if self.providers[0] == "CPUExecutionProvider" else "cuda"
        if require_gpu and self.device != "cuda":
            raise BackendError("require_gpu is set but onnxruntime found no usable GPU provider")
        self.onnx_dir = onnx_dir
        self.description = f"onnxruntime {ort.__version__} providers {self.providers}"

    def __call__(self, stage: str, *inputs: np.ndarray):
        names, _ = ONNX_IO[stage]
        feeds = {n: np.ascontiguousarray(x, dtype=np.float32) for n, x in zip(names, inputs)}
        outs = self.sessions[stage].run(None, feeds)
        return tuple(outs) if len(outs) > 1 else outs[0]

    def synchronize(self):
        pass


def provider_settings(providers, cache_dir, fp16: bool = False) -> list:
    """onnxruntime's `providers` argument: each provider with its options. TensorRT builds its engines
    once and keeps them next to the ONNX files (`cache_dir/tensorrt`, keyed by model and input shape),
    so only the first start on a machine pays the build; fp16 lets TensorRT use half precision."""
    settings = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache = Path(cache_dir) / "tensorrt"
            cache.mkdir(parents=True, exist_ok=True)
            settings.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                    "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
                                    "trt_fp16_enable": bool(fp16)}))
        elif name == "CUDAExecutionProvider":
            settings.append((name, {"cudnn_conv_algo_search": "HEURISTIC"}))
        else:
            settings.append(name)
    return settings


def make_backend(name: str, model_paths: dict, device: str = "auto", fp16: bool = False,
                 require_gpu: bool = False, onnx_dir=None, onnx_providers=None):
    if name == "torch":
        return TorchBackend(model_paths, device, fp16, require_gpu)
    if name in ("onnxruntime", "onnx", "ort"):
        return OnnxBackend(model_paths, device, onnx_dir, require_gpu, providers=onnx_providers, fp16=fp16)
    raise BackendError(f"unknown backend '{name}', expected torch or onnxruntime")
