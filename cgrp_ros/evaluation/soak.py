"""`cgrp soak`'s figures from what it observed (ROS-free; the run itself is cgrp_ros.ros.soak): memory
growth after the warm-up, latency percentiles, and soak.png."""
from __future__ import annotations

import numpy as np

from .report import line_figure


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


def latency_p50_p99_ms(values) -> tuple:
    """(p50, p99) in ms of latencies in s, or (None, None)."""
    if not len(values):
        return None, None
    p50, p99 = np.percentile(np.asarray(values) * 1e3, [50, 99])
    return round(float(p50), 1), round(float(p99), 1)
