"""Evaluation (ROS-free): accuracy on data sets (`cgrp eval`), rig sequences and calibration, speed
(`cgrp bench`), their metrics and reports."""
