"""cgrp_fusion as a managed node (issue 11), driven through the standard lifecycle services the way a
lifecycle manager (or `ros2 lifecycle set`) does: outputs only while active; deactivate unsubscribes
and releases the Pipeline; activate again builds it again; cleanup removes the publishers; shutdown
ends the process."""
import re
import signal

import pytest

rclpy = pytest.importorskip("rclpy")
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ros_helpers import STARTUP_TIMEOUT, Harness, stop_node  # noqa: E402


@pytest.fixture
def harness(tmp_path):
    rclpy.init()
    h = Harness(tmp_path / "cgrp_fusion.log", "-p", "autostart:=false", outputs=("fused",), wait=False)
    node = h.spinner.node
    h.change_state = node.create_client(ChangeState, "cgrp_fusion/change_state")
    h.get_state = node.create_client(GetState, "cgrp_fusion/get_state")
    # the first answer to a new client can be lost (see Spinner.call): an unknown transition label,
    # which changes nothing, is safe to send until the reply path to this client stands
    assert not h.call(h.change_state, ChangeState.Request(transition=Transition(label="no such transition")),
                      "the lifecycle services", timeout=STARTUP_TIMEOUT).success
    yield h
    if h.proc.poll() is None:
        stop_node(h.proc, signal.SIGINT, timeout=5.0)  # a clean exit leaves no stale endpoints behind
    node.destroy_node()
    rclpy.try_shutdown()


def transition(h, transition_id) -> bool:
    """Sent once (not idempotent); configure and activate may take a while on a busy machine."""
    future = h.change_state.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
    h.wait_for(future.done, STARTUP_TIMEOUT, f"transition {transition_id}")
    return future.result().success


def state(h) -> int:
    return h.call(h.get_state, GetState.Request(), "the state").current_state.id


def diagnostics_say(h, key, value):
    h.wait_for(lambda: h.diagnostic_value(key) == value, 5.0, f"/diagnostics '{key}' = {value!r}")


def nothing_fused(h, seconds=1.5):
    stamp = h.publish_pair()
    h.spinner.spin(seconds)
    return h.outputs_for(stamp) == {}


def test_outputs_only_while_active_and_deactivate_releases_the_pipeline(harness):
    h = harness
    assert state(h) == State.PRIMARY_STATE_UNCONFIGURED
    diagnostics_say(h, "lifecycle state", "unconfigured")
    assert h.diagnostic_value("backend") == "not loaded"
    assert "waiting in state 'unconfigured'" in h.log()

    def fused_publishers():  # endpoint ids: a killed node of an earlier test may linger in the graph a while
        return {bytes(e.endpoint_gid) for e in h.spinner.node.get_publishers_info_by_topic("/cgrp_fusion/fused")}

    before = fused_publishers()
    assert transition(h, Transition.TRANSITION_CONFIGURE) and state(h) == State.PRIMARY_STATE_INACTIVE
    h.wait_for(lambda: len(fused_publishers() - before) == 1, 10.0, "the output publisher")
    ours = fused_publishers() - before
    assert h.visible_pub.get_subscription_count() == 0  # inputs are subscribed on activate only
    assert nothing_fused(h)

    for activation in (1, 2):  # the second activation builds the released Pipeline again
        assert transition(h, Transition.TRANSITION_ACTIVATE) and state(h) == State.PRIMARY_STATE_ACTIVE
        h.wait_for_topics()
        h.wait_outputs(h.publish_pair(), what=f"an output after activation {activation}")
        diagnostics_say(h, "lifecycle state", "active")
        assert h.diagnostic_value("backend").startswith("torch")

        assert transition(h, Transition.TRANSITION_DEACTIVATE) and state(h) == State.PRIMARY_STATE_INACTIVE
        h.wait_for(lambda: len(re.findall("deactivated: pipeline released", h.log())) == activation, 5.0,
                   "the release line")
        diagnostics_say(h, "backend", "not loaded")  # no Pipeline object left: models freed
        h.wait_for(lambda: h.visible_pub.get_subscription_count() == 0, 5.0, "the inputs to be unsubscribed")
        assert nothing_fused(h)

    assert transition(h, Transition.TRANSITION_CLEANUP) and state(h) == State.PRIMARY_STATE_UNCONFIGURED
    h.wait_for(lambda: not ours & fused_publishers(), 10.0, "the output publisher to go")

    assert transition(h, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    h.spinner.wait_for(lambda: h.proc.poll() is not None, 5.0, "the process to end after shutdown")
    assert h.proc.returncode == 0 and "Traceback" not in h.log()


def set_parameter(h, name, value) -> bool:
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return h.call(h.set_parameters, request, f"the answer to setting {name}").results[0].successful


def test_a_failed_activation_is_an_error_in_diagnostics(harness, tmp_path):
    """A lifecycle manager that activates a node whose model cannot load sees the reason in /diagnostics,
    not 'inactive: OK'; a later successful activation clears it. (A file that is no model is refused when
    the parameter is set; this one breaks on disk afterwards, e.g. a copy cut short.)"""
    import shutil

    from cgrp_ros.core.models import default_model_path

    h = harness
    broken = tmp_path / "broken_generator.pt"
    shutil.copy(default_model_path("generator"), broken)
    assert transition(h, Transition.TRANSITION_CONFIGURE)
    assert set_parameter(h, "generator_model", str(broken))
    assert not set_parameter(h, "fusion_model", str(broken))  # a generator's weights: refused, said why
    broken.write_bytes(b"not a model")
    assert not transition(h, Transition.TRANSITION_ACTIVATE) and state(h) == State.PRIMARY_STATE_INACTIVE
    h.wait_for(lambda: (s := h.last_diagnostic()) is not None and s.level == DiagnosticStatus.ERROR, 5.0,
               "an ERROR in /diagnostics")
    message = h.last_diagnostic().message
    assert message.startswith("inactive: the last transition failed: ") and "broken_generator.pt" in message, message
    assert set_parameter(h, "generator_model", "")
    assert transition(h, Transition.TRANSITION_ACTIVATE) and state(h) == State.PRIMARY_STATE_ACTIVE
    diagnostics_say(h, "lifecycle state", "active")
