"""The nodes' console-script entry points, kept light so that SIGINT and SIGTERM stop a node cleanly from
its first instant: importing a node's module takes seconds (torch, OpenCV, rclpy) and building its
Pipeline more, and a Ctrl-C then ended in a KeyboardInterrupt traceback, a SIGTERM in death by signal.
Standard library only."""
from __future__ import annotations

import signal
import sys


class Interrupted(BaseException):
    """SIGINT or SIGTERM while a node starts up. A BaseException, as KeyboardInterrupt: the start-up's
    `except Exception` (a model that cannot load) must not turn it into an error."""


def interrupt_start_on_signals() -> None:
    """Until process.spin_until_signal installs its handlers, SIGINT and SIGTERM raise Interrupted in the
    main thread: the node's main ends cleanly (one line, exit 0)."""
    def interrupted(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupted)


def fusion_main(args=None) -> int:
    """`cgrp_fusion`: fusion_node.main, with the signals handled during its imports too."""
    interrupt_start_on_signals()
    try:
        from .fusion_node import main
    except Interrupted as exc:
        print(f"cgrp_fusion: {exc} during start-up: stopped", file=sys.stderr)
        return 0
    return main(args)
