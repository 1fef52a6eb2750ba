"""The ROS 2 adapters over cgrp_ros.core, one module per job.

fusion_node        the cgrp_fusion managed node (lifecycle, inputs, worker, outputs) and its main()
parameters         its parameter table, checks and the PipelineConfig it builds
pipelines          rebuilds beside the running Pipeline, swapped in between two pairs
fusion_outputs     one pair of messages -> the output images (no rclpy: also for a bag reader)
diagnostics        its counters, the /diagnostics status and the stats log line
alignment_check    its no-ground-truth check of the rig estimate against the input, for /diagnostics
image_conversions  sensor_msgs/Image <-> numpy (no cv_bridge)
compressed         sensor_msgs/CompressedImage <-> numpy (JPEG, PNG incl. 16-bit)
sync               approximate-time pairing of the two streams, the latest-pair slot
camera_info        each camera's latest CameraInfo: whether to undistort a pair, the rectified ~/camera_info
player_node        the cgrp_player node
sources            its FolderSource / BagSource: image folders or a bag as two camera streams
bag                rosbag2 without ROS (rosbags): read two topics, fuse them like the node, write MCAP (cgrp fuse --bag)
process            spinning until a signal, the core's log in the ROS log
startup            the console-script entry points, light: SIGINT/SIGTERM handled from the first instant
interrupt          the signal handlers of that first instant (standard library only)
node_processes     the nodes as child processes of a tool (demo, soak, bench): commands, private DDS, stop
bench              `cgrp bench --ros`: player -> node -> subscriber
soak               `cgrp soak`: player -> node for minutes, every output checked, memory watched
demo               `cgrp demo`: player -> node on the bundled sample, frames and a panel saved
"""
