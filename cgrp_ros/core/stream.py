"""A stream from one rig: registration amortised over frames, and a flow that holds still.

Two cameras bolted together keep one misalignment. Registering every frame from scratch repeats
the expensive part (generator + registration, ~3/4 of a pair's time on a CPU) and makes the flow
shimmer from frame to frame. `StreamPipeline` registers at `registration_rate` Hz (faster while the
estimate settles, at once when the scene or the image size changes), folds each registration into
`RigFlow`, a running robust estimate of the rig's flow, and fuses every frame with that estimate:

    stream = StreamPipeline(Pipeline(), registration_rate=0.5)
    for stamp, visible, thermal in frames:             # stamp: seconds (message or frame time)
        result = stream(visible, thermal, stamp=stamp)  # FusionResult, flow = the rig estimate
    stream.rig.state                                    # 'waiting' | 'converging' | 'converged' | 'drifting'

`registration_rate=0` registers every frame and uses its own flow: per-frame mode, exactly
`Pipeline.__call__`.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from .image import check_image, scene_thumbnail
from .pipeline import ALL_OUTPUTS, FusionResult, Pipeline, Registration
from .warp import endpoint_error

WAITING, CONVERGING, CONVERGED, DRIFTING = "waiting", "converging", "converged", "drifting"


def flow_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean end-point distance (px) between two H x W x 2 flows."""
    return float(endpoint_error(a, b).mean())


def mean_flow(flows: list) -> np.ndarray:
    """Mean of H x W x 2 flows, float32, summed in place: np.mean would first stack them, and at a
    1080p camera's resolution that copy took 5x longer than the sum (while the frame path waits)."""
    total = np.array(flows[0], dtype=np.float32)
    for flow in flows[1:]:
        total += flow
    total /= np.float32(len(flows))
    return total


@dataclass
class RigUpdate:
    """What one registration did to the estimate."""
    accepted: bool
    reason: str            # 'first' | 'agrees' | 'drift' | 'fallback' | 'outlier'
    distance: float        # px between the registration and the estimate before it (0 for the first)
    change: float          # px the estimate moved


class RigFlow:
    """Running robust estimate of a rig's flow (H x W x 2, visible px) from per-frame registrations.

    The estimate is the consensus of the last `window` registrations: the one closest to all the
    others (the medoid) and every registration within `outlier_px` of it are averaged.

    - A registration that fell back (too little evidence: night, fog, a lens cap) is ignored, so the
      estimate stays put while the scene carries no information.
    - One wrong registration, even the first, is outvoted as soon as two others agree, and never
      enters the average; noise averages out over the window.
    - A real change (a knock) wins once most of the window has seen it: after about `window` / 2 + 1
      registrations; 'drifting' while registrations keep disagreeing with the estimate. A slow drift
      is followed as the window slides.
    - 'converged': at least `min_updates` registrations agree, the last `min_updates` updates each moved
      the estimate by less than `converged_px`, and (to get there, not to stay) at least half of the
      last 2 x `window` registrations were usable: a few registrations that scraped past the fallback
      amid many that did not (cameras whose views differ more than registration from scratch handles)
      are no converged rig estimate, even where they agree.
    """

    def __init__(self, window: int = 5, outlier_px: float = 3.0, converged_px: float = 0.5, min_updates: int = 3):
        if window < 1 or min_updates < 1:
            raise ValueError("window and min_updates must be >= 1")
        self.window, self.outlier_px = window, outlier_px
        self.converged_px, self.min_updates = converged_px, min_updates
        self.reset()

    def reset(self):
        self.flow = None            # H x W x 2 float32, visible px
        self.confidence = 0.0       # mean confidence of the registrations in the consensus
        self.accepted = 0           # registrations that were in the consensus when they arrived
        self.rejected = 0           # fallbacks, and registrations outvoted when they arrived
        self._recent = []           # the last `window` non-fallback registrations
        self.support = 0            # registrations in the consensus (1: one registration, unconfirmed)
        self._disagreeing = 0       # consecutive registrations far from the estimate before them
        self._changes = []          # px moved by the recent updates
        self._outcomes = []         # accepted or not, of the last 2 x window registrations (fallbacks too)
        self.state = WAITING

    @staticmethod
    def _distance(a: Registration, b: Registration) -> float:
        return flow_distance(a.flow[::8, ::8], b.flow[::8, ::8])  # smooth flows: a coarse grid is enough

    def _consensus(self) -> list:
        """The registrations within outlier_px of the window's medoid."""
        recent = self._recent
        distances = np.array([[self._distance(a, b) if i < j else 0.0 for j, b in enumerate(recent)]
                              for i, a in enumerate(recent)])
        distances = distances + distances.T
        medoid = int(np.argmin(distances.sum(axis=1)))
        return [r for r, d in zip(recent, distances[medoid]) if d <= self.outlier_px]

    def update(self, registration: Registration) -> RigUpdate:
        if self.flow is not None and self.flow.shape != registration.flow.shape:
            self.reset()  # another image size: the estimate does not apply any more
        if registration.fallback:
            self.rejected += 1
            self._record(False)
            return RigUpdate(False, "fallback", 0.0, 0.0)
        first = self.flow is None
        distance = 0.0 if first else flow_distance(registration.flow[::8, ::8], self.flow[::8, ::8])
        self._recent = (self._recent + [registration])[-self.window:]
        consensus = self._consensus()
        accepted = any(r is registration for r in consensus)
        self.accepted += accepted
        self.rejected += not accepted
        self._record(accepted)
        flow = mean_flow([r.flow for r in consensus])
        flow.setflags(write=False)  # the same array frame after frame: the Pipeline caches what derives from it
        change = 0.0 if first else flow_distance(flow[::8, ::8], self.flow[::8, ::8])
        self.flow, self.confidence = flow, float(np.mean([r.confidence for r in consensus]))
        self.support = len(consensus)
        self._disagreeing = self._disagreeing + 1 if distance > self.outlier_px else 0
        self._changes = (self._changes + [change])[-self.min_updates:]
        if first:
            self.state, reason = CONVERGING, "first"
        elif self._disagreeing >= 2 and self.state in (CONVERGED, DRIFTING):  # (still converging: not a change)
            self.state, reason = DRIFTING, "drift" if accepted else "outlier"
        else:
            settled = len(consensus) >= self.min_updates and len(self._changes) >= self.min_updates and \
                max(self._changes) < self.converged_px and (self.state == CONVERGED or self.mostly_usable())
            self.state = CONVERGED if settled else (DRIFTING if self.state == DRIFTING else CONVERGING)
            reason = "agrees" if accepted else "outlier"
        return RigUpdate(accepted, reason, distance, change)

    def _record(self, accepted: bool) -> None:
        self._outcomes = (self._outcomes + [bool(accepted)])[-2 * self.window:]

    def recent_usable(self) -> tuple:
        """(registrations accepted, registrations) among the last 2 x window, fallbacks included."""
        return sum(self._outcomes), len(self._outcomes)

    def mostly_usable(self) -> bool:
        used, seen = self.recent_usable()
        return 2 * used >= seen

    def registration(self) -> Registration:
        return Registration(self.flow, float(self.confidence), False)


def same_prior(a, b) -> bool:
    """Whether two Pipelines' homographies (None: the resize prior) are the same mapping."""
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(a, b))


STALLED_FRAME_S = 0.1  # offline (a bag's frames whose stamps stand still): the time one frame counts


class StreamPipeline:
    """Pipeline for one rig's stream: full registration at `registration_rate` Hz, fusion every frame.

    registration_rate: Hz of full registrations (generator + registration); 0 = every frame with its
        own flow (per-frame mode, no smoothing).
    scene_change: mean absolute change of a 12 x 16 luminance thumbnail (0..1) since the last
        registration that triggers one early (a new view: the depth-dependent residual changes);
        0 disables the test.
    converging_rate: Hz of registrations while the estimate is converging or drifting (at least
        registration_rate): the estimate settles within a few seconds, then costs little. While it
        rests on a single registration (the first, or after disagreements) it registers at
        `confirming_rate`, so one wrong registration is outvoted within a few frames.
    background: run the registrations that fall due in a thread of their own while every frame goes on
        being fused with the current estimate (a live node: no frame waits for a registration). The
        first registration, and the first of a new image size, still run inline (there is nothing to
        fuse with before them). False: the frame that falls due waits for it (offline: deterministic).
    on_registration: called as on_registration(visible, thermal) after each full registration has
        entered the estimate (not in per-frame mode), in the thread that ran it: e.g. a quality check
        of `current()` on that frame, off the frame path in the background. An exception it raises is
        reported like one of the registration's.
    """

    def __init__(self, pipeline: Pipeline, registration_rate: float = 0.5, scene_change: float = 0.15,
                 converging_rate: float = 2.0, confirming_rate: float = 10.0, rig: RigFlow | None = None,
                 clock=time.monotonic, background: bool = False, on_registration=None):
        if registration_rate < 0:
            raise ValueError("registration_rate must be >= 0")
        self._pipeline = pipeline
        self._prior = pipeline.homography  # the calibration (None: the resize) the estimate is made over
        self._release_when_idle = False  # release(): let the Pipeline go when the background registration ends
        self.registration_rate = float(registration_rate)
        self.scene_change = float(scene_change)
        self.converging_rate = float(converging_rate)
        self.confirming_rate = float(confirming_rate)
        self.rig = rig or RigFlow()
        self.clock = clock
        self.last_registration = None   # frame time (s, see _frame_time) of the last full registration
        self.repeated_stamps = 0        # frames in a row whose stamp was the previous frame's (0: stamps advance)
        self._previous_frame = None     # (stamp, frame time, clock) of the previous frame
        self.last_update = None         # RigUpdate of the last full registration
        self.registrations = 0
        self._thumbnail = None
        self._last = None               # the last registration (used while the rig has no estimate)
        # (visible H x W, thermal H x W, the prior's 3x3 visible px -> thermal px) of the last registration
        # folded in: what calibration() maps the estimate with, also while no Pipeline is held
        self._estimate_geometry = None
        self.background = background
        self.on_registration = on_registration
        self._lock = threading.Lock()   # guards the estimate between the caller and the background thread
        self._thread = None             # the background registration thread (started on first use)
        self._jobs = None               # its queue of (visible, thermal, generation)
        self._idle = threading.Event()  # set while no background registration is in flight
        self._idle.set()
        self._finished = None           # (registration or exception) of a background run, not yet reported
        self._generation = 0            # counts inline registrations (see _fold)

    @property
    def pipeline(self) -> Pipeline | None:
        """The Pipeline the stream fuses and registers with (None once released)."""
        return self._pipeline

    @pipeline.setter
    def pipeline(self, pipeline: Pipeline | None) -> None:
        with self._lock:
            self._pipeline, self._release_when_idle = pipeline, False

    def use(self, pipeline: Pipeline) -> bool:
        """Fuse and register with `pipeline` from the next frame on (a rebuilt one, or one after a
        release); an estimate made over another prior (calibration homography) is reset. -> whether it was."""
        changed = not same_prior(self._prior, pipeline.homography)
        if changed:
            self.reset()
        self.pipeline, self._prior = pipeline, pipeline.homography
        return changed

    def release(self) -> None:
        """Let the Pipeline go (a paused node frees its models; the estimate stays): at once, or when the
        background registration in flight ends. Setting `pipeline` again takes one back."""
        with self._lock:
            if self._idle.is_set():
                self._pipeline = None
            else:
                self._release_when_idle = True

    def current(self) -> Registration | None:
        """What frames between registrations are fused with: the rig estimate, or while there is
        none (every registration so far fell back) the last registration, i.e. the prior."""
        with self._lock:
            return self.rig.registration() if self.rig.flow is not None else self._last

    def _fold(self, registration: Registration, pipeline: Pipeline, shapes: tuple,
              generation: int | None = None) -> bool:
        """A finished registration, by `pipeline`, of a frame of `shapes` (visible, thermal H x W) into the
        estimate, unless it started before the last inline registration (that may be of an image size no
        longer streamed) or the last reset (made with another calibration). -> whether it was folded in."""
        prior = pipeline.visible_to_thermal(*shapes)
        with self._lock:
            if generation is not None and generation != self._generation:
                return False
            self._last = registration
            self._estimate_geometry = (*shapes, prior)
            self.last_update = self.rig.update(registration)
            return True

    @property
    def generation(self) -> int:
        """Changes whenever the estimate starts again (a reset, an inline registration): a caller that
        derives something from current() checks it is unchanged before keeping the result."""
        with self._lock:
            return self._generation

    def reset(self) -> None:
        """Forget the estimate and everything learnt with it (another calibration, a re-mounted camera): the
        next frame registers inline, as the first one did, and a registration still running in the
        background is dropped when it finishes."""
        with self._lock:
            self.rig.reset()
            self._generation += 1
            self._last = self._finished = self.last_update = self._estimate_geometry = None
            self.last_registration = self._thumbnail = None

    def _register_in_background(self, visible, thermal) -> None:
        """Hand one registration to the background thread (one thread for the stream's life: threads
        that come and go would each leave an OpenMP pool behind in torch)."""
        if self._thread is None:
            self._jobs = queue.Queue(maxsize=1)
            self._thread = threading.Thread(target=self._serve, name="cgrp_registration", daemon=True)
            self._thread.start()
        self._idle.clear()
        self._jobs.put((visible, thermal, (visible.shape[:2], thermal.shape[:2]), self._generation))

    def _serve(self) -> None:
        while True:
            visible, thermal, shapes, generation = self._jobs.get()
            finished = None
            try:
                pipeline = self.pipeline
                registration = pipeline.register(visible, thermal)
                if not self._fold(registration, pipeline, shapes, generation):
                    continue  # of an image size or a calibration that is gone: not reported either
                if self.on_registration is not None:
                    self.on_registration(visible, thermal)
                finished = registration
            except Exception as exc:  # reported by the next frame, which raises it
                finished = exc
            finally:
                with self._lock:
                    if finished is not None and generation == self._generation:  # (not after a reset)
                        self._finished = finished
                    if self._release_when_idle:
                        self._pipeline, self._release_when_idle = None, False
                    self._idle.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no background registration is in flight; False on timeout."""
        return self._idle.wait(timeout)

    def _report(self, result: FusionResult) -> FusionResult:
        """Attach a background registration that finished since the last frame (once), or raise its error."""
        finished, self._finished = self._finished, None
        if isinstance(finished, Exception):
            raise finished
        if finished is None:
            return result
        return replace(result, registration_confidence=finished.confidence, registration_fallback=finished.fallback)

    def _due(self, visible: np.ndarray, stamp: float, current: Registration | None) -> bool:
        """Whether this frame runs the full registration (`current`: what it would be fused with)."""
        if self.registration_rate <= 0 or current is None or self.last_registration is None:
            return True
        if current.flow.shape[:2] != visible.shape[:2]:
            return True  # a new resolution: the estimate does not apply
        rate = self.registration_rate
        if self.rig.state in (CONVERGING, DRIFTING):
            rate = max(rate, self.converging_rate)
        if self.rig.flow is not None and self.rig.support < 2:
            rate = max(rate, self.confirming_rate)  # one registration alone may be wrong: confirm it soon
        if stamp < self.last_registration or stamp - self.last_registration >= 1.0 / rate:
            return True  # (time going backwards: a replayed bag)
        if self.scene_change > 0 and self._thumbnail is not None:
            return float(np.mean(np.abs(scene_thumbnail(visible) - self._thumbnail))) > self.scene_change
        return False

    def __call__(self, visible: np.ndarray, thermal: np.ndarray, outputs=ALL_OUTPUTS,
                 stamp: float | None = None) -> FusionResult:
        """Fuse one frame (visible, thermal and outputs as for Pipeline.__call__); `stamp` in seconds
        (default: the clock). The result's flow (H x W x 2 float32, visible px) is the rig estimate
        (read-only: the frames share it until the estimate changes); its confidence/fallback are the last
        registration's when this frame ran one."""
        visible, thermal = check_image(visible, "visible"), check_image(thermal, "thermal")
        return self._fuse(visible, thermal, outputs, self._frame_time(self.clock() if stamp is None else float(stamp)))

    def _frame_time(self, stamp: float) -> float:
        """The time registrations are scheduled by: the frame's stamp; while the stamps stand still (a driver
        that leaves header.stamp 0, or repeats one), the last one plus the clock's time since. On the stamps
        alone the first registration was never confirmed: self-calibration stayed 'converging' for good."""
        now, previous = self.clock(), self._previous_frame
        if previous is not None and stamp == previous[0]:
            self.repeated_stamps += 1
            time_ = previous[1] + (now - previous[2])
        else:
            self.repeated_stamps, time_ = 0, stamp
        self._previous_frame = (stamp, time_, now)
        return time_

    def _fuse(self, visible, thermal, outputs, stamp: float) -> FusionResult:
        if self.registration_rate <= 0:
            result = self.pipeline(visible, thermal, outputs)  # (a rejected frame counts no registration)
            self.registrations += 1
            self.last_registration = stamp
            return result
        current = self.current()
        fits = current is not None and current.flow.shape[:2] == visible.shape[:2]
        busy = not self._idle.is_set()
        if fits and (busy or not self._due(visible, stamp, current)):
            return self._report(self.pipeline(visible, thermal, outputs, registration=current))
        if self.background and fits:
            # fused first: a pair the Pipeline rejects (InputError) neither reaches the background, whose error
            # the next, good pair would raise, nor counts as the registration due (copies: the caller may reuse
            # its buffers)
            result = self.pipeline(visible, thermal, outputs, registration=current)
            self._registration_started(visible, stamp)
            self._register_in_background(np.array(visible), np.array(thermal))
            return self._report(result)
        generation = self._generation
        registration = self.pipeline.register(visible, thermal)  # inline: the first, or a new image size
        self._registration_started(visible, stamp)
        with self._lock:  # a reset from another thread meanwhile: the registration is of the old calibration
            unchanged = generation == self._generation
            if unchanged:
                self._generation += 1
            generation = self._generation if unchanged else -1  # (-1: dropped)
        folded = self._fold(registration, self.pipeline, (visible.shape[:2], thermal.shape[:2]), generation)
        if folded and self.on_registration is not None:
            self.on_registration(visible, thermal)
        result = self.pipeline(visible, thermal, outputs, registration=self.current())
        spent = {k: result.timings.get(k, 0.0) + registration.timings.get(k, 0.0)
                 for k in ("preprocess", "generator", "registration")}
        timings = dict(result.timings, **spent)
        timings["total"] = result.timings["total"] + sum(registration.timings.values())
        return replace(result, timings=timings, registration_confidence=registration.confidence,
                       registration_fallback=registration.fallback)

    def _registration_started(self, visible, stamp: float) -> None:
        self.registrations += 1
        self.last_registration = stamp
        self._thumbnail = scene_thumbnail(visible)

    def calibration(self, converged_only: bool = False):
        """The rig estimate as a calibration (core.calibrate.Calibration: thermal px -> visible px,
        the prior included), for `cgrp fuse --calibration`; CalibrationError while there is none, or
        with `converged_only` while it has not converged (the state, the flow and the image sizes it was
        made at are read together: a registration of a new image size may be folded in meanwhile)."""
        from datetime import datetime, timezone

        from .calibrate import Calibration, CalibrationError, homography_from_flow

        with self._lock:
            flow, state, geometry = self.rig.flow, self.rig.state, self._estimate_geometry
            accepted, rejected = self.rig.accepted, self.rig.rejected
        if flow is None or geometry is None:
            raise CalibrationError(f"no rig estimate yet (state {state}: no registration accepted)")
        if converged_only and state != CONVERGED:
            raise CalibrationError(f"the rig estimate is {state}, not converged")
        visible_shape, thermal_shape, visible_to_thermal = geometry
        homography, residual = homography_from_flow(flow, visible_to_thermal, thermal_shape)
        return Calibration(homography, tuple(visible_shape), tuple(thermal_shape), pairs_used=accepted,
                           pairs_skipped=rejected, median_residual_px=residual,
                           # no names to list (frames of a stream): one line, so the count has its reason
                           skipped={"registrations rejected": f"{rejected}: fallbacks (too little evidence) or "
                                                              "outliers of the estimate"} if rejected else {},
                           date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           command=f"self-calibration ({state})")
