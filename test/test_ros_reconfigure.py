"""Reconfiguration without an outage (issue 11): 21 parameter changes in 20 s, valid and invalid,
backend switches (torch <-> onnxruntime, warm ONNX cache) and working sizes among them, while pairs
stream in at 10 Hz. Fused output never stops for more than 3 s and goes on after the last change;
working-size and gain-control changes build no Pipeline."""
import re
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("onnxruntime")
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ros_helpers import Harness  # noqa: E402

RATE = 10.0
SPAN = 20.0      # seconds over which the changes are spread
MAX_GAP = 3.0    # longest allowed pause between two fused outputs
# (name, value, accepted?) in the order they are set
CHANGES = [
    ("backend", "onnxruntime", True),
    ("working_size", [96, 128], True),
    ("working_size", [16, 2000000], False),
    ("working_size", [4000, 4000], False),  # in range, but its global search needs ~1.6 TB: refused, not killed
    ("backend", "tensorflow", False),
    ("working_size", [64, 96], True),
    ("thermal_percentiles", [2.0, 98.0], True),
    ("backend", "torch", True),
    ("backend", "onnxruntime", True),
    ("working_size", [128, 160], True),
    ("slop", -1.0, False),
    ("generator_model", "/no/such/generator.pt", False),
    # a file, but not fusion weights: accepted, it failed every rebuild after it
    ("fusion_model", str(Path(__file__).resolve().parents[1] / "models" / "registration.pt"), False),
    ("stats_period", 1e-9, False),  # in range, but 5000 log lines a second
    ("agc_8bit", True, True),
    ("working_size", [64, 96], True),
    ("backend", "torch", True),
    ("device", "cpu", True),
    ("backend", "onnxruntime", True),
    ("working_size", [96, 96], True),
    ("backend", "torch", True),
]


def warm_onnx_cache():
    """Export the ONNX models once, as `cgrp export` / a first onnxruntime start would (the node shares the cache)."""
    from cgrp_ros.core.backends import ONNX_GRAPHS, export_onnx, onnx_cache_dir
    from cgrp_ros.core.pipeline import PipelineConfig

    paths = PipelineConfig().model_paths()
    folder = onnx_cache_dir(paths)
    graphs = [graph for graph in ONNX_GRAPHS if not graph.endswith("_calibrated")]  # the node has no calibration
    if not all((folder / f"{graph}.onnx").is_file() for graph in graphs):
        export_onnx(paths, folder, graphs=graphs)


@pytest.fixture
def harness(tmp_path):
    warm_onnx_cache()
    rclpy.init()
    h = Harness(tmp_path / "cgrp_fusion.log", "-p", "stream_timeout:=30.0", outputs=("fused",))
    yield h
    h.close()


def test_parameter_changes_while_streaming_never_stop_the_output(harness):
    h = harness
    h.wait_first_output("the first output")
    # an empty request changes nothing: sent until answered, the reply path to our client stands (see
    # Spinner.call) before the changes below are sent once each
    h.call(h.set_parameters, SetParameters.Request(), "an empty set_parameters request")
    arrivals, seen = [], set()

    def record():
        for msg in h.received["fused"]:
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            if key not in seen:
                seen.add(key)
                arrivals.append(time.monotonic())

    futures = []
    start = time.monotonic()
    next_pair, step = start, SPAN / (len(CHANGES) - 1)
    last_change = None
    while time.monotonic() < start + SPAN + 5.0:  # the changes, then 5 s more of streaming
        now = time.monotonic()
        if now >= next_pair:
            h.publish_pair()
            next_pair += 1.0 / RATE
        index = len(futures)
        if index < len(CHANGES) and now >= start + index * step:
            name, value, _ = CHANGES[index]
            request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
            futures.append(h.set_parameters.call_async(request))
            last_change = now
        h.spinner.spin(0.01)
        record()
        assert h.proc.poll() is None, h.log()[-3000:]

    assert len(futures) == len(CHANGES) >= 15 and last_change - start <= SPAN + 0.5
    h.wait_for(lambda: all(f.done() for f in futures), 10.0, "the answers to the parameter changes")
    results = [f.result().results[0] for f in futures]
    for (name, value, accepted), result in zip(CHANGES, results):
        assert result.successful == accepted, (name, value, result.reason)
        assert accepted or result.reason, f"{name}={value} rejected without a reason"
    too_large = results[CHANGES.index(("working_size", [4000, 4000], False))].reason
    assert "needs about" in too_large and "global search" in too_large and "use at most about" in too_large

    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert arrivals and max(gaps) <= MAX_GAP, f"fused output stopped for {max(gaps):.1f} s"
    assert arrivals[-1] > last_change + 1.0, "no output after the last change"
    log = h.log()
    assert "new configuration not applied" not in log, log[-3000:]
    # 8 Pipelines at most: the first + one per backend/device change (7); the working sizes and the
    # gain control (7 valid changes) build none. At least 3, an onnxruntime one among them: the switches
    # took effect (measured 2026-12-06: 7 and 8 built). Which one is built last depends on timing (a build
    # overtaken by the next change is dropped), so the backend running at the end comes from /diagnostics.
    built = re.findall(r"cgrp pipeline: (\w+)", log)
    assert 3 <= len(built) <= 8 and "onnxruntime" in built, (built, log[-3000:])
    h.wait_for(lambda: (h.diagnostic_value("backend") or "").startswith("torch"), 5.0,
               "/diagnostics naming the torch backend of the last change")
    assert "Traceback" not in log

