"""QoS of cgrp_fusion (issue 11): the standard qos_overrides.<topic>.subscription.* parameters given at
start-up set the subscriptions' QoS, checked from the publisher side (the graph's endpoint info and
whether a best-effort publisher is matched at all); the deprecated `reliability` alias still sets the
default, and the override wins over it. Outputs stay reliable."""
import signal

import pytest

rclpy = pytest.importorskip("rclpy")
from rcl_interfaces.srv import GetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros_helpers import STARTUP_TIMEOUT, Spinner, start_node, stop_node  # noqa: E402

BEST_EFFORT = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)


def test_qos_overrides_at_startup_set_the_subscription_reliability(tmp_path):
    rclpy.init()
    spinner = Spinner("qos_checker")
    log = tmp_path / "fusion.log"
    # the alias makes both inputs reliable; the standard override turns the thermal back to best effort
    proc = start_node("cgrp_ros.ros.fusion_node", log, "-p", "reliability:=reliable",
                      "-p", "qos_overrides./thermal/image.subscription.reliability:=best_effort",
                      "-p", "working_size:=[64,96]")
    try:
        node = spinner.node
        publishers = {stream: node.create_publisher(Image, f"{stream}/image", BEST_EFFORT)
                      for stream in ("visible", "thermal")}

        def endpoint(topic):
            found = node.get_subscriptions_info_by_topic(topic)
            return found[0] if found else None

        spinner.wait_for(lambda: endpoint("/visible/image") and endpoint("/thermal/image")
                         and node.get_publishers_info_by_topic("/cgrp_fusion/fused"), STARTUP_TIMEOUT,
                         "the node's subscriptions", proc, log)
        assert endpoint("/visible/image").qos_profile.reliability == ReliabilityPolicy.RELIABLE
        assert endpoint("/thermal/image").qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        fused = node.get_publishers_info_by_topic("/cgrp_fusion/fused")[0].qos_profile
        assert fused.reliability == ReliabilityPolicy.RELIABLE

        # a best-effort publisher matches the best-effort subscription, never the reliable one
        spinner.wait_for(lambda: publishers["thermal"].get_subscription_count() == 1, 10.0,
                         "the best-effort thermal publisher to be matched", proc, log)
        spinner.spin(0.5)
        assert publishers["visible"].get_subscription_count() == 0
        assert "inputs visible reliable, thermal best_effort" in log.read_text()

        # the publishers declare their override parameters too (read only, set at start-up)
        client = node.create_client(GetParameters, "cgrp_fusion/get_parameters")
        values = spinner.call(client, GetParameters.Request(names=[
            "qos_overrides./cgrp_fusion/fused.publisher.reliability",
            "qos_overrides./visible/image.subscription.depth",
            "qos_overrides./diagnostics.publisher.depth"]), 10.0, "the parameter values", proc, log).values
        assert [v.string_value or v.integer_value for v in values] == ["reliable", 5, 10]
    finally:
        stop_node(proc, signal.SIGINT, timeout=5.0)
        spinner.node.destroy_node()
        rclpy.try_shutdown()
