"""`cgrp demo`'s ROS side: cgrp_player + cgrp_fusion as two processes (no launch needed), results saved as PNG.

The player publishes the bundled sample with the thermal misaligned (`deform`, default moderate);
this process subscribes to the node's outputs, saves fused / registered / flow / edges frames and a
side-by-side panel to `out`, and prints throughput and latency.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import ModelLoadError
from .node_processes import NodeRun, log_tail, private_dds

OUTPUTS = ("fused", "registered_thermal", "deformation", "alignment_vis")


@dataclass
class DemoConfig:
    """What `cgrp demo` runs (its options, same names)."""
    frames: int = 12                 # fused frames to receive
    out: Path = Path("out/demo")     # frames, panel.png and the nodes' logs
    deform: str = "moderate"         # misalignment preset of the thermal stream
    rate: float = 4.0                # player rate, pairs/s
    timeout: float = 90.0            # s without any output before giving up
    backend: str = "torch"
    device: str = "auto"
    models: Path | None = None       # folder with the three .pt files; None: the shipped weights


def run_demo(config: DemoConfig) -> int:
    """Run the demo; print what it measured. -> exit code (0: every frame saved)."""
    private_dds()  # the demo is self-contained
    import rclpy
    from sensor_msgs.msg import Image

    from .parameters import RELIABLE_INPUTS, model_parameters
    from .sync import stamp_ns

    models = model_parameters(config.models)
    missing = [path for path in models.values() if not Path(path).is_file()]
    if missing:  # said now, not after the nodes start and the fusion node exits
        raise ModelLoadError(missing[0], "file not found")
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    # the bundled sample is six unrelated pictures, each misaligned its own way: not one rig, so every
    # pair is registered alone (the node's default self-calibration assumes one rig)
    fusion_params = {**RELIABLE_INPUTS, "stats_period": 5.0, "backend": config.backend, "device": config.device,
                     "outputs": f"[{','.join(OUTPUTS)}]", "self_calibrate": "false", **models}
    player_params = {"deform": config.deform, "rate": config.rate, "stamp_offset": 0.01, "jitter": 0.005, "seed": 0}
    print(f"cgrp demo: ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, {config.frames} frames, thermal misaligned "
          f"'{config.deform}', logs in {out}/", flush=True)

    inputs = {"visible": {}, "thermal": {}}    # stamp -> msg, the last few of each stream
    outputs = {}                               # visible stamp -> {output name: msg}
    arrival = {}                               # visible stamp -> (monotonic time, latency s) of the first output
    complete = []                              # visible stamps with every output, in arrival order
    failure = None
    with NodeRun("cgrp_demo", out) as run:
        def keep_input(stream, msg):
            queue = inputs[stream]
            queue[stamp_ns(msg)] = msg
            while len(queue) > 40:
                del queue[min(queue)]

        def keep_output(name, msg):
            stamp = stamp_ns(msg)
            outputs.setdefault(stamp, {})[name] = msg
            if stamp not in arrival:
                arrival[stamp] = (time.monotonic(), run.node.get_clock().now().nanoseconds * 1e-9 - stamp * 1e-9)

        for stream in inputs:
            run.node.create_subscription(Image, f"{stream}/image", lambda m, s=stream: keep_input(s, m), run.qos)
        for name in OUTPUTS:
            run.node.create_subscription(Image, f"cgrp_fusion/{name}", lambda m, n=name: keep_output(n, m), run.qos)
        run.start(fusion_params, player_params)
        started = time.monotonic()
        try:
            while len(complete) < config.frames:
                rclpy.spin_once(run.node, timeout_sec=0.1)
                complete = sorted((s for s, o in outputs.items() if len(o) == len(OUTPUTS)), key=lambda s: arrival[s][0])
                failure = run.exited() or too_slow(len(complete), time.monotonic() - started, config)
                if failure:
                    break
        except KeyboardInterrupt:
            failure = "interrupted"
    if failure:
        print(f"cgrp demo: error: {failure}", file=sys.stderr)
        return 1

    save_frames(out, [outputs[stamp] for stamp in complete])
    save_panel(out / "panel.png", complete, outputs, inputs, config.deform)

    times = [arrival[s][0] for s in complete]
    latencies = np.array([arrival[s][1] for s in complete]) * 1e3
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
    print(f"cgrp demo: {len(complete)} frames in {out}/ (fused_*.png, registered_*.png, flow_*.png, edges_*.png, "
          "panel.png)")
    print(f"cgrp demo: throughput {fps:.2f} fps, latency (stamp -> received) p50 {np.percentile(latencies, 50):.0f} ms, "
          f"p95 {np.percentile(latencies, 95):.0f} ms; player at {config.rate:g} pairs/s, newer pairs win")
    print("cgrp demo: every pair was registered alone (the sample's pictures come from different scenes, not "
          "one rig); on one rig's stream the node's default self-calibration fuses every frame with its running "
          "rig estimate and keeps up with 30 Hz on 2 CPU cores (`cgrp bench --ros`, docs/benchmarks.md)")
    return 0


def too_slow(frames: int, waited: float, config: DemoConfig) -> str | None:
    """Why the demo must give up after `waited` s with `frames` complete frames; None while it may wait."""
    if not frames and waited > config.timeout:
        return f"no output from the fusion node within {config.timeout:g} s; its log:\n{log_tail(config.out / 'fusion.log')}"
    if waited > config.timeout + 20 * config.frames:
        return f"only {frames} of {config.frames} frames within {waited:.0f} s"
    return None


def save_frames(out: Path, frames) -> None:
    """fused_NNN.png, registered_NNN.png, flow_NNN.png and edges_NNN.png of each frame ({output name: Image})."""
    from ..evaluation.report import flow_picture, stretched_uint8
    from .image_conversions import image_to_numpy

    for index, frame in enumerate(frames):
        cv2.imwrite(str(out / f"fused_{index:03d}.png"), image_to_numpy(frame["fused"]))
        cv2.imwrite(str(out / f"registered_{index:03d}.png"), stretched_uint8(image_to_numpy(frame["registered_thermal"])))
        cv2.imwrite(str(out / f"flow_{index:03d}.png"), flow_picture(image_to_numpy(frame["deformation"])))
        cv2.imwrite(str(out / f"edges_{index:03d}.png"), image_to_numpy(frame["alignment_vis"]))


def save_panel(path: Path, complete, outputs, inputs, deform: str) -> bool:
    """The side-by-side panel (visible | thermal as received | registered | fused | flow | edges) of the
    last complete frame whose input pair this process also received (the thermal: the one nearest in
    stamp). complete: visible stamps in arrival order; outputs: stamp -> {output: Image}; inputs:
    {'visible'|'thermal': stamp -> Image}. -> whether a panel was written."""
    from ..evaluation.report import flow_picture, labelled_tile, stretched_uint8
    from .image_conversions import image_to_numpy, to_bgr

    def nearest(stream, stamp):
        queue = inputs[stream]
        return queue[min(queue, key=lambda s: abs(s - stamp))] if queue else None

    for stamp in reversed(complete):
        visible_msg = inputs["visible"].get(stamp)
        thermal_msg = nearest("thermal", stamp)
        if visible_msg is None or thermal_msg is None:
            continue
        frame = outputs[stamp]
        fused = image_to_numpy(frame["fused"])
        height = fused.shape[0]
        tiles = [labelled_tile(to_bgr(image_to_numpy(visible_msg), visible_msg.encoding)[:, :, :3], "visible", height),
                 labelled_tile(stretched_uint8(image_to_numpy(thermal_msg)), f"thermal ({deform} misalignment)", height),
                 labelled_tile(stretched_uint8(image_to_numpy(frame["registered_thermal"])), "registered thermal", height),
                 labelled_tile(fused, "fused", height),
                 labelled_tile(flow_picture(image_to_numpy(frame["deformation"])), "flow", height),
                 labelled_tile(image_to_numpy(frame["alignment_vis"]), "edges (green visible, magenta thermal)", height)]
        cv2.imwrite(str(path), np.hstack(tiles))
        return True
    return False
