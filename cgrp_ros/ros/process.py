"""What every cgrp node process needs: spinning until a signal, and the core's log in the ROS log."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
import threading
import time
import traceback

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def _glibc_malloc_trim():
    """glibc's malloc_trim, or None on another C library."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc; a no-op elsewhere). The per-frame
    buffers of inference are freed, but glibc keeps the heap at its high-water mark, so resident
    memory jumps by 60-100 MB whenever two large allocations happen to overlap, and stays there
    (measured in `cgrp soak`: levels of ~380 or ~475 MB, at random times). Trimming once a second
    keeps resident memory at what is in use, so a real leak stands out."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class RosLogHandler(logging.Handler):
    """Sends the core's Python log records (logger 'cgrp_ros') to a node's ROS logger."""

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


CALLBACK_ERROR_LOG_PERIOD = 5.0  # s between two log lines of the same failure


class LogThrottle:
    """`throttle(key)`: whether to log now, at most once per key every `period` s (a camera repeats its
    fault every frame; the log must not)."""

    def __init__(self, period: float):
        self.period = period
        self._last = {}  # key -> time.monotonic() of its last line

    def __call__(self, key, period: float | None = None) -> bool:
        """`period`: this key's own, instead of the throttle's."""
        period = self.period if period is None else period
        now = time.monotonic()
        if now - self._last.get(key, -period) < period:
            return False
        self._last[key] = now
        return True


def spin_until_signal(node: Node, until=lambda: False, survive_callback_errors: bool = False) -> None:
    """Spin `node` until SIGINT, SIGTERM or `until()` is true.

    Our signal handlers replace rclpy's, so a Ctrl-C ends the loop without a KeyboardInterrupt traceback.
    `survive_callback_errors` (cgrp_fusion): an exception out of a callback (ours, or rclpy's own, e.g.
    its /clock subscription given a negative time) is logged, at most every CALLBACK_ERROR_LOG_PERIOD s
    per place it came from, and the node goes on: another process's message or service call must not
    end a node that serves others. Otherwise (cgrp_player, whose work is its own) it ends the process.
    """
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    throttle = LogThrottle(CALLBACK_ERROR_LOG_PERIOD)
    try:
        while not stop.is_set() and not until() and rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except ExternalShutdownException:
                raise
            except Exception as exc:
                if not survive_callback_errors:
                    raise
                where = traceback.extract_tb(exc.__traceback__)[-1]
                place = (type(exc).__name__, where.filename, where.lineno)  # (finitely many: the text may vary)
                if throttle(place):
                    node.get_logger().error(f"a callback failed, the node goes on: {type(exc).__name__}: {exc} "
                                            f"({where.filename}:{where.lineno})")
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown(timeout_sec=0.5)
