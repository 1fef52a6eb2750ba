"""Launch files, parameter file and rviz config: parse, name real executables and files, match the node."""
import ast
import re
from pathlib import Path

import pytest
import yaml
from ros_helpers import ros_doc

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))


def console_scripts():
    return set(re.findall(r'"(\w+) = cgrp_ros\.[\w.]+:\w+"', (REPO / "setup.py").read_text()))


def test_both_launch_files_exist():
    assert {p.name for p in LAUNCH_FILES} == {"cgrp_fusion.launch.py", "demo.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_existing_executables_and_files(path):
    tree = ast.parse(path.read_text(), str(path))
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    executables = {kw.value.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                   for kw in n.keywords if kw.arg == "executable" and isinstance(kw.value, ast.Constant)}
    assert executables - {"rviz2"} <= console_scripts() and "cgrp_fusion" in executables
    for name in strings & {"cgrp_fusion.yaml", "cgrp.rviz"}:
        assert (REPO / "config" / name).is_file()


def launch_arguments(path):
    """{declared argument: default} and the set of LaunchConfiguration names a launch file uses."""
    tree = ast.parse(path.read_text(), str(path))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    declared = {c.args[0].value: next(getattr(k.value, "value", None) for k in c.keywords if k.arg == "default_value")
                for c in calls if c.func.id == "DeclareLaunchArgument"}  # None: a computed default
    used = {c.args[0].value for c in calls if c.func.id == "LaunchConfiguration" and isinstance(c.args[0], ast.Constant)}
    for node in ast.walk(tree):  # names read in a loop over a module-level tuple (FILE_OVERRIDES)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            used |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return declared, used


def test_fusion_launch_file_exposes_transport_clock_log_level_and_lifecycle():
    declared, used = launch_arguments(REPO / "launch" / "cgrp_fusion.launch.py")
    assert {"visible": "visible/image", "thermal": "thermal/image", "image_transport": "", "use_sim_time": "",
            "log_level": "info", "autostart": "", "namespace": "", "calibration_file": ""}.items() <= declared.items()
    assert set(declared) == used  # every argument reaches the node
    declared, used = launch_arguments(REPO / "launch" / "demo.launch.py")
    assert {"log_level", "autostart"} <= set(declared) and set(declared) == used


def test_launch_arguments_override_the_parameter_file_only_when_given(monkeypatch):
    """cgrp_fusion.launch.py's node under stand-ins for launch and launch_ros (no wheels here): the
    parameter file comes first; calibration_file:=, image_transport:=, autostart:= and use_sim_time:= join
    the overrides only when given, so the defaults never hide a user's parameter file."""
    import importlib.util
    import sys
    import types

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    stand_ins = {"launch": dict(LaunchDescription=list),
                 "launch.actions": dict(DeclareLaunchArgument=dict, OpaqueFunction=dict),
                 "launch.substitutions": dict(LaunchConfiguration=LaunchConfiguration),
                 "launch_ros.actions": dict(Node=lambda **kwargs: kwargs),
                 "ament_index_python.packages": dict(get_package_share_directory=lambda package: "/share")}
    for name, attributes in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    monkeypatch.setitem(sys.modules, "launch_ros", types.SimpleNamespace())
    path = REPO / "launch" / "cgrp_fusion.launch.py"
    spec = importlib.util.spec_from_file_location("cgrp_fusion_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    declared, _ = launch_arguments(path)
    unset = {name: "" for name in ("calibration_file", "image_transport", "autostart", "use_sim_time")}
    assert unset.items() <= declared.items()
    node, = module.fusion_node(unset)
    params_file, overrides = node["parameters"]
    assert params_file.name == "params_file" and overrides == {}
    given = {"calibration_file": "/robot/rig.yaml", "image_transport": "compressed", "autostart": "false",
             "use_sim_time": "true"}
    node, = module.fusion_node(given)
    _, overrides = node["parameters"]
    assert overrides["calibration_file"] == "/robot/rig.yaml"
    assert {name: o.name for name, o in overrides.items() if name != "calibration_file"} == {
        "image_transport": "image_transport", "autostart": "autostart", "use_sim_time": "use_sim_time"}


def test_demo_launch_hands_the_player_a_float_rate_and_registers_its_pairs_alone(monkeypatch):
    """`rate:=4` is typed as an integer by launch; the player's `rate` is a double, so the launch file
    must say float (under the same stand-ins for launch and launch_ros). And the sample's unrelated pairs
    are registered alone, as `cgrp demo` does: with the default self-calibration /diagnostics said
    'converging' for as long as it ran."""
    import importlib.util
    import sys
    import types

    stand_ins = {"launch": dict(LaunchDescription=lambda entities: entities),
                 "launch.actions": dict(DeclareLaunchArgument=lambda *a, **k: ("argument", a, k)),
                 "launch.conditions": dict(IfCondition=lambda c: c),
                 "launch.substitutions": dict(LaunchConfiguration=lambda name: ("config", name)),
                 "launch_ros.actions": dict(Node=lambda **kwargs: kwargs),
                 "launch_ros.parameter_descriptions": dict(ParameterValue=lambda value, value_type: (value, value_type)),
                 "ament_index_python.packages": dict(get_package_share_directory=lambda package: "/share")}
    for name, attributes in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    monkeypatch.setitem(sys.modules, "launch_ros", types.SimpleNamespace())
    spec = importlib.util.spec_from_file_location("demo_launch", REPO / "launch" / "demo.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    player = next(e for e in module.generate_launch_description()
                  if isinstance(e, dict) and e.get("executable") == "cgrp_player")
    assert player["parameters"][0]["rate"] == (("config", "rate"), float)
    fusion = next(e for e in module.generate_launch_description()
                  if isinstance(e, dict) and e.get("executable") == "cgrp_fusion")
    assert fusion["parameters"][-1]["self_calibrate"] is False


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_imports_when_launch_ros_is_present(path):
    pytest.importorskip("launch_ros")
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate_launch_description().entities


def test_parameter_file_matches_the_declared_parameters():
    from cgrp_ros.ros.parameters import PARAMETERS, check_parameter

    params = yaml.safe_load((REPO / "config" / "cgrp_fusion.yaml").read_text())["/**"]["ros__parameters"]
    assert params == {p.name: p.default for p in PARAMETERS}
    assert all(check_parameter(name, value) is None for name, value in params.items())


def test_every_parameter_is_documented_with_its_default():
    """docs/ros.md's parameter table: one row per declared parameter, its default as the node declares it."""
    import json

    from cgrp_ros.ros.parameters import PARAMETERS

    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", ros_doc("### Parameters", "### Self-calibration"), re.M)
    assert rows == [(p.name, json.dumps(p.default)) for p in PARAMETERS]


def test_every_output_topic_is_documented():
    """docs/ros.md's topic table has a row for every output the `outputs` parameter can name."""
    from cgrp_ros.ros.parameters import OUTPUTS

    rows = set(re.findall(r"^\| `~/(\w+)` \|", ros_doc("### Topics", "### Parameters"), re.M))
    assert set(OUTPUTS) <= rows, set(OUTPUTS) - rows


def test_rviz_config_shows_both_inputs_and_all_outputs_rviz_can_render():
    rviz = yaml.safe_load((REPO / "config" / "cgrp.rviz").read_text())
    topics = {d["Topic"]["Value"] for d in rviz["Visualization Manager"]["Displays"]
              if d["Class"] == "rviz_default_plugins/Image"}
    from cgrp_ros.ros.parameters import OUTPUTS

    renderable = set(OUTPUTS) - {"deformation"}  # not the 32FC2 flow: deformation_vis shows it
    assert topics == {"/visible/image", "/thermal/image"} | {f"/cgrp_fusion/{n}" for n in renderable}
    # shown, ~/pseudo_thermal would run the generator on every frame (the node then fuses ~15 of 30 pairs/s)
    enabled = {d["Topic"]["Value"]: d["Enabled"] for d in rviz["Visualization Manager"]["Displays"]
               if d["Class"] == "rviz_default_plugins/Image"}
    assert enabled.pop("/cgrp_fusion/pseudo_thermal") is False and all(enabled.values())
