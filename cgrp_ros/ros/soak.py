"""`cgrp soak`: cgrp_player + cgrp_fusion for M minutes at 30 Hz, watched from outside.

Started like `cgrp demo` (two processes, a private shared-memory DDS domain). This process counts
the visible frames offered, reads the node's counters from /diagnostics, checks every published
output (encoding, size = the visible image's, data length, finite flow), measures latency (stamp ->
received) and probes the node's resident memory from /proc ten times a second. Per window (default
10 s) it prints frames in/out, drops, latency p50/p99, RSS, the node's full registrations and its
self-calibration state; at the end the memory growth after warm-up. Writes DIR/soak.json and
DIR/soak.md (memory growth: the lowest RSS of the last window minus the lowest of the window before
the warm-up ends, see memory_growth; the peak is reported too). Exit 1 if the node crashed,
published a malformed output, published nothing, or its memory grew more than --max-growth-mb
after warm-up. DIR/soak.png draws the memory and the fused frame rate over the run.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .node_processes import log_tail, private_dds, start_nodes, stop_processes

OUTPUTS = {  # output -> encodings it may have
    "fused": {"bgr8", "mono8"},
    "registered_thermal": {"mono8", "8UC1", "mono16", "16UC1", "32FC1"},
    "deformation": {"32FC2"},
}
COUNTERS = ("pairs", "dropped pairs", "published", "bad messages", "bad pairs", "inference errors", "registrations")


@dataclass
class SoakConfig:
    """`cgrp soak`'s options (its --help says what each is)."""
    minutes: float = 10.0
    rate: float = 30.0
    out: Path = Path("out/soak")
    window: float = 10.0
    warmup: float = 20.0
    max_growth_mb: float = 50.0
    startup_timeout: float = 120.0
    max_width: int = 0
    source: str = "rig"
    backend: str = "torch"
    device: str = "auto"
    models: Path | None = None


# The node's RSS is probed ten times a second and each second keeps its lowest probe: a background
# registration every 2 s lifts RSS by up to ~160 MB for part of a second, so probes once a second
# caught the floor only when they fell between registrations, and the phase drifts (one-minute runs
# read floors 373 -> 422 MB while probes at 20 Hz showed a flat 334-346 MB floor, 2026-12-06).
RSS_PROBE_S = 0.1


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MB from /proc/<pid>/status; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def memory_growth(samples, warmup: float, window: float) -> tuple:
    """(baseline MB, growth MB) of [(t s, RSS MB)] samples, or (None, None) before the warm-up ends.

    Growth is the floor (lowest sample) of the last `window` s minus the floor of the last window
    before `warmup`. Floors, not single samples or medians: each background registration of the
    self-calibrating node allocates for a moment (spikes of 40-160 MB above the floor, every 2 s),
    and they can be most of a window's samples (a CI run read a median growth of 52.6 MB while the
    floor moved 383.5 -> 386.4 MB). A leak lifts the floor. run_soak's samples are each second's
    lowest of ten probes (RSS_PROBE_S)."""
    after = [rss for t, rss in samples if t >= warmup]
    if not after:
        return None, None
    before = [rss for t, rss in samples if warmup - window <= t < warmup] or after[:1]
    last = [rss for t, rss in samples if t >= samples[-1][0] - window]
    baseline = float(min(before))
    return baseline, round(float(min(last)) - baseline, 1)


def soak_figure(memory, highs, windows, warmup: float, baseline) -> np.ndarray:
    """soak.png (BGR uint8): the node's RSS over the run (each second's lowest and highest probe, the
    baseline from the warm-up on) above the fused frames per second of each window."""
    from ..evaluation.report import line_figure

    end = 10.0 * np.ceil(max([t for t, _ in memory] + [w["t"] for w in windows] + [1.0]) / 10.0)  # round ticks
    rss = [v for _, v in memory + highs]
    low, high = (min(rss), max(rss)) if rss else (0.0, 1.0)
    margin = max(10.0, 0.1 * (high - low))
    blue, grey, red, green = (200, 80, 0), (170, 170, 170), (40, 40, 220), (60, 150, 40)
    lines = [([t for t, _ in highs], [v for _, v in highs], grey, 1),
             ([t for t, _ in memory], [v for _, v in memory], blue, 2)]
    if baseline is not None:
        lines.append(([warmup, end], [baseline, baseline], red, 1))
    top = line_figure(lines, (0.0, end), (low - margin, high + margin), "cgrp_fusion resident memory",
                      "time since the first output (s)", "MB", size=(900, 360), y_format="{:.0f}",
                      legend=[("lowest of the second", blue), ("highest", grey), ("baseline", red)])
    fps = [w["fps_out"] for w in windows]
    bottom = line_figure([([w["t"] for w in windows], fps, green, 2)], (0.0, end), (0.0, max(fps + [1.0]) * 1.15),
                         "fused frames per second (per window)", "time since the first output (s)", "fps",
                         size=(900, 300), y_format="{:.1f}")
    return np.vstack((top, bottom))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` from /proc/<pid>/stat; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def output_problem(name: str, msg, visible_size) -> str | None:
    """Why output `name` is malformed, or None. visible_size: (height, width) of its input, if known."""
    from .image_conversions import image_to_numpy

    if msg.encoding not in OUTPUTS[name]:
        return f"{name}: encoding '{msg.encoding}'"
    try:
        image = image_to_numpy(msg)
    except Exception as exc:  # the checker reports, never raises
        return f"{name}: {exc}"
    if len(msg.data) != msg.step * msg.height:
        return f"{name}: {len(msg.data)} bytes of data for step {msg.step} x height {msg.height}"
    if visible_size is not None and image.shape[:2] != tuple(visible_size):
        return f"{name}: {image.shape[1]}x{image.shape[0]}, the visible image is {visible_size[1]}x{visible_size[0]}"
    if name == "deformation" and not np.isfinite(image).all():
        return "deformation: non-finite flow"
    return None


def percentiles(values) -> tuple:
    """(p50, p99) in ms of latencies in s, or (None, None)."""
    if not len(values):
        return None, None
    p50, p99 = np.percentile(np.asarray(values) * 1e3, [50, 99])
    return round(float(p50), 1), round(float(p99), 1)


def _cell(value):
    return "n/a" if value is None else str(value)


def run_soak(config: SoakConfig) -> int:
    """The soak test as described above; prints a line per window and returns the exit code."""
    private_dds()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from ..evaluation.evaluate import machine_description
    from ..evaluation.report import markdown_table
    from .parameters import RELIABLE_INPUTS
    from .sync import stamp_ns

    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    duration = config.minutes * 60.0
    fusion_params = {**RELIABLE_INPUTS, "stats_period": 10.0, "backend": config.backend, "device": config.device,
                     "outputs": f"[{','.join(OUTPUTS)}]"}
    if config.models:
        for stage in ("generator", "registration", "fusion"):
            fusion_params[f"{stage}_model"] = str((config.models / f"{stage}.pt").resolve())
    player_params = {"deform": "moderate", "rate": config.rate, "stamp_offset": 0.01, "jitter": 0.005, "seed": 0,
                     "max_width": config.max_width}
    if config.source == "rig":
        from .sources import sample_dir

        sequence = sample_dir() / "sequence"
        player_params.update(fixed_rig="true", visible_dir=str(sequence / "visible"),
                             thermal_dir=str(sequence / "thermal"))
    else:  # unrelated pictures: not one rig
        fusion_params["self_calibrate"] = "false"

    rclpy.init()
    node = rclpy.create_node("cgrp_soak")
    clock = node.get_clock()
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
    visible_sizes = {}          # visible stamp -> (height, width), the last few hundred
    window = {"in": 0, "out": 0, "latency": []}
    totals = {"in": 0, "out": 0, "outputs": 0, "latency": []}
    malformed = []              # first problems found
    counters = {}               # the node's last /diagnostics values
    rig_state = "n/a"           # the node's last self-calibration state (diagnostics)

    def on_visible(msg):
        visible_sizes[stamp_ns(msg)] = (msg.height, msg.width)
        if len(visible_sizes) > 300:
            del visible_sizes[min(visible_sizes)]
        window["in"] += 1

    def on_output(name, msg):
        totals["outputs"] += 1
        problem = output_problem(name, msg, visible_sizes.get(stamp_ns(msg)))
        if problem and len(malformed) < 20:
            malformed.append(problem)
        if name == "fused":
            window["out"] += 1
            window["latency"].append(clock.now().nanoseconds * 1e-9 - stamp_ns(msg) * 1e-9)

    def on_diagnostics(array):
        nonlocal rig_state
        for status in array.status:
            if status.name.startswith("cgrp_fusion"):
                values = {kv.key: kv.value for kv in status.values}
                counters.update({k: int(values[k]) for k in COUNTERS if k in values})
                rig_state = values.get("self-calibration", rig_state)

    node.create_subscription(Image, "visible/image", on_visible, qos)
    for name in OUTPUTS:
        node.create_subscription(Image, f"cgrp_fusion/{name}", lambda m, n=name: on_output(n, m), qos)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)

    print(f"cgrp soak: {config.minutes:g} min at {config.rate:g} Hz, ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, "
          f"logs and report in {out}/", flush=True)
    fusion, player, logs = start_nodes(out, fusion_params, player_params)
    header = ["t (s)", "frames in", "pairs", "dropped", "out", "fps out", "latency p50 ms", "p99 ms", "RSS MB",
              "registrations", "self-calibration"]
    print("  ".join(f"{h:>14}" for h in header), flush=True)
    windows, memory = [], []    # memory: (t, lowest RSS MB of that second)
    failures = []
    started = None              # monotonic time of the first output
    launched = time.monotonic()
    last_sample = last_window = last_probe = 0.0
    second, highs = [], []      # RSS probes of the current second; (t, highest RSS MB of each second)
    previous = dict.fromkeys(COUNTERS, 0)
    cpu_start = None
    try:
        while True:
            rclpy.spin_once(node, timeout_sec=0.05)
            now = time.monotonic()
            for proc, name in ((fusion, "cgrp_fusion"), (player, "cgrp_player")):
                if proc.poll() is not None:
                    failures.append(f"{name} exited ({proc.returncode}):\n{log_tail(out / (name[5:] + '.log'))}")
            if failures:
                break
            if started is None:
                if window["out"]:
                    started = last_sample = last_window = now
                    cpu_start = cpu_seconds(fusion.pid)
                    previous = {k: counters.get(k, 0) for k in COUNTERS}  # windows count from here
                    window.update({"in": 0, "out": 0, "latency": []})
                elif now - launched > config.startup_timeout:
                    failures.append(f"no output within {config.startup_timeout:g} s:\n{log_tail(out / 'fusion.log')}")
                    break
                continue
            if now - last_probe >= RSS_PROBE_S:
                last_probe = now
                rss = rss_mb(fusion.pid)
                if rss is not None:
                    second.append(rss)
            if now - last_sample >= 1.0 and second:
                last_sample = now
                memory.append((round(now - started, 1), round(min(second), 1)))
                highs.append((memory[-1][0], round(max(second), 1)))
                second.clear()
            if now - last_window >= config.window:
                span = now - last_window
                last_window = now
                deltas = {k: counters.get(k, 0) - previous[k] for k in COUNTERS}
                previous = {k: counters.get(k, 0) for k in COUNTERS}
                p50, p99 = percentiles(window["latency"])
                row = {"t": round(now - started, 1), "frames_in": window["in"], "pairs": deltas["pairs"],
                       "dropped": deltas["dropped pairs"], "out": window["out"],
                       "fps_out": round(window["out"] / span, 2), "latency_p50_ms": p50, "latency_p99_ms": p99,
                       "rss_mb": memory[-1][1] if memory else None, "registrations": deltas["registrations"],
                       "self_calibration": rig_state}
                windows.append(row)
                totals["in"] += window["in"]
                totals["out"] += window["out"]
                totals["latency"] += window["latency"]
                window.update({"in": 0, "out": 0, "latency": []})
                print("  ".join(f"{_cell(v):>14}" for v in row.values()), flush=True)
            if now - started >= duration:
                break
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        cpu_end = cpu_seconds(fusion.pid)
        stop_processes([player, fusion])
        for f in logs:
            f.close()
        node.destroy_node()
        rclpy.try_shutdown()

    peak = max((rss for t, rss in highs if t >= config.warmup), default=None)
    baseline, growth = memory_growth(memory, config.warmup, config.window)
    if growth is not None and growth > config.max_growth_mb:
        failures.append(f"resident memory grew {growth} MB after warm-up (limit {config.max_growth_mb:g} MB)")
    if started is not None and baseline is None and not failures:
        failures.append(f"the run ended before the warm-up ({config.warmup:g} s): no memory baseline")
    if malformed:
        failures.append(f"malformed outputs: {'; '.join(malformed[:5])}")
    if started is not None and totals["out"] == 0 and not failures:
        failures.append("no output after the first one")
    p50, p99 = percentiles(totals["latency"])
    report = {
        "config": {"minutes": config.minutes, "rate": config.rate, "window_s": config.window, "warmup_s": config.warmup,
                   "max_growth_mb": config.max_growth_mb, "source": config.source, "backend": config.backend,
                   "device": config.device, "max_width": config.max_width},
        "machine": machine_description(),
        "totals": {"frames_in": totals["in"], "pairs": counters.get("pairs"), "dropped": counters.get("dropped pairs"),
                   "published": counters.get("published"), "fused_received": totals["out"],
                   "outputs_checked": totals["outputs"], "malformed": len(malformed),
                   "bad_messages": counters.get("bad messages"), "bad_pairs": counters.get("bad pairs"),
                   "inference_errors": counters.get("inference errors"),
                   "latency_p50_ms": p50, "latency_p99_ms": p99,
                   "node_cpu_s": round(cpu_end - cpu_start, 1) if cpu_start is not None and cpu_end else None},
        "memory": {"baseline_mb": baseline, "peak_after_warmup_mb": peak,
                   "final_mb": memory[-1][1] if memory else None, "growth_mb": growth, "samples": memory,
                   "highs": highs},
        "windows": windows,
        "failures": failures,
        "ok": not failures,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    t = report["totals"]
    summary = (f"frames in {t['frames_in']}, pairs {t['pairs']}, dropped {t['dropped']}, published {t['published']}, "
               f"outputs checked {t['outputs_checked']} (malformed {t['malformed']}), latency p50 {_cell(p50)} ms "
               f"p99 {_cell(p99)} ms, RSS {_cell(baseline)} MB after warm-up, growth {_cell(growth)} MB, "
               f"node CPU {_cell(t['node_cpu_s'])} s")
    table = markdown_table(header, [[_cell(v) for v in row.values()] for row in windows])
    (out / "soak.md").write_text(f"{table}\n\n{summary}\n\n![memory and throughput](soak.png)\n")
    cv2.imwrite(str(out / "soak.png"), soak_figure(memory, highs, windows, config.warmup, baseline))
    print(f"cgrp soak: {summary}")
    if failures:
        for failure in failures:
            print(f"cgrp soak: FAIL: {failure}", flush=True)
        return 1
    print(f"cgrp soak: OK ({out}/soak.json, {out}/soak.md, {out}/soak.png)")
    return 0
