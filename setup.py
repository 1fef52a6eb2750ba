from glob import glob

from setuptools import find_namespace_packages, setup

package_name = "cgrp_ros"

setup(
    name=package_name,
    version="0.1.0",
    # every subpackage, also one without an __init__.py (cgrp_ros/core had none, and colcon left it out)
    packages=find_namespace_packages(include=["cgrp_ros", "cgrp_ros.*"], exclude=["*.__pycache__"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz")),
        ("share/" + package_name + "/models", glob("models/*.pt") + glob("models/*.md")),
        # one entry per folder: visible and thermal files share names and must not land in one folder
        *[("share/" + package_name + "/" + folder, glob(folder + "/*.*"))
          for folder in ("sample", "sample/visible", "sample/thermal", "sample/m3svd/visible", "sample/m3svd/thermal",
                         "sample/sequence/visible", "sample/sequence/thermal")],
    ],
    # the Python runtime; rclpy and the message packages come from ROS 2 (package.xml) or the ros-* wheels
    # in requirements.txt. onnxruntime is optional (backend onnxruntime): onnxruntime or onnxruntime-gpu.
    install_requires=["setuptools", "numpy>=1.24", "opencv-python-headless>=4.8", "torch>=2.1", "tqdm>=4.60",
                      "rosbags>=0.11", "PyYAML>=5.4"],
    extras_require={"onnx": ["onnx>=1.15", "onnxruntime>=1.17"], "test": ["pytest", "hypothesis"]},
    zip_safe=True,
    maintainer="cgrp_ros maintainers",
    maintainer_email="cgrp-ros@example.com",
    description="Thermal-visible fusion for misaligned cameras (CGRP): generation, registration, fusion.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "cgrp = cgrp_ros.cli:main",
            "cgrp_fusion = cgrp_ros.ros.startup:fusion_main",
            "cgrp_player = cgrp_ros.ros.startup:player_main",
        ],
    },
)
