"""cgrp_fusion's counters and its /diagnostics status: what the node reports about itself.

`Stats` is shared by the executor and the worker thread. The functions read a node-like object
with `values` (parameters), `stats`, `slot` (LatestPairSlot), `sync` (PairSynchronizer),
`pipeline` (None while the node is not active), `pipeline_error`, `drop_history`, `state`
(its lifecycle state) and, where it has them, `stream` (the rig estimate) and `alignment_check`.
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from ..core.confidence import low_confidence_text
from .sync import STREAM_NAMES, describe_offset


class Stats:
    """Counters and latencies, shared by the executor and the worker thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.published = 0          # pairs whose outputs were published
        self.bad_messages = 0       # messages skipped by the conversion (encoding, step, size, data, payload)
        self.bad_pairs = 0          # pairs the core rejected as input
        self.inference_errors = 0   # unexpected failures inside the pipeline
        self.non_finite_thermal = 0  # pairs fused although the thermal had NaN/inf pixels
        self.constant_images = 0    # pairs fused although an input had no contrast
        self.synchronizer_resets = 0  # input stamps that jumped backwards (the pairing started again)
        self.fallback_pairs = 0     # pairs the registration fell back to the prior for (too little evidence)
        self.last_confidence = None  # registration confidence of the last fused pair, 0..1
        self.last_fallback = None   # whether that pair was registered with the prior
        self.latencies = collections.deque(maxlen=500)  # (monotonic time, input stamp -> publish, s)
        # monotonic times of the published pairs: the frame rate, also where stamps give no latency
        self.published_times = collections.deque(maxlen=2000)
        self.last_message = [time.monotonic(), time.monotonic()]  # per stream
        self.last_pair = time.monotonic()
        self.last_fused = time.monotonic()  # a pair's outputs published (or activation)
        self.last_bad_message = [None, None]  # per stream: (monotonic time, why it was skipped)
        self.last_failed_pair = None        # (monotonic time, why a synchronized pair was not fused)
        self.stamp_clock_offset = None      # (monotonic time, s): a pair stamped on another clock than the node's
        self.largest_message = [0, 0]       # per stream: bytes of the largest image received

    def reset_times(self) -> None:
        """At activation: the streams and the outputs are judged from now on."""
        now = time.monotonic()
        with self.lock:
            self.last_message = [now, now]
            self.last_pair = self.last_fused = now
            self.last_bad_message, self.last_failed_pair, self.stamp_clock_offset = [None, None], None, None

    def count(self, counter: str) -> None:
        with self.lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def published_since(self, since: float) -> int:
        """Pairs published at monotonic time `since` or later."""
        with self.lock:
            return sum(t >= since for t in self.published_times)

    def latency_percentiles(self, since: float):
        with self.lock:
            recent = [lat for t, lat in self.latencies if t >= since]
        if not recent:
            return 0, None, None
        p50, p95 = np.percentile(recent, [50, 95])
        return len(recent), float(p50), float(p95)


# why a pair's stamp may be hours from the node's clock (the pair is fused; its latency is not counted)
OTHER_EPOCH = ("unset stamps, time since boot, a recording replayed with its own stamps, or sim time without "
               "use_sim_time?")
UNSUBSCRIBED = ("no output is subscribed, so nothing is computed: the node fuses (and self-calibrates) only while "
                "one of its outputs has a subscriber")
LOSSY_MESSAGE_BYTES = 500_000  # best-effort messages above this are mostly lost over Fast DDS shared memory


def lossy(node) -> str:
    """A hint where stamps that never meet may be messages lost in transport: large images on best-effort
    inputs arrive with gaps, and the partners of those that do arrive are missing."""
    largest = max(node.stats.largest_message)
    if largest <= LOSSY_MESSAGE_BYTES or "best_effort" not in node.input_reliability():
        return ""
    return (f"; images of {largest / 1e6:.1f} MB on best-effort inputs are often lost in transport: if the topics "
            "are published reliable, set qos_overrides./<topic>.subscription.reliability: reliable")


def low_confidence(stats: Stats, threshold: float) -> str | None:
    """Why the last fused pair's registration is doubtful, or None (also when nothing was fused yet)."""
    confidence, fallback = stats.last_confidence, stats.last_fallback
    if confidence is None:
        return None
    return low_confidence_text(confidence, fallback, threshold, "identity or homography")


def confidence_threshold(node) -> float | None:
    pipeline = node.pipeline
    return None if pipeline is None else float(pipeline.confidence_threshold)


def input_topic(node, stream: int) -> str:
    """The image topic of `stream` as the node subscribes it (remapped, namespaced, /compressed), for a
    message that says which topic to check."""
    subscriptions = getattr(node, "subscriptions_", None)
    return subscriptions[stream].topic_name if subscriptions else f"{STREAM_NAMES[stream]}/image"


REPEATED_STAMPS_WARN = 5  # pairs in a row with the previous pair's stamp: the stamps stand still
# a setting that switches more than FLAPPING_CHANGES times within FLAPPING_WINDOW_S seconds (undistortion on
# and off, the pairs' image sizes): one warning every 30 s instead of a line per change
FLAPPING_CHANGES, FLAPPING_WINDOW_S = 3, 10.0


class RecentEvents:
    """What happened within the last `window` s (monotonic), oldest first: a setting that flaps, stamps that
    keep jumping back. Thread-safe: the worker and the subscriptions add, the diagnostics timer reads."""

    def __init__(self, window: float = FLAPPING_WINDOW_S):
        self.window, self._events, self._lock = window, collections.deque(), threading.Lock()

    def add(self, item=None, now: float | None = None) -> int:
        """Record one event (`item`: what it was about) -> how many are recent now, this one included."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._events.append((now, item))
        return len(self.recent(now))

    def recent(self, now: float | None = None) -> list:
        """The items of the events within the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._events and now - self._events[0][0] >= self.window:
                self._events.popleft()
            return [item for _, item in self._events]


def sizes_flapping(changes: int) -> str:
    return (f"the pairs' image sizes changed {changes} times in {FLAPPING_WINDOW_S:g} s: two publishers of one "
            "topic, or a camera switching modes? Each change registers the pair from scratch")


def diagnose(node):
    """(level, message) of the node right now."""
    now, timeout, stats = time.monotonic(), node.values["stream_timeout"], node.stats
    received, dropped = node.slot.received, node.slot.dropped
    node.drop_history.append((received, dropped))
    state = getattr(node, "state", "active")
    if state != "active":  # a lifecycle manager keeps it there on purpose: not a fault, unless it failed
        failed = getattr(node, "activation_error", None)
        if failed:
            return DiagnosticStatus.ERROR, f"{state}: the last transition failed: {failed}"
        return DiagnosticStatus.OK, f"{state}: not fusing (lifecycle state)"
    if node.pipeline_error:
        return DiagnosticStatus.ERROR, f"parameter change not applied, previous pipeline running: {node.pipeline_error}"
    silent = [i for i in (0, 1) if now - stats.last_message[i] > timeout]
    rejected = [i for i in silent if stats.last_bad_message[i] and now - stats.last_bad_message[i][0] <= timeout]
    if rejected:  # arriving but unreadable: not a topic or QoS problem
        i = rejected[0]
        return DiagnosticStatus.ERROR, (f"{input_topic(node, i)}: every message for more than {timeout:g} s "
                                        f"skipped: {stats.last_bad_message[i][1]}")
    if len(silent) == 2:
        return DiagnosticStatus.WARN, (f"no input on {input_topic(node, 0)} or {input_topic(node, 1)} for more than "
                                       f"{timeout:g} s")
    if silent:
        return DiagnosticStatus.WARN, f"{input_topic(node, silent[0])} silent for more than {timeout:g} s"
    resets = stamp_resets(node, now)
    if now - stats.last_pair > timeout:
        if resets:  # before the stamp offset, which the other publisher's stamps distort
            return DiagnosticStatus.WARN, resets
        why = (describe_offset(node.sync.offset.closest(), node.values["slop"])
               or f"stamps further apart than slop {node.values['slop']} s?")
        return DiagnosticStatus.WARN, f"no synchronized pair for {now - stats.last_pair:.1f} s ({why}){lossy(node)}"
    failed = stats.last_failed_pair
    if failed and failed[0] > stats.last_fused and now - stats.last_fused > timeout:
        return DiagnosticStatus.ERROR, f"no pair fused for {now - stats.last_fused:.1f} s: {failed[1]}"
    namesakes = node.namesakes() if hasattr(node, "namesakes") else 0
    if namesakes:  # two launches of one node: both fuse every pair and publish on the same topics
        return DiagnosticStatus.WARN, (f"{namesakes} other node(s) named {node.get_fully_qualified_name()} on this "
                                       "ROS domain: each fuses every pair and publishes on the same topics (launched "
                                       "twice? give each its own name or namespace)")
    if resets:
        return DiagnosticStatus.WARN, resets
    if getattr(node, "unsubscribed", False):  # not a fault: nobody asked for an output
        return DiagnosticStatus.OK, f"idle: {UNSUBSCRIBED}"
    old_received, old_dropped = node.drop_history[0]
    if received - old_received >= 5:
        rate = (dropped - old_dropped) / (received - old_received)
        if rate > node.values["drop_rate_warn"]:
            return DiagnosticStatus.WARN, f"high drop rate: {rate:.0%} of pairs dropped (inference too slow)"
    clock = stats.stamp_clock_offset
    clock = (f"input stamps are {clock[1]:+.0f} s from this node's clock ({OTHER_EPOCH}): latency unknown"
             if clock and now - clock[0] <= timeout else None)
    # the registration's problems first, the clock's after them: a replayed recording's stamps would
    # otherwise hide a self-calibration that never settles
    also = f"; {clock}" if clock else ""
    stream = getattr(node, "stream", None)
    amortised = stream is not None and stream.registration_rate > 0  # (per-frame mode: no rig estimate)
    flapping = node.size_changes.recent(now) if hasattr(node, "size_changes") else []
    if amortised and len(flapping) > FLAPPING_CHANGES:
        return DiagnosticStatus.WARN, sizes_flapping(len(flapping)) + also
    if amortised and stream.repeated_stamps >= REPEATED_STAMPS_WARN:
        return DiagnosticStatus.WARN, (f"the last {stream.repeated_stamps + 1} pairs carry one and the same stamp "
                                       "(a driver that leaves header.stamp 0, or repeats one?): registrations are "
                                       "scheduled by this node's clock meanwhile; set the cameras' stamps" + also)
    unsettled = rig_unsettled(node)
    if unsettled:
        return DiagnosticStatus.WARN, unsettled + also
    threshold = confidence_threshold(node)
    doubtful = threshold is not None and low_confidence(stats, threshold)
    if doubtful:  # a warning, never an error: the pair was fused
        return DiagnosticStatus.WARN, f"last pair: {doubtful}{also}"
    check = getattr(node, "alignment_check", None)
    worse = check.worse() if check is not None and amortised else None
    if worse:
        return DiagnosticStatus.WARN, worse + also
    if clock:
        return DiagnosticStatus.WARN, clock
    return DiagnosticStatus.OK, "fusing"


def stamp_resets(node, now: float) -> str | None:
    """Why the pairing keeps restarting, where stamps went back in time more than FLAPPING_CHANGES times
    within FLAPPING_WINDOW_S (node.stamp_resets: RecentEvents of the streams); None otherwise."""
    resets = node.stamp_resets.recent(now) if hasattr(node, "stamp_resets") else []
    if len(resets) <= FLAPPING_CHANGES:
        return None
    topic = input_topic(node, collections.Counter(resets).most_common(1)[0][0])
    return (f"{topic}: stamps went back in time {len(resets)} times in {FLAPPING_WINDOW_S:g} s, each time "
            "restarting the pairing: two publishers with different stamps on one topic (a bag played beside a "
            "live driver?), or a bag of a few seconds played in a loop")


def rig_unsettled(node) -> str | None:
    """Why the self-calibration cannot settle, where most of its recent registrations were unusable."""
    stream = getattr(node, "stream", None)
    if stream is None or stream.registration_rate <= 0 or stream.rig.state == "converged":
        return None
    used, seen = stream.rig.recent_usable()
    if seen < 2 * stream.rig.window or stream.rig.mostly_usable():
        return None
    return (f"self-calibration {stream.rig.state}: only {used} of the last {seen} registrations usable (the others "
            "fell back or disagreed): too little shared structure, or cameras whose views differ more than "
            "registration from scratch handles (another field of view): calibrate the rig (cgrp calibrate)")


def backend_description(node) -> str:
    return "not loaded" if node.pipeline is None else node.pipeline.description


def diagnostic_values(node) -> dict:
    """The key/values of the /diagnostics status."""
    s = node.stats
    since = time.monotonic() - 10.0
    count, p50, p95 = s.latency_percentiles(since)
    return {
        "lifecycle state": getattr(node, "state", "active"),
        "backend": backend_description(node), "fps (10 s)": f"{s.published_since(since) / 10.0:.2f}",
        "latency p50 ms": f"{p50 * 1e3:.0f}" if count else "n/a",
        "latency p95 ms": f"{p95 * 1e3:.0f}" if count else "n/a",
        "pairs": str(node.slot.received), "dropped pairs": str(node.slot.dropped),
        "published": str(s.published), "bad messages": str(s.bad_messages), "bad pairs": str(s.bad_pairs),
        "inference errors": str(s.inference_errors), "non-finite thermal": str(s.non_finite_thermal),
        "constant images": str(s.constant_images), "synchronizer resets": str(s.synchronizer_resets),
        "synchronizer": node.sync.implementation, "stamp offset s": stamp_offset_value(node.sync.offset.closest()),
        "registration confidence": "n/a" if s.last_confidence is None else f"{s.last_confidence:.3f}",
        "registration fallback": "n/a" if s.last_fallback is None else str(s.last_fallback).lower(),
        "fallback pairs": str(s.fallback_pairs),
        "camera_info": getattr(node, "camera_info_state", "not used"),
        **rig_values(node),
    }


def stamp_offset_value(offset: float | None) -> str:
    return "n/a" if offset is None else f"{offset:+.3f}"


def rig_values(node) -> dict:
    """The self-calibration's state: the running rig estimate of cgrp_ros.core.stream."""
    stream = getattr(node, "stream", None)
    if stream is None:
        return {"self-calibration": "n/a"}
    if stream.registration_rate <= 0:
        return {"self-calibration": "off (every pair registered alone)", "registrations": str(stream.registrations)}
    rig, update = stream.rig, stream.last_update
    check = getattr(node, "alignment_check", None)
    return {"self-calibration": rig.state, "rig registrations used": str(rig.accepted),
            "rig registrations rejected": str(rig.rejected), "registrations": str(stream.registrations),
            "last registration vs estimate px": "n/a" if update is None else f"{update.distance:.2f}",
            **(check.values() if check is not None else {})}


def diagnostic_array(node, stamp) -> DiagnosticArray:
    """The /diagnostics message: one status `<node name>: fusion` (diagnostic_updater's naming), its
    hardware_id the node's full name, which stays put across states and tells two namespaced instances
    of one node name apart (the backend, which changes, is a value)."""
    level, message = diagnose(node)
    status = DiagnosticStatus(level=level, name=f"{node.get_name()}: fusion", message=message,
                              hardware_id=node.get_fully_qualified_name(),
                              values=[KeyValue(key=k, value=v) for k, v in diagnostic_values(node).items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def stats_line(node, seconds: float, since: float) -> str:
    """The periodic `stats:` log line over the last `seconds` (latencies recorded after `since`)."""
    s = node.stats
    count, p50, p95 = s.latency_percentiles(since)
    latency = f"latency p50 {p50 * 1e3:.0f} ms p95 {p95 * 1e3:.0f} ms" if count else "latency n/a"
    return (f"stats: {s.published_since(since) / max(seconds, 1e-9):.2f} fps, {latency}, pairs {node.slot.received}, "
            f"dropped {node.slot.dropped}, published {s.published}, bad messages {s.bad_messages}, "
            f"bad pairs {s.bad_pairs}, inference errors {s.inference_errors}, non-finite thermal "
            f"{s.non_finite_thermal}, constant images {s.constant_images}, fallback pairs {s.fallback_pairs}"
            + (f" ({UNSUBSCRIBED})" if getattr(node, "unsubscribed", False) else ""))
