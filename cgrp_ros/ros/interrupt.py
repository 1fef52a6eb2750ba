"""SIGINT and SIGTERM while a node starts up, before rclpy's handlers stand (see startup.py).
Standard library only: the console-script entry points import it before anything heavy."""
from __future__ import annotations

import signal


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
