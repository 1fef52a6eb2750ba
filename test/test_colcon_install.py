"""The package as a ROS user gets it: `colcon build` in a temporary workspace, then the *installed*
cgrp_fusion and cgrp_player (install/, not this source tree) talk to each other; the sample and the
weights are found through the ament index. colcon and ament_package come from requirements.txt."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import Image  # noqa: E402

from ros_helpers import RELIABLE, RELIABLE_INPUTS, STARTUP_TIMEOUT, Spinner, log_tail, stop_node  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PACKAGE_FILES = ("setup.py", "setup.cfg", "package.xml", "resource", "cgrp_ros", "launch", "config", "models", "sample")


def colcon_or_skip() -> str:
    colcon = shutil.which("colcon", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if colcon is None:
        pytest.skip("colcon is not installed (pip install -r requirements.txt installs colcon-common-extensions)")
    pytest.importorskip("ament_package", reason="ament_package is not installed (ros-ament-package in requirements.txt)")
    return colcon


def copy_package(src: Path):
    """The files colcon needs (what `git clone` gives), without caches. With CGRP_MODELS set, the test
    session's weights replace models/*.pt (the installed node must load what the other tests load)."""
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "onnx"))
        else:
            shutil.copy(path, src / name)
    if os.environ.get("CGRP_MODELS"):
        for model in Path(os.environ["CGRP_MODELS"]).glob("*.pt"):
            shutil.copy(model, src / "models" / model.name)


def sourced_environment(workspace: Path) -> dict:
    """This process's environment after `source install/setup.bash`, without the repo's hints."""
    env = {k: v for k, v in os.environ.items() if k not in ("CGRP_MODELS", "PYTHONPATH")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    out = subprocess.run(["bash", "-c", "source install/setup.bash && env -0"], cwd=workspace, env=env,
                         capture_output=True, check=True, timeout=30).stdout.decode()
    sourced = dict(line.split("=", 1) for line in out.split("\0") if "=" in line)
    sourced["PYTHONUNBUFFERED"] = "1"
    return sourced


def test_colcon_build_installs_nodes_that_run_from_install(tmp_path):
    colcon = colcon_or_skip()
    workspace = tmp_path / "ws"
    copy_package(workspace / "src" / "cgrp_ros")
    build = subprocess.run([colcon, "build", "--packages-select", "cgrp_ros"], cwd=workspace, capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"))
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    share = workspace / "install" / "cgrp_ros" / "share" / "cgrp_ros"
    for folder in ("sample/visible", "sample/thermal"):  # same file names: kept apart, nothing overwritten
        assert sorted(p.name for p in (share / folder).iterdir()) == sorted(p.name for p in (REPO / folder).iterdir())
    assert {p.name for p in (share / "models").glob("*.pt")} == {"generator.pt", "registration.pt", "fusion.pt"}
    assert (share / "config" / "cgrp_fusion.yaml").is_file() and (share / "launch" / "demo.launch.py").is_file()
    assert (workspace / "install" / "share" / "ament_index" / "resource_index" / "packages" / "cgrp_ros").is_file() or \
        (workspace / "install" / "cgrp_ros" / "share" / "ament_index" / "resource_index" / "packages" / "cgrp_ros").is_file()

    env = sourced_environment(workspace)
    where = subprocess.run([sys.executable, "-c", "import cgrp_ros.core.models as m, cgrp_ros.core.data as p; "
                            "print(m.__file__); print(m.models_dir()); print(p.sample_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    module, models, sample = where.stdout.split()
    install = str(workspace / "install")
    assert module.startswith(install) and models == str(share / "models") and sample == str(share / "sample")

    scripts = workspace / "install" / "cgrp_ros" / "lib" / "cgrp_ros"
    logs = {name: tmp_path / f"{name}.log" for name in ("cgrp_fusion", "cgrp_player")}
    args = {"cgrp_fusion": ["-p", "working_size:=[64,96]", "-p", "outputs:=[fused]", *RELIABLE_INPUTS],
            "cgrp_player": ["-p", "max_width:=160", "-p", "rate:=5.0"]}
    rclpy.init()
    spinner = Spinner("colcon_smoke")
    fused = []
    spinner.node.create_subscription(Image, "cgrp_fusion/fused", fused.append, RELIABLE)
    procs = {}
    try:
        for name in ("cgrp_fusion", "cgrp_player"):
            procs[name] = subprocess.Popen([str(scripts / name), "--ros-args", *args[name]], cwd=tmp_path, env=env,
                                           stdout=open(logs[name], "w"), stderr=subprocess.STDOUT)
        spinner.wait_for(lambda: fused or any(p.poll() is not None for p in procs.values()), STARTUP_TIMEOUT,
                         "a fused image from the installed nodes", log_path=logs["cgrp_fusion"])
        assert fused, {name: log_tail(logs[name]) for name in procs}
        assert fused[0].width == 160 and fused[0].encoding == "bgr8"  # the player's max_width
        log = logs["cgrp_fusion"].read_text()
        assert f"generator={share / 'models' / 'generator.pt'}" in log, log[-2000:]
        for name, proc in procs.items():
            code, _ = stop_node(proc, signal.SIGINT, timeout=5.0)
            assert code == 0, f"{name} exited with {code}\n{log_tail(logs[name])}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop_node(proc, signal.SIGKILL)
        spinner.node.destroy_node()
        rclpy.try_shutdown()
