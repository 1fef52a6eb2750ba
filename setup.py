from glob import glob

from setuptools import find_packages, setup

package_name = "cgrp_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz")),
        ("share/" + package_name + "/models", glob("models/*.pt") + glob("models/*.md")),
        ("share/" + package_name + "/sample", glob("sample/*/*", recursive=True)),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="cgrp_ros maintainers",
    maintainer_email="cgrp-ros@example.com",
    description="Thermal-visible fusion for misaligned cameras (CGRP): generation, registration, fusion.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "cgrp = cgrp_ros.cli:main",
            "cgrp_fusion = cgrp_ros.ros.fusion_node:main",
            "cgrp_player = cgrp_ros.ros.player_node:main",
        ],
    },
)
