"""cgrp_ros: thermal-visible fusion for misaligned cameras (CGRP, IJCAI 2022) as a ROS 2 package.

The ROS-free implementation lives in :mod:`cgrp_ros.core`; the nodes in
:mod:`cgrp_ros.fusion_node` and :mod:`cgrp_ros.player_node` are thin adapters over it.
"""

__version__ = "0.1.0"
