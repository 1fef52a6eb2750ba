"""The package layout is the architecture: ROS-free inference in core/, training and evaluation beside
it, ROS adapters in ros/, commands on top. Checked on the import statements of every module, so a
shortcut through the layers fails here rather than in a robot's install without rclpy."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cgrp_ros"
# subpackage -> the subpackages (besides itself) it may import
ALLOWED = {"core": set(), "training": {"core"}, "evaluation": {"core"}, "ros": {"core", "evaluation"},
           "commands": {"core", "training", "evaluation", "ros"}}
ROS_MODULES = ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "std_srvs", "builtin_interfaces")


def imported(path: Path) -> set:
    """Absolute names of the modules `path` imports (relative imports resolved), at any depth."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = ".".join(base + ((node.module,) if node.module else ()))
            names.add(module)
            if not node.module:  # `from . import report`
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("subpackage", sorted(ALLOWED))
def test_subpackages_import_only_the_layers_below_them(subpackage):
    modules = sorted((PACKAGE / subpackage).glob("*.py"))
    assert modules
    for path in modules:
        for name in imported(path):
            parts = name.split(".")
            if parts[0] == "cgrp_ros" and len(parts) > 1 and parts[1] != subpackage:
                assert parts[1] in ALLOWED[subpackage], f"{path.name} imports {name}"
            if subpackage != "ros":  # (commands too: a command's ROS work is an adapter in ros/, as the node's)
                assert parts[0] not in ROS_MODULES, f"{path.name} imports {name}: ROS belongs in cgrp_ros/ros"


def test_the_command_line_and_the_player_do_not_load_torch():
    """`cgrp`'s argument parsing (`--help`, a wrong option) and the player node need no network, so they
    must not pay torch's import (about 2 s and 100 MB): only a command that runs one loads it."""
    import importlib.util
    import subprocess
    import sys

    player = "import cgrp_ros.ros.player_node; " if importlib.util.find_spec("rclpy") else ""
    code = f"import sys; from cgrp_ros.cli import build_parser; {player}build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_command_refused_on_its_inputs_says_so_before_loading_torch(tmp_path):
    """A typo in a folder name is answered at once (0.6 s), not after torch's import (3-6 s on this
    machine): fuse, calibrate and eval check their inputs before the networks load."""
    import subprocess
    import sys

    missing = tmp_path / "no_such_folder"
    commands = [["fuse", "--visible", missing, "--thermal", missing, "--out", tmp_path / "out"],
                ["calibrate", "--visible", missing, "--thermal", missing, "--out", tmp_path / "rig.yaml"],
                ["eval", "--data", missing, "--out", tmp_path / "out"]]
    code = ("import sys, contextlib, io; from cgrp_ros.cli import main\n"
            f"for argv in {[[str(a) for a in c] for c in commands]!r}:\n"
            "    with contextlib.redirect_stderr(io.StringIO()) as err:\n"
            "        print(main(argv), 'torch' in sys.modules, str(err.getvalue()).count('no_such_folder') > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:3] == ["2 False True"] * 3, out


def test_the_command_line_does_not_load_rclpy_through_message_filters(tmp_path):
    """On an apt-installed ROS, message_filters imports rclpy; the command line imports this package's
    synchroniser module (`cgrp fuse --bag` pairs with it), so that module looks message_filters up only
    when something pairs with it: `cgrp --help` must not start ROS's client library."""
    import os
    import subprocess
    import sys

    (tmp_path / "message_filters").mkdir()
    (tmp_path / "message_filters" / "__init__.py").write_text("raise RuntimeError('message_filters imported')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    code = "import sys; from cgrp_ros.cli import build_parser; build_parser(); print('rclpy' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_itself_through_others():
    """No import cycle between the package's modules, counting the imports inside functions: a cycle
    means two modules that are one job, or a piece of one that belongs in a third (the evaluation and
    its reports shared their constants that way; the entry point and the node a signal handler)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {n for n in imported(p) if n in paths and n != m} for m, p in paths.items()}
    cycles, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                cycles.append(stack[stack.index(other):] + [other])
            elif other not in state:
                visit(other, stack + [other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
