"""cgrp_fusion with its parameter file; input topics, transport, rig calibration, namespace, lifecycle, clock
and log level are launch arguments.

    ros2 launch cgrp_ros cgrp_fusion.launch.py visible:=/camera/color/image_raw thermal:=/thermal/image_raw
    ros2 launch cgrp_ros cgrp_fusion.launch.py image_transport:=compressed use_sim_time:=true   # a bag with --clock
    ros2 launch cgrp_ros cgrp_fusion.launch.py calibration_file:=$HOME/rig.yaml   # from cgrp calibrate
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("cgrp_ros"), "config", "cgrp_fusion.yaml")
    arguments = [
        DeclareLaunchArgument("visible", default_value="visible/image",
                              description="visible image topic (the base topic with image_transport compressed)"),
        DeclareLaunchArgument("thermal", default_value="thermal/image",
                              description="thermal image topic (the base topic with image_transport compressed)"),
        DeclareLaunchArgument("image_transport", default_value="",
                              description="input transport: raw (sensor_msgs/Image) or compressed (<topic>/compressed); "
                                          "empty: the parameter file's (raw in the shipped one)"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="cgrp_fusion parameter file"),
        DeclareLaunchArgument("calibration_file", default_value="",
                              description="rig.yaml of cgrp calibrate (also where ~/save_calibration writes); "
                                          "empty: the parameter file's"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("autostart", default_value="",
                              description="true: configure and activate at once; false: leave it to a lifecycle "
                                          "manager; empty: the parameter file's (true in the shipped one)"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true: use /clock (bag replay with --clock) instead of the system clock; "
                                          "empty: the parameter file's (false when it has none)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error or fatal"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=fusion_node)])


# Launch arguments that override the parameter file only when given: a default here would always win
# over the file (a later parameters entry does), so `image_transport: compressed` in a user's file would
# be ignored without a word.
FILE_OVERRIDES = ("image_transport", "autostart", "use_sim_time", "calibration_file")


def fusion_node(context):
    """The node, built once the arguments are known: an empty argument leaves the parameter file's value."""
    overrides = {}
    for name in FILE_OVERRIDES:
        value = LaunchConfiguration(name).perform(context)
        if value:
            # a path stays a string; the others as a substitution, which launch_ros types (true -> bool)
            overrides[name] = value if name == "calibration_file" else LaunchConfiguration(name)
    return [Node(
        package="cgrp_ros",
        executable="cgrp_fusion",
        name="cgrp_fusion",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[("visible/image", LaunchConfiguration("visible")),
                    ("thermal/image", LaunchConfiguration("thermal"))],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        output="screen",
        emulate_tty=True,
    )]
