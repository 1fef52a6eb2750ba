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
        DeclareLaunchArgument("image_transport", default_value="raw",
                              description="input transport: raw (sensor_msgs/Image) or compressed (<topic>/compressed)"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="cgrp_fusion parameter file"),
        DeclareLaunchArgument("calibration_file", default_value="",
                              description="rig.yaml of cgrp calibrate (also where ~/save_calibration writes); "
                                          "empty: the parameter file's"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate at once; false: leave it to a lifecycle manager"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay with --clock) instead of the system clock"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error or fatal"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=fusion_node)])


def fusion_node(context):
    """The node, built once the arguments are known: an empty calibration_file must not override the
    parameter file's (a dict entry always would)."""
    overrides = {"autostart": LaunchConfiguration("autostart"),
                 "use_sim_time": LaunchConfiguration("use_sim_time"),
                 "image_transport": LaunchConfiguration("image_transport")}
    calibration = LaunchConfiguration("calibration_file").perform(context)
    if calibration:
        overrides["calibration_file"] = calibration
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
