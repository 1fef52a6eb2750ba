"""cgrp_ros: thermal-visible fusion for misaligned cameras (CGRP, IJCAI 2022) as a ROS 2 package.

The ROS-free implementation lives in :mod:`cgrp_ros.core`; the nodes in
:mod:`cgrp_ros.ros` (nodes ``cgrp_fusion`` and ``cgrp_player``) are thin ROS 2 adapters over it.
"""

__version__ = "0.1.0"
