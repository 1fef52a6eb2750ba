"""Inference backends: the same stage functions on torch (CPU/CUDA, fp16) or onnxruntime.

A backend maps float32 NCHW numpy arrays to float32 NCHW numpy arrays:

    generator(visible_bgr)            -> pseudo_thermal                  (N x 3 -> N x 1)
    registration_affine(visible_y, thermal, search) -> (affine_flow, unmoved_thermal, confidence, fallback)
                                      (2 x N x 1, N -> N x 2, N x 1, N, N)
    registration_dense(pseudo, visible_y, thermal, affine_flow) -> (flow, registered_thermal)
                                      (3 x N x 1, N x 2 -> N x 2, N x 1)
    fusion(visible_y, registered)     -> fused_y                         (N x 1, N x 1 -> N x 1)

The registration is two calls so that a pair the affine stages leave at its prior (an aligned pair,
a calibrated rig's usual frame: `affine_flow` all zero) needs neither the dense levels nor the
generator, whose pseudo-thermal only the dense levels read: its flow is zero and its registered
thermal `unmoved_thermal`, what the dense call would return for it. For the same reason onnxruntime
runs `registration_affine` as two graphs, the second (the local stage's fine pass) only where the
first moved a pair: a traced graph cannot skip work as torch does.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .align import affine_flow
from .data import replaced_on_success
from .errors import BackendError, ModelLoadError
from .models import STAGES, load_model
from .warp import warp

log = logging.getLogger("cgrp_ros")

ONNX_OPSET = 17
# the backends' stages (what the Pipeline calls) -> the network whose weights each runs
STAGE_NETWORKS = {"generator": "generator", "registration_affine": "registration",
                  "registration_dense": "registration", "fusion": "fusion"}
_COARSE = ["params", "unmoved_thermal", "confidence", "fallback", "near_prior"]
ONNX_GRAPHS = {  # graph (file name) -> (the network whose weights it holds, input names, output names)
    "generator": ("generator", ["visible"], ["pseudo_thermal"]),
    # the stage registration_affine: global search and the local stage's 4x4-cell passes, then the fine pass
    "registration_coarse": ("registration", ["visible_y", "thermal", "search"], _COARSE),
    "registration_fine": ("registration", ["visible_y", "thermal", "params", "near_prior", "search"], ["affine_flow"]),
    # for a batch that does not search (a calibrated rig): the same without the global stage, which the
    # graphs above run for every pair and discard where search is 0 (11 % of the time, 256x320 on CPU)
    "registration_coarse_calibrated": ("registration", ["visible_y", "thermal"], _COARSE),
    "registration_fine_calibrated": ("registration", ["visible_y", "thermal", "params", "near_prior"], ["affine_flow"]),
    "registration_dense": ("registration", ["pseudo_thermal", "visible_y", "thermal", "affine_flow"],
                           ["flow", "registered_thermal"]),
    "fusion": ("fusion", ["visible_y", "registered_thermal"], ["fused"]),
}
PER_PAIR = ("search", "confidence", "fallback", "near_prior")  # one number per pair (N), not an image
EXPORT_SHAPES = {"visible": (1, 3, 64, 96), "affine_flow": (1, 2, 64, 96), "params": (1, 6)}  # others: 1 x 1 x H x W


class CoarseExport(torch.nn.Module):
    """RegistrationNet's affine stages up to the local stage's fine pass: (visible_y, thermal, search) ->
    (params N x 6, zero where the pair keeps its prior or fell back; the thermal resampled by a zero flow,
    the registered thermal of such a pair; confidence N; fallback N; near_prior N). search N: 1 to search
    globally, 0 to refine from the prior (a rig calibration). With `search` fixed at construction (a
    number) the module takes the first two inputs only."""

    def __init__(self, net, search=None):
        super().__init__()
        self.net = net
        self.search = search

    def forward(self, visible_y, thermal, search=None):
        search = self.search if search is None else search
        params, confidence, fallback, near_prior = self.net.global_estimate_coarse(visible_y, thermal, search)
        return params, warp(thermal, torch.zeros_like(thermal).repeat(1, 2, 1, 1)), confidence, fallback, near_prior


class FineExport(torch.nn.Module):
    """The local stage's fine pass on CoarseExport's estimate: (visible_y, thermal, params, near_prior,
    search) -> affine flow N x 2 x H x W in pixels. `search` as in CoarseExport."""

    def __init__(self, net, search=None):
        super().__init__()
        self.net = net
        self.search = search

    def forward(self, visible_y, thermal, params, near_prior, search=None):
        search = self.search if search is None else search
        return affine_flow(self.net.affine_fine(visible_y, thermal, params, near_prior, search), thermal)


class AffineExport(torch.nn.Module):
    """The stage registration_affine in one call, as the torch backend runs it: CoarseExport then
    FineExport (which skips the pass where no pair moved), (visible_y, thermal, search) -> (affine flow
    N x 2 x H x W in pixels, zero where the pair keeps its prior; unmoved thermal; confidence N;
    fallback N). onnxruntime runs the two graphs itself (OnnxBackend)."""

    def __init__(self, net):
        super().__init__()
        self.coarse, self.fine = CoarseExport(net), FineExport(net)

    def forward(self, visible_y, thermal, search):
        params, unmoved, confidence, fallback, near_prior = self.coarse(visible_y, thermal, search)
        return self.fine(visible_y, thermal, params, near_prior, search), unmoved, confidence, fallback


class DenseExport(torch.nn.Module):
    """RegistrationNet's dense levels on top of an affine flow that moved the pair:
    (pseudo, visible_y, thermal, affine_flow) -> (flow N x 2 x H x W in pixels, registered thermal)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pseudo_thermal, visible_y, thermal, affine_flow):
        flow = self.net(pseudo_thermal, visible_y, thermal, initial_flow=affine_flow).flow
        return flow, warp(thermal, flow)


# torch vs onnxruntime flow agreement that `cgrp export` and the tests require (pixels), on a pair
# the registration moves. Float rounding alone moves a flow by up to ~0.07 px: a match whose two best
# cells score alike can take either, and the affine fits carry that on. Measured 2026-12-06 on the
# sample pairs misaligned by `mild`, `moderate`, `severe` and `peer` (72 runs, flows 2-35 px): max
# 0.067 px, 4 runs above 1e-3 px; torch alone with 1 and 2 threads differs by the same 0.067 px on
# the worst of them. A tenth of a pixel at most and a twentieth on average is what float rounding can
# explain; a graph that computes something else is off by far more.
FLOW_AGREEMENT_PX = {"mean": 0.05, "max": 0.1}


def flow_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """max / p99 / mean over the pixels of two H x W x 2 flows (px) of their difference, per pixel the larger
    of its x and y parts (not the end-point error: the tolerances were measured this way), and whether
    they are within FLOW_AGREEMENT_PX."""
    diff = np.abs(a - b).max(axis=-1)
    stats = {"max": float(diff.max()), "p99": float(np.percentile(diff, 99)), "mean": float(diff.mean())}
    stats["ok"] = all(stats[k] <= v for k, v in FLOW_AGREEMENT_PX.items())
    return stats


def graph_module(graph: str, model: torch.nn.Module) -> torch.nn.Module:
    """The module that ONNX_GRAPHS[graph] is traced from, or that TorchBackend runs for a stage."""
    modules = {"registration_affine": lambda: AffineExport(model),
               "registration_coarse": lambda: CoarseExport(model),
               "registration_coarse_calibrated": lambda: CoarseExport(model, search=0.0),
               "registration_fine": lambda: FineExport(model),
               "registration_fine_calibrated": lambda: FineExport(model, search=0.0),
               "registration_dense": lambda: DenseExport(model)}
    return modules[graph]() if graph in modules else model


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
        networks = {stage: load_model(model_paths[stage], stage).to(self.device, self.dtype) for stage in STAGES}
        self.modules = {stage: graph_module(stage, networks[network]) for stage, network in STAGE_NETWORKS.items()}
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


EXPORTED_FROM = "exported_from.txt"  # beside a full export: the digest of the weights and code it came from


def export_onnx(model_paths: dict, out_dir, opset: int = ONNX_OPSET, graphs=None) -> dict:
    """Write GRAPH.onnx (dynamic batch, H and W) to out_dir for each of `graphs` (default: every
    ONNX_GRAPHS entry, and EXPORTED_FROM last): {graph: path}. Each file appears whole or not at all
    (data.replaced_on_success): another process loading it (a second node sharing the cache) never reads
    half a graph. The weights are checked before any graph is written."""
    for stage in STAGES:
        if not Path(model_paths[stage]).is_file():
            raise ModelLoadError(model_paths[stage], "file not found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    if graphs is None:  # the folder's graphs change now: a stamp of other weights would lie meanwhile
        (out_dir / EXPORTED_FROM).unlink(missing_ok=True)
    for graph in graphs or ONNX_GRAPHS:
        network, inputs, outputs = ONNX_GRAPHS[graph]
        module = graph_module(graph, load_model(model_paths[network], network)).eval()
        sample = tuple(torch.ones(1) if name in PER_PAIR else torch.rand(EXPORT_SHAPES.get(name, (1, 1, 64, 96)))
                       for name in inputs)
        axes = {name: {0: "batch"} if name in PER_PAIR or name == "params" else {0: "batch", 2: "height", 3: "width"}
                for name in inputs + outputs}
        path = out_dir / f"{graph}.onnx"
        import warnings
        with replaced_on_success(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, sample, str(tmp), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        written[graph] = path
    if graphs is None:
        with replaced_on_success(out_dir / EXPORTED_FROM) as tmp:
            tmp.write_text(f"{_models_digest(model_paths)}\n"
                           + "".join(f"{stage}: {Path(model_paths[stage]).resolve()}\n" for stage in STAGES))
    return written


def exported_from_other_weights(onnx_dir, model_paths: dict) -> str | None:
    """Where the graphs in `onnx_dir` come from other weights or code than `model_paths` (EXPORTED_FROM
    says so): what it names; None where they match or the folder does not say."""
    try:
        lines = (Path(onnx_dir) / EXPORTED_FROM).read_text().splitlines()
    except OSError:
        return None
    if not lines or lines[0].strip() == _models_digest(model_paths):
        return None
    return "; ".join(lines[1:]) or "other weights"


# the code the graphs are traced from: a change to it is another export, even with the same weights
GRAPH_SOURCES = ("networks.py", "align.py", "filters.py", "layers.py", "warp.py", "backends.py")


def _models_digest(model_paths: dict) -> str:
    h = hashlib.sha1(repr((ONNX_OPSET, ONNX_GRAPHS)).encode())  # a graph with other inputs is another export
    for source in GRAPH_SOURCES:
        h.update(Path(__file__).with_name(source).read_bytes())
    for stage in STAGES:
        h.update(Path(model_paths[stage]).read_bytes())
    return h.hexdigest()[:16]


def cache_base() -> Path:
    """Where cgrp_ros caches what it derives from the weights: $CGRP_CACHE or ~/.cache/cgrp_ros."""
    return Path(os.environ.get("CGRP_CACHE", Path.home() / ".cache" / "cgrp_ros"))


def onnx_cache_dir(model_paths: dict) -> Path:
    """Per-weights cache for exported ONNX files (under cache_base())."""
    return cache_base() / f"onnx-{_models_digest(model_paths)}"


class OnnxBackend:
    name = "onnxruntime"
    PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, model_paths: dict, device: str = "auto", onnx_dir=None, require_gpu: bool = False,
                 threads: int = 0, providers=None, fp16: bool = False, calibrated: bool = False):
        """`providers`: an explicit onnxruntime provider order for GPU devices (e.g. only
        CUDAExecutionProvider to leave TensorRT out); default TensorRT -> CUDA -> CPU. The CPU
        provider is always appended as the last resort. `calibrated`: the pairs will come through a
        rig calibration (search 0), so the affine graph without the global stage is the one
        loaded now; the other is exported and loaded if it is ever needed (each costs ~6 s of export
        once per weights and ~0.5 s of session on 2 CPU cores)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime is not installed ({exc})") from None
        ort.set_default_logger_severity(3)
        for stage in STAGES:  # fail early with the .pt file's name if the weights are bad
            if not Path(model_paths[stage]).is_file():
                raise ModelLoadError(model_paths[stage], "file not found")
        self.model_paths = model_paths
        self.onnx_dir = Path(onnx_dir) if onnx_dir else onnx_cache_dir(model_paths)
        other = onnx_dir and exported_from_other_weights(onnx_dir, model_paths)
        if other:  # (the cache's folders are named by the digest: only a folder given by hand can be stale)
            log.warning("the graphs in %s were exported from other weights or code (%s) than these: used as they "
                        "are; export them again (cgrp export --out %s, with --models for your weights)",
                        onnx_dir, other, onnx_dir)
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
        self._wanted = ["CPUExecutionProvider"] if device == "cpu" else wanted
        self._ort, self._threads, self._fp16 = ort, threads, fp16
        self.sessions = {}
        suffix = "_calibrated" if calibrated else ""
        for graph in ("generator", "registration_coarse" + suffix, "registration_fine" + suffix, "registration_dense",
                      "fusion"):
            self.session(graph)
        self.providers = self.sessions["generator"].get_providers()
        if self.providers[0] == "CPUExecutionProvider" and len(self._wanted) > 1:
            log.warning("onnxruntime: no GPU provider could start (asked for %s): running on CPU", wanted)
        self.device = "cpu" if self.providers[0] == "CPUExecutionProvider" else "cuda"
        if fp16 and self.providers[0] != "TensorrtExecutionProvider":
            log.warning("fp16 needs onnxruntime's TensorRT provider: running in float32 on %s", self.providers[0])
        if require_gpu and self.device != "cuda":
            raise BackendError("require_gpu is set but onnxruntime found no usable GPU provider")
        self.description = f"onnxruntime {ort.__version__} providers {self.providers}"

    def session(self, graph: str):
        """The onnxruntime session of ONNX_GRAPHS[graph], exported and created on first use."""
        if graph in self.sessions:
            return self.sessions[graph]
        path = self.onnx_dir / f"{graph}.onnx"
        if not path.is_file():
            log.info("exporting ONNX model %s to %s", graph, self.onnx_dir)
            self._export(graph, path, "missing and")
        wanted = self._wanted
        try:
            session = self._new_session(graph, path)
        except Exception as exc:  # not even on the CPU: a file cut short (an export interrupted, a full disk)
            log.warning("ONNX model %s cannot be loaded (%s): exporting it again", path, exc)
            self._export(graph, path, f"onnxruntime cannot load it ({exc}), and it")
            self._wanted = wanted  # the GPU providers failed on the file, not on the GPU: try them again
            try:
                session = self._new_session(graph, path)
            except Exception as again:
                raise ModelLoadError(path, f"onnxruntime cannot load it ({again})") from None
        self.sessions[graph] = session
        return session

    def _export(self, graph: str, path: Path, what: str) -> None:
        try:
            export_onnx(self.model_paths, self.onnx_dir, graphs=[graph])
        except OSError as exc:  # e.g. a read-only folder of an older `cgrp export`, or a read-only home
            raise ModelLoadError(path, f"{what} cannot be written ({exc}); export the graphs where they can be "
                                       "(`cgrp export --out DIR`) and give that folder as onnx_dir (--onnx-dir), "
                                       "or point $CGRP_CACHE to a writable folder") from None

    def _new_session(self, graph: str, path: Path):
        """A session on the providers wanted; one that cannot start there is made on the CPU (from then
        on, for every graph)."""
        ort = self._ort
        try:
            return ort.InferenceSession(str(path), self._options(graph),
                                        providers=provider_settings(self._wanted, self.onnx_dir, self._fp16))
        except Exception as exc:  # a GPU provider that cannot start: CPU still works
            if self._wanted == ["CPUExecutionProvider"]:
                raise
            log.warning("onnxruntime providers %s failed (%s): falling back to CPU", self._wanted, exc)
            self._wanted = ["CPUExecutionProvider"]
            return ort.InferenceSession(str(path), self._options(graph), providers=self._wanted)

    def _options(self, graph: str):
        """Session options for `graph` on the providers now wanted."""
        options = self._ort.SessionOptions()
        if self._threads:
            options.intra_op_num_threads = self._threads
        # The registration graphs hold thousands of tiny element-wise ops (the affine fits, written out
        # for ONNX); onnxruntime's memory-reuse planner searches its free list for each of their outputs,
        # which took 8-9 s of the session's creation on 2 CPU cores (0.7 s without it), for no measured
        # gain on CPU (same run time and peak RSS at 256x320 and 512x640; docs/benchmarks.md). GPU
        # sessions keep the planner: not measured there.
        if self._wanted == ["CPUExecutionProvider"]:
            if ONNX_GRAPHS[graph][0] == "registration":
                options.enable_mem_reuse = False
            # A pool's threads spin for a while after each run by default. A Pipeline runs several
            # sessions in turn (and torch beside them), so on a few cores each stage competed with the
            # previous one's spinning threads: the generator took 94 ms instead of 38 at 256x320 on 2
            # cores, a registered pair 335-527 ms instead of 262-281, called back to back (docs/benchmarks.md).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def __call__(self, stage: str, *inputs: np.ndarray):
        if stage == "registration_affine":
            return self._registration_affine(*inputs)
        return self._run(stage, *inputs)

    def _run(self, graph: str, *inputs: np.ndarray):
        _, names, _ = ONNX_GRAPHS[graph]
        feeds = {n: np.ascontiguousarray(x, dtype=np.float32) for n, x in zip(names, inputs)}
        outs = self.session(graph).run(None, feeds)
        return tuple(outs) if len(outs) > 1 else outs[0]

    def _registration_affine(self, visible_y, thermal, search):
        """The stage registration_affine as two graphs: the fine pass (on both images upsampled, the
        larger part of an aligned pair's time) runs only where the coarse estimate moved a pair (it is
        zero where a pair fell back); elsewhere the affine flow is zero, as torch computes it. Where no
        pair searches, the graphs without the global stage."""
        suffix, searching = ("", (search,)) if np.any(search) else ("_calibrated", ())
        params, unmoved, confidence, fallback, near_prior = self._run("registration_coarse" + suffix, visible_y,
                                                                      thermal, *searching)
        if np.any(params):
            flow = self._run("registration_fine" + suffix, visible_y, thermal, params, near_prior, *searching)
        else:
            flow = np.zeros((thermal.shape[0], 2) + thermal.shape[2:], np.float32)
        return flow, unmoved, confidence, fallback

    def synchronize(self):
        pass


def tensorrt_cache(cache_dir) -> Path | None:
    """A writable folder for TensorRT's engines: `cache_dir/tensorrt` beside the ONNX files, else (a
    read-only onnx_dir) one of its own under cache_base(); None where neither can be made."""
    own = hashlib.sha1(str(Path(cache_dir).resolve()).encode()).hexdigest()[:12]
    for folder in (Path(cache_dir) / "tensorrt", cache_base() / f"tensorrt-{own}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return None


def provider_settings(providers, cache_dir, fp16: bool = False) -> list:
    """onnxruntime's `providers` argument: each provider with its options. TensorRT builds its engines
    once and keeps them next to the ONNX files (`cache_dir/tensorrt`, keyed by model and input shape;
    see tensorrt_cache), so only the first start on a machine pays the build; fp16 lets TensorRT use
    half precision."""
    settings = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache = tensorrt_cache(cache_dir)
            if cache is None:  # TensorRT still runs: it builds its engines at every start
                log.warning("no writable folder for TensorRT's engine cache (%s/tensorrt, %s): engines are built "
                            "at every start", cache_dir, cache_base())
            caching = {} if cache is None else {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                                 "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}
            settings.append((name, {**caching, "trt_fp16_enable": bool(fp16)}))
        elif name == "CUDAExecutionProvider":
            settings.append((name, {"cudnn_conv_algo_search": "HEURISTIC"}))
        else:
            settings.append(name)
    return settings


def make_backend(name: str, model_paths: dict, device: str = "auto", fp16: bool = False,
                 require_gpu: bool = False, onnx_dir=None, onnx_providers=None, calibrated: bool = False):
    """`calibrated`: see OnnxBackend (torch needs no preparation for it)."""
    if name == "torch":
        return TorchBackend(model_paths, device, fp16, require_gpu)
    if name in ("onnxruntime", "onnx", "ort"):
        return OnnxBackend(model_paths, device, onnx_dir, require_gpu, providers=onnx_providers, fp16=fp16,
                           calibrated=calibrated)
    raise BackendError(f"unknown backend '{name}', expected torch or onnxruntime")
