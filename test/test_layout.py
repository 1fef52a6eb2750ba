"""The package layout is the architecture: ROS-free inference in core/, training and evaluation beside
it, ROS adapters in ros/, commands on top. Checked on the import statements of every module, so a
shortcut through the layers fails here rather than in a robot's install without rclpy."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cgrp_ros"
# subpackage -> the subpackages (besides itself) it may import
ALLOWED = {"core": set(), "training": {"core"}, "evaluation": {"core"}, "ros": {"core", "evaluation"}}
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
            if subpackage != "ros":
                assert parts[0] not in ROS_MODULES, f"{path.name} imports {name}: ROS belongs in cgrp_ros/ros"
