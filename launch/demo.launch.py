"""The demo with launch: cgrp_player on the bundled sample (thermal misaligned) + cgrp_fusion, optionally rviz2.

    ros2 launch cgrp_ros demo.launch.py deform:=severe rviz:=true
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("cgrp_ros")
    arguments = [
        DeclareLaunchArgument("deform", default_value="moderate", description="misalignment preset: none, mild, moderate, severe, peer"),
        DeclareLaunchArgument("rate", default_value="4.0", description="pairs per second"),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2 with config/cgrp.rviz"),
        DeclareLaunchArgument("log_level", default_value="info", description="cgrp_fusion's log level: debug, info, warn, error"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate cgrp_fusion at once; false: leave it to a lifecycle manager"),
    ]
    player = Node(
        package="cgrp_ros",
        executable="cgrp_player",
        name="cgrp_player",
        # rate:=4 would reach the node as an integer, which its double parameter refuses
        parameters=[{"deform": LaunchConfiguration("deform"),
                     "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
                     "stamp_offset": 0.01, "jitter": 0.005, "seed": 0, "reliable": True}],
        output="screen",
    )
    fusion = Node(
        package="cgrp_ros",
        executable="cgrp_fusion",
        name="cgrp_fusion",
        # sample images are ~0.5 MB: reliable inputs so shared-memory transport delivers them whole; the
        # sample is unrelated pictures, each misaligned its own way, not one rig: every pair registered alone
        # (as `cgrp demo` does; the default self-calibration would stay 'converging')
        parameters=[os.path.join(share, "config", "cgrp_fusion.yaml"),
                    {f"qos_overrides./{stream}/image.subscription.reliability": "reliable"
                     for stream in ("visible", "thermal")},
                    {"autostart": LaunchConfiguration("autostart"), "self_calibrate": False}],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        output="screen",
        emulate_tty=True,
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", os.path.join(share, "config", "cgrp.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription(arguments + [player, fusion, rviz])
