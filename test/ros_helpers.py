"""Helpers for the ROS tests: a node process, a test-side rclpy node, bounded waits."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

STARTUP_TIMEOUT = 60.0  # torch import + model load on a busy 2-core machine


def start_node(module: str, log_path, *ros_args: str) -> subprocess.Popen:
    """`python -m module --ros-args ...` with stdout + stderr in `log_path` (the DDS settings are inherited)."""
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


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


def log_tail(path, lines: int = 15) -> str:
    if path is None:
        return ""
    try:
        return "node log tail:\n" + "\n".join(open(path, errors="replace").read().splitlines()[-lines:])
    except OSError:
        return ""


def make_images(height=120, width=160, seed=0):
    """A colour visible (BGR uint8) and a 16-bit thermal of a smooth scene."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scene = np.sin(xx / 9.0) * np.cos(yy / 7.0)
    visible = np.clip(np.stack([scene * 80 + 120, scene * 60 + 100, xx / width * 255], axis=2), 0, 255).astype(np.uint8)
    thermal = (30000 + 2000 * scene + rng.normal(0, 20, scene.shape)).astype(np.uint16)
    return visible, thermal
