"""Training of the three networks (ROS-free): the stages of `cgrp train` and their losses."""
