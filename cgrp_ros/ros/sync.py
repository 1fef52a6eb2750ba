"""Pairing the two camera streams (ROS-free), and handing pairs to one worker thread.

``PairSynchronizer`` pairs visible and thermal messages by header stamp with the approximate-time
policy of message_filters: ``message_filters.ApproximateTimeSynchronizer`` when it is importable,
else ``ApproximateTimePairs``, this package's equivalent for two streams. Either way a stamp that
jumps backwards (a looping bag, a restarted driver) clears the queues so pairing resumes at once.

``StampOffset`` measures how far apart the two streams' stamps are, so that "nothing pairs" can say
by how much (cameras on different clocks, a driver stamping at the end of the exposure).

``LatestPairSlot`` is the single-slot handoff to the worker: a new pair replaces one that the
worker has not taken yet (the replaced pair is counted as dropped), so the worker always gets
the freshest pair and never builds a backlog.
"""
from __future__ import annotations

import collections
import threading

# message_filters is imported on first use (`message_filters_module`): it imports rclpy, which the
# command line (`cgrp fuse --bag` pairs with this module) must not load
_NOT_LOOKED_UP = object()
message_filters = _NOT_LOOKED_UP

VISIBLE, THERMAL = 0, 1
STREAM_NAMES = ("visible", "thermal")  # by index
DEFAULT_SLOP = 0.05       # s: cgrp_fusion's `slop` default (also cgrp fuse --bag's)
DEFAULT_QUEUE_SIZE = 10   # cgrp_fusion's `queue_size` default
# s: two clocks further apart than this count from different epochs (time since boot, an unset stamp, sim
# time on one side), not a delay
STAMP_CLOCK_LIMIT_S = 3600.0
SLOP_EPSILON_S = 1.5e-9  # s: above 1 ns, as rclpy's Duration(seconds=) truncates to whole nanoseconds


def message_filters_module():
    """The message_filters module, or None where it is not importable (the pip runtime has no wheel)."""
    global message_filters
    if message_filters is _NOT_LOOKED_UP:
        try:
            import message_filters as module
        except ImportError:
            module = None
        message_filters = module
    return message_filters


def stamp_seconds(stamp) -> float:
    """A builtin_interfaces Time in float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_ns(msg) -> int:
    """A message's header stamp in integer nanoseconds."""
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class ApproximateTimePairs:
    """message_filters' ApproximateTimeSynchronizer policy for two streams.

    Each stream keeps its last ``queue_size`` messages by stamp. A new message is paired with the
    message of the other stream whose stamp is closest to its own, if they differ by at most
    ``slop`` seconds; both are then removed and ``callback(visible_msg, thermal_msg)`` is called.
    """

    def __init__(self, queue_size: int, slop: float, callback):
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if slop < 0:
            raise ValueError(f"slop must be >= 0 s, got {slop}")
        self.queue_size = int(queue_size)
        self.slop_ns = int(round(slop * 1e9))
        self.callback = callback
        self.queues = ({}, {})  # stream -> {stamp_ns: msg}

    def add(self, stream: int, msg) -> None:
        stamp = stamp_ns(msg)
        own, other = self.queues[stream], self.queues[1 - stream]
        own[stamp] = msg
        while len(own) > self.queue_size:
            del own[min(own)]
        if stamp not in own:  # evicted at once: older than everything queued
            return
        candidates = [s for s in other if abs(s - stamp) <= self.slop_ns]
        if not candidates:
            return
        match = min(candidates, key=lambda s: abs(s - stamp))
        pair = [None, None]
        pair[stream], pair[1 - stream] = own.pop(stamp), other.pop(match)
        self.callback(*pair)

    def clear(self) -> None:
        for queue in self.queues:
            queue.clear()


class StampOffset:
    """The stamp offset between the streams, thermal minus visible, in seconds: each stream's newest
    header stamp against the nearest of the other stream's last ``keep``, the closer of the two (None
    until both streams have stamps). Thread-safe: the subscriptions add, the diagnostics read."""

    def __init__(self, keep: int = 16):
        self._lock = threading.Lock()
        self._stamps = (collections.deque(maxlen=keep), collections.deque(maxlen=keep))  # ns per stream

    def add(self, stream: int, stamp: int) -> None:
        with self._lock:
            self._stamps[stream].append(stamp)

    def clear(self) -> None:
        with self._lock:
            for stamps in self._stamps:
                stamps.clear()

    def closest(self) -> float | None:
        with self._lock:
            visible, thermal = list(self._stamps[VISIBLE]), list(self._stamps[THERMAL])
        if not visible or not thermal:
            return None
        offsets = [min((t - visible[-1] for t in thermal), key=abs), min((thermal[-1] - v for v in visible), key=abs)]
        return min(offsets, key=abs) * 1e-9


def describe_offset(offset: float | None, slop: float, slop_name: str = "slop") -> str | None:
    """Why nothing pairs, from StampOffset.closest() (s) and the slop (s): 'the closest stamps are 0.320 s
    apart (thermal later; slop 0.05 s)'; None when unknown or within the slop."""
    if offset is None or abs(offset) <= slop:
        return None
    later = "thermal" if offset > 0 else "visible"
    text = f"the closest stamps are {abs(offset):.3f} s apart ({later} later; {slop_name} {slop:g} s)"
    if abs(offset) > STAMP_CLOCK_LIMIT_S:
        text += ": the cameras stamp from different clocks"
    return text


class _MessageFiltersPairs:
    """The same interface over message_filters.ApproximateTimeSynchronizer."""

    def __init__(self, queue_size: int, slop: float, callback):
        module = message_filters_module()
        self.inputs = (module.SimpleFilter(), module.SimpleFilter())
        # message_filters pairs stamps less than `slop` apart, this package's policy (and its docs) at most
        # `slop`: one nanosecond more makes both pair the same messages (a 10 Hz pair of cameras half a
        # frame apart sits exactly at the default 0.05 s)
        self.sync = module.ApproximateTimeSynchronizer(list(self.inputs), queue_size, slop + SLOP_EPSILON_S)
        self.sync.registerCallback(callback)

    def add(self, stream: int, msg) -> None:
        self.inputs[stream].signalMessage(msg)


class PairSynchronizer:
    """Approximate-time pairing of the visible and thermal streams; ``add(VISIBLE | THERMAL, msg)``.

    queue_size: messages kept per stream; slop: largest stamp difference of a pair, seconds;
    callback(visible_msg, thermal_msg) is called from ``add`` for every pair.
    use_message_filters: None = when importable, False = always this package's policy.
    """

    def __init__(self, queue_size: int, slop: float, callback, use_message_filters: bool | None = None):
        if use_message_filters is None:
            use_message_filters = message_filters_module() is not None
        if use_message_filters and message_filters_module() is None:
            raise ImportError("message_filters is not importable")
        self.implementation = "message_filters" if use_message_filters else "builtin"
        self.pairs = 0  # pairs made so far

        def paired(visible_msg, thermal_msg):
            self.pairs += 1
            callback(visible_msg, thermal_msg)

        self._make = lambda: (_MessageFiltersPairs if use_message_filters else ApproximateTimePairs)(
            queue_size, slop, paired)
        ApproximateTimePairs(queue_size, slop, callback)  # validates the arguments for both
        self._policy = self._make()
        self._last_stamp = [None, None]
        self.resets = 0  # how often a backwards jump cleared the queues
        self.offset = StampOffset()  # how far apart the streams' stamps are, paired or not

    def add(self, stream: int, msg) -> None:
        stamp = stamp_ns(msg)
        last = self._last_stamp[stream]
        if last is not None and stamp < last:
            # time went backwards on this stream: queued messages belong to the old timeline
            self.reset()
        self._last_stamp[stream] = stamp
        self.offset.add(stream, stamp)
        self._policy.add(stream, msg)

    def reset(self) -> None:
        """Forget every queued message (a fresh policy: message_filters has no clear())."""
        self._policy = self._make()
        self._last_stamp = [None, None]
        self.offset.clear()
        self.resets += 1


class LatestPairSlot:
    """Single-slot, thread-safe handoff of pairs to one worker; the newest pair wins.

    ``put`` never blocks; a pair still waiting when the next one arrives is dropped and counted
    in ``dropped``. ``take`` blocks up to ``timeout`` seconds and returns None on timeout or close.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._pair = None
        self._closed = False
        self.received = 0
        self.dropped = 0

    @classmethod
    def following(cls, previous: "LatestPairSlot") -> "LatestPairSlot":
        """A new open slot that continues `previous`'s counters (a new worker, the same statistics)."""
        slot = cls()
        slot.received, slot.dropped = previous.received, previous.dropped
        return slot

    def put(self, pair) -> bool:
        """Offer a pair; returns True when it replaced (dropped) a pair the worker never took."""
        with self._cond:
            replaced = self._pair is not None
            self.dropped += replaced
            self.received += 1
            self._pair = pair
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None):
        with self._cond:
            self._cond.wait_for(lambda: self._pair is not None or self._closed, timeout)
            pair, self._pair = self._pair, None
            return pair

    def close(self) -> None:
        """Wake the worker for good: every later ``take`` returns at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
