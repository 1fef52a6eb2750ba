"""cgrp_fusion's worker when inference itself fails (issue 5): the node runs in this process (real rclpy,
real worker thread, every pair registered alone: self_calibrate false); the Pipeline its stream runs is
replaced by a wrapper that raises once, the way a
CUDA out-of-memory or a backend bug would. The pair is logged and counted, the next one is fused.
A second wrapper sets the registration confidence: low confidence is a diagnostics WARN, never an ERROR."""
import contextlib
import dataclasses
import re
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from cgrp_ros.ros.fusion_node import FusionNode  # noqa: E402
from cgrp_ros.ros.image_conversions import numpy_to_image  # noqa: E402
from ros_helpers import RELIABLE, documented_diagnostic_keys, make_images  # noqa: E402


class FailsOnce:
    """The real pipeline, except that the first call raises."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("simulated: CUDA out of memory")
        return self.pipeline(*args, **kwargs)

    def __getattr__(self, name):  # description, config, backend ... of the real one
        return getattr(self.pipeline, name)


@contextlib.contextmanager
def in_process_node(*overrides):
    """(node, fused messages received, spin_until, executor): an activated cgrp_fusion (64x96, fused output
    only) and a reliable listener on one executor in this process; spin_until(predicate, timeout,
    what) spins both until predicate() holds. Everything is torn down afterwards."""
    rclpy.init()
    node = FusionNode(parameter_overrides=[Parameter("working_size", value=[64, 96]),
                                           Parameter("outputs", value=["fused"]),
                                           Parameter("self_calibrate", value=False), *overrides])
    assert node.autostart() is None  # configure + activate, as main() does
    listener = rclpy.create_node("worker_listener")
    fused = []
    listener.create_subscription(Image, "cgrp_fusion/fused", fused.append, RELIABLE)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(listener)

    def spin_until(predicate, timeout, what):
        end = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            executor.spin_once(timeout_sec=0.02)

    try:
        yield node, fused, spin_until, executor
    finally:
        node.stop()
        executor.shutdown()
        node.destroy_node()
        listener.destroy_node()
        rclpy.try_shutdown()


def test_an_exception_inside_inference_is_logged_counted_and_the_next_pair_fused(capfd):
    with in_process_node() as (node, fused, spin_until, executor):
        node.stream.pipeline = FailsOnce(node.pipeline)
        visible, thermal = make_images()
        spin_until(lambda: node.publishers_["fused"].get_subscription_count() > 0, 10.0, "the subscription")
        for second in (1, 2):  # two pairs handed to the worker the way the synchronizer does
            header = Header(stamp=rclpy.time.Time(seconds=second).to_msg())
            node.slot.put((numpy_to_image(visible, "bgr8", Image, header), numpy_to_image(thermal, "mono16", Image, header)))
            spin_until(lambda: node.stream.pipeline.calls == second and node.slot.received == second, 30.0, f"pair {second}")
        spin_until(lambda: len(fused) == 1, 30.0, "the second pair's output")
        assert fused[0].header.stamp.sec == 2
        assert node.stats.inference_errors == 1 and node.stats.published == 1
        assert node._worker.is_alive()
        executor.spin_once(timeout_sec=0.1)
        err = capfd.readouterr().err
        assert "inference failed for the pair at 1.000: RuntimeError: simulated: CUDA out of memory" in err, err


def test_a_fault_outside_inference_does_not_end_the_worker(capfd):
    """A bug on the per-pair path before inference (a wrong keyword in a log call did it once) ended the
    worker thread: the node stayed up and never published again."""
    with in_process_node() as (node, fused, spin_until, executor):
        plan, calls = node.camera_infos.plan, []

        def fails_once(*args):
            calls.append(1)
            if len(calls) == 1:
                raise TypeError("simulated: a bug")
            return plan(*args)
        node.camera_infos.plan = fails_once
        visible, thermal = make_images()
        spin_until(lambda: node.publishers_["fused"].get_subscription_count() > 0, 10.0, "the subscription")
        for second in (1, 2):
            header = Header(stamp=rclpy.time.Time(seconds=second).to_msg())
            node.slot.put((numpy_to_image(visible, "bgr8", Image, header), numpy_to_image(thermal, "mono16", Image, header)))
            spin_until(lambda: len(calls) == second, 30.0, f"pair {second}")
        spin_until(lambda: len(fused) == 1, 30.0, "the second pair's output")
        assert fused[0].header.stamp.sec == 2 and node._worker.is_alive()
        assert node.stats.inference_errors == 1
        executor.spin_once(timeout_sec=0.1)
        err = capfd.readouterr().err
        assert "a pair failed, the node goes on: TypeError: simulated: a bug (" in err, err


def test_a_fault_while_taking_a_new_pipeline_does_not_end_the_worker(capfd):
    """The swap between pairs (builder.take, the stream's use of the new Pipeline) runs in the worker too."""
    with in_process_node() as (node, fused, spin_until, executor):
        take, calls = node.builder.take, []

        def fails_once(pipeline):
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("simulated: a bug in the swap")
            return take(pipeline)
        node.builder.take = fails_once
        spin_until(lambda: len(calls) >= 2, 10.0, "the worker's next round")
        visible, thermal = make_images()
        spin_until(lambda: node.publishers_["fused"].get_subscription_count() > 0, 10.0, "the subscription")
        header = Header(stamp=rclpy.time.Time(seconds=1).to_msg())
        node.slot.put((numpy_to_image(visible, "bgr8", Image, header), numpy_to_image(thermal, "mono16", Image, header)))
        spin_until(lambda: len(fused) == 1, 30.0, "the pair's output")
        assert node._worker.is_alive() and node.stats.inference_errors == 1
        executor.spin_once(timeout_sec=0.1)
        err = capfd.readouterr().err
        assert "a pair failed, the node goes on: ValueError: simulated: a bug in the swap (" in err, err


def test_a_compressed_image_that_fails_to_decode_once_paired_is_a_bad_message(capfd):
    """Compressed inputs are decoded once paired (their headers checked on arrival): a payload
    whose body is corrupt is counted and logged as a bad message of its camera, /diagnostics says that no
    pair is fused (the stream is not silent), and the next good pair is fused."""
    import cv2
    from diagnostic_msgs.msg import DiagnosticStatus
    from sensor_msgs.msg import CompressedImage

    from cgrp_ros.ros.compressed import PendingDecode
    from cgrp_ros.ros.sync import THERMAL, VISIBLE

    with in_process_node(Parameter("stream_timeout", value=0.5)) as (node, fused, spin_until, executor):
        visible, thermal = make_images()
        spin_until(lambda: node.publishers_["fused"].get_subscription_count() > 0, 10.0, "the subscription")
        payload = bytearray(cv2.imencode(".png", visible)[1].tobytes())
        payload[60:] = bytes(len(payload) - 60)  # a sound header, a body zlib refuses

        def arrive(tenth, data):  # as the subscriptions hand the two images over
            header = Header(stamp=rclpy.time.Time(nanoseconds=tenth * 100_000_000).to_msg())
            node._on_image(VISIBLE, CompressedImage(header=header, format="bgr8; png compressed bgr8", data=data))
            queue = node.sync._policy.queues[VISIBLE] if node.sync.implementation == "builtin" else {}
            for queued in queue.values():  # the pairing queue holds the payload, not its pixels
                assert isinstance(queued, PendingDecode) and queued._decoded is None
            node._on_image(THERMAL, numpy_to_image(thermal, "mono16", Image, header))
        for tenth in range(1, 8):  # 0.7 s of corrupt visible images: past stream_timeout, not silent
            arrive(tenth, bytes(payload))
            time.sleep(0.1)
        spin_until(lambda: node.stats.bad_messages >= 3, 10.0, "the corrupt images counted")
        level, why = node.diagnose()
        assert level == DiagnosticStatus.ERROR and "skipping visible image: cannot decode" in why, why
        arrive(20, cv2.imencode(".png", visible)[1].tobytes())
        spin_until(lambda: len(fused) == 1, 30.0, "the good pair's output")
        assert fused[0].header.stamp.sec == 2 and node.stats.inference_errors == 0 and node._worker.is_alive()
        executor.spin_once(timeout_sec=0.1)
        err = capfd.readouterr().err
        assert "skipping visible image: cannot decode the png payload" in err, err


def test_a_calibration_file_for_other_cameras_than_the_streams_is_refused_when_set(tmp_path):
    """The set was accepted and every pair then refused (an audit); once a pair came, the node knows the
    cameras' sizes and says why at once. A file of the same view at another resolution is accepted."""
    import numpy as np

    from cgrp_ros.core.calibrate import Calibration, save_calibration

    with in_process_node() as (node, fused, spin_until, executor):
        visible, thermal = make_images()  # 120x160 both
        spin_until(lambda: node.publishers_["fused"].get_subscription_count() > 0, 10.0, "the subscription")
        header = Header(stamp=rclpy.time.Time(seconds=1).to_msg())
        node.slot.put((numpy_to_image(visible, "bgr8", Image, header), numpy_to_image(thermal, "mono16", Image, header)))
        spin_until(lambda: len(fused) == 1, 30.0, "the pair's output")
        save_calibration(Calibration(np.eye(3), (100, 100), (100, 100), pairs_used=5), tmp_path / "square.yaml")
        save_calibration(Calibration(np.diag([2.0, 2.0, 1.0]), (240, 320), (120, 160), pairs_used=5),
                         tmp_path / "binned.yaml")
        refused = node.set_parameters([Parameter("calibration_file", value=str(tmp_path / "square.yaml"))])[0]
        assert not refused.successful and "a different aspect ratio" in refused.reason, refused.reason
        assert "the last pair received is 160x120 and 160x120" in refused.reason, refused.reason
        assert node.set_parameters([Parameter("calibration_file", value=str(tmp_path / "binned.yaml"))])[0].successful


@pytest.mark.parametrize("self_calibrate", [True, False], ids=["self-calibrating", "per-frame"])
def test_image_sizes_that_change_from_pair_to_pair_are_a_diagnostics_warning(capfd, self_calibrate):
    """A visible topic alternating 320x240 and 160x120 (a driver and a resizing republisher on one topic)
    made every pair a registration from scratch while /diagnostics said OK (an audit: 94 registrations for
    95 pairs). In per-frame mode every pair registers anyway (the demo's sample pairs each have their own
    size): no warning there."""
    from diagnostic_msgs.msg import DiagnosticStatus

    with in_process_node(Parameter("self_calibrate", value=self_calibrate)) as (node, fused, spin_until, executor):
        sizes = [make_images(120, 160), make_images(60, 80)]
        spin_until(lambda: node.publishers_["fused"].get_subscription_count() > 0, 10.0, "the subscription")
        for second in range(1, 7):
            visible, thermal = sizes[second % 2]
            header = Header(stamp=rclpy.time.Time(seconds=second).to_msg())
            node.slot.put((numpy_to_image(visible, "bgr8", Image, header), numpy_to_image(thermal, "mono16", Image, header)))
            spin_until(lambda: len(fused) == second, 30.0, f"pair {second}'s output")
        level, message = node.diagnose()
        executor.spin_once(timeout_sec=0.1)
        err = capfd.readouterr().err
        if not self_calibrate:
            assert not message.startswith("the pairs' image sizes") and "switching modes" not in err, (message, err)
            return
        assert level == DiagnosticStatus.WARN and message.startswith("the pairs' image sizes changed 5 times in 10 s")
        assert "two publishers of one topic, or a camera switching modes?" in err, err


def test_a_second_publisher_with_other_stamps_on_one_topic_is_named_as_such():
    """Images stamped 0 on the visible topic between a live camera's: every one restarted the pairing and
    /diagnostics blamed 'different clocks', its stamp offset taken against the intruder's (an audit)."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from cgrp_ros.ros.sync import THERMAL, VISIBLE

    with in_process_node() as (node, *_):
        visible, thermal = make_images()
        for second in range(1, 6):
            live = Header(stamp=rclpy.time.Time(seconds=1000 + second).to_msg())
            node._on_image(VISIBLE, numpy_to_image(visible, "bgr8", Image, live))
            node._on_image(VISIBLE, numpy_to_image(visible, "bgr8", Image, Header()))  # the other publisher
            node._on_image(THERMAL, numpy_to_image(thermal, "mono16", Image, live))
        level, message = node.diagnose()
        assert level == DiagnosticStatus.WARN, message
        assert message.startswith("/visible/image: stamps went back in time 5 times in 10 s") and "two publishers" in message


def test_a_second_node_of_the_same_name_is_a_diagnostics_warning():
    """Launched twice: both fused every pair and published on one topic, and their /diagnostics statuses
    could not be told apart (an audit)."""
    from diagnostic_msgs.msg import DiagnosticStatus

    with in_process_node() as (node, _, spin_until, executor):
        assert node.namesakes() == 0
        twin = rclpy.create_node("cgrp_fusion")
        try:
            spin_until(lambda: node.namesakes() == 1, 10.0, "the twin discovered")
            level, message = node.diagnose()
            assert level == DiagnosticStatus.WARN and message.startswith("1 other node(s) named /cgrp_fusion"), message
        finally:
            twin.destroy_node()


def test_after_deactivate_and_activate_diagnostics_no_longer_report_the_last_pairs_undistortion():
    from rclpy.lifecycle import TransitionCallbackReturn

    from cgrp_ros.ros.fusion_node import NO_PAIR_YET

    with in_process_node(Parameter("use_camera_info", value=True)) as (node, *_):
        node.camera_info_state = "undistorting (visible plumb_bob, thermal plumb_bob)"  # as a pair sets it
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.diagnostic_values()["camera_info"] == NO_PAIR_YET  # (no camera_info is subscribed)
        node.camera_info_state = "undistorting (visible plumb_bob, thermal plumb_bob)"
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.diagnostic_values()["camera_info"] == NO_PAIR_YET


class Confidence:
    """The real pipeline, with the registration confidence / fallback of each call taken from a list."""

    def __init__(self, pipeline, outcomes):
        self.pipeline, self.outcomes, self.calls = pipeline, list(outcomes), 0

    def __call__(self, *args, **kwargs):
        confidence, fallback = self.outcomes[self.calls]
        self.calls += 1
        return dataclasses.replace(self.pipeline(*args, **kwargs), registration_confidence=confidence,
                                   registration_fallback=fallback)

    def __getattr__(self, name):
        return getattr(self.pipeline, name)


def test_low_registration_confidence_is_a_diagnostics_warning_and_fallbacks_are_counted(capfd):
    from diagnostic_msgs.msg import DiagnosticStatus

    with in_process_node(Parameter("stream_timeout", value=3600.0)) as (node, fused, spin_until, executor):
        threshold = node.pipeline.confidence_threshold
        node.stream.pipeline = Confidence(node.pipeline, [(0.02, True), (min(1.0, threshold + 0.1), False)])
        values = node.diagnostic_values()
        assert (values["registration confidence"], values["registration fallback"], values["fallback pairs"]) == \
            ("n/a", "n/a", "0")
        assert set(values) <= documented_diagnostic_keys(), set(values) - documented_diagnostic_keys()  # docs/ros.md
        assert node.diagnose()[0] == DiagnosticStatus.OK
        visible, thermal = make_images()
        spin_until(lambda: node.publishers_["fused"].get_subscription_count() > 0, 10.0, "the subscription")

        start = node.get_clock().now().nanoseconds // 10**9  # stamps on the node's clock: a latency, not an epoch

        def fuse(second):
            header = Header(stamp=rclpy.time.Time(seconds=start + second).to_msg())
            node.slot.put((numpy_to_image(visible, "bgr8", Image, header),
                           numpy_to_image(thermal, "mono16", Image, header)))
            spin_until(lambda: len(fused) == second, 30.0, f"pair {second}")

        fuse(1)  # too little evidence: fused with the prior, a warning
        level, message = node.diagnose()
        assert level == DiagnosticStatus.WARN and "low registration confidence 0.020" in message, message
        values = node.diagnostic_values()
        assert (values["registration confidence"], values["registration fallback"], values["fallback pairs"]) == \
            ("0.020", "true", "1")
        fuse(2)  # confident again: OK, the counter keeps the history
        assert node.diagnose() == (DiagnosticStatus.OK, "fusing")
        values = node.diagnostic_values()
        assert (values["registration fallback"], values["fallback pairs"]) == ("false", "1")
        executor.spin_once(timeout_sec=0.1)
        assert f"pair at {start + 1}.000: low registration confidence 0.020" in capfd.readouterr().err


def test_pairs_that_all_fail_and_stamps_on_another_clock_are_said_in_diagnostics():
    """/diagnostics names the cause when nothing is published although pairs arrive, and says when the
    stamps count from another epoch (its latency would be meaningless): not 'OK fusing'."""
    from diagnostic_msgs.msg import DiagnosticStatus

    with in_process_node(Parameter("stream_timeout", value=0.3)) as (node, fused, spin_until, executor):
        node.stream.pipeline = AlwaysFails(node.pipeline)
        visible, thermal = make_images()
        spin_until(lambda: node.publishers_["fused"].get_subscription_count() > 0, 10.0, "the subscription")
        now = node.get_clock().now().nanoseconds

        def put(offset_ns):
            header = Header(stamp=rclpy.time.Time(nanoseconds=now + offset_ns).to_msg())
            node.slot.put((numpy_to_image(visible, "bgr8", Image, header), numpy_to_image(thermal, "mono16", Image, header)))

        for i in range(3):  # pairs synchronized but every one failing inside inference
            put(i)
            spin_until(lambda: node.stats.inference_errors == i + 1, 30.0, f"failure {i + 1}")
        time.sleep(0.35)  # longer than stream_timeout since the activation, the last output
        node.stats.last_message = [time.monotonic()] * 2  # the streams and the synchronizer are fine
        node.stats.last_pair = time.monotonic()
        level, message = node.diagnose()
        assert level == DiagnosticStatus.ERROR and "no pair fused for" in message, message
        assert "inference failed: RuntimeError: simulated: every call fails" in message
        node.stream.pipeline = node.pipeline
        put(-1_700_000 * 10**9)  # stamped 1.7e6 s before the node's clock, e.g. time since boot
        spin_until(lambda: len(fused) == 1, 30.0, "the pair stamped on another clock")
        node.stats.last_message = [time.monotonic()] * 2
        node.stats.last_pair = time.monotonic()
        level, message = node.diagnose()
        # (-1700001 s and more where the pair took seconds to arrive on a loaded machine)
        assert level == DiagnosticStatus.WARN and re.search(r"input stamps are -17000\d\d s from this node's clock",
                                                            message), \
            message
        assert node.diagnostic_values()["latency p50 ms"] == "n/a"
        # ... but the pair counts in the frame rate (it read 0 fps while fusing such stamps)
        assert node.diagnostic_values()["fps (10 s)"] == "0.10"
        # a registration problem is not hidden behind the clock (a replayed recording's stamps hid a
        # self-calibration that never settled): it comes first, the clock after it
        node.stats.last_confidence, node.stats.last_fallback = 0.02, True
        level, message = node.diagnose()
        assert message.startswith("last pair: low registration confidence 0.020") and "; input stamps are" in message


class AlwaysFails(FailsOnce):
    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise RuntimeError("simulated: every call fails")


def test_a_self_calibration_that_cannot_settle_says_why_and_is_not_saved(tmp_path):
    """Most registrations fall back and the few others keep the identity (cameras whose fields of view
    differ too much for registration from scratch): /diagnostics warns and names cgrp calibrate, and
    ~/save_calibration refuses to write the unsettled estimate."""
    import numpy as np
    from diagnostic_msgs.msg import DiagnosticStatus
    from std_srvs.srv import Trigger

    from cgrp_ros.core.pipeline import Registration

    with in_process_node(Parameter("stream_timeout", value=3600.0), Parameter("self_calibrate", value=True),
                         Parameter("calibration_file", value=str(tmp_path / "rig.yaml"))) as (node, *_):
        identity = np.zeros((48, 64, 2), np.float32)
        for i in range(30):
            node.stream.rig.update(Registration(identity, 0.12 if i % 10 == 9 else 0.05, i % 10 != 9))
        level, message = node.diagnose()
        assert level == DiagnosticStatus.WARN and "only 1 of the last 10 registrations usable" in message, message
        assert "cgrp calibrate" in message
        response = node._save_calibration(Trigger.Request(), Trigger.Response())
        assert not response.success and "converging" in response.message, response.message
        assert not (tmp_path / "rig.yaml").exists()


def test_stamps_that_never_meet_with_large_best_effort_images_hint_at_lost_messages():
    """Large images on best-effort inputs are mostly lost over shared memory: the pairs that would meet go
    missing, and /diagnostics says so beside the stamp offset, not only 'raise slop'."""
    from diagnostic_msgs.msg import DiagnosticStatus

    with in_process_node(Parameter("stream_timeout", value=0.3)) as (node, *_):
        now = time.monotonic()
        node.stats.last_message = [now + 60.0] * 2  # both streams arriving
        node.stats.last_pair = now - 1.0
        node.stats.largest_message = [2_764_800, 655_360]  # a 1280x720 bgr8 image beside a 640x512 mono16
        level, message = node.diagnose()
        assert level == DiagnosticStatus.WARN and "no synchronized pair" in message, message
        assert "2.8 MB on best-effort inputs are often lost" in message and "reliability: reliable" in message
        node.stats.largest_message = [76_800, 38_400]  # small images: no such hint
        assert "lost" not in node.diagnose()[1]


def test_deactivate_keeps_the_rig_estimate_and_cleanup_resets_it():
    """A paused node resumes with its converged rig estimate; cleanup (a lifecycle manager's reset, e.g.
    after a camera was re-mounted) starts it again. Cleanup kept it before."""
    import numpy as np
    from rclpy.lifecycle import TransitionCallbackReturn

    from cgrp_ros.core.pipeline import Registration
    from cgrp_ros.ros.diagnostics import diagnostic_array

    with in_process_node(Parameter("self_calibrate", value=True)) as (node, *_):
        identity = np.zeros((48, 64, 2), np.float32)
        for _ in range(10):
            node.stream.rig.update(Registration(identity, 0.5, False))
        assert node.stream.rig.state == "converged"
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS and node.stream.rig.state == "converged"
        # /diagnostics' hardware_id names the node in every state (it was the backend: "not loaded" when inactive)
        status = diagnostic_array(node, node.get_clock().now().to_msg()).status[0]
        assert status.hardware_id == "/cgrp_fusion" and status.name == "cgrp_fusion: fusion"
        assert node.stream.pipeline is None  # the models are let go (the stream held them: "pipeline released")
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS and node.stream.rig.state == "waiting"


def test_a_pair_still_in_inference_when_the_publishers_go_is_dropped_without_an_error():
    """A deactivation waits 1.5 s for the worker; a slower pair (a CPU at a large working size) finishes
    after cleanup or shutdown removed the publishers: it is dropped, where the worker thread died with a
    KeyError on the removed publisher."""
    import threading

    from rclpy.lifecycle import TransitionCallbackReturn

    class Slow:  # the real pipeline, 2.5 s per pair
        def __init__(self, pipeline):
            self.pipeline, self.inside = pipeline, threading.Event()

        def __call__(self, *args, **kwargs):
            self.inside.set()
            time.sleep(2.5)
            return self.pipeline(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.pipeline, name)

    errors, hook = [], threading.excepthook
    threading.excepthook = lambda args: errors.append(f"{args.thread.name}: {args.exc_type.__name__}")
    try:
        with in_process_node() as (node, fused, spin_until, executor):
            node.stream.pipeline = slow = Slow(node.pipeline)
            visible, thermal = make_images()
            spin_until(lambda: node.publishers_["fused"].get_subscription_count() > 0, 10.0, "the subscription")
            header = Header(stamp=rclpy.time.Time(seconds=1).to_msg())
            node.slot.put((numpy_to_image(visible, "bgr8", Image, header), numpy_to_image(thermal, "mono16", Image, header)))
            assert slow.inside.wait(30.0)
            worker = node._worker
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS and worker.is_alive()
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            worker.join(10.0)
            assert not worker.is_alive() and node.stats.published == 0
    finally:
        threading.excepthook = hook
    assert errors == []


def test_the_first_large_image_on_a_best_effort_input_is_a_warning_with_the_override(capfd):
    """Best effort over shared memory loses most images above 0.5 MB, and /diagnostics said so only once
    no pair formed at all: a node that formed half of its pairs said nothing. Now the first such image
    on a best-effort input is a log warning naming the override; once per stream."""
    import numpy as np

    with in_process_node() as (node, *_):
        large = numpy_to_image(np.zeros((480, 640, 3), np.uint8), "bgr8", Image, Header(frame_id="camera"))
        for _ in range(3):
            node._on_image(0, large)
        node._on_image(1, numpy_to_image(np.zeros((120, 160), np.uint8), "mono8", Image, Header()))
        log = capfd.readouterr().err
        assert log.count("visible images of 0.9 MB on a best-effort subscription") == 1, log
        assert "qos_overrides./visible/image.subscription.reliability: reliable" in log
        assert "thermal images of" not in log  # a small image: nothing to say


def test_without_a_subscriber_the_node_says_it_computes_nothing(tmp_path):
    """Pairs arrive, no enabled output is subscribed (here: only pseudo_thermal, which nobody listens to): nothing
    is computed, so the self-calibration never starts. /diagnostics, the stats line and ~/save_calibration's
    refusal say so; they read 'fusing', published 0 and 'waiting (0 of the last 0)' (user audit)."""
    from std_srvs.srv import Trigger

    from cgrp_ros.ros import diagnostics
    from cgrp_ros.ros.diagnostics import DiagnosticStatus

    overrides = (Parameter("outputs", value=["pseudo_thermal"]), Parameter("self_calibrate", value=True),
                 Parameter("calibration_file", value=str(tmp_path / "rig.yaml")),
                 Parameter("stream_timeout", value=3600.0))
    with in_process_node(*overrides) as (node, fused, spin_until, executor):
        visible, thermal = make_images()
        header = Header(stamp=node.get_clock().now().to_msg())
        node.slot.put((numpy_to_image(visible, "bgr8", Image, header), numpy_to_image(thermal, "mono16", Image, header)))
        spin_until(lambda: node.slot.received >= 1, 10.0, "the pair to reach the worker")
        assert node.diagnose() == (DiagnosticStatus.OK, f"idle: {diagnostics.UNSUBSCRIBED}")
        assert diagnostics.stats_line(node, 1.0, 0.0).endswith(f"({diagnostics.UNSUBSCRIBED})")
        response = node._save_calibration(Trigger.Request(), Trigger.Response())
        assert not response.success and response.message.endswith(diagnostics.UNSUBSCRIBED), response.message
        assert node.stats.published == 0 and not (tmp_path / "rig.yaml").exists()


def test_a_thread_a_deactivation_left_inside_inference_is_waited_for_at_exit_or_reported():
    """A deactivation (lifecycle shutdown) whose worker is still inside inference returns without it; the
    exit then waits for it within stop()'s time, and says so when it did not end (main then leaves with
    os._exit: a thread inside torch at interpreter exit aborted the process)."""
    import threading

    with in_process_node() as (node, fused, spin_until, executor):
        assert node._stop_worker()  # the real worker ends with its slot; a stand-in held inside "inference"
        release = threading.Event()
        node._worker = threading.Thread(target=release.wait, daemon=True)
        node._worker.start()
        assert node._deactivate() is False
        release.set()
        assert node.stop() is True  # it ended meanwhile: a normal exit
        held = threading.Event()
        node._worker = threading.Thread(target=held.wait, daemon=True)
        node._worker.start()
        assert node._deactivate() is False
        assert node.stop(timeout=0.2) is False  # still inside: the process must not wait for it
        held.set()


def test_diagnostics_name_the_input_topics_as_the_node_subscribes_them():
    """`no input on visible/image ...` sent a user with remapped topics looking for the wrong ones."""
    from cgrp_ros.ros.diagnostics import diagnose

    rclpy.init()
    node = FusionNode(cli_args=["--ros-args", "-r", "visible/image:=/cam/rgb", "-r", "__ns:=/robot1"],
                      parameter_overrides=[Parameter("working_size", value=[64, 96]),
                                           Parameter("self_calibrate", value=False),
                                           Parameter("stream_timeout", value=0.1)])
    try:
        assert node.autostart() is None
        time.sleep(0.3)
        assert diagnose(node)[1] == "no input on /cam/rgb or /robot1/thermal/image for more than 0.1 s"
    finally:
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown()
