"""cgrp_fusion: the ROS 2 node. Two unaligned camera streams in, pixel-aligned fusion results out.

Subscribes  visible/image, thermal/image                 (sensor_msgs/Image)
Publishes   ~/fused               bgr8 (colour visible) or mono8
            ~/registered_thermal  the input thermal's encoding (mono8/8UC1, mono16/16UC1, 32FC1)
            ~/deformation         32FC2, flow in pixels: registered[y, x] = thermal[y + fy, x + fx]
            ~/pseudo_thermal      mono8
            /diagnostics          diagnostic_msgs/DiagnosticArray

Every output carries the visible image's header. The node is a thin adapter: messages are paired
by stamp (cgrp_ros.sync), converted to numpy views (cgrp_ros.image_conversions) and handed to one
worker thread that runs cgrp_ros.core.pipeline.Pipeline on the newest pair.
Parameters: PARAMETERS below, config/cgrp_fusion.yaml, docs/ros.md.
"""
from __future__ import annotations

import array
import collections
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from .core.errors import CgrpError, InputError
from .image_conversions import ImageConversionError, encoding_for, image_to_numpy, numpy_to_image, to_bgr
from .sync import THERMAL, VISIBLE, LatestPairSlot, PairSynchronizer

OUTPUTS = ("fused", "registered_thermal", "deformation", "pseudo_thermal")
STREAM_NAMES = ("visible", "thermal")
INPUT_DEPTH = 5    # subscription history: the synchronizer keeps its own queue
OUTPUT_DEPTH = 2   # publishers: reliable, keep last, small


@dataclass(frozen=True)
class Param:
    """One node parameter: default, meaning and the values it accepts."""
    name: str
    default: object
    description: str
    choices: tuple = ()        # allowed values (strings, or items of a string array)
    range: tuple = ()          # (min, max) for numbers and number arrays
    rebuild: bool = False      # changing it builds a new Pipeline
    read_only: bool = False    # fixed at startup (e.g. QoS)


PARAMETERS = (
    Param("backend", "torch", "inference backend", choices=("torch", "onnxruntime"), rebuild=True),
    Param("device", "auto", "auto: CUDA when available, else CPU; cuda without a GPU falls back to CPU "
          "with a warning unless require_gpu", choices=("auto", "cuda", "cpu"), rebuild=True),
    Param("require_gpu", False, "fail instead of falling back to the CPU", rebuild=True),
    Param("fp16", False, "half precision (torch on CUDA only)", rebuild=True),
    Param("working_size", [256, 320], "[height, width] px: the largest resolution the networks run at; "
          "outputs are always at the visible resolution", range=(32, 4096), rebuild=True),
    Param("generator_model", "", "generator weights (.pt); empty: the shipped models/generator.pt", rebuild=True),
    Param("registration_model", "", "registration weights (.pt); empty: the shipped one", rebuild=True),
    Param("fusion_model", "", "fusion weights (.pt); empty: the shipped one", rebuild=True),
    Param("onnx_dir", "", "exported ONNX files for backend onnxruntime; empty: exported once to a cache",
          rebuild=True),
    Param("thermal_percentiles", [1.0, 99.0], "[low, high] percentiles of the robust gain control for "
          "16-bit and float thermal", range=(0.0, 100.0)),
    Param("agc_8bit", False, "apply the gain control to 8-bit thermal too"),
    Param("slop", 0.05, "largest stamp difference (s) of a visible/thermal pair", range=(0.0, 10.0)),
    Param("queue_size", 10, "messages per stream kept for pairing", range=(1, 1000)),
    Param("reliability", "best_effort", "input QoS reliability; set reliable for large images over shared "
          "memory (read only)", choices=("best_effort", "reliable"), read_only=True),
    Param("outputs", list(OUTPUTS), "outputs to publish; each is computed only while it has subscribers",
          choices=OUTPUTS),
    Param("stream_timeout", 2.0, "s without a message or pair before diagnostics warn", range=(0.1, 3600.0)),
    Param("drop_rate_warn", 0.5, "fraction of dropped pairs that makes diagnostics warn", range=(0.0, 1.0)),
    Param("stats_period", 10.0, "s between statistics log lines; 0 turns them off", range=(0.0, 3600.0)),
)
PARAMETERS_BY_NAME = {p.name: p for p in PARAMETERS}


def describe(param: Param) -> ParameterDescriptor:
    """A ParameterDescriptor that rclpy enforces (type, range, read-only) and `ros2 param describe` shows."""
    text = param.description
    if param.choices:
        text += f" (one of: {', '.join(param.choices)})"
    descriptor = ParameterDescriptor(description=text, read_only=param.read_only)
    if param.range and isinstance(param.default, (int, float)) and not isinstance(param.default, bool):
        low, high = param.range
        if isinstance(param.default, int):
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=0)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
    elif param.range:
        descriptor.additional_constraints = f"each value in [{param.range[0]}, {param.range[1]}]"
    return descriptor


def check_parameter(name: str, value) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None when it is."""
    param = PARAMETERS_BY_NAME.get(name)
    if param is None:
        return None
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
    if name.endswith("_model") and value and not os.path.isfile(value):
        return f"{name}: no such file '{value}'"
    if name == "onnx_dir" and value and not os.path.isdir(value):
        return f"onnx_dir: no such folder '{value}'"
    return None


def pipeline_config(values: dict):
    """PipelineConfig from the node's parameter values (a dict name -> value)."""
    from .core.pipeline import PipelineConfig

    return PipelineConfig(
        backend=values["backend"], device=values["device"], fp16=values["fp16"], require_gpu=values["require_gpu"],
        working_size=tuple(int(v) for v in values["working_size"]),
        generator=values["generator_model"] or None, registration=values["registration_model"] or None,
        fusion=values["fusion_model"] or None, onnx_dir=values["onnx_dir"] or None,
        thermal_percentiles=tuple(float(v) for v in values["thermal_percentiles"]), agc_8bit=values["agc_8bit"])


def stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class _RosLogHandler(logging.Handler):
    """Sends the core's Python log records (logger 'cgrp_ros') to the node's ROS logger."""

    def __init__(self, ros_logger):
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record):
        # one call per severity on its own line: rclpy refuses a second severity from the same call site
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.ros_logger.error(text)
        elif record.levelno >= logging.WARNING:
            self.ros_logger.warning(text)
        elif record.levelno >= logging.INFO:
            self.ros_logger.info(text)
        else:
            self.ros_logger.debug(text)


class Stats:
    """Counters and latencies, shared by the executor and the worker thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.published = 0          # pairs whose outputs were published
        self.bad_messages = 0       # messages skipped by the conversion (encoding, step, size, data)
        self.bad_pairs = 0          # pairs the core rejected as input
        self.inference_errors = 0   # unexpected failures inside the pipeline
        self.non_finite_thermal = 0  # pairs fused although the thermal had NaN/inf pixels
        self.constant_images = 0    # pairs fused although an input had no contrast
        self.fallback_pairs = 0     # pairs the registration fell back to the prior for (too little evidence)
        self.last_confidence = None  # registration confidence of the last fused pair, 0..1
        self.last_fallback = None   # whether that pair was registered with the prior
        self.latencies = collections.deque(maxlen=500)  # (monotonic time, input stamp -> publish, s)
        self.last_message = [time.monotonic(), time.monotonic()]  # per stream
        self.last_pair = time.monotonic()

    def latency_percentiles(self, since: float):
        with self.lock:
            recent = [lat for t, lat in self.latencies if t >= since]
        if not recent:
            return 0, None, None
        p50, p95 = np.percentile(recent, [50, 95])
        return len(recent), float(p50), float(p95)


class FusionNode(Node):
    """Node `cgrp_fusion`: see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("cgrp_fusion", **kwargs)
        for param in PARAMETERS:
            self.declare_parameter(param.name, param.default, describe(param))
        self.values = {p.name: self.get_parameter(p.name).value for p in PARAMETERS}
        for name, value in self.values.items():
            reason = check_parameter(name, value)
            if reason:
                raise InputError(f"invalid parameter {reason}")
        self._core_log = _RosLogHandler(self.get_logger())
        logging.getLogger("cgrp_ros").addHandler(self._core_log)
        logging.getLogger("cgrp_ros").setLevel(logging.INFO)

        from .core.pipeline import Pipeline
        self.pipeline = Pipeline(pipeline_config(self.values))  # CgrpError here: the caller exits
        self.pipeline_error = None    # why the last rebuild failed (diagnostics ERROR)
        self._rebuild = False         # a rebuild parameter changed: the worker rebuilds
        self.stats = Stats()
        self._log_times = {}          # throttled log key -> last time
        self._drop_history = collections.deque(maxlen=6)  # (received, dropped) per diagnostics tick

        self.slot = LatestPairSlot()
        self.sync = self._make_synchronizer()
        reliability = ReliabilityPolicy.RELIABLE if self.values["reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT
        input_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=INPUT_DEPTH, reliability=reliability)
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=OUTPUT_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions_ = [
            self.create_subscription(Image, "visible/image", lambda m: self._on_image(VISIBLE, m), input_qos),
            self.create_subscription(Image, "thermal/image", lambda m: self._on_image(THERMAL, m), input_qos),
        ]
        self.publishers_ = {name: self.create_publisher(Image, f"~/{name}", output_qos) for name in OUTPUTS}
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.add_on_set_parameters_callback(self._check_new_parameters)
        self.add_post_set_parameters_callback(self._apply_new_parameters)
        self.create_timer(1.0, self._publish_diagnostics)
        self._stats_timer = None
        self._stats_since = time.monotonic()
        self._restart_stats_timer()

        self._worker = threading.Thread(target=self._work, name="cgrp_fusion_worker", daemon=True)
        self._worker.start()
        self._log_startup()

    # -- setup ---------------------------------------------------------------------------------------
    def _make_synchronizer(self) -> PairSynchronizer:
        return PairSynchronizer(self.values["queue_size"], self.values["slop"], self._on_pair)

    def _restart_stats_timer(self):
        if self._stats_timer is not None:
            self.destroy_timer(self._stats_timer)
            self._stats_timer = None
        if self.values["stats_period"] > 0:
            self._stats_timer = self.create_timer(self.values["stats_period"], self._log_stats)

    def _log_startup(self):
        backend = self.pipeline.backend
        models = ", ".join(f"{stage}={path}" for stage, path in self.pipeline.model_paths.items())
        h, w = self.pipeline.config.working_size
        self.get_logger().info(
            f"cgrp_fusion ready: backend {self.values['backend']} ({self.pipeline.description}), "
            f"device {getattr(backend, 'device', self.values['device'])}, "
            f"providers {getattr(backend, 'providers', 'n/a')}, working size {h}x{w}, models: {models}; "
            f"sync {self.sync.implementation} (slop {self.values['slop']} s, queue {self.values['queue_size']}), "
            f"inputs {self.values['reliability']}, outputs {', '.join(self.values['outputs'])}")

    # -- parameters ----------------------------------------------------------------------------------
    def _check_new_parameters(self, parameters) -> SetParametersResult:
        for p in parameters:
            try:
                reason = check_parameter(p.name, p.value)
            except Exception as exc:  # a value of a shape no check foresaw: reject it, keep running
                reason = f"{p.name}: {type(exc).__name__}: {exc}"
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_new_parameters(self, parameters) -> None:
        changed = {p.name for p in parameters if p.name in PARAMETERS_BY_NAME}
        for p in parameters:
            if p.name in PARAMETERS_BY_NAME:
                self.values[p.name] = p.value
        if changed & {"slop", "queue_size"}:
            self.sync = self._make_synchronizer()
        if "stats_period" in changed:
            self._restart_stats_timer()
        if any(PARAMETERS_BY_NAME[n].rebuild for n in changed) or changed & {"thermal_percentiles", "agc_8bit"}:
            self._rebuild = True  # the worker applies it between two pairs
        if changed:
            self.get_logger().info(f"parameters changed: {', '.join(sorted(changed))}")

    def _apply_pipeline_changes(self):
        """In the worker thread, between pairs: rebuild the Pipeline; keep the old one if that fails."""
        self._rebuild = False
        from .core.pipeline import Pipeline
        config = pipeline_config(self.values)
        current = self.pipeline.config
        keys = ("backend", "device", "fp16", "require_gpu", "working_size", "generator", "registration",
                "fusion", "onnx_dir")
        if all(getattr(config, k) == getattr(current, k) for k in keys):
            current.thermal_percentiles, current.agc_8bit = config.thermal_percentiles, config.agc_8bit
            return
        try:
            pipeline = Pipeline(config)
        except CgrpError as exc:
            self.pipeline_error = str(exc)
            self.get_logger().error(f"pipeline rebuild failed, still running the previous one: {exc}")
            return
        self.pipeline, self.pipeline_error = pipeline, None
        self._log_startup()

    # -- input ---------------------------------------------------------------------------------------
    def _log_throttled(self, key, text: str, period: float = 5.0, warning: bool = False):
        """An error (or warning) line at most every `period` s per key (one key per stream and kind of problem)."""
        now = time.monotonic()
        if now - self._log_times.get(key, -period) >= period:
            self._log_times[key] = now
            if warning:  # separate call sites: rclpy refuses two severities from one
                self.get_logger().warning(text)
            else:
                self.get_logger().error(text)

    def _count(self, counter: str) -> None:
        with self.stats.lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def _on_image(self, stream: int, msg: Image):
        name = STREAM_NAMES[stream]
        try:
            image_to_numpy(msg)  # validation only: a cheap view, converted again by the worker
        except ImageConversionError as exc:
            self._count("bad_messages")
            self._log_throttled((name, exc.kind), f"skipping {name} image: {exc}")
            return
        self.stats.last_message[stream] = time.monotonic()
        self.sync.add(stream, msg)

    def _on_pair(self, visible_msg: Image, thermal_msg: Image):
        self.stats.last_pair = time.monotonic()
        self.slot.put((visible_msg, thermal_msg))

    # -- worker --------------------------------------------------------------------------------------
    def _work(self):
        while not self.slot.closed:
            pair = self.slot.take(timeout=0.5)
            if self._rebuild:
                self._apply_pipeline_changes()
            if pair is not None and not self.slot.closed:
                self._process(*pair)

    def _wanted_outputs(self) -> set:
        """The enabled outputs that someone subscribes to right now."""
        return {name for name in self.values["outputs"] if self.publishers_[name].get_subscription_count() > 0}

    def _content_warnings(self, visible: np.ndarray, thermal: np.ndarray, stamp: float) -> list:
        """[(counter, throttle key, text)] for inputs that are fused but carry little or no information.

        NaN/inf thermal pixels are treated as missing (coldest) by the core's gain control; a thermal
        with no finite pixel at all is rejected by the core (InputError). A constant image (zero variance) is fused
        as it is: a lens cap or a camera's flat-field correction produces it, and the other camera still
        counts. The warnings are emitted only for pairs that the pipeline then fuses.
        """
        warnings = []
        if thermal.dtype.kind == "f":
            finite = np.isfinite(thermal)
            if finite.any() and not finite.all():  # none finite: the core rejects the pair
                warnings.append(("non_finite_thermal", "non-finite", f"thermal image at {stamp:.3f} has "
                                 f"{finite.size - finite.sum()} NaN/inf pixels: fused with them treated as missing"))
        for name, image in (("visible", visible), ("thermal", thermal)):
            if image.size and image.min() == image.max():
                warnings.append(("constant_images", ("constant", name), f"{name} image at {stamp:.3f} is "
                                 f"constant (value {image.flat[0]}): fused, but it carries no information"))
        return warnings

    def _process(self, visible_msg: Image, thermal_msg: Image):
        wanted = self._wanted_outputs()
        if not wanted:
            return  # nobody listens: spend nothing
        core_outputs = {"flow"} | (wanted - {"deformation"})  # the core calls the deformation 'flow'
        stamp = stamp_seconds(visible_msg.header.stamp)
        try:
            visible = to_bgr(image_to_numpy(visible_msg), visible_msg.encoding)
            thermal = image_to_numpy(thermal_msg)
            warnings = self._content_warnings(visible, thermal, stamp)
            result = self.pipeline(visible, thermal, outputs=core_outputs)
        except InputError as exc:
            self._count("bad_pairs")
            # one throttle key per kind of problem: the message without its numbers
            self._log_throttled(("pair", re.sub(r"\d+", "#", str(exc))), f"skipping pair at {stamp:.3f}: {exc}")
            return
        except Exception as exc:  # one bad pair must not stop the node: log, count, go on with the next
            self._count("inference_errors")
            self._log_throttled("inference", f"inference failed for the pair at {stamp:.3f}: "
                                f"{type(exc).__name__}: {exc}")
            return
        for counter, key, text in warnings:
            self._count(counter)
            self._log_throttled(key, text, warning=True)
        confidence, fallback = float(result.registration_confidence), bool(result.registration_fallback)
        with self.stats.lock:
            self.stats.last_confidence, self.stats.last_fallback = confidence, fallback
            self.stats.fallback_pairs += fallback
        low_confidence = self._low_confidence()
        if low_confidence:
            self._log_throttled("low confidence", f"pair at {stamp:.3f}: {low_confidence}", warning=True)
        header = visible_msg.header
        images = {
            "fused": (result.fused_color if result.fused_color is not None else result.fused, None),
            "registered_thermal": (result.registered_thermal, thermal_msg.encoding),
            "deformation": (result.flow, "32FC2"),
            "pseudo_thermal": (result.pseudo_thermal, "mono8"),
        }
        for name in OUTPUTS:
            image, preferred = images[name]
            if name in wanted and image is not None:
                self.publishers_[name].publish(numpy_to_image(image, encoding_for(image, preferred), Image, header))
        latency = self.get_clock().now().nanoseconds * 1e-9 - stamp_seconds(header.stamp)
        with self.stats.lock:
            self.stats.published += 1
            self.stats.latencies.append((time.monotonic(), latency))

    # -- monitoring ----------------------------------------------------------------------------------
    def _log_stats(self):
        now = time.monotonic()
        count, p50, p95 = self.stats.latency_percentiles(self._stats_since)
        fps = count / max(now - self._stats_since, 1e-9)
        self._stats_since = now
        latency = f"latency p50 {p50 * 1e3:.0f} ms p95 {p95 * 1e3:.0f} ms" if count else "latency n/a"
        s = self.stats
        self.get_logger().info(f"stats: {fps:.2f} fps, {latency}, pairs {self.slot.received}, "
                               f"dropped {self.slot.dropped}, published {s.published}, bad messages "
                               f"{s.bad_messages}, bad pairs {s.bad_pairs}, inference errors {s.inference_errors}, "
                               f"non-finite thermal {s.non_finite_thermal}, constant images {s.constant_images}, "
                               f"fallback pairs {s.fallback_pairs}")

    def _low_confidence(self) -> str | None:
        """Why the last fused pair's registration is doubtful, or None (also when nothing was fused yet)."""
        confidence, fallback = self.stats.last_confidence, self.stats.last_fallback
        threshold = float(self.pipeline.confidence_threshold)
        if confidence is None or (not fallback and confidence >= threshold):
            return None
        return (f"low registration confidence {confidence:.2f} (below {threshold:.2f}): "
                + ("registered with the prior (identity or homography)" if fallback else "registration may be wrong"))

    def diagnose(self):
        """(level, message) of the node right now."""
        now, timeout = time.monotonic(), self.values["stream_timeout"]
        received, dropped = self.slot.received, self.slot.dropped
        self._drop_history.append((received, dropped))
        if self.pipeline_error:
            return DiagnosticStatus.ERROR, f"model failed to load: {self.pipeline_error}"
        silent = [f"{STREAM_NAMES[i]}/image" for i in (VISIBLE, THERMAL)
                  if now - self.stats.last_message[i] > timeout]
        if len(silent) == 2:
            return DiagnosticStatus.WARN, f"no input on {' or '.join(silent)} for more than {timeout:g} s"
        if silent:
            return DiagnosticStatus.WARN, f"{silent[0]} silent for more than {timeout:g} s"
        if now - self.stats.last_pair > timeout:
            return (DiagnosticStatus.WARN, f"no synchronized pair for {now - self.stats.last_pair:.1f} s "
                    f"(stamps further apart than slop {self.values['slop']} s?)")
        old_received, old_dropped = self._drop_history[0]
        if received - old_received >= 5:
            rate = (dropped - old_dropped) / (received - old_received)
            if rate > self.values["drop_rate_warn"]:
                return DiagnosticStatus.WARN, f"high drop rate: {rate:.0%} of pairs dropped (inference too slow)"
        low_confidence = self._low_confidence()
        if low_confidence:  # a warning, never an error: the pair was fused
            return DiagnosticStatus.WARN, f"last pair: {low_confidence}"
        return DiagnosticStatus.OK, "fusing"

    def diagnostic_values(self) -> dict:
        """The key/values of the /diagnostics status."""
        count, p50, p95 = self.stats.latency_percentiles(time.monotonic() - 10.0)
        s = self.stats
        values = {
            "backend": self.pipeline.description, "fps (10 s)": f"{count / 10.0:.2f}",
            "latency p50 ms": f"{p50 * 1e3:.0f}" if count else "n/a",
            "latency p95 ms": f"{p95 * 1e3:.0f}" if count else "n/a",
            "pairs": str(self.slot.received), "dropped pairs": str(self.slot.dropped),
            "published": str(s.published), "bad messages": str(s.bad_messages), "bad pairs": str(s.bad_pairs),
            "inference errors": str(s.inference_errors), "non-finite thermal": str(s.non_finite_thermal),
            "constant images": str(s.constant_images), "synchronizer resets": str(self.sync.resets),
            "synchronizer": self.sync.implementation,
            "registration confidence": "n/a" if s.last_confidence is None else f"{s.last_confidence:.3f}",
            "registration fallback": "n/a" if s.last_fallback is None else str(s.last_fallback).lower(),
            "fallback pairs": str(s.fallback_pairs),
        }
        return values

    def _publish_diagnostics(self):
        level, message = self.diagnose()
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: fusion", message=message,
                                  hardware_id=self.pipeline.description,
                                  values=[KeyValue(key=k, value=v) for k, v in self.diagnostic_values().items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    # -- shutdown ------------------------------------------------------------------------------------
    def stop(self, timeout: float = 1.5) -> bool:
        """Stop the worker (it finishes the pair in hand); False if it did not stop within `timeout` s."""
        self.slot.close()
        self._worker.join(timeout)
        logging.getLogger("cgrp_ros").removeHandler(self._core_log)
        return not self._worker.is_alive()


def spin_until_signal(node: Node, until=lambda: False) -> None:
    """Spin `node` until SIGINT, SIGTERM or `until()` is true.

    Our signal handlers replace rclpy's, so a Ctrl-C ends the loop without a KeyboardInterrupt traceback.
    """
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and not until() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown(timeout_sec=0.5)


def main(args=None) -> int:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = FusionNode()
    except CgrpError as exc:  # missing/corrupt model, bad parameter, no GPU: one line, no traceback
        print(f"cgrp_fusion: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except Exception as exc:  # e.g. a YAML value of the wrong type or outside its range
        print(f"cgrp_fusion: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    spin_until_signal(node)
    node.get_logger().info("shutting down")
    stopped = node.stop()
    node.destroy_node()
    rclpy.try_shutdown()
    if not stopped:  # the worker is stuck inside inference: do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
