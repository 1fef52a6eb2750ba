"""Helpers for the ROS tests: a node process, a test-side rclpy node, bounded waits."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cgrp_ros.ros import node_processes

try:  # the ROS test modules skip themselves when rclpy is missing; this keeps the helpers importable
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.srv import SetParameters
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

    from cgrp_ros.ros.image_conversions import numpy_to_image

    RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
except ImportError:
    rclpy = None

STARTUP_TIMEOUT = 60.0  # torch import + model load on a busy 2-core machine
OUTPUTS = ("fused", "registered_thermal", "deformation", "pseudo_thermal")
SLOP = 0.05
# large test images over shared memory need reliable inputs: the standard QoS override parameters
RELIABLE_INPUTS = ("-p", "qos_overrides./visible/image.subscription.reliability:=reliable",
                   "-p", "qos_overrides./thermal/image.subscription.reliability:=reliable")


def start_node(module: str, log_path, *ros_args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m module --ros-args ...` with stdout + stderr in `log_path` (the DDS settings are inherited).

    `env`: variables added to (or, with value None, removed from) this process's environment.
    """
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], stdout=log,
                            stderr=subprocess.STDOUT, env=environment)


def stop_node(proc: subprocess.Popen, signum=signal.SIGINT, timeout: float = 2.0):
    """Signal the node; returns (exit code, seconds it took), killing it if it outlives `timeout`."""
    start = time.monotonic()
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    return code, time.monotonic() - start


class Spinner:
    """A test-side rclpy node with bounded waits."""

    def __init__(self, name: str):
        import rclpy

        self.rclpy = rclpy
        self.node = rclpy.create_node(name)

    def spin(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.02)

    def wait_for(self, predicate, timeout: float, what: str, proc=None, log_path=None):
        """Spin until predicate() is true; fail with `what` (and the node's log tail) after `timeout` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"node exited ({proc.returncode}) while waiting for {what}\n{log_tail(log_path)}")
            self.rclpy.spin_once(self.node, timeout_sec=0.02)
        if predicate():
            return
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{log_tail(log_path)}")

    def call(self, client, request, timeout: float, what: str, proc=None, log_path=None, resend_after: float = 3.0):
        """Call a service and spin until it answers; -> the response. Only for requests that may be sent
        twice: the request is sent again every `resend_after` s without an answer, because a server that
        has not yet discovered a new client's reply reader drops its first answer (rmw_fastrtps waits only
        briefly, then logs "failed to send response (timeout)"), even after service_is_ready()."""
        self.wait_for(client.service_is_ready, timeout, f"the service for {what}", proc, log_path)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            future = client.call_async(request)
            resend = time.monotonic() + resend_after
            while not future.done() and time.monotonic() < min(resend, end):
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"node exited ({proc.returncode}) while waiting for {what}\n{log_tail(log_path)}")
                self.rclpy.spin_once(self.node, timeout_sec=0.02)
            if future.done():
                return future.result()
            client.remove_pending_request(future)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{log_tail(log_path)}")


def exit_and_log(module: str, log_path, *ros_args: str, env: dict | None = None, timeout: float = 60.0):
    """Start a node that should exit on its own: (exit code, its non-empty log lines)."""
    proc = start_node(module, log_path, *ros_args, env=env)
    try:
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            stop_node(proc, signal.SIGKILL)
    return code, [line for line in Path(log_path).read_text().splitlines() if line.strip()]


def play_until_exit(log_path, *player_args: str, timeout: float = 30.0):
    """Run cgrp_player (with `count` among `player_args`) until it exits, recording what it publishes.
    -> (exit code, {'visible': [Image], 'thermal': [Image]}). Needs rclpy initialised."""
    spinner = Spinner("player_listener")
    got = {"visible": [], "thermal": []}
    for stream in got:
        spinner.node.create_subscription(Image, f"{stream}/image", got[stream].append, RELIABLE)
    proc = start_node("cgrp_ros.ros.player_node", log_path, *player_args)
    try:
        spinner.wait_for(lambda: proc.poll() is not None, timeout, "the player to exit after count pairs",
                         log_path=log_path)
        spinner.spin(0.3)
    finally:
        if proc.poll() is None:
            stop_node(proc, signal.SIGKILL)
        spinner.node.destroy_node()
    return proc.returncode, got


def ros_doc(start: str, end: str | None = None) -> str:
    """docs/ros.md from the first `start` up to the next `end` (or its end)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "ros.md").read_text()
    section = doc[doc.index(start):]
    return section[:section.index(end)] if end else section


def documented_diagnostic_keys() -> set:
    """The /diagnostics keys named in the first column of docs/ros.md's "| Key | Value |" table."""
    table = ros_doc("| Key | Value |", "\n\n")
    return {key for row in table.splitlines()[2:] for key in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def log_tail(path, lines: int = 15) -> str:
    """The node log's last lines for a failure message ('' without a log)."""
    tail = node_processes.log_tail(Path(path), lines) if path is not None else ""
    return "node log tail:\n" + tail if tail else ""


def make_images(height=120, width=160, seed=0):
    """A colour visible (BGR uint8) and a 16-bit thermal of a smooth random scene. Not a periodic pattern:
    its repeats are ambiguous to the matchers, which at the harness's 64x96 working size then agree with
    an affine no more than chance does, and the registration falls back (Pipeline.chance_confidence)."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scene = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 3)
    scene /= max(float(np.abs(scene).max()), 1e-6)
    visible = np.clip(np.stack([scene * 80 + 120, scene * 60 + 100, xx / width * 255], axis=2), 0, 255).astype(np.uint8)
    thermal = (30000 + 2000 * scene + rng.normal(0, 20, scene.shape)).astype(np.uint16)
    return visible, thermal


def compress(image, encoding, _image_cls=None):
    """A CompressedImage as image_transport writes it: JPEG for 8-bit colour, PNG for mono (16-bit kept)."""
    import cv2

    kind = "jpeg" if image.ndim == 3 else "png"
    ok, data = cv2.imencode(".jpg" if kind == "jpeg" else ".png", image)
    assert ok
    return CompressedImage(format=f"{encoding}; {kind} compressed {encoding}", data=data.tobytes())


class Harness:
    """The node process plus a test node publishing both streams and recording every output."""

    def __init__(self, log_path, *ros_args: str, outputs=OUTPUTS, env: dict | None = None, transport: str = "raw",
                 wait: bool = True):
        """`ros_args` are added after the defaults (reliable inputs by qos_overrides, slop, 1 s stats, a 64x96 working size);
        `outputs`: the outputs this side subscribes to (the node computes only those); `transport`: raw or
        compressed (the node gets image_transport:=compressed; pairs are published as JPEG visible + PNG thermal);
        `wait`: wait for the node's topics (not for a node started with autostart:=false)."""
        self.transport = transport
        suffix = "/compressed" if transport == "compressed" else ""
        reliable = [arg for stream in ("visible", "thermal")
                    for arg in ("-p", f"qos_overrides./{stream}/image{suffix}.subscription.reliability:=reliable")]
        self.ros_args = (*reliable, "-p", f"slop:={SLOP}", "-p", "stats_period:=1.0", "-p", "working_size:=[64,96]",
                         "-p", f"image_transport:={transport}", *ros_args)
        self.env = env
        self.log_path = log_path
        self.proc = start_node("cgrp_ros.ros.fusion_node", log_path, *self.ros_args, env=env)
        self.spinner = Spinner("cgrp_fusion_tester")
        node = self.spinner.node
        input_type = CompressedImage if transport == "compressed" else Image
        self.visible_pub = node.create_publisher(input_type, f"visible/image{suffix}", RELIABLE)
        self.thermal_pub = node.create_publisher(input_type, f"thermal/image{suffix}", RELIABLE)
        self.outputs = tuple(outputs)
        self.received = {name: [] for name in self.outputs}
        for name in self.outputs:
            node.create_subscription(Image, f"cgrp_fusion/{name}", lambda m, n=name: self.received[n].append(m), RELIABLE)
        self.diagnostics = []
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.set_parameters = node.create_client(SetParameters, "cgrp_fusion/set_parameters")
        self.visible, self.thermal = make_images()
        if wait:
            self.wait_for_topics()

    def wait_for_topics(self):
        node = self.spinner.node
        self.wait_for(lambda: self.visible_pub.get_subscription_count() and self.thermal_pub.get_subscription_count()
                      and all(node.count_publishers(f"cgrp_fusion/{n}") for n in self.outputs),
                      STARTUP_TIMEOUT, "the node's topics")

    def restart(self, log_path):
        """Start the node again (after it stopped) with the same arguments; log to `log_path`."""
        self.log_path = log_path
        self.diagnostics.clear()
        self.proc = start_node("cgrp_ros.ros.fusion_node", log_path, *self.ros_args, env=self.env)
        self.wait_for_topics()

    def wait_for(self, predicate, timeout, what):
        self.spinner.wait_for(predicate, timeout, what, self.proc, self.log_path)

    def call(self, client, request, what, timeout=10.0):
        """Spinner.call on the node under test (a request that may be sent twice)."""
        return self.spinner.call(client, request, timeout, what, self.proc, self.log_path)

    def stamp(self, offset=0.0):
        return rclpy.time.Time(nanoseconds=self.spinner.node.get_clock().now().nanoseconds
                               + int(offset * 1e9)).to_msg()

    def publish_pair(self, thermal_offset=0.0, visible=None, thermal=None, visible_encoding="bgr8",
                     thermal_encoding="mono16", visible_msg=None, thermal_msg=None, stamp=None):
        """Publish one pair; returns the visible stamp in ns. Ready-made (broken) messages replace the arrays;
        `stamp` (a builtin_interfaces Time) replaces now."""
        stamp = stamp or self.stamp()
        header = Header(stamp=stamp, frame_id="test_visible")
        convert = compress if self.transport == "compressed" else numpy_to_image
        if visible_msg is None:
            visible_msg = convert(self.visible if visible is None else visible, visible_encoding, Image)
        visible_msg.header = header
        if thermal_msg is None:
            thermal_msg = convert(self.thermal if thermal is None else thermal, thermal_encoding, Image)
        thermal_msg.header = Header(stamp=rclpy.time.Time(nanoseconds=stamp.sec * 10**9 + stamp.nanosec
                                                          + int(thermal_offset * 1e9)).to_msg(), frame_id="test_thermal")
        self.visible_pub.publish(visible_msg)
        self.thermal_pub.publish(thermal_msg)
        return stamp.sec * 10**9 + stamp.nanosec

    def outputs_for(self, stamp_ns):
        return {name: m for name in self.outputs for m in self.received[name]
                if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == stamp_ns}

    def wait_outputs(self, stamp_ns, timeout=30.0, what="all four outputs"):
        self.wait_for(lambda: len(self.outputs_for(stamp_ns)) == len(self.outputs), timeout, what)
        return self.outputs_for(stamp_ns)

    def wait_first_output(self, what="the first output", every=1.0, **pair):
        """Publish the pair (`pair`: publish_pair's arguments) every `every` s with a new stamp, as a
        camera would, until one comes back with all outputs. -> (its stamp in ns, its outputs).
        Right after start-up the node may not have matched our subscriptions yet (the tester sees its
        publishers first), and it drops a pair that nobody subscribes to, by design."""
        stamps, due = [], [0.0]

        def answered():
            if time.monotonic() >= due[0]:
                stamps.append(self.publish_pair(**pair))
                due[0] = time.monotonic() + every
            return any(len(self.outputs_for(stamp)) == len(self.outputs) for stamp in stamps)

        self.wait_for(answered, STARTUP_TIMEOUT, what)
        stamp = next(s for s in stamps if len(self.outputs_for(s)) == len(self.outputs))
        return stamp, self.outputs_for(stamp)

    def log(self):
        return open(self.log_path, errors="replace").read()

    def close(self, signum=signal.SIGINT, timeout: float = 5.0):
        """Stop the node if it still runs (SIGINT: a clean exit leaves no stale endpoints behind), then this
        side's node and rclpy."""
        if self.proc.poll() is None:
            stop_node(self.proc, signum, timeout=timeout)
        self.spinner.node.destroy_node()
        rclpy.try_shutdown()

    def last_diagnostic(self):
        statuses = [s for array in self.diagnostics for s in array.status if s.name.startswith("cgrp_fusion")]
        return statuses[-1] if statuses else None

    def diagnostic_value(self, key):
        status = self.last_diagnostic()
        return None if status is None else {kv.key: kv.value for kv in status.values}.get(key)
