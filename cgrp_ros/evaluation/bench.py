"""Latency, throughput and memory of the Pipeline on every backend/device this machine offers.

Each configuration ("torch-cpu", "torch-cuda-fp16", ...) runs the full pipeline (all outputs)
`warmup` times untimed, then `runs` times; the per-stage times are the Pipeline's own timings
(ms, synchronised on CUDA). The input is a real pair, the demo's (`bench_input`: the first bundled
RoadScene pair, its thermal misaligned by `deform`, `moderate` by default), resized to the working size,
so the registration takes every stage a rig's pair takes (a pair with nothing to match falls back
early and skips some) and the pre-processing measures normalisation and padding, not a resize.
Frames per second is 1000 / mean end-to-end time for one pair processed at a time. Two more rows
per configuration: a frame between registrations ('frame': the registration reused, as the node
fuses most frames) and the pair without its misalignment registered from scratch ('aligned': the
affine stages keep it, so the generator and the dense levels do not run).

Peers (`PEERS`), measured in the same run on the same pair at each working size, as
what a rig without CGRP does per frame: ``homography+blend`` (a fixed prior 3 x 3 mapping applied to
the thermal with cv2.warpPerspective, then a 50/50 blend with the visible luminance) and
``ecc+blend`` (OpenCV ECC affine on gradient magnitudes, the ``cgrp eval`` baseline, then
cv2.warpAffine and the same blend). Their times use the pipeline's stage names where they do the
same job (preprocess: luminance and gradients; registration: estimate + warp; fusion: blend).

Start-up: seconds to build a Pipeline (load the weights; onnxruntime also creates its sessions,
and with a cold cache first exports the ONNX models), per backend, in this process (torch already
imported): `startup_times`.

Peak memory: on CPU the resident-set growth, from just before the pipeline is built to the
peak during the runs (Linux VmHWM, reset first; ru_maxrss elsewhere, which cannot be reset and
may then read 0); on CUDA torch.cuda.max_memory_allocated (torch backends only).
"""
from __future__ import annotations

import gc
import logging
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from .report import markdown_table

log = logging.getLogger("cgrp_ros")

FRAME_BUDGET_MS = 1000.0 / 30  # issue 12: the per-frame path at 30 Hz
FRAME_OUTPUTS = frozenset({"fused", "registered_thermal", "flow"})
STAGES = ("preprocess", "generator", "registration", "fusion", "postprocess", "total")


@dataclass(frozen=True)
class Config:
    """One backend/device combination; `reason` says why it cannot run here when not available."""
    label: str
    backend: str
    device: str
    fp16: bool = False
    available: bool = True
    reason: str = ""
    onnx_providers: tuple | None = None


def configurations() -> list[Config]:
    """Every combination the issue names, each marked available or not on this machine."""
    import torch
    from ..core.backends import nvidia_driver_present

    cuda = torch.cuda.is_available()
    no_cuda = "not available on this machine (torch sees no CUDA GPU)"
    configs = [Config("torch-cpu", "torch", "cpu"),
               Config("torch-cuda", "torch", "cuda", False, cuda, "" if cuda else no_cuda),
               Config("torch-cuda-fp16", "torch", "cuda", True, cuda, "" if cuda else no_cuda)]
    try:
        import onnxruntime as ort
        providers = set(ort.get_available_providers())
        has_ort, driver = True, nvidia_driver_present()
    except ImportError:
        providers, has_ort, driver = set(), False, False
    configs.append(Config("onnxruntime-cpu", "onnxruntime", "cpu", False, has_ort,
                          "" if has_ort else "not available on this machine (onnxruntime not installed)"))
    # TensorRT hands the nodes it cannot build to CUDA, so its entry keeps CUDA behind it
    for label, order in (("onnxruntime-cuda", ("CUDAExecutionProvider",)),
                         ("onnxruntime-tensorrt", ("TensorrtExecutionProvider", "CUDAExecutionProvider"))):
        usable = driver and order[0] in providers
        configs.append(Config(label, "onnxruntime", "cuda", False, usable,
                              "" if usable else f"not available on this machine (no NVIDIA driver or no {order[0]})",
                              onnx_providers=order))
    return configs


def bench_input(size, deform: str = "moderate", seed: int = 0, cameras=None):
    """(visible H x W x 3 BGR uint8, thermal uint8, description): the pair the bench times at working size
    `size` (H, W), from `misaligned_sample` (the first bundled pair, misaligned by `deform`). Both are
    resized to the working size, or with `cameras` ((visible H, W), (thermal H, W)) to the cameras'
    resolutions: the frame then pays for its full-resolution conversions and outputs as a node's does."""
    from ..core.image import resize
    from .evaluate import misaligned_sample

    name, visible, thermal = misaligned_sample(deform, seed)
    visible_size, thermal_size = cameras or (size, size)
    what = ("both resized to the working size" if cameras is None else
            f"resized to the cameras (HxW, as --cameras): visible {visible_size[0]}x{visible_size[1]}, "
            f"thermal {thermal_size[0]}x{thermal_size[1]}")
    description = (f"bundled pair {name} ({visible.shape[0]}x{visible.shape[1]} HxW), thermal misaligned `{deform}` "
                   f"(seed {seed}), {what}")
    return resize(visible, visible_size), resize(thermal, thermal_size), description


def proc_status_kib(field: str, pid="self") -> int | None:
    """A kB field of /proc/<pid>/status (e.g. VmRSS, VmHWM) of this process or of `pid`; None where
    there is no such file (not Linux, or the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MB from /proc/<pid>/status; None once the process is gone."""
    kib = proc_status_kib("VmRSS", pid)
    return None if kib is None else kib / 1024.0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` from /proc/<pid>/stat; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak resident memory growth (MiB) over a block; CUDA peak allocation when on the GPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __enter__(self):
        gc.collect()
        if self.cuda:
            import torch
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_start = torch.cuda.memory_allocated()
        self.resettable = _reset_peak_rss()
        self.rss_start = proc_status_kib("VmRSS") if self.resettable else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        peak = proc_status_kib("VmHWM") if self.resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.rss_mib = max(0, (peak or 0) - (self.rss_start or 0)) / 1024.0
        self.cuda_mib = None
        if self.cuda:
            import torch
            self.cuda_mib = (torch.cuda.max_memory_allocated() - self.cuda_start) / 2 ** 20
        return False


def percentiles(values) -> dict | None:
    """{p50, p95, mean} of `values` (in their own unit); None for none."""
    values = np.asarray(values, np.float64)
    if not values.size:
        return None
    return dict(p50=float(np.percentile(values, 50)), p95=float(np.percentile(values, 95)),
                mean=float(values.mean()))


def bench_one(config: Config, size, pair, runs: int = 20, warmup: int = 3, aligned=None) -> dict:
    """Time the pipeline of `config` at working size `size` (H, W) on `pair` ((visible, thermal) at that
    size): stats per stage (ms), fps, memory. `aligned`: the same pair unmisaligned, also registered
    from scratch ('aligned': the affine stages keep it, so the generator and the dense levels do not run)."""
    from ..core.pipeline import Pipeline, PipelineConfig

    visible, thermal = pair
    with MemoryProbe(cuda=config.backend == "torch" and config.device == "cuda") as memory:
        pipeline = Pipeline(PipelineConfig(backend=config.backend, device=config.device, fp16=config.fp16,
                                           working_size=tuple(size), onnx_providers=config.onnx_providers))
        for _ in range(warmup):
            pipeline(visible, thermal)
        timings = [pipeline(visible, thermal).timings for _ in range(runs)]
        # a frame between two registrations of a rig's stream (core.stream): the registration reused;
        # the outputs cgrp_fusion publishes by default except pseudo_thermal (that one runs the generator)
        registration = pipeline.register(visible, thermal)
        extra = {"frame": [pipeline(visible, thermal, FRAME_OUTPUTS, registration=registration).timings
                           for _ in range(runs)]}
        if aligned is not None:
            for _ in range(warmup):
                pipeline(*aligned, FRAME_OUTPUTS)
            extra["aligned"] = [pipeline(*aligned, FRAME_OUTPUTS).timings for _ in range(runs)]
    stages = {stage: percentiles([t[stage] for t in timings]) for stage in STAGES}
    row = dict(config=config.label, size="{}x{}".format(*size), runs=runs, warmup=warmup,
               description=pipeline.description, stages_ms=stages,
               fps=1000.0 / stages["total"]["mean"], peak_rss_mib=memory.rss_mib, peak_cuda_mib=memory.cuda_mib)
    for kind, kind_timings in extra.items():
        kind_stages = {stage: percentiles([t[stage] for t in kind_timings]) for stage in STAGES}
        row[kind] = dict(stages_ms=kind_stages, fps=1000.0 / kind_stages["total"]["mean"])
    return row


EXTRA_ROWS = ("frame", "aligned")  # bench_one's other timings, each a row of its own after the result's


def with_extra_rows(results) -> list:
    """Each result followed by its EXTRA_ROWS as rows 'CONFIG, frame' and 'CONFIG, aligned' (no memory
    figure; results of older documents lack some)."""
    return [row for r in results
            for row in [r] + [dict(config=f"{r['config']}, {kind}", size=r["size"], **r[kind])
                              for kind in EXTRA_ROWS if kind in r]]


def _build_seconds(config: Config, onnx_dir=None) -> float:
    from ..core.pipeline import Pipeline, PipelineConfig

    gc.collect()
    start = time.perf_counter()
    pipeline = Pipeline(PipelineConfig(backend=config.backend, device=config.device, fp16=config.fp16,
                                       onnx_providers=config.onnx_providers, onnx_dir=onnx_dir))
    seconds = time.perf_counter() - start
    del pipeline
    gc.collect()
    return seconds


def startup_times(configs, cold: bool = True) -> list:
    """[{config, cache, seconds}]: time to build a Pipeline per available config.

    torch: loading the weights (cache 'n/a'). onnxruntime: 'warm' with the exported models in the
    cache (the first configuration of each backend is built once untimed first, so the cache is filled); 'cold' (with `cold`, CPU only: a GPU
    provider's cold start is dominated by its own engine builds) exports the models into an empty
    folder first, as the first start on a new machine or after new weights does.
    """
    rows, primed = [], set()
    for config in configs:
        if not config.available:
            continue
        if config.backend not in primed:
            # one untimed build per backend: lazy imports (which a node pays once too) and, for
            # onnxruntime, the ONNX export into the cache when it is empty
            _build_seconds(config)
            primed.add(config.backend)
        if config.backend != "onnxruntime":
            rows.append(dict(config=config.label, cache="n/a", seconds=_build_seconds(config)))
            continue
        if cold and config.device == "cpu":
            with tempfile.TemporaryDirectory(prefix="cgrp-onnx-cold-") as empty:
                rows.append(dict(config=config.label, cache="cold", seconds=_build_seconds(config, empty)))
        rows.append(dict(config=config.label, cache="warm", seconds=_build_seconds(config)))
    return rows


PEERS = ("homography+blend", "ecc+blend")
PEER_DESCRIPTIONS = {
    "homography+blend": "fixed prior 3x3 homography (cv2.warpPerspective) + 50/50 blend with the visible luminance",
    "ecc+blend": "OpenCV ECC affine on gradient magnitudes (cv2.findTransformECC, 3 levels) + cv2.warpAffine "
                 "+ 50/50 blend with the visible luminance",
}
PEER_STAGES = ("preprocess", "registration", "fusion", "total")


def prior_homography(size) -> np.ndarray:
    """3 x 3 float64 thermal pixel -> visible pixel for working size `size` (H, W): a fixed rig
    calibration's kind of mapping, 1 degree of rotation and 2 % of scale about the centre, then (4, -3) px."""
    from .rig import similarity_about_centre

    return similarity_about_centre(size, 1.0, 1.02, (4.0, -3.0))


class Laps:
    """Milliseconds per named stage of one call: `lap(stage)` closes the stage that just ran."""

    def __init__(self):
        self.ms = {}
        self.start = self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self.last) * 1e3
        self.last = now

    def timings(self) -> dict:
        """{stage: ms} plus 'total' (ms since construction)."""
        return {**self.ms, "total": (self.last - self.start) * 1e3}


def homography_blend(visible: np.ndarray, thermal: np.ndarray, homography: np.ndarray):
    """Peer `homography+blend`: (fused H x W uint8, {stage: ms}).

    visible H x W x 3 BGR uint8; thermal h x w uint8; homography 3 x 3, thermal px -> visible px."""
    from ..core.image import luminance
    from .evaluate import average_fusion

    laps = Laps()
    visible_y = luminance(visible)
    laps.lap("preprocess")
    warped = cv2.warpPerspective(thermal, homography, visible_y.shape[::-1], flags=cv2.INTER_LINEAR)
    laps.lap("registration")
    fused = average_fusion(visible_y, warped)
    laps.lap("fusion")
    return fused, laps.timings()


def ecc_blend(visible: np.ndarray, thermal: np.ndarray):
    """Peer `ecc+blend`: (fused H x W uint8, {stage: ms}); the ECC affine of `cgrp eval`'s `ecc` baseline.

    visible H x W x 3 BGR uint8; thermal H x W uint8 (same grid: the affine maps visible px -> thermal px)."""
    from ..core.image import luminance
    from .evaluate import average_fusion, ecc_affine
    from .metrics import gradient_magnitude

    laps = Laps()
    visible_y = luminance(visible)
    template, moving = gradient_magnitude(visible_y), gradient_magnitude(thermal)
    laps.lap("preprocess")
    affine = ecc_affine(template, moving)
    warped = cv2.warpAffine(thermal, affine, visible_y.shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    laps.lap("registration")
    fused = average_fusion(visible_y, warped)
    laps.lap("fusion")
    return fused, laps.timings()


def bench_peer(name: str, size, pair, runs: int = 20, warmup: int = 3) -> dict:
    """Time peer `name` (one of PEERS) on `pair` ((visible, thermal) at size `size`, H x W): stats per
    stage (ms), fps."""
    visible, thermal = pair
    if name == "homography+blend":
        peer = partial(homography_blend, visible, thermal, prior_homography(size))
    elif name == "ecc+blend":
        peer = partial(ecc_blend, visible, thermal)
    else:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    for _ in range(warmup):
        peer()
    timings = [peer()[1] for _ in range(runs)]
    stages = {stage: percentiles([t[stage] for t in timings]) for stage in PEER_STAGES}
    return dict(config=name, size="{}x{}".format(*size), runs=runs, warmup=warmup,
                description=PEER_DESCRIPTIONS[name], stages_ms=stages, fps=1000.0 / stages["total"]["mean"])


STARTUP_TARGET_S = 3.0  # an onnxruntime Pipeline with a warm cache (issue 11)


def run_benchmarks(configs, sizes, runs: int = 20, warmup: int = 3, progress=None, startup: bool = True,
                   peers: bool = True, deform: str = "moderate", cameras=None) -> dict:
    """Every available config at every size; unavailable ones are listed with their reason.
    `startup`: also the start-up time of every available config (`startup_times`);
    `peers`: also every peer (PEERS) at every size, same runs and warm-up (document key 'peers');
    `deform`, `cameras`: the misalignment of the timed pair's thermal and the cameras' resolutions
    (`bench_input`; document key 'input')."""
    pairs = {size: bench_input(size, deform, cameras=cameras) for size in sizes}
    aligned = {size: bench_input(size, "none", cameras=cameras)[:2] for size in sizes}
    startup_rows = []
    if startup:
        if progress:
            progress("start-up times")
        startup_rows = startup_times(configs)
    results, unavailable = [], []
    for config in configs:
        if not config.available:
            unavailable.append(dict(config=config.label, reason=config.reason))
            continue
        for size in sizes:
            if progress:
                progress(f"{config.label} at {size[0]}x{size[1]}")
            results.append(bench_one(config, size, pairs[size][:2], runs, warmup, aligned[size]))
    peer_rows = []
    for size in sizes if peers else ():
        for name in PEERS:
            if progress:
                progress(f"peer {name} at {size[0]}x{size[1]}")
            peer_rows.append(bench_peer(name, size, pairs[size][:2], runs, warmup))
    return dict(results=results, peers=peer_rows, unavailable=unavailable, startup=startup_rows,
                input=pairs[sizes[0]][2] if sizes else "",
                cameras=None if cameras is None else ["{}x{}".format(*size) for size in cameras])


def bench_targets(document: dict) -> list:
    """The issue's speed targets: [(target, verdict text)] from the measured results; none for inputs at
    the cameras' resolutions (the targets are set for inputs at the working size)."""
    if document.get("cameras"):
        return []
    def best(labels, size):
        found = [r for r in document["results"] if r["config"] in labels and r["size"] == size]
        return max(found, key=lambda r: r["fps"]) if found else None

    out = []
    cpu = best({"torch-cpu", "onnxruntime-cpu"}, "256x320")
    verdict = "not measured (256x320 not benchmarked)" if cpu is None else (
        f"{'holds' if cpu['fps'] >= 10 else 'MISSED'}: best CPU configuration `{cpu['config']}` "
        f"at {cpu['fps']:.2f} fps")
    out.append(("full pipeline >= 10 fps at 256x320 on CPU (best CPU backend)", verdict))
    gpu = best({"torch-cuda-fp16"}, "512x640")
    if gpu is None:
        full = networks_only = "not measured (no CUDA GPU, or 512x640 not benchmarked)"
    else:  # issue 12 counts the three networks only, without the host-side pre- and post-processing
        networks = sum(gpu["stages_ms"][stage]["p50"] for stage in ("generator", "registration", "fusion"))
        full = f"{'holds' if gpu['fps'] >= 200 else 'MISSED'}: `torch-cuda-fp16` at {gpu['fps']:.1f} fps"
        networks_only = (f"{'holds' if 1000.0 / networks >= 500 else 'MISSED'}: `torch-cuda-fp16` {networks:.1f} ms "
                         f"for the three networks (p50), {1000.0 / networks:.0f} pairs/s one pair at a time")
    out.append(("full pipeline >= 200 fps at 512x640 fp16 on a CUDA GPU", full))
    out.append(("networks end to end >= 500 pairs/s at 512x640 fp16 on a CUDA GPU", networks_only))
    frames = [r for r in document["results"] if "frame" in r and r["config"].endswith("-cpu") and r["size"] == "256x320"]
    fastest = min(frames, key=lambda r: r["frame"]["stages_ms"]["total"]["p50"], default=None)
    verdict = "not measured (256x320 on CPU not benchmarked)" if fastest is None else (
        f"{'holds' if fastest['frame']['stages_ms']['total']['p50'] <= FRAME_BUDGET_MS else 'MISSED'}: "
        f"`{fastest['config']}` {fastest['frame']['stages_ms']['total']['p50']:.1f} ms")
    out.append((f"a frame between registrations within the 30 Hz budget ({FRAME_BUDGET_MS:g} ms p50) at "
                "256x320 on CPU", verdict))
    warm = [r for r in document.get("startup", []) if r["config"] == "onnxruntime-cpu" and r["cache"] == "warm"]
    verdict = "not measured (onnxruntime-cpu start-up not benchmarked)" if not warm else (
        f"{'holds' if warm[0]['seconds'] <= STARTUP_TARGET_S else 'MISSED'}: {warm[0]['seconds']:.2f} s")
    out.append((f"onnxruntime Pipeline ready in <= {STARTUP_TARGET_S:g} s with a warm ONNX cache (CPU)", verdict))
    return out


def startup_markdown(rows) -> str:
    """The start-up table: seconds to build a Pipeline per config and ONNX cache state."""
    return markdown_table(["config", "ONNX cache", "start-up s"],
                          [[f"`{r['config']}`", r["cache"], f"{r['seconds']:.2f}"] for r in rows])


STAGE_CONTENTS = {
    "preprocess": "input checks, float conversion, thermal gain control, resize to the working size (a no-op "
                  "for inputs at the working size), BGR -> luminance, padding to the networks' multiple",
    "generator": "pseudo-thermal network (it runs only where the affine stages moved the pair, for the dense "
                 "levels, or for a pseudo_thermal output)",
    "registration": "global and local affine stages + dense levels (skipped where the pair keeps its prior), "
                    "thermal warped at the working size",
    "fusion": "fusion network",
    "postprocess": "flow to the visible resolution, registered thermal resampled, fused colour + detail, "
                   "pseudo-thermal to the visible resolution",
}


def _ms(value: float) -> str:
    """Milliseconds with one decimal, three below 1 ms (the peers' stages)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _stage_cell(stats) -> str:
    """'p50 / p95' (ms) of one stage, '—' for a stage the row does not have."""
    return "—" if stats is None else f"{_ms(stats['p50'])} / {_ms(stats['p95'])}"


def _memory_cell(row: dict) -> str:
    """Peak memory growth in MiB (CUDA allocation or resident set), '—' where not measured (the peers)."""
    if row.get("peak_cuda_mib") is not None:
        return f"{row['peak_cuda_mib']:.0f} (CUDA)"
    return "—" if row.get("peak_rss_mib") is None else f"{row['peak_rss_mib']:.0f} (RSS)"


def _multiple(value: float) -> str:
    """A ratio as '3.2×' or '1,250×'."""
    return f"{value:,.0f}×" if value >= 100 else f"{value:.1f}×"


def peer_multiples(row: dict, peers) -> list:
    """Cells for `row` (a cgrp result): its total p50 / each peer's total p50 at the same size, PEERS order."""
    by_name = {p["config"]: p for p in peers if p["size"] == row["size"]}
    total = row["stages_ms"]["total"]["p50"]
    return [_multiple(total / by_name[name]["stages_ms"]["total"]["p50"]) if name in by_name else "—"
            for name in PEERS]


def _latency_row(row: dict, label: str, multiples) -> list:
    stages = row["stages_ms"]
    return ([label, row["size"]] + [_stage_cell(stages.get(k)) for k in STAGES[:-1]]
            + [_ms(stages["total"]["p50"]), _ms(stages["total"]["p95"]),
               f"{row['fps']:.2f}" if row["fps"] < 100 else f"{row['fps']:,.0f}",
               _memory_cell(row)] + multiples)


def latency_markdown(document: dict) -> str:
    """cgrp configurations, then the peers: p50 / p95 ms per stage, total, fps, memory, cgrp / peer time."""
    peers = document.get("peers", [])
    header = (["config", "size"] + list(STAGES[:-1]) + ["total p50", "total p95", "fps", "peak mem MiB"]
              + [f"× {name}" for name in PEERS])
    rows = [_latency_row(r, f"`{r['config']}`", peer_multiples(r, peers)) for r in with_extra_rows(document["results"])]
    rows += [_latency_row(p, f"`{p['config']}` (peer)", ["—"] * len(PEERS)) for p in peers]
    notes = ["Stage columns: p50 / p95 in ms. fps = 1000 / mean end-to-end ms, one pair at a time. "
             "`CONFIG, frame`: a frame between two registrations of a rig's stream (cgrp_fusion's default "
             "self-calibration, `cgrp fuse --registration-rate`): the rig estimate reused, so registration is "
             "only the resample of the thermal; outputs fused, registered thermal and flow (a subscribed "
             "pseudo-thermal would add the generator). `CONFIG, aligned`: the same pair without its misalignment, "
             "registered from scratch with the frame's outputs: the affine stages keep it, so the generator and "
             "the dense levels do not run (an aligned rig, or a calibrated rig's usual registration)."]
    if peers:
        notes += ["", "× peer: the configuration's total p50 / the peer's total p50 at the same size (how many "
                  "times the peer's time the configuration takes). Peers, on the same pair:", ""]
        notes += [f"- `{name}`: {PEER_DESCRIPTIONS[name]}" for name in PEERS]
        notes += ["", "Their preprocess is the luminance (for ECC also the gradient magnitudes), registration the "
                  "estimate and the warp, fusion the blend; they output the blended luminance only. ECC's time "
                  "depends on the content (it iterates until it converges, at most 100 times per level)."]
    return "\n".join([markdown_table(header, rows), ""] + notes)


def profile_markdown(results) -> str:
    """Where per-frame time goes: each stage's share (%) of the mean total, per cgrp configuration and size."""
    header = ["config", "size"] + [f"{k} %" for k in STAGES[:-1]] + ["total ms (mean)"]
    rows = []
    for r in with_extra_rows(results):
        stages = r["stages_ms"]
        total = stages["total"]["mean"]
        shares = [100 * stages[k]["mean"] / total for k in STAGES[:-1]]
        rows.append([f"`{r['config']}`", r["size"]] + [f"{v:.0f}" if v >= 1 else f"{v:.1f}" for v in shares]
                    + [f"{total:.1f}"])
    contents = "; ".join(f"{k}: {v}" for k, v in STAGE_CONTENTS.items())
    return "\n".join([markdown_table(header, rows), "", f"Share of the mean end-to-end time per stage. {contents}."])


def bench_markdown(document: dict) -> str:
    """Latency table with the peers, where per-frame time goes, start-up, targets, then what did not run."""
    text = ([f"Input: {document['input']}.", ""] if document.get("input") else []) + [latency_markdown(document)]
    if document["results"]:
        text += ["", "Per-frame profile (where the time goes):", "", profile_markdown(document["results"])]
    if document.get("startup"):
        text += ["", "Start-up (seconds to build a Pipeline: weights loaded, onnxruntime sessions created; "
                 "cold: ONNX export first):", "", startup_markdown(document["startup"])]
    if document.get("cameras"):  # (their figures were set for inputs at the working size)
        text += ["", "Targets: not checked: they are set for inputs at the working size, these are at the cameras' "
                 "resolutions."]
    else:
        text += ["", "Targets:", ""] + [f"- {target}: {verdict}" for target, verdict in bench_targets(document)]
    if document["unavailable"]:
        text += ["", "Not measured:", ""] + [f"- `{u['config']}`: {u['reason']}" for u in document["unavailable"]]
    return "\n".join(text)
