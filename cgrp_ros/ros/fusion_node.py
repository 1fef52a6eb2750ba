"""cgrp_fusion: the ROS 2 node. Two unaligned camera streams in, pixel-aligned fusion results out.

Subscribes  visible/image, thermal/image                 (sensor_msgs/Image; image_transport: raw)
            visible/image/compressed, thermal/image/compressed  (CompressedImage; image_transport: compressed)
            visible/camera_info, thermal/camera_info     (sensor_msgs/CameraInfo; use_camera_info: true)
Publishes   ~/fused               bgr8 (colour visible) or mono8
            ~/fused/compressed    JPEG of ~/fused (sensor_msgs/CompressedImage)
            ~/registered_thermal  the input thermal's encoding (mono8/8UC1, mono16/16UC1, 32FC1)
            ~/deformation         32FC2, flow in visible px: registered[y, x] = thermal[y + fy, x + fx], the
                                  thermal as mapped onto the visible frame by the prior (resize, calibration)
            ~/deformation_vis     bgr8, the flow colour-coded (hue: direction, saturation: magnitude) for rviz
            ~/alignment_vis       bgr8, both cameras' edges after registration (visible green, thermal magenta,
                                  white where they coincide) for rviz
            ~/pseudo_thermal      mono8
            ~/camera_info         sensor_msgs/CameraInfo of the outputs (the visible camera's: rectified, or as
                                  received while only the visible camera's is known)
            /diagnostics          diagnostic_msgs/DiagnosticArray (self-calibration state and its edge check
                                  included: cgrp_ros.ros.alignment_check)
Services    ~/save_calibration    std_srvs/Trigger: the rig estimate -> calibration_file (a rig.yaml)

Every output carries the visible image's header. The node is a thin adapter: messages are paired
by stamp (cgrp_ros.ros.sync), converted to numpy views (cgrp_ros.ros.image_conversions), undistorted
when both cameras' CameraInfo is known (cgrp_ros.ros.camera_info, cgrp_ros.core.camera) and handed
to one worker thread that runs cgrp_ros.core.pipeline.Pipeline on the newest pair; parameter changes
build a new Pipeline beside the running one (cgrp_ros.ros.pipelines) and swap it in when ready. Parameters:
cgrp_ros.ros.parameters, config/cgrp_fusion.yaml, docs/ros.md; /diagnostics: cgrp_ros.ros.diagnostics.
"""
from __future__ import annotations

import collections
import gc
import logging
import os
import re
import sys
import threading
import time
import traceback

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger

from ..core.errors import CgrpError, InputError
from ..core.pipeline import working_size_problem
from ..core.stream import StreamPipeline
from . import diagnostics
from .alignment_check import AlignmentCheck
from .camera_info import CameraInfos, camera_info_topic, with_header
from .compressed import encode_compressed
from .diagnostics import FLAPPING_CHANGES, FLAPPING_WINDOW_S, LOSSY_MESSAGE_BYTES, RecentEvents, Stats
from .fusion_outputs import as_array, fuse_pair, prepare_input
from .image_conversions import ImageConversionError, numpy_to_image
from .pipelines import LIGHT, PipelineBuilder
from .parameters import (OUTPUTS, PARAMETERS, PARAMETERS_BY_NAME, calibration_prior, check_parameter, describe,
                         pipeline_config, stream_settings, used_value)
from .process import LogThrottle, RosLogHandler, release_free_memory, spin_until_signal
from .interrupt import Interrupted, interrupt_start_on_signals
from .sync import (STAMP_CLOCK_LIMIT_S, STREAM_NAMES, THERMAL, VISIBLE, LatestPairSlot, PairSynchronizer,
                   stamp_seconds)

INPUT_DEPTH = 5    # subscription history: the synchronizer keeps its own queue
# publishers: reliable, keep last 5. A reliable reader that missed a message gets it resent from this history;
# with 2, a Python subscriber of four outputs at 3 Hz lost 3-9 of 40 fused images (5 and 10: none lost)
OUTPUT_DEPTH = 5
NO_PAIR_YET = "no pair fused since activation or since use_camera_info was set"  # before a pair says more


def free_model_caches() -> None:
    """Give freed models back: a garbage collection and, when torch uses CUDA, its cached blocks."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def output_qos() -> QoSProfile:
    """Reliable, keep last OUTPUT_DEPTH: compatible with best-effort and reliable subscribers (qos_overrides.* on top)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=OUTPUT_DEPTH, reliability=ReliabilityPolicy.RELIABLE)


class FusionNode(LifecycleNode):
    """Node `cgrp_fusion`, a managed (lifecycle) node: see the module docstring.

    unconfigured --configure--> inactive (synchronizer, publishers) --activate--> active (Pipeline,
    subscriptions, worker) --deactivate--> inactive (worker stopped, Pipeline and CUDA cache freed)
    --cleanup--> unconfigured; shutdown from any state. `main()` configures and activates at once
    when `autostart` is true (the default), so run alone it behaves like a plain node.
    """

    def __init__(self, **kwargs):
        super().__init__("cgrp_fusion", **kwargs)
        for param in PARAMETERS:
            self.declare_parameter(param.name, param.default, describe(param))
        self.values = {p.name: used_value(p.name, self.get_parameter(p.name).value) for p in PARAMETERS}
        for name, value in self.values.items():
            reason = check_parameter(name, value)
            if reason:
                raise InputError(f"invalid parameter {reason}")
        self._core_log = RosLogHandler(self.get_logger())
        logging.getLogger("cgrp_ros").addHandler(self._core_log)
        logging.getLogger("cgrp_ros").setLevel(logging.INFO)

        self.state = "unconfigured"   # lifecycle state, as the transitions below leave it
        self.finalized = False        # shutdown done: main() ends the process
        self.pipeline = None          # built on activate, released on deactivate
        self.prior = {}               # calibration_file as read at activation or when set (calibration_prior)
        self.stream = None            # StreamPipeline over `pipeline`: the rig estimate (self_calibrate)
        self.alignment_check = AlignmentCheck()  # the estimate against the input, after each registration
        self.activation_error = None  # why the last activation failed (main() prints it at autostart)
        self.builder = None           # PipelineBuilder while active: rebuilds beside the running Pipeline
        self.stats = Stats()
        self._log_throttle = LogThrottle(5.0)
        self.drop_history = collections.deque(maxlen=6)  # (received, dropped) per diagnostics tick
        self.slot = LatestPairSlot()
        self.sync = self._make_synchronizer()
        self.subscriptions_ = []
        self.publishers_ = {}
        self.compressed_pub = None
        self.camera_infos = CameraInfos()   # the latest CameraInfo per camera (use_camera_info)
        self.camera_info_subscriptions = []
        self.camera_info_pub = None
        self._rectifying = False            # the last pair was undistorted (logged when it changes)
        self._left_behind = []              # threads a deactivation left running inside torch (see stop)
        self._publishing = threading.Lock()  # the outputs' publishers: held while publishing and removing them
        self._rectification_changes = RecentEvents()  # undistortion switched on or off (flapping: one warning)
        # for /diagnostics: what the last pair did with camera_info, and why
        self.camera_info_state = NO_PAIR_YET if self.values["use_camera_info"] else "not used"
        self.last_pair_shapes = None  # ((visible H, W), (thermal H, W)) of the last pair the worker took
        self.size_changes = RecentEvents()  # of the pairs' image sizes (/diagnostics: sizes that flap)
        self.stamp_resets = RecentEvents()  # backward stamp jumps, by stream (/diagnostics)
        self._camera_info_rejected = [None, None]  # per camera: why its last CameraInfo was ignored
        self._worker = None

        self.diagnostics_pub = self.create_publisher(  # in every state
            DiagnosticArray, "/diagnostics", 10, qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self.create_service(Trigger, "~/save_calibration", self._save_calibration)
        self.add_on_set_parameters_callback(self._check_new_parameters)
        self.add_post_set_parameters_callback(self._apply_new_parameters)
        self.create_timer(1.0, self._publish_diagnostics)
        self._stats_timer = None
        self._stats_since = time.monotonic()
        self._restart_stats_timer()

    # -- lifecycle -----------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Synchronizer and the output publishers (lifecycle publishers: silent until activated)."""
        self.activation_error = None
        cameras = {self.resolve_topic_name(f"{name}/image") for name in STREAM_NAMES}
        if len(cameras) == 1:  # both remapped onto one camera: every image would be fused with itself
            self.activation_error = (f"visible/image and thermal/image both resolve to {cameras.pop()}: remap each "
                                     "to its own camera")
            if not self._autostarting:  # at autostart main() prints the one error line
                self.get_logger().error(f"configuration failed: {self.activation_error}")
            return TransitionCallbackReturn.FAILURE
        self.sync = self._make_synchronizer()
        options = QoSOverridingOptions.with_default_policies
        self.publishers_ = {name: self.create_lifecycle_publisher(Image, f"~/{name}", output_qos(),
                                                                  qos_overriding_options=options())
                            for name in OUTPUTS}
        # image_transport's naming: the compressed topic is the (remapped) base topic + /compressed
        self.compressed_pub = self.create_lifecycle_publisher(
            CompressedImage, self.resolve_topic_name("~/fused") + "/compressed", output_qos(),
            qos_overriding_options=options())
        self.camera_info_pub = self.create_lifecycle_publisher(CameraInfo, "~/camera_info", output_qos(),
                                                               qos_overriding_options=options())
        self.state = "inactive"
        if not self._autostarting:
            self.get_logger().info("configured")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Build the Pipeline (models loaded here), subscribe to the cameras, start the worker."""
        from ..core.pipeline import Pipeline

        self.activation_error = None
        try:
            # calibration_file is read here and when it is set, not on other changes: a file that
            # ~/save_calibration writes becomes the prior at the next activation, not at a working_size change
            self.prior = calibration_prior(self.values["calibration_file"])
            self.pipeline = Pipeline(pipeline_config(self.values, self.prior))
        except CgrpError as exc:  # missing/corrupt model, no GPU with require_gpu: stay inactive
            self.activation_error = str(exc)
            if not self._autostarting:  # at autostart main() prints the one error line
                self.get_logger().error(f"activation failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        if self.stream is None:  # kept over deactivation: the rig does not change
            # registrations in a thread of their own: no frame waits for one
            self.stream = StreamPipeline(self.pipeline, background=True, **stream_settings(self.values),
                                         on_registration=lambda v, t: self.alignment_check.check(self.stream, v, t))
        self._use_pipeline(self.pipeline)
        self.builder = PipelineBuilder(Pipeline, self.pipeline.config, self._on_built, self._on_build_failed)
        self.slot = LatestPairSlot.following(self.slot)  # a fresh slot for this worker, counters kept
        self.subscriptions_ = [self._create_input(stream) for stream in (VISIBLE, THERMAL)]
        self._update_camera_info_inputs()
        self.stats.reset_times()
        self._worker = threading.Thread(target=self._work, args=(self.slot,), name="cgrp_fusion_worker", daemon=True)
        self._worker.start()
        self.state = "active"
        self._log_startup()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe, stop the worker (it finishes the pair in hand) and free the models."""
        self._deactivate()
        self.get_logger().info("deactivated: pipeline released")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Remove the publishers and forget the rig estimate: deactivate keeps it (the rig does not change
        while the node pauses), cleanup returns the node to its first state, as before a re-mounted camera."""
        self._destroy_publishers()
        if self.stream is not None:
            self.stream.reset()
            self.alignment_check.reset()
        self.state = "unconfigured"
        self.get_logger().info("cleaned up: publishers removed, rig estimate reset")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._destroy_publishers()
        self.state, self.finalized = "finalized", True
        self.get_logger().info("shut down")
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._destroy_publishers()
        self.state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    _autostarting = False

    def autostart(self) -> str | None:
        """configure + activate (the `autostart` parameter); None, or why it failed."""
        self._autostarting = True
        try:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return self.activation_error or "configuration failed"
            if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                return self.activation_error or "activation failed"
            return None
        finally:
            self._autostarting = False

    def _use_pipeline(self, pipeline) -> None:
        """Fuse with `pipeline` from the next pair on; a different prior (calibration) restarts the rig estimate."""
        if self.stream.use(pipeline):
            self.alignment_check.reset()
            self.get_logger().info("calibration changed: the rig estimate starts again")

    def _save_calibration(self, request, response):
        """~/save_calibration (std_srvs/Trigger): the rig estimate -> calibration_file (a rig.yaml)."""
        from ..core.calibrate import save_calibration

        path = self.values["calibration_file"]
        if not path:
            response.success, response.message = False, "parameter calibration_file is empty: set it to a path first"
            return response
        try:
            if self.stream is None:
                raise CgrpError("no rig estimate yet (the node is not active)")
            rig = self.stream.rig
            if rig.state != "converged":  # a file is used for good: only an estimate that has settled
                used, seen = rig.recent_usable()
                idle = f"; {diagnostics.UNSUBSCRIBED}" if self.unsubscribed else ""
                raise CgrpError(f"the rig estimate is {rig.state} ({used} of the last {seen} registration(s) "
                                f"usable): save once /diagnostics says converged{idle}")
            calibration = self.stream.calibration(converged_only=True)  # (checked again with the estimate it maps)
            save_calibration(calibration, path)
        except (CgrpError, OSError) as exc:
            response.success, response.message = False, f"not saved: {exc}"
            return response
        except Exception as exc:  # a path nothing above foresaw: the caller gets the reason, the node goes on
            response.success, response.message = False, f"not saved: {type(exc).__name__}: {exc}"
            return response
        response.success = True
        response.message = (f"saved {path}: rig estimate {self.stream.rig.state}, {calibration.pairs_used} "
                            f"registration(s) used; the homography fits the estimate's flow to "
                            f"{calibration.median_residual_px:.2f} px (median)")
        self.get_logger().info(response.message)
        return response

    def _deactivate(self) -> bool:
        """Back to inactive: no subscriptions, no worker, no Pipeline; False if the worker did not stop."""
        for subscription in self.subscriptions_:
            self.destroy_subscription(subscription)
        self.subscriptions_ = []
        self.last_pair_shapes = None  # (the cameras may change while the node pauses)
        self._update_camera_info_inputs()
        rebuilt = self._close_builder()
        stopped = self._stop_worker() and rebuilt
        self.builder = None
        self.pipeline = None
        if stopped and self.stream is not None:
            self.stream.release()  # the stream (and its rig estimate) stays; its models go
        free_model_caches()
        self.state = "inactive" if self.state == "active" else self.state
        return stopped

    def _stop_worker(self, timeout: float = 1.5) -> bool:
        """Close the slot and join the worker for `timeout` s; False (and the thread kept in _left_behind)
        if it is still inside inference."""
        self.slot.close()
        worker, self._worker = self._worker, None
        if worker is None:
            return True
        worker.join(timeout)
        if worker.is_alive():
            self._left_behind.append(worker)
        return not worker.is_alive()

    def _close_builder(self) -> bool:
        """Stop the builder; False (and its thread kept in _left_behind) if a build is still running."""
        if self.builder is None or self.builder.close():
            return True
        self._left_behind.append(self.builder.thread)
        return False

    def _destroy_publishers(self):
        with self._publishing:  # not while a worker left behind by a deactivation publishes its last pair
            for publisher in [*self.publishers_.values(), self.compressed_pub, self.camera_info_pub]:
                if publisher is not None:
                    self.destroy_lifecycle_publisher(publisher)
            self.publishers_, self.compressed_pub, self.camera_info_pub = {}, None, None

    # -- setup ---------------------------------------------------------------------------------------
    def _create_input(self, stream: int):
        """The subscription of one camera: `<name>/image` (raw) or `<name>/image/compressed`."""
        base, options = f"{STREAM_NAMES[stream]}/image", QoSOverridingOptions.with_default_policies()
        if self.values["image_transport"] == "compressed":
            return self.create_subscription(CompressedImage, self.resolve_topic_name(base) + "/compressed",
                                            lambda m: self._on_image(stream, m), self._input_qos(),
                                            qos_overriding_options=options)
        return self.create_subscription(Image, base, lambda m: self._on_image(stream, m), self._input_qos(),
                                        qos_overriding_options=options)

    def _camera_info_topic(self, stream: int) -> str:
        """`<camera>/camera_info`: where it is remapped explicitly, else beside the (remapped) image topic,
        as image_transport's camera subscribers do (`-r visible/image:=/cam/image_raw` -> /cam/camera_info)."""
        name = f"{STREAM_NAMES[stream]}/camera_info"
        resolved = self.resolve_topic_name(name)
        if resolved != self.resolve_topic_name(name, only_expand=True):
            return resolved
        return camera_info_topic(self.resolve_topic_name(f"{STREAM_NAMES[stream]}/image"))

    def _update_camera_info_inputs(self):
        """Subscribe both cameras' CameraInfo while use_camera_info is true and the images are subscribed
        (active), else unsubscribe and forget them: the next pairs are fused as they are."""
        enabled = self.values["use_camera_info"] and bool(self.subscriptions_)
        subscribed = bool(self.camera_info_subscriptions)
        if enabled and not subscribed:
            self.camera_info_subscriptions = [
                self.create_subscription(CameraInfo, self._camera_info_topic(stream),
                                         lambda m, s=stream: self._on_camera_info(s, m), self._input_qos(),
                                         qos_overriding_options=QoSOverridingOptions.with_default_policies())
                for stream in (VISIBLE, THERMAL)]
        elif not enabled:
            for subscription in self.camera_info_subscriptions:
                self.destroy_subscription(subscription)
            self.camera_info_subscriptions = []
            self.camera_infos.clear()
            if not self.subscriptions_:  # deactivated: the next activation logs again whether it undistorts
                self._rectifying = False
        if not self.values["use_camera_info"]:
            self.camera_info_state = "not used"
        elif enabled != subscribed or self.camera_info_state == "not used":
            # switched on, (re)activated or deactivated: what an earlier pair did no longer holds
            self.camera_info_state = NO_PAIR_YET

    def _input_qos(self) -> QoSProfile:
        """Keep last 5, best effort unless the `reliability` alias says reliable. Each subscription's
        qos_overrides.<topic>.subscription.* parameters are applied on top by rclpy (and win)."""
        reliability = ReliabilityPolicy.RELIABLE if self.values["reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=INPUT_DEPTH, reliability=reliability)

    def _make_synchronizer(self) -> PairSynchronizer:
        return PairSynchronizer(self.values["queue_size"], self.values["slop"], self._on_pair)

    def _restart_stats_timer(self):
        if self._stats_timer is not None:
            self.destroy_timer(self._stats_timer)
            self._stats_timer = None
        if self.values["stats_period"] > 0:
            self._stats_timer = self.create_timer(self.values["stats_period"], self._log_stats)

    def _log_startup(self):
        backend = self.pipeline.backend
        models = ", ".join(f"{stage}={path}" for stage, path in self.pipeline.model_paths.items())
        h, w = self.pipeline.config.working_size
        self.get_logger().info(
            f"cgrp_fusion ready: backend {self.pipeline.config.backend} ({self.pipeline.description}), "
            f"device {getattr(backend, 'device', self.values['device'])}, "
            f"providers {getattr(backend, 'providers', 'n/a')}, working size {h}x{w} (HxW), models: {models}; "
            f"sync {self.sync.implementation} (slop {self.values['slop']} s, queue {self.values['queue_size']}), "
            f"inputs {self.input_reliability()} ({self.values['image_transport']}), camera_info "
            f"{', '.join(s.topic_name for s in self.camera_info_subscriptions) or 'not used'}, "
            f"outputs {', '.join(self.values['outputs']) or 'none'}; {self._prior_description()}")

    def _prior_description(self) -> str:
        """What the registration starts from and how often it runs, for the start-up line."""
        path = self.values["calibration_file"]
        if self.pipeline.homography is not None:
            prior = f"prior: the calibration {path}"
        elif path:
            prior = f"prior: none ({path} does not exist yet; ~/save_calibration writes it)"
        else:
            prior = "prior: none (no calibration_file)"
        if self.values["self_calibrate"]:
            return f"{prior}, self-calibration on (registrations at {self.values['registration_rate']:g} Hz once converged)"
        return f"{prior}, self-calibration off (every pair registered)"

    def _best_effort(self, stream: int) -> bool:
        subscriptions = self.subscriptions_
        return len(subscriptions) > stream and subscriptions[stream].qos_profile.reliability.name == "BEST_EFFORT"

    def input_reliability(self) -> str:
        """The inputs' reliability after qos_overrides, e.g. 'best_effort' or 'visible reliable, thermal best_effort'."""
        policies = [s.qos_profile.reliability.name.lower() for s in self.subscriptions_]
        if policies[0] == policies[1]:
            return policies[0]
        return ", ".join(f"{name} {policy}" for name, policy in zip(STREAM_NAMES, policies))

    # -- parameters ----------------------------------------------------------------------------------
    def _check_new_parameters(self, parameters) -> SetParametersResult:
        for p in parameters:
            if p.name in PARAMETERS_BY_NAME and p.type_ == Parameter.Type.NOT_SET:  # `ros2 param delete`
                # (rclpy refuses it for statically typed parameters itself; `outputs` is dynamically typed)
                return SetParametersResult(successful=False, reason=f"{p.name} cannot be deleted"
                                           + ("; [] publishes nothing" if p.name == "outputs" else ""))
            try:
                reason = check_parameter(p.name, p.value)
                # the memory check needs the device: the running Pipeline's, or while inactive device:=cpu
                # (auto / cuda: known at activation, which then fails with the reason in /diagnostics)
                device = self.pipeline.backend.device if self.pipeline is not None else self.values["device"]
                if not reason and p.name == "working_size" and device == "cpu":
                    reason = working_size_problem(tuple(p.value), device)
                if not reason and p.name == "calibration_file" and p.value and self.last_pair_shapes:
                    reason = self._calibration_file_problem(p.value)
            except Exception as exc:  # a value of a shape no check foresaw: reject it, keep running
                reason = f"{p.name}: {type(exc).__name__}: {exc}"
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _calibration_file_problem(self, path: str) -> str | None:
        """A calibration made for other cameras than the last pair's (every pair would be refused); the
        file itself is checked by check_parameter."""
        from ..core.calibrate import CalibrationError, load_rig
        from ..core.pipeline import calibration_size_problem

        try:
            _, sizes = load_rig(path)
        except CalibrationError:
            return None  # (check_parameter said why, or the file is not there yet)
        problem = sizes and calibration_size_problem(sizes, *self.last_pair_shapes)
        if not problem:
            return None
        return f"calibration_file '{path}': {problem.replace('this pair', 'the last pair received')}"

    def _apply_new_parameters(self, parameters) -> None:
        changed = {p.name for p in parameters if p.name in PARAMETERS_BY_NAME}
        for p in parameters:
            if p.name in PARAMETERS_BY_NAME:
                self.values[p.name] = used_value(p.name, p.value)
        if changed & {"slop", "queue_size"}:
            self.sync = self._make_synchronizer()
        if "stats_period" in changed:
            self._restart_stats_timer()
        if "use_camera_info" in changed:
            self._update_camera_info_inputs()
        if self.stream is not None and changed & {"self_calibrate", "registration_rate", "scene_change"}:
            for name, value in stream_settings(self.values).items():  # read by the worker per pair
                setattr(self.stream, name, value)
        builder = self.builder
        if builder is not None and (any(PARAMETERS_BY_NAME[n].rebuild for n in changed) or changed & set(LIGHT)):
            if "calibration_file" in changed:
                try:
                    self.prior = calibration_prior(self.values["calibration_file"])
                except CgrpError as exc:  # checked when set; changed on disk since
                    self.get_logger().error(f"calibration_file not used, the previous prior stays: {exc}")
            builder.request(pipeline_config(self.values, self.prior))  # inactive: the next activation builds
        if changed:
            self.get_logger().info(f"parameters changed: {', '.join(sorted(changed))}")

    @property
    def pipeline_error(self) -> str | None:
        """Why the latest rebuild (or working_size / gain change) failed, while the previous Pipeline keeps
        running (diagnostics ERROR)."""
        builder = self.builder
        return None if builder is None else builder.error

    def _on_built(self, pipeline, seconds: float):
        self.get_logger().info(f"new pipeline built in {seconds:.1f} s beside the running one: swapping it in")

    def _on_build_failed(self, exc):
        self.get_logger().error(f"new configuration not applied, still running the previous one: {exc}")

    # -- input ---------------------------------------------------------------------------------------
    def _log_throttled(self, key, text: str, period: float | None = None, warning: bool = False):
        """An error (or warning) line at most every `period` s (default 5) per key (one key per stream and
        kind of problem)."""
        if self._log_throttle(key, period):
            if warning:  # separate call sites: rclpy refuses two severities from one
                self.get_logger().warning(text)
            else:
                self.get_logger().error(text)

    def _on_image(self, stream: int, msg):
        name = STREAM_NAMES[stream]
        largest = self.stats.largest_message
        if largest[stream] <= LOSSY_MESSAGE_BYTES < len(msg.data) and self._best_effort(stream):
            self.get_logger().warning(
                f"{name} images of {len(msg.data) / 1e6:.1f} MB on a best-effort subscription: over shared memory "
                "most messages this large are lost (pairs go missing). If the topic is published reliable, set "
                f"qos_overrides.{self.subscriptions_[stream].topic_name}.subscription.reliability: reliable")
        largest[stream] = max(largest[stream], len(msg.data))  # (for /diagnostics: best-effort loss)
        try:  # a compressed image's header is checked here, its pixels decoded by the worker (_process)
            msg = prepare_input(msg, isinstance(msg, CompressedImage), decode_later=True)
        except Exception as exc:  # also a check's failure nobody foresaw: a bad message, not the node's end
            self._bad_message(stream, exc)
            return
        self.stats.last_message[stream] = time.monotonic()
        resets = self.sync.resets
        self.sync.add(stream, msg)
        if self.sync.resets != resets:  # counted here: the synchronizer is rebuilt on configure and slop changes
            self.stats.count("synchronizer_resets")
            self.stamp_resets.add(stream)
            self._log_throttled("stamps backwards", f"{name} stamps went back in time (a bag replayed in a loop, "
                                "a clock reset, two publishers on one topic?): pairing starts again from this message",
                                warning=True)

    def _bad_message(self, stream: int, exc: Exception, paired: bool = False) -> None:
        """Count and log (throttled) a message that cannot be used: a corrupt payload, an unknown encoding.
        `paired`: found once paired (a compressed image is decoded then), so its pair failed too: the stream
        is not silent, and only 'no pair fused ...' can say that none decodes."""
        name = STREAM_NAMES[stream]
        why = str(exc) if isinstance(exc, ImageConversionError) else f"unexpected {type(exc).__name__}: {exc}"
        with self.stats.lock:
            self.stats.bad_messages += 1
            self.stats.last_bad_message[stream] = (time.monotonic(), why)
            if paired:
                self.stats.last_failed_pair = (time.monotonic(), f"skipping {name} image: {why}")
        self._log_throttled((name, getattr(exc, "kind", "unexpected")), f"skipping {name} image: {why}")

    def _on_camera_info(self, stream: int, msg):
        name = STREAM_NAMES[stream]
        try:
            self.camera_infos.update(stream, msg)
            self._camera_info_rejected[stream] = None
        except InputError as exc:  # e.g. an uncalibrated camera's all-zero K: as if none had arrived
            self._camera_info_rejected[stream] = f"{name}/camera_info ignored: {exc}"
            self._log_throttled((name, "camera_info"), f"ignoring {name}/camera_info: {exc}", warning=True)

    def _on_pair(self, visible_msg, thermal_msg):
        self.stats.last_pair = time.monotonic()
        self.slot.put((visible_msg, thermal_msg))

    # -- worker --------------------------------------------------------------------------------------
    def _work(self, slot: LatestPairSlot):
        """The worker thread of one activation: fuse the newest pair until `slot` is closed."""
        while not slot.closed:
            pair = slot.take(timeout=0.2)
            try:
                builder = self.builder
                if builder is not None:  # between pairs: a new Pipeline or new working size / gain control
                    self.pipeline, swapped = builder.take(self.pipeline)
                    if swapped:
                        self._use_pipeline(self.pipeline)
                        self._log_startup()
                if pair is not None and not slot.closed:
                    self._process(*pair)
            except Exception as exc:  # a fault outside inference: the thread ending would end every output
                where = traceback.extract_tb(exc.__traceback__)[-1]
                why = f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})"
                self._pair_failed("inference_errors", f"pair failed: {why}")
                self._log_throttled(("worker", type(exc).__name__, where.lineno),
                                    f"a pair failed, the node goes on: {why}")

    def _wanted_outputs(self) -> set:
        """The enabled outputs that someone subscribes to right now ('fused/compressed' with 'fused');
        none once the publishers are gone (cleanup, shutdown)."""
        with self._publishing:
            outputs, publishers, compressed = self.values["outputs"], self.publishers_, self.compressed_pub
            wanted = {name for name in outputs if name in publishers and publishers[name].get_subscription_count() > 0}
            if "fused" in outputs and compressed is not None and compressed.get_subscription_count() > 0:
                wanted.add("fused/compressed")
        return wanted

    @property
    def unsubscribed(self) -> bool:
        """Active, and no enabled output has a subscriber: pairs are received and nothing is computed."""
        return self.state == "active" and self.pipeline is not None and not self._wanted_outputs()

    def _process(self, visible_msg, thermal_msg):
        pipeline = self.pipeline
        wanted = self._wanted_outputs() if pipeline is not None else set()
        if not wanted:
            return  # nobody listens (or deactivating): spend nothing
        stamp = stamp_seconds(visible_msg.header.stamp)
        shapes = []
        for stream, msg in ((VISIBLE, visible_msg), (THERMAL, thermal_msg)):
            try:  # a compressed image is decoded here: only a pair the worker takes and someone listens to
                shapes.append(as_array(msg).shape)
            except Exception as exc:  # (ImageConversionError, or a decoder's failure nobody foresaw)
                self._bad_message(stream, exc, paired=True)
                return
        self._note_sizes(tuple(shape[:2] for shape in shapes), stamp)
        plan = self.camera_infos.plan(*shapes)
        self._log_rectification(plan, stamp)
        try:
            out = fuse_pair(self.stream, visible_msg, thermal_msg, wanted, self.values["deformation_vis_max"],
                            plan.intrinsics)
        except InputError as exc:
            self._pair_failed("bad_pairs", f"pair rejected: {exc}")
            # one throttle key per kind of problem: the message without its numbers
            self._log_throttled(("pair", re.sub(r"\d+", "#", str(exc))), f"skipping pair at {stamp:.3f}: {exc}")
            return
        except Exception as exc:  # one bad pair must not stop the node: log, count, go on with the next
            self._pair_failed("inference_errors", f"inference failed: {type(exc).__name__}: {exc}")
            self._log_throttled("inference", f"inference failed for the pair at {stamp:.3f}: "
                                f"{type(exc).__name__}: {exc}")
            return
        for counter, key, text in out.warnings:
            if counter is not None:
                self.stats.count(counter)
            self._log_throttled(key, text, warning=True)
        with self.stats.lock:
            self.stats.last_confidence, self.stats.last_fallback = out.confidence, out.fallback
            self.stats.fallback_pairs += out.fallback
        low_confidence = diagnostics.low_confidence(self.stats, float(pipeline.confidence_threshold))
        if low_confidence:
            self._log_throttled("low confidence", f"pair at {stamp:.3f}: {low_confidence}", warning=True)
        header = visible_msg.header
        messages = {name: encode_compressed(image, encoding, CompressedImage, header, self.values["jpeg_quality"])
                    if name == "fused/compressed" else numpy_to_image(image, encoding, Image, header)
                    for name, (image, encoding) in out.images.items()}
        with self._publishing:
            if not self.publishers_:  # removed while this pair was in inference (cleanup, shutdown)
                return
            for name, message in messages.items():
                (self.compressed_pub if name == "fused/compressed" else self.publishers_[name]).publish(message)
            if plan.camera_info is not None:
                self.camera_info_pub.publish(with_header(plan.camera_info, header))
        latency = self.get_clock().now().nanoseconds * 1e-9 - stamp_seconds(header.stamp)
        now = time.monotonic()
        with self.stats.lock:
            self.stats.published += 1
            self.stats.published_times.append(now)
            self.stats.last_fused = now
            if abs(latency) <= STAMP_CLOCK_LIMIT_S:
                self.stats.latencies.append((now, latency))
            else:  # not a latency: the stamps count from another epoch
                self.stats.stamp_clock_offset = (now, -latency)
        if abs(latency) > STAMP_CLOCK_LIMIT_S:
            self._log_throttled("stamp clock", f"pair at {stamp:.3f}: its stamp is {-latency:+.0f} s from this "
                                f"node's clock ({diagnostics.OTHER_EPOCH}): no latency measured", period=60.0,
                                warning=True)

    def _pair_failed(self, counter: str, why: str) -> None:
        with self.stats.lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            self.stats.last_failed_pair = (time.monotonic(), why)

    def _note_sizes(self, shapes, stamp: float) -> None:
        """Keep the pair's image sizes; sizes that change from pair to pair (two publishers of one topic, a
        camera switching modes) make every pair a registration from scratch: a warning, not a line a pair."""
        if self.last_pair_shapes is not None and shapes != self.last_pair_shapes:
            changes = self.size_changes.add()
            if changes > FLAPPING_CHANGES and self.stream.registration_rate > 0:
                # (per-frame mode registers every pair anyway: the demo's sample pairs each have their size)
                (vh, vw), (th, tw) = shapes
                self._log_throttled("sizes flapping", f"{diagnostics.sizes_flapping(changes)} "
                                    f"(pair at {stamp:.3f}: visible {vw}x{vh}, thermal {tw}x{th})", period=30.0,
                                    warning=True)
        self.last_pair_shapes = shapes

    def _log_rectification(self, plan, stamp: float):
        """A line when undistortion starts or stops; a CameraInfo that does not fit its image: a warning
        at most every 5 s."""
        if plan.problem:
            self._log_throttled("camera_info size", f"pair at {stamp:.3f}: {plan.problem}", warning=True)
        rectifying = plan.intrinsics is not None
        if rectifying:
            self.camera_info_state = "undistorting (visible {}, thermal {})".format(*(c.model for c in plan.intrinsics))
        elif self.camera_info_subscriptions:
            missing = [f"no {STREAM_NAMES[i]}/camera_info" for i in (VISIBLE, THERMAL) if not self.camera_infos.known(i)]
            why = [r for r in self._camera_info_rejected if r] or ([plan.problem] if plan.problem else missing)
            self.camera_info_state = "not undistorting: " + "; ".join(why or ["-"])
        else:
            self.camera_info_state = "not used"
        if rectifying != self._rectifying:
            self._rectifying = rectifying
            changes = self._rectification_changes.add()
            if changes > FLAPPING_CHANGES:  # not a line per pair: one warning instead
                self._log_throttled(
                    "camera_info flapping", f"undistortion switched on and off {changes} times in "
                    f"{FLAPPING_WINDOW_S:g} s (pair at {stamp:.3f}): two publishers of one camera_info topic, or a "
                    "camera changing resolution?", period=30.0, warning=True)
            elif rectifying:
                visible, thermal = plan.intrinsics
                self.get_logger().info(
                    f"camera_info of both cameras known: undistorting each image with its own intrinsics "
                    f"(visible {visible.model}, thermal {thermal.model}); outputs and ~/camera_info are in "
                    f"the rectified visible frame")
            else:
                self.get_logger().info("images fused as they are (not undistorted) from the pair at "
                                       f"{stamp:.3f} on")

    # -- monitoring ----------------------------------------------------------------------------------
    def _log_stats(self):
        now = time.monotonic()
        if self.state == "active":  # nothing to report while a lifecycle manager keeps the node inactive
            self.get_logger().info(diagnostics.stats_line(self, now - self._stats_since, self._stats_since))
        self._stats_since = now

    def diagnose(self):
        """(level, message) of the node right now."""
        return diagnostics.diagnose(self)

    def namesakes(self) -> int:
        """Other nodes of this name and namespace on the domain (ROS 2 lets them run side by side)."""
        me = (self.get_name(), self.get_namespace())
        return sum(1 for node in self.get_node_names_and_namespaces() if node == me) - 1

    def diagnostic_values(self) -> dict:
        """The key/values of the /diagnostics status."""
        return diagnostics.diagnostic_values(self)

    def _publish_diagnostics(self):
        self.diagnostics_pub.publish(diagnostics.diagnostic_array(self, self.get_clock().now().to_msg()))
        release_free_memory()  # once a second, on the same timer

    # -- shutdown ------------------------------------------------------------------------------------
    def destroy_node(self):
        """rclpy's LifecycleNode keeps its state machine (and through it the node handle) alive after
        destroy_node(): the node then lingers in other processes' graph after a clean exit. Destroy it too."""
        super().destroy_node()
        state_machine = getattr(self, "_state_machine", None)
        if state_machine is not None:
            state_machine.destroy_when_not_in_use()

    def stop(self, timeout: float = 1.5) -> bool:
        """Stop the worker (it finishes the pair in hand); False if it, a background registration or a
        pipeline rebuild did not stop in time (the worker within `timeout` s, a registration within 0.5 s
        of what is left, a rebuild within 0.5 s), or an earlier deactivation left one running: the process
        must then not wait for them, since a thread still inside torch when the interpreter exits aborts it."""
        started = time.monotonic()
        self._close_builder()
        self._stop_worker(timeout)
        for thread in self._left_behind:  # (also those an earlier deactivation left): the time that is left
            thread.join(max(0.0, timeout - (time.monotonic() - started)))
        stopped = not any(thread.is_alive() for thread in self._left_behind)
        if self.stream is not None:
            left = min(0.5, max(0.0, timeout - (time.monotonic() - started)))
            stopped = self.stream.wait_idle(left) and stopped
        logging.getLogger("cgrp_ros").removeHandler(self._core_log)
        return stopped


def main(args=None) -> int:
    interrupt_start_on_signals()
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        return _start_and_spin()
    except Interrupted as exc:  # Ctrl-C while the models load: stopped, not a traceback
        print(f"cgrp_fusion: {exc} during start-up: stopped", file=sys.stderr)
        rclpy.try_shutdown()
        sys.stderr.flush()
        os._exit(0)  # the start-up was cut anywhere: do not wait for threads it may have started


def _start_and_spin() -> int:
    try:
        node = FusionNode()
    except CgrpError as exc:  # missing/corrupt model, bad parameter, no GPU: one line, no traceback
        print(f"cgrp_fusion: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except Exception as exc:  # e.g. a YAML value of the wrong type or outside its range
        print(f"cgrp_fusion: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    if node.values["autostart"]:
        error = node.autostart()
        if error:  # missing/corrupt model, no GPU with require_gpu: one line, no traceback
            print(f"cgrp_fusion: error: {error}", file=sys.stderr)
            node.stop()
            node.destroy_node()
            rclpy.try_shutdown()
            return 2
    else:
        node.get_logger().info("waiting in state 'unconfigured' (autostart is false): configure and activate "
                               "through the lifecycle services, e.g. ros2 lifecycle set "
                               f"{node.get_fully_qualified_name()} configure")
    spin_until_signal(node, until=lambda: node.finalized, survive_callback_errors=True)
    node.get_logger().info("shutting down")
    stopped = node.stop()
    node.destroy_node()
    rclpy.try_shutdown()
    if not stopped:  # the worker or a background registration is still inside inference: do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
