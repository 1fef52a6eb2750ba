"""process.LogThrottle: a camera repeating its fault every frame gets one log line per period and kind."""
import pytest

pytest.importorskip("rclpy")


def test_one_line_per_key_and_period(monkeypatch):
    from cgrp_ros.ros import process

    now = [100.0]
    monkeypatch.setattr(process.time, "monotonic", lambda: now[0])
    throttle = process.LogThrottle(5.0)
    assert throttle("visible") and not throttle("visible")   # the first line, then quiet
    assert throttle("thermal")                                 # another kind of problem has its own
    now[0] += 4.9
    assert not throttle("visible")
    now[0] += 0.2
    assert throttle("visible")                                 # 5 s after its last line
    assert throttle("rare", period=30.0)                       # a key with its own period
    now[0] += 10.0
    assert throttle("visible") and not throttle("rare", period=30.0)
