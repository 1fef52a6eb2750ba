"""cgrp_fusion lifecycle and startup faults (issue 5): cuda without a GPU, SIGTERM/SIGINT while
serving, an immediate restart under the same name, and the model/device errors that end the node."""
import shutil
import signal

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import STARTUP_TIMEOUT, Harness, exit_and_log, stop_node  # noqa: E402


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def assert_clean_log(text):
    assert "Traceback" not in text and "Logging error" not in text, text[-3000:]


@pytest.mark.skipif(has_cuda(), reason="this machine has a GPU: nothing to fall back from")
def test_cuda_without_gpu_falls_back_stops_on_signals_and_restarts(tmp_path):
    rclpy.init()
    h = Harness(tmp_path / "first.log", "-p", "device:=cuda", outputs=("fused",))
    try:
        h.wait_first_output("an output on the CPU fallback")
        assert "device 'cuda' requested but no CUDA GPU is available: falling back to CPU" in h.log()
        assert "on cpu" in h.log()  # the startup line names the device actually used

        h.publish_pair()  # SIGTERM while the worker may be busy with this pair
        code, seconds = stop_node(h.proc, signal.SIGTERM, timeout=5.0)
        # (a hang fails stop_node's timeout; how fast is a benchmark's business, not a unit test's)
        assert code == 0, f"SIGTERM: exit {code} after {seconds:.2f} s\n{h.log()[-2000:]}"
        assert_clean_log(h.log())

        h.restart(tmp_path / "second.log")  # at once: same node name, same topics
        h.wait_first_output("an output after the restart")
        h.wait_for(lambda: h.spinner.node.get_node_names().count("cgrp_fusion") == 1, 10.0,
                   "exactly one cgrp_fusion in the graph")
        code, seconds = stop_node(h.proc, signal.SIGINT, timeout=5.0)
        assert code == 0, f"SIGINT: exit {code} after {seconds:.2f} s\n{h.log()[-2000:]}"
        assert_clean_log(h.log())
    finally:
        h.close(signal.SIGKILL)


def startup_error(tmp_path, *ros_args, env=None):
    """Start the node expecting it to fail: (exit code, non-empty log lines)."""
    return exit_and_log("cgrp_ros.ros.fusion_node", tmp_path / "fusion.log", *ros_args, env=env,
                        timeout=STARTUP_TIMEOUT)


def models_copy(tmp_path, corrupt=None, missing=None):
    """A models folder like the shipped one, with one file corrupt or missing."""
    from cgrp_ros.core.models import default_model_path

    folder = tmp_path / "models"
    folder.mkdir()
    for stage in ("generator", "registration", "fusion"):
        if stage != missing:
            shutil.copy(default_model_path(stage), folder / f"{stage}.pt")
    if corrupt:
        (folder / f"{corrupt}.pt").write_bytes(b"\x00 not a checkpoint")
    return folder


@pytest.mark.parametrize("fault, expected", [
    ("missing", "cannot load model '{folder}/registration.pt': file not found"),
    ("corrupt", "cannot load model '{folder}/fusion.pt': not a readable checkpoint"),
], ids=["missing", "corrupt"])
def test_missing_or_corrupt_shipped_model_exits_with_one_line(tmp_path, fault, expected):
    stage = "registration" if fault == "missing" else "fusion"
    folder = models_copy(tmp_path, **{fault: stage})
    code, lines = startup_error(tmp_path, env={"CGRP_MODELS": str(folder)})
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("cgrp_fusion: error: ") and expected.format(folder=folder) in lines[0], lines


def test_missing_model_parameter_exits_with_one_line(tmp_path):
    code, lines = startup_error(tmp_path, "-p", f"fusion_model:={tmp_path}/nowhere.pt")
    assert code == 2 and lines == [f"cgrp_fusion: error: invalid parameter fusion_model: no such file "
                                   f"'{tmp_path}/nowhere.pt'"], lines


@pytest.mark.skipif(has_cuda(), reason="this machine has a GPU")
def test_require_gpu_without_gpu_exits_with_one_line(tmp_path):
    code, lines = startup_error(tmp_path, "-p", "device:=cuda", "-p", "require_gpu:=true")
    assert code == 2 and lines == ["cgrp_fusion: error: require_gpu is set but no CUDA GPU is available"], lines


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_models_load_stops_the_node_cleanly(tmp_path, signum):
    """Ctrl-C (or the launch system's SIGTERM) while the node builds its Pipeline, which takes seconds: one
    line and exit 0. It was a KeyboardInterrupt traceback, a model reported as not loadable (the start-up's
    `except Exception` caught it), or death by SIGTERM (exit -15). The signal arrives, deterministically,
    from inside the Pipeline's construction."""
    import subprocess
    import sys

    script = ("import os, signal, sys, time\n"
              "import cgrp_ros.core.pipeline as pipeline\n"
              "import cgrp_ros.ros.fusion_node as node\n"
              "build = pipeline.Pipeline.__init__\n"
              "def slow_build(self, *args, **kwargs):\n"
              f"    os.kill(os.getpid(), {int(signum)})\n"
              "    time.sleep(0.5)\n"
              "    build(self, *args, **kwargs)\n"
              "pipeline.Pipeline.__init__ = slow_build\n"
              "sys.exit(node.main(['cgrp_fusion']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "cannot load model" not in proc.stderr, proc.stderr[-2000:]
    assert f"cgrp_fusion: {signal.Signals(signum).name} during start-up: stopped" in proc.stderr


# The child sends the signal to itself when the node's module first imports `trigger`, i.e. in the
# middle of the imports that take seconds, whatever this machine's speed.
SIGNAL_DURING_IMPORT = """
import os, signal, sys
class Trip:
    def find_spec(self, name, path=None, target=None):
        if name == {trigger!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{signal})
        return None
from cgrp_ros.ros import startup
sys.meta_path.insert(0, Trip())
sys.exit(startup.{entry}([{name!r}]))
"""


@pytest.mark.parametrize("name, entry, trigger, signum", [
    ("cgrp_fusion", "fusion_main", "torch", "SIGINT"),
    ("cgrp_fusion", "fusion_main", "rclpy", "SIGTERM"),
    ("cgrp_player", "player_main", "rclpy", "SIGTERM"),
])
def test_a_signal_while_the_node_imports_stops_it_cleanly(name, entry, trigger, signum):
    """The console scripts (what ros2 run and launch files start) handle SIGINT and SIGTERM from their
    first instant: importing a node takes seconds (torch, OpenCV, rclpy), and a Ctrl-C then ended in a
    KeyboardInterrupt traceback, a SIGTERM (cgrp_player's, before it went through ros.startup) in death
    by signal (exit -15)."""
    import subprocess
    import sys

    code = SIGNAL_DURING_IMPORT.format(trigger=trigger, signal=signum, entry=entry, name=name)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr[-2000:])
    assert f"{name}: {signum} during start-up: stopped" in proc.stderr, proc.stderr
