"""cgrp_fusion with its parameter file; the input topics and the namespace are launch arguments.

    ros2 launch cgrp_ros cgrp_fusion.launch.py visible:=/camera/color/image_raw thermal:=/thermal/image_raw
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("cgrp_ros"), "config", "cgrp_fusion.yaml")
    arguments = [
        DeclareLaunchArgument("visible", default_value="visible/image", description="visible image topic"),
        DeclareLaunchArgument("thermal", default_value="thermal/image", description="thermal image topic"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="cgrp_fusion parameter file"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate at once; false: leave it to a lifecycle manager"),
    ]
    fusion = Node(
        package="cgrp_ros",
        executable="cgrp_fusion",
        name="cgrp_fusion",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {"autostart": LaunchConfiguration("autostart")}],
        remappings=[("visible/image", LaunchConfiguration("visible")),
                    ("thermal/image", LaunchConfiguration("thermal"))],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription(arguments + [fusion])
