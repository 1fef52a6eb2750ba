"""The cgrp nodes as child processes of a tool (`cgrp demo`, `cgrp soak`, `cgrp bench --ros`): their
command lines, a private shared-memory DDS domain, the sequence the player plays, starting and stopping
them beside a listener node of the tool's own (`NodeRun`), the tail of a log."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from ..core.data import read_image, sample_dir
from ..core.image import resize

MODULES = {"cgrp_fusion": "cgrp_ros.ros.fusion_node", "cgrp_player": "cgrp_ros.ros.player_node"}
# the fusion node's documented defaults, as a launch file passes them (a source checkout has it)
CONFIG = Path(__file__).resolve().parents[2] / "config" / "cgrp_fusion.yaml"


def private_dds() -> None:
    """Shared memory on this machine only, on a domain of our own, unless the caller set these variables."""
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "SHM")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(free_domain(1))
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


_DOMAIN_LOCKS = []  # open lock files: each holds this process's claim on a domain until it exits


def free_domain(first: int, count: int = 100) -> int:
    """A ROS domain id in [first, first + count) that no other process using this helper holds (two
    test runs or a demo beside a soak would otherwise see each other's nodes): the first whose lock file in
    the temporary folder this process can lock, searching from its pid. The lock lasts until the process
    exits; its children (the nodes) share the domain. If all are held, the pid's own."""
    start = os.getpid() % count
    for offset in range(count):
        domain = first + (start + offset) % count
        try:  # (another user's lock file cannot be opened: that domain is theirs)
            handle = open(Path(tempfile.gettempdir()) / f"cgrp_ros_domain_{domain}.lock", "a")
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _DOMAIN_LOCKS.append(handle)
        return domain
    return first + start


def camera_sequence(out: Path, cameras) -> tuple[Path, str]:
    """(folder with visible/ and thermal/, description) of the rig sequence the player plays for
    `cgrp bench --ros` and `cgrp soak`: the bundled one (ten consecutive M3SVD frames, 240x320 HxW), or with
    `cameras` ((visible H, W), (thermal H, W)) the same frames resized to those resolutions, written under
    `out` (PNG: lossless, decoded once)."""
    sequence = sample_dir() / "sequence"
    if cameras is None:
        return sequence, "the bundled sequence as stored (240x320 both, HxW)"
    target = out / "sequence_{}x{}_{}x{}".format(*cameras[0], *cameras[1])
    for stream, size in zip(("visible", "thermal"), cameras):
        (target / stream).mkdir(parents=True, exist_ok=True)
        for path in sorted((sequence / stream).iterdir()):
            cv2.imwrite(str(target / stream / f"{path.stem}.png"), resize(read_image(path), size))
    (vh, vw), (th, tw) = cameras
    return target, f"the bundled sequence resized to the cameras (HxW, as --cameras): visible {vh}x{vw}, thermal {th}x{tw}"


def node_command(node: str, parameters: dict) -> list:
    """`python -m <node's module> --ros-args [--params-file config/cgrp_fusion.yaml] -p name:=value ...`."""
    command = [sys.executable, "-m", MODULES[node], "--ros-args"]
    if node == "cgrp_fusion" and CONFIG.is_file():
        command += ["--params-file", str(CONFIG)]
    for name, value in parameters.items():
        command += ["-p", f"{name}:={value}"]
    return command


def start_nodes(out: Path, fusion_params: dict, player_params: dict, log_prefix: str = ""):
    """cgrp_fusion and cgrp_player as child processes, logging to out/<log_prefix>fusion.log and
    out/<log_prefix>player.log. Returns (fusion process, player process, [open log files]); close the
    logs after `stop_processes`."""
    logs = [open(out / f"{log_prefix}fusion.log", "w"), open(out / f"{log_prefix}player.log", "w")]
    fusion = subprocess.Popen(node_command("cgrp_fusion", fusion_params), stdout=logs[0], stderr=subprocess.STDOUT)
    player = subprocess.Popen(node_command("cgrp_player", player_params), stdout=logs[1], stderr=subprocess.STDOUT)
    return fusion, player, logs


def stop_processes(processes) -> None:
    """SIGINT every child, then kill what is still there after 5 s."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 5.0
    for proc in processes:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def node_exit(fusion, player, out: Path, log_prefix: str = "") -> str | None:
    """Why a run of the two nodes from start_nodes must stop: 'cgrp_NAME exited (code):' and the last
    lines of its log, for the first one that has ended; None while both run."""
    for proc, name in ((fusion, "fusion"), (player, "player")):
        if proc.poll() is not None:
            return f"cgrp_{name} exited ({proc.returncode}):\n{log_tail(out / f'{log_prefix}{name}.log')}"
    return None


class NodeRun:
    """cgrp_fusion and cgrp_player as child processes beside a listener node of the tool's own, on a private
    DDS domain (private_dds)::

        with NodeRun("cgrp_demo", out) as run:
            run.node.create_subscription(Image, "cgrp_fusion/fused", on_fused, run.qos)
            run.start(fusion_params, player_params)
            while not run.exited(): rclpy.spin_once(run.node, timeout_sec=0.1) ...

    `exited()`: why the run must stop (node_exit), None while both nodes run. Leaving the block stops the
    nodes (`stop`, which may come earlier), closes their logs (out/<log_prefix>fusion.log, player.log) and
    shuts the listener down."""

    def __init__(self, name: str, out: Path, log_prefix: str = ""):
        self.name, self.out, self.log_prefix = name, out, log_prefix
        self.node = self.qos = None
        self.fusion = self.player = None
        self._logs = []

    def __enter__(self) -> "NodeRun":
        private_dds()
        import rclpy
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        rclpy.init()
        self.node = rclpy.create_node(self.name)
        # reliable: the outputs are large images, which best effort over shared memory mostly loses
        self.qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        return self

    def start(self, fusion_params: dict, player_params: dict) -> None:
        self.fusion, self.player, self._logs = start_nodes(self.out, fusion_params, player_params, self.log_prefix)

    def exited(self) -> str | None:
        return node_exit(self.fusion, self.player, self.out, self.log_prefix) if self.fusion else None

    def stop(self) -> None:
        """Stop both nodes and close their logs (once)."""
        stop_processes([proc for proc in (self.player, self.fusion) if proc is not None])
        for log in self._logs:
            log.close()
        self._logs = []

    def __exit__(self, *exc) -> None:
        import rclpy

        self.stop()
        self.node.destroy_node()
        rclpy.try_shutdown()


def log_tail(path: Path, lines: int = 5) -> str:
    """The last `lines` lines of a log file ('' when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
