"""cgrp_fusion's parameter checks (ros.parameters.check_parameter): what `ros2 param set` answers for a
value the node refuses. The node keeps its old value then (test_ros_reconfigure)."""
import pytest

pytest.importorskip("rclpy")
from cgrp_ros.ros.parameters import check_parameter  # noqa: E402


@pytest.mark.parametrize("name, value, reason", [
    ("thermal_percentiles", [50.0, 50.0], "thermal_percentiles: expected [low, high] with low < high"),
    ("thermal_percentiles", [99.0, 1.0], "thermal_percentiles: expected [low, high] with low < high"),
    ("outputs", ["fused", "fused"], "outputs: duplicate names"),
    ("outputs", ["fused", "heatmap"], "outputs: 'heatmap' is not one of"),
    ("working_size", [256, 320, 64], "working_size: expected [height, width]"),
    ("working_size", [16, 320], "working_size: 16 is outside [32, 4096]"),
    ("generator_model", "/nonexistent/generator.pt", "generator_model: no such file '/nonexistent/generator.pt'"),
])
def test_a_refused_value_says_why(name, value, reason):
    assert (check_parameter(name, value) or "").startswith(reason)


@pytest.mark.parametrize("name, value", [
    ("thermal_percentiles", [1.0, 99.0]), ("outputs", ["fused", "deformation"]), ("outputs", []),
    ("working_size", [256, 320]), ("generator_model", ""),
])
def test_a_valid_value_passes(name, value):
    assert check_parameter(name, value) is None


def test_drop_rate_warn_is_the_share_of_dropped_pairs_that_warns():
    """/diagnostics WARNs when inference cannot keep up: more than `drop_rate_warn` of the pairs of the last
    ticks replaced before the worker took them (judged once at least 5 pairs came)."""
    import collections
    from types import SimpleNamespace

    from diagnostic_msgs.msg import DiagnosticStatus

    from cgrp_ros.ros.diagnostics import Stats, diagnose
    from cgrp_ros.ros.sync import LatestPairSlot

    def node(received, dropped, drop_rate_warn=0.5):
        slot = LatestPairSlot()
        slot.received, slot.dropped = received, dropped
        return SimpleNamespace(values={"stream_timeout": 2.0, "drop_rate_warn": drop_rate_warn, "slop": 0.05},
                               stats=Stats(), slot=slot, drop_history=collections.deque([(0, 0)], maxlen=6),
                               state="active", pipeline_error=None, pipeline=None, unsubscribed=False)
    assert diagnose(node(10, 6)) == (DiagnosticStatus.WARN, "high drop rate: 60% of pairs dropped (inference too slow)")
    assert diagnose(node(10, 5)) == (DiagnosticStatus.OK, "fusing")             # not more than half
    assert diagnose(node(10, 6, drop_rate_warn=0.7)) == (DiagnosticStatus.OK, "fusing")
    assert diagnose(node(4, 4)) == (DiagnosticStatus.OK, "fusing")              # too few pairs to judge


def test_a_parameter_change_the_pipeline_refused_is_a_diagnostics_error_while_it_stands():
    import collections
    from types import SimpleNamespace

    from diagnostic_msgs.msg import DiagnosticStatus

    from cgrp_ros.ros.diagnostics import Stats, diagnose
    from cgrp_ros.ros.sync import LatestPairSlot

    node = SimpleNamespace(values={"stream_timeout": 2.0, "drop_rate_warn": 0.5, "slop": 0.05}, stats=Stats(),
                           slot=LatestPairSlot(), drop_history=collections.deque([(0, 0)], maxlen=6),
                           state="active", pipeline_error="working_size too small", pipeline=None, unsubscribed=False)
    assert diagnose(node) == (DiagnosticStatus.ERROR, "parameter change not applied, previous pipeline running: "
                              "working_size too small")


def test_stamps_that_stand_still_are_a_diagnostics_warning():
    import collections
    from types import SimpleNamespace

    from diagnostic_msgs.msg import DiagnosticStatus

    from cgrp_ros.ros.diagnostics import Stats, diagnose
    from cgrp_ros.ros.sync import LatestPairSlot

    def node(repeated):
        return SimpleNamespace(values={"stream_timeout": 2.0, "drop_rate_warn": 0.5, "slop": 0.05}, stats=Stats(),
                               slot=LatestPairSlot(), drop_history=collections.deque([(0, 0)], maxlen=6),
                               state="active", pipeline_error=None, pipeline=None, unsubscribed=False,
                               stream=SimpleNamespace(repeated_stamps=repeated, registration_rate=0.5,
                                                      rig=SimpleNamespace(state="converged")))
    level, message = diagnose(node(5))
    assert level == DiagnosticStatus.WARN and message.startswith("the last 6 pairs carry one and the same stamp")
    assert diagnose(node(4)) == (DiagnosticStatus.OK, "fusing")
    per_frame = node(5)
    per_frame.stream.registration_rate = 0.0  # every pair registered alone: nothing is scheduled by stamps
    assert diagnose(per_frame) == (DiagnosticStatus.OK, "fusing")


def test_new_warnings_do_not_hide_that_no_pair_is_fused():
    """A node launched twice, or stamps that keep jumping back, were WARNs shown before the ERROR 'no pair
    fused for N s' (a review)."""
    import collections
    import time
    from types import SimpleNamespace

    from diagnostic_msgs.msg import DiagnosticStatus

    from cgrp_ros.ros.diagnostics import RecentEvents, Stats, diagnose
    from cgrp_ros.ros.sync import LatestPairSlot

    stats = Stats()
    now = time.monotonic()
    resets = RecentEvents()
    for _ in range(5):
        resets.add(0, now=now - 1.0)
    stats.last_fused, stats.last_failed_pair = now - 30.0, (now - 0.5, "pair rejected: a reason")
    node = SimpleNamespace(values={"stream_timeout": 2.0, "drop_rate_warn": 0.5, "slop": 0.05}, stats=stats,
                           slot=LatestPairSlot(), drop_history=collections.deque([(0, 0)], maxlen=6),
                           state="active", pipeline_error=None, pipeline=None, unsubscribed=False,
                           namesakes=lambda: 1, get_fully_qualified_name=lambda: "/cgrp_fusion",
                           stamp_resets=resets)
    level, message = diagnose(node)
    assert level == DiagnosticStatus.ERROR and message.startswith("no pair fused for 30.0 s: pair rejected"), message
