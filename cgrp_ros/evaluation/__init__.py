"""Evaluation (ROS-free): accuracy on data sets (`cgrp eval`; protocol: its methods, columns and per-pair
targets), rig sequences and calibration, speed (`cgrp bench`), `cgrp soak`'s figures, their metrics and
reports."""
