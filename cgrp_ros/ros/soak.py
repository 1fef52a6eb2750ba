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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..evaluation.bench import cpu_seconds, rss_mb
from ..evaluation.soak import latency_p50_p99_ms, memory_growth, soak_figure
from .node_processes import NodeRun, camera_sequence, log_tail, private_dds
from .sync import stamp_ns

OUTPUTS = {  # output -> encodings it may have
    "fused": {"bgr8", "mono8"},
    "registered_thermal": {"mono8", "8UC1", "mono16", "16UC1", "32FC1"},
    "deformation": {"32FC2"},
}
COUNTERS = ("pairs", "dropped pairs", "published", "bad messages", "bad pairs", "inference errors", "registrations")


# At camera resolutions (--cameras 1080x1920,...) the node's reliable output queues fill for about a
# minute before its memory levels off (measured: a step of ~70 MB near 55 s, flat for the next three minutes)
CAMERAS_WARMUP_S = 90.0


def warmup_for(cameras, minutes: float) -> float:
    """The default warm-up: 20 s for the bundled sequence; with `cameras`, CAMERAS_WARMUP_S, at most half the run."""
    return SoakConfig.warmup if cameras is None else min(CAMERAS_WARMUP_S, 30.0 * minutes)


@dataclass
class SoakConfig:
    """`cgrp soak`'s options (its --help says what each is)."""
    minutes: float = 10.0
    rate: float = 30.0
    out: Path = Path("out/soak")
    window: float = 10.0
    warmup: float = 20.0  # `cgrp soak` uses warmup_for(cameras, minutes) when --warmup is not given
    max_growth_mb: float = 50.0
    startup_timeout: float = 120.0
    max_width: int = 0
    source: str = "rig"
    backend: str = "torch"
    device: str = "auto"
    models: Path | None = None
    cameras: tuple | None = None  # ((visible H, W), (thermal H, W)): the rig's sequence resized to them


# The node's RSS is probed ten times a second and each second keeps its lowest probe: a background
# registration every 2 s lifts RSS by up to ~160 MB for part of a second, so probes once a second
# caught the floor only when they fell between registrations, and the phase drifts (one-minute runs
# read floors 373 -> 422 MB while probes at 20 Hz showed a flat 334-346 MB floor, 2026-12-06).
RSS_PROBE_S = 0.1


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


def _cell(value):
    return "n/a" if value is None else str(value)


def soak_parameters(config: SoakConfig) -> tuple:
    """(cgrp_fusion's parameters, cgrp_player's) for a soak: reliable inputs, all OUTPUTS, counters
    every 10 s; the player plays one rig's sequence misaligned by one fixed `moderate` transform
    (source 'rig') or unrelated pictures, each registered alone (source 'pairs')."""
    from .parameters import RELIABLE_INPUTS, model_parameters

    fusion = {**RELIABLE_INPUTS, "stats_period": 10.0, "backend": config.backend, "device": config.device,
              "outputs": f"[{','.join(OUTPUTS)}]", **model_parameters(config.models)}
    player = {"deform": "moderate", "rate": config.rate, "stamp_offset": 0.01, "jitter": 0.005, "seed": 0,
              "max_width": config.max_width}
    if config.source == "rig":
        sequence, _ = camera_sequence(config.out, config.cameras)
        player.update(fixed_rig="true", visible_dir=str(sequence / "visible"), thermal_dir=str(sequence / "thermal"))
    else:  # unrelated pictures: not one rig
        fusion["self_calibrate"] = "false"
    return fusion, player


WINDOW_HEADER = ["t (s)", "frames in", "pairs", "dropped", "out", "fps out", "latency p50 ms", "p99 ms", "RSS MB",
                 "registrations", "self-calibration"]


@dataclass
class Observations:
    """What the soak sees of the node from outside: filled by the rclpy callbacks (on_*) and the main
    loop (memory probes, close_window). `now`: the clock the stamps are on, in s (the latency's end)."""
    now: Callable[[], float] = time.time
    visible_sizes: dict = field(default_factory=dict)   # visible stamp -> (height, width), the last few hundred
    window: dict = field(default_factory=lambda: {"in": 0, "out": 0, "latency": []})
    totals: dict = field(default_factory=lambda: {"in": 0, "out": 0, "outputs": 0, "latency": []})
    malformed: list = field(default_factory=list)       # first problems found
    counters: dict = field(default_factory=dict)        # the node's last /diagnostics values
    rig_state: str = "n/a"                              # the node's last self-calibration state
    windows: list = field(default_factory=list)         # one row per window
    memory: list = field(default_factory=list)          # (t, lowest RSS MB of that second)
    highs: list = field(default_factory=list)           # (t, highest RSS MB of that second)
    failures: list = field(default_factory=list)
    cpu_start: float | None = None
    cpu_end: float | None = None

    def on_visible(self, msg):
        self.visible_sizes[stamp_ns(msg)] = (msg.height, msg.width)
        if len(self.visible_sizes) > 300:
            del self.visible_sizes[min(self.visible_sizes)]
        self.window["in"] += 1

    def on_output(self, name, msg):
        self.totals["outputs"] += 1
        problem = output_problem(name, msg, self.visible_sizes.get(stamp_ns(msg)))
        if problem and len(self.malformed) < 20:
            self.malformed.append(problem)
        if name == "fused":
            self.window["out"] += 1
            self.window["latency"].append(self.now() - stamp_ns(msg) * 1e-9)

    def on_diagnostics(self, array):
        for status in array.status:
            if status.name.startswith("cgrp_fusion"):
                values = {kv.key: kv.value for kv in status.values}
                self.counters.update({k: int(values[k]) for k in COUNTERS if k in values})
                self.rig_state = values.get("self-calibration", self.rig_state)

    def reset_window(self):
        self.window.update({"in": 0, "out": 0, "latency": []})

    def close_window(self, t: float, span: float, deltas: dict) -> dict:
        """The row of the window that ends now (t s after the first output, span s long)."""
        p50, p99 = latency_p50_p99_ms(self.window["latency"])
        row = {"t": round(t, 1), "frames_in": self.window["in"], "pairs": deltas["pairs"],
               "dropped": deltas["dropped pairs"], "out": self.window["out"],
               "fps_out": round(self.window["out"] / span, 2), "latency_p50_ms": p50, "latency_p99_ms": p99,
               "rss_mb": self.memory[-1][1] if self.memory else None, "registrations": deltas["registrations"],
               "self_calibration": self.rig_state}
        self.windows.append(row)
        self.fold_window()
        return row

    def fold_window(self) -> None:
        """Add the current window to the totals and start the next: also the last, unfinished one, so the
        totals cover the whole run after the first output."""
        self.totals["in"] += self.window["in"]
        self.totals["out"] += self.window["out"]
        self.totals["latency"] += self.window["latency"]
        self.reset_window()


def run_soak(config: SoakConfig) -> int:
    """The soak test as described above; prints a line per window and returns the exit code."""
    private_dds()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    fusion_params, player_params = soak_parameters(config)
    print(f"cgrp soak: {config.minutes:g} min at {config.rate:g} Hz, ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, "
          f"logs and report in {out}/", flush=True)
    started = None              # monotonic time of the first output
    with NodeRun("cgrp_soak", out) as run:
        clock = run.node.get_clock()
        seen = Observations(now=lambda: clock.now().nanoseconds * 1e-9)
        run.node.create_subscription(Image, "visible/image", seen.on_visible, run.qos)
        for name in OUTPUTS:
            run.node.create_subscription(Image, f"cgrp_fusion/{name}", lambda m, n=name: seen.on_output(n, m), run.qos)
        run.node.create_subscription(DiagnosticArray, "/diagnostics", seen.on_diagnostics, 10)
        run.start(fusion_params, player_params)
        print("  ".join(f"{h:>14}" for h in WINDOW_HEADER), flush=True)
        launched = time.monotonic()
        last_sample = last_window = last_probe = 0.0
        second = []                 # RSS probes of the current second
        previous = dict.fromkeys(COUNTERS, 0)
        try:
            while True:
                rclpy.spin_once(run.node, timeout_sec=0.05)
                now = time.monotonic()
                exited = run.exited()
                if exited:
                    seen.failures.append(exited)
                    break
                if started is None:
                    if seen.window["out"]:
                        started = last_sample = last_window = now
                        seen.cpu_start = cpu_seconds(run.fusion.pid)
                        previous = {k: seen.counters.get(k, 0) for k in COUNTERS}  # windows count from here
                        seen.reset_window()
                    elif now - launched > config.startup_timeout:
                        seen.failures.append(f"no output within {config.startup_timeout:g} s:\n"
                                             f"{log_tail(out / 'fusion.log')}")
                        break
                    continue
                if now - last_probe >= RSS_PROBE_S:
                    last_probe = now
                    rss = rss_mb(run.fusion.pid)
                    if rss is not None:
                        second.append(rss)
                if now - last_sample >= 1.0 and second:
                    last_sample = now
                    seen.memory.append((round(now - started, 1), round(min(second), 1)))
                    seen.highs.append((seen.memory[-1][0], round(max(second), 1)))
                    second.clear()
                if now - last_window >= config.window:
                    deltas = {k: seen.counters.get(k, 0) - previous[k] for k in COUNTERS}
                    previous = {k: seen.counters.get(k, 0) for k in COUNTERS}
                    row = seen.close_window(now - started, now - last_window, deltas)
                    last_window = now
                    print("  ".join(f"{_cell(v):>14}" for v in row.values()), flush=True)
                if now - started >= config.minutes * 60.0:
                    break
        except KeyboardInterrupt:
            seen.failures.append("interrupted")
        finally:
            if started is not None:  # the unfinished last window counts in the totals (it gets no row)
                seen.fold_window()
            seen.cpu_end = cpu_seconds(run.fusion.pid)
    return write_report(config, seen, started is not None)


def write_report(config: SoakConfig, seen: Observations, served: bool) -> int:
    """Judge the run (memory growth, malformed outputs, output after the first), write soak.json,
    soak.md and soak.png into config.out, print the summary; -> exit code. served: the node
    published its first output."""
    from ..evaluation.evaluate import machine_description
    from ..evaluation.report import markdown_table

    out, failures, memory, totals, counters = config.out, seen.failures, seen.memory, seen.totals, seen.counters
    peak = max((rss for t, rss in seen.highs if t >= config.warmup), default=None)
    baseline, growth = memory_growth(memory, config.warmup, config.window)
    if growth is not None and growth > config.max_growth_mb:
        failures.append(f"resident memory grew {growth} MB after warm-up (limit {config.max_growth_mb:g} MB)")
    if served and baseline is None and not failures:
        failures.append(f"the run ended before the warm-up ({config.warmup:g} s): no memory baseline")
    if seen.malformed:
        failures.append(f"malformed outputs: {'; '.join(seen.malformed[:5])}")
    if served and totals["out"] == 0 and not failures:
        failures.append("no output after the first one")
    p50, p99 = latency_p50_p99_ms(totals["latency"])
    cpu = (round(seen.cpu_end - seen.cpu_start, 1) if seen.cpu_start is not None and seen.cpu_end else None)
    report = {
        "config": {"minutes": config.minutes, "rate": config.rate, "window_s": config.window, "warmup_s": config.warmup,
                   "max_growth_mb": config.max_growth_mb, "source": config.source, "backend": config.backend,
                   "device": config.device, "max_width": config.max_width,
                   "cameras": None if config.cameras is None else ["{}x{}".format(*c) for c in config.cameras]},
        "machine": machine_description(),
        "totals": {"frames_in": totals["in"], "pairs": counters.get("pairs"), "dropped": counters.get("dropped pairs"),
                   "published": counters.get("published"), "fused_received": totals["out"],
                   "outputs_checked": totals["outputs"], "malformed": len(seen.malformed),
                   "bad_messages": counters.get("bad messages"), "bad_pairs": counters.get("bad pairs"),
                   "inference_errors": counters.get("inference errors"),
                   "latency_p50_ms": p50, "latency_p99_ms": p99, "node_cpu_s": cpu},
        "memory": {"baseline_mb": baseline, "peak_after_warmup_mb": peak,
                   "final_mb": memory[-1][1] if memory else None, "growth_mb": growth, "samples": memory,
                   "highs": seen.highs},
        "windows": seen.windows,
        "failures": failures,
        "ok": not failures,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    t = report["totals"]
    summary = (f"frames in {t['frames_in']}, pairs {t['pairs']}, dropped {t['dropped']}, published {t['published']}, "
               f"outputs checked {t['outputs_checked']} (malformed {t['malformed']}), latency p50 {_cell(p50)} ms "
               f"p99 {_cell(p99)} ms, RSS {_cell(baseline)} MB after warm-up, growth {_cell(growth)} MB, "
               f"node CPU {_cell(t['node_cpu_s'])} s")
    table = markdown_table(WINDOW_HEADER, [[_cell(v) for v in row.values()] for row in seen.windows])
    (out / "soak.md").write_text(f"{table}\n\n{summary}\n\n![memory and throughput](soak.png)\n")
    cv2.imwrite(str(out / "soak.png"), soak_figure(memory, seen.highs, seen.windows, config.warmup, baseline))
    print(f"cgrp soak: {summary}")
    if failures:
        for failure in failures:
            print(f"cgrp soak: FAIL: {failure}", flush=True)
        return 130 if "interrupted" in failures else 1  # Ctrl-C: the shell's code, as every other command
    print(f"cgrp soak: OK ({out}/soak.json, {out}/soak.md, {out}/soak.png)")
    return 0
