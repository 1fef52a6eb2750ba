"""`cgrp bench --ros`: cgrp_player -> cgrp_fusion -> this subscriber, over ROS 2 on this machine.

The player and the node run as child processes (``python -m`` their modules, the node with
``config/cgrp_fusion.yaml`` as a launch file passes it, then the bench's ROS parameters). Latency is the
time from the visible input stamp (set by the player at publish time) to the arrival of the
``/cgrp_fusion/fused`` message here; the output rate counts fused messages over the measured
window (and its ratio to the input rate). Only ``fused`` is subscribed, so the node skips the outputs
nobody listens to. The player loops the bundled sequence (``sample/sequence``: ten consecutive frames
of one M3SVD scene, 320x240; with ``cameras``, resized to the resolutions of the user's cameras) misaligned
by ONE fixed transform (``fixed_rig``), as a rigid rig is, and the node runs with its default parameters
(self-calibration, registration_rate 0.5 Hz).

Start-up as a user sees it: seconds from launching ``cgrp_fusion`` (the player is launched right
after it) to the first ``/cgrp_fusion/fused`` message received here (``first_output_s``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.errors import CgrpError
from ..evaluation.bench import percentiles
from ..evaluation.report import markdown_table
from .node_processes import NodeRun, camera_sequence, node_command

# issue 12, "Done when" (defaults, 256x320, 2 CPU cores)
RATE_RATIO_TARGET = 0.8      # fused output Hz / input Hz
LATENCY_P50_TARGET_MS = 80.0
FIRST_OUTPUT_TARGET_S = 5.0  # node launched -> first fused message


def run_ros_bench(config, size, rate: float = 30.0, duration: float = 20.0, deform: str = "moderate",
                  out: Path = Path("out/bench"), startup_timeout: float = 120.0, cameras=None) -> dict:
    """Play the bundled sequence at `rate` Hz through the node (at the cameras' resolutions with
    `cameras`, see node_processes.camera_sequence): latency (ms), output rate (Hz) and its ratio to the input rate,
    seconds from launching the node to its first fused message."""
    try:
        import rclpy
        from sensor_msgs.msg import Image

        from .parameters import RELIABLE_INPUTS
        from .sync import stamp_seconds
    except ImportError as exc:
        raise CgrpError(f"ROS 2 Python packages are not available ({exc})") from None

    node_params = {"backend": config.backend, "device": config.device, "fp16": str(config.fp16).lower(),
                   "working_size": f"[{size[0]},{size[1]}]", **RELIABLE_INPUTS, "outputs": "[fused]",
                   "stats_period": 0.0}
    # a real video of one rig (the bundled 10-frame M3SVD sequence), misaligned once for all frames
    out.mkdir(parents=True, exist_ok=True)
    sequence, played = camera_sequence(out, cameras)
    player_params = {"rate": rate, "deform": deform, "fixed_rig": "true", "reliable": "true", "seed": 0,
                     "visible_dir": str(sequence / "visible"), "thermal_dir": str(sequence / "thermal")}
    fused, inputs = [], []   # (arrival monotonic s, latency s); arrival times of visible inputs
    first_output = []        # arrival monotonic s of the first fused message (kept when `fused` is cleared)
    with NodeRun("cgrp_bench", out, log_prefix="ros_") as run:
        def on_fused(msg):
            latency = run.node.get_clock().now().nanoseconds * 1e-9 - stamp_seconds(msg.header.stamp)
            fused.append((time.monotonic(), latency))
            if not first_output:
                first_output.append(fused[-1][0])

        run.node.create_subscription(Image, "cgrp_fusion/fused", on_fused, run.qos)
        run.node.create_subscription(Image, "visible/image", lambda _: inputs.append(time.monotonic()), run.qos)
        launched = time.monotonic()
        run.start(node_params, player_params)
        failure, window_start = None, None
        while True:
            rclpy.spin_once(run.node, timeout_sec=0.05)
            now = time.monotonic()
            failure = run.exited()
            if window_start is None and len(fused) >= 3:  # the first outputs include model warm-up
                window_start = now
                fused.clear()
                inputs.clear()
            if window_start is None and now - launched > startup_timeout:
                failure = f"no output from cgrp_fusion within {startup_timeout:g} s; see {out / 'ros_fusion.log'}"
            if failure or (window_start is not None and now - window_start >= duration):
                window_end = now
                break
    if failure:
        raise CgrpError(failure)
    window = window_end - window_start
    latencies = np.array([lat for _, lat in fused]) * 1e3
    input_hz, output_hz = len(inputs) / window, len(fused) / window
    return dict(config=config.label, size="{}x{}".format(*size), player_rate_hz=rate, deform=deform, played=played,
                cameras=None if cameras is None else ["{}x{}".format(*c) for c in cameras],
                measured_s=window, input_rate_hz=input_hz, output_rate_hz=output_hz,
                output_input_ratio=output_hz / input_hz if input_hz else None,
                first_output_s=first_output[0] - launched, outputs=len(fused), latency_ms=percentiles(latencies),
                subscribed=["/cgrp_fusion/fused"], commands=[" ".join(node_command(s, p)) for s, p in
                                                             (("cgrp_fusion", node_params), ("cgrp_player", player_params))])


def ros_targets(document: dict) -> list:
    """Issue 12's node targets: [(target, verdict text)] from one `run_ros_bench` document."""
    def verdict(value, holds, text: str):
        return "not measured" if value is None else f"{'holds' if holds(value) else 'MISSED'}: {text.format(value)}"

    latency = document["latency_ms"] or {}
    return [(f"fused output >= {RATE_RATIO_TARGET:g} x the input rate",
             verdict(document.get("output_input_ratio"), lambda v: v >= RATE_RATIO_TARGET, "{:.2f} x")),
            (f"latency p50 <= {LATENCY_P50_TARGET_MS:g} ms",
             verdict(latency.get("p50"), lambda v: v <= LATENCY_P50_TARGET_MS, "{:.0f} ms")),
            (f"first fused output <= {FIRST_OUTPUT_TARGET_S:g} s after the node is launched",
             verdict(document.get("first_output_s"), lambda v: v <= FIRST_OUTPUT_TARGET_S, "{:.1f} s"))]


def ros_markdown(document: dict) -> str:
    """One row: rates, output / input ratio, latency, window, first output; then the targets."""
    latency = document["latency_ms"] or {"p50": float("nan"), "p95": float("nan")}
    ratio, first = document.get("output_input_ratio"), document.get("first_output_s")
    row = [f"`{document['config']}`", document["size"], f"{document['player_rate_hz']:g}",
           f"{document['input_rate_hz']:.1f}", f"{document['output_rate_hz']:.2f}",
           "—" if ratio is None else f"{ratio:.2f}", f"{latency['p50']:.0f}", f"{latency['p95']:.0f}",
           f"{document['measured_s']:.0f}", "—" if first is None else f"{first:.1f}"]
    header = ["config", "working size", "player Hz", "inputs received Hz", "fused output Hz", "output / input",
              "latency p50 ms", "latency p95 ms", "window s", "first output s"]
    notes = ("Latency: visible input stamp -> fused message received by the benchmark's subscriber (player, node "
             "and subscriber on this machine, shared-memory transport). output / input: fused output Hz / inputs "
             "received Hz over the window (1.00: every pair answered). first output: seconds from launching "
             "cgrp_fusion (the player launched right after it) to the first fused message received, model "
             "loading and warm-up included.")
    targets = ["Targets: not checked: they are set for the bundled sequence as stored, these frames are at the "
               "cameras' resolutions."] if document.get("cameras") else \
        ["Targets:", ""] + [f"- {target}: {verdict}" for target, verdict in ros_targets(document)]
    played = [f"Played: {document['played']}, thermal misaligned `{document['deform']}` (one fixed transform).", ""] \
        if document.get("played") else []
    return "\n".join(played + [markdown_table(header, [row]), "", notes, ""] + targets)
