"""The nodes' console-script entry points (`cgrp_fusion`, `cgrp_player`), kept light so that SIGINT and
SIGTERM stop a node cleanly from its first instant: importing a node's module takes seconds (torch,
OpenCV, rclpy) and building its Pipeline more, and a Ctrl-C then ended in a KeyboardInterrupt
traceback, a SIGTERM in death by signal. Standard library only."""
from __future__ import annotations

import importlib
import sys

from .interrupt import Interrupted, interrupt_start_on_signals


def _start(name: str, module: str, args) -> int:
    """Import `module` (relative to this package) and run its main(args), SIGINT / SIGTERM until the node
    spins ending it with one line and exit code 0."""
    interrupt_start_on_signals()
    try:
        return importlib.import_module(module, __package__).main(args)
    except Interrupted as exc:
        print(f"{name}: {exc} during start-up: stopped", file=sys.stderr)
        return 0


def fusion_main(args=None) -> int:
    """`cgrp_fusion`: fusion_node.main, with the signals handled during its imports too."""
    return _start("cgrp_fusion", ".fusion_node", args)


def player_main(args=None) -> int:
    """`cgrp_player`: player_node.main, with the signals handled during its imports too."""
    return _start("cgrp_player", ".player_node", args)
