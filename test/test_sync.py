"""Approximate-time pairing (the active implementation and the built-in fallback) and the worker handoff."""
import threading
from types import SimpleNamespace

import pytest

from cgrp_ros.ros import sync
from cgrp_ros.ros.sync import (THERMAL, VISIBLE, ApproximateTimePairs, LatestPairSlot, PairSynchronizer, StampOffset,
                               describe_offset)

# "active" is meant to run message_filters' synchroniser; without it, it would run the built-in one
# a second time, so it skips and the report shows the gap
IMPLEMENTATIONS = [
    pytest.param(None, id="active", marks=pytest.mark.skipif(
        sync.message_filters_module() is None, reason="message_filters is not importable: only the built-in synchroniser "
                                             "is tested")),
    pytest.param(False, id="builtin"),
]


def msg(t: float, tag=""):
    sec, nanosec = divmod(int(round(t * 1e9)), 1_000_000_000)
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)), tag=tag)


def collect(use_message_filters, queue_size=10, slop=0.05):
    pairs = []
    synchronizer = PairSynchronizer(queue_size, slop, lambda v, t: pairs.append((v.tag, t.tag)), use_message_filters)
    return synchronizer, pairs


@pytest.mark.parametrize("use_mf", IMPLEMENTATIONS)
def test_pairs_inside_slop_only(use_mf):
    s, pairs = collect(use_mf)
    s.add(VISIBLE, msg(10.00, "v0"))
    s.add(THERMAL, msg(10.03, "t0"))    # inside 50 ms
    s.add(VISIBLE, msg(11.00, "v1"))
    s.add(THERMAL, msg(11.20, "t1"))    # 200 ms apart: never paired
    s.add(THERMAL, msg(12.01, "t2"))
    s.add(VISIBLE, msg(12.00, "v2"))    # thermal first works as well
    assert pairs == [("v0", "t0"), ("v2", "t2")]


@pytest.mark.parametrize("use_mf", IMPLEMENTATIONS)
def test_stamps_exactly_slop_apart_pair(use_mf):
    """At most `slop`, as documented: two 10 Hz cameras half a frame apart sit exactly at the default 0.05 s."""
    s, pairs = collect(use_mf)
    s.add(VISIBLE, msg(10.00, "v0"))
    s.add(THERMAL, msg(10.05, "t0"))
    s.add(VISIBLE, msg(10.10, "v1"))
    s.add(THERMAL, msg(10.1501, "t1"))  # 50.1 ms: not
    assert pairs == [("v0", "t0")]


@pytest.mark.parametrize("use_mf", IMPLEMENTATIONS)
def test_closest_partner_wins(use_mf):
    s, pairs = collect(use_mf, slop=0.1)
    s.add(THERMAL, msg(5.00, "far"))
    s.add(THERMAL, msg(5.06, "near"))
    s.add(VISIBLE, msg(5.07, "v"))
    assert pairs == [("v", "near")]


@pytest.mark.parametrize("use_mf", IMPLEMENTATIONS)
def test_queue_size_bounds_what_can_pair(use_mf):
    s, pairs = collect(use_mf, queue_size=2)
    for i in range(5):
        s.add(VISIBLE, msg(1.0 + i, f"v{i}"))
    s.add(THERMAL, msg(1.0, "t0"))      # v0 fell out of the queue
    s.add(THERMAL, msg(5.0, "t4"))
    assert pairs == [("v4", "t4")]


@pytest.mark.parametrize("use_mf", IMPLEMENTATIONS)
def test_recovers_when_stamps_jump_backwards(use_mf):
    s, pairs = collect(use_mf, queue_size=3)
    for i in range(5):                  # a bag ...
        s.add(VISIBLE, msg(100.0 + i, f"v{i}"))
        s.add(THERMAL, msg(100.0 + i + 0.01, f"t{i}"))
    s.add(VISIBLE, msg(100.5, "stale"))  # one unpaired message of the old timeline
    for i in range(3):                  # ... that loops: stamps restart at 100 s
        s.add(VISIBLE, msg(100.0 + i, f"w{i}"))
        s.add(THERMAL, msg(100.0 + i + 0.01, f"u{i}"))
    assert pairs[-3:] == [("w0", "u0"), ("w1", "u1"), ("w2", "u2")]
    assert s.resets >= 1


def test_stamp_offset_is_the_closest_pair_of_recent_stamps():
    s, pairs = collect(False)
    assert s.offset.closest() is None
    for i in range(3):  # 1 Hz, the thermal stamped 0.3 s late: nothing pairs within 0.05 s
        s.add(VISIBLE, msg(20.0 + i))
        s.add(THERMAL, msg(20.3 + i))
    assert pairs == [] and s.offset.closest() == pytest.approx(0.3)
    early = StampOffset()
    for i in range(3):
        early.add(VISIBLE, int((30.0 + i) * 1e9))
        early.add(THERMAL, int((29.8 + i) * 1e9))  # 0.2 s early (and 0.8 s late for the frame before)
    assert early.closest() == pytest.approx(-0.2)
    s.add(VISIBLE, msg(1.0))  # a backwards jump forgets the old timeline's stamps too
    assert s.offset.closest() is None


def test_an_offset_beyond_the_slop_is_described():
    assert describe_offset(None, 0.05) is None and describe_offset(0.04, 0.05) is None
    assert describe_offset(0.3, 0.05) == "the closest stamps are 0.300 s apart (thermal later; slop 0.05 s)"
    assert describe_offset(-0.3, 0.05, "--slop") == "the closest stamps are 0.300 s apart (visible later; --slop 0.05 s)"
    assert describe_offset(1.7e9, 0.05).endswith(": the cameras stamp from different clocks")


class _StubMessageFilters:
    """message_filters' interface as PairSynchronizer uses it (SimpleFilter, ApproximateTimeSynchronizer):
    its synchronizer records how it was built and pairs each message with the other stream's latest."""

    class SimpleFilter:
        def __init__(self):
            self.listeners = []

        def signalMessage(self, msg):  # noqa: N802 - message_filters' name
            for listener in self.listeners:
                listener(self, msg)

    class ApproximateTimeSynchronizer:
        built = []

        def __init__(self, inputs, queue_size, slop):
            self.latest, self.callbacks = [None, None], []
            type(self).built.append((len(inputs), queue_size, slop))
            for f in inputs:
                f.listeners.append(lambda source, msg, i=inputs.index(f): self._add(i, msg))

        def registerCallback(self, callback):  # noqa: N802
            self.callbacks.append(callback)

        def _add(self, index, msg):
            self.latest[index] = msg
            if all(m is not None for m in self.latest):
                for callback in self.callbacks:
                    callback(*self.latest)
                self.latest = [None, None]


def test_message_filters_is_used_where_importable_and_fed_each_stream(monkeypatch):
    """Where message_filters is importable (an apt-installed ROS), the node pairs with its
    ApproximateTimeSynchronizer, built with the node's queue size and slop, each stream on its own input,
    and says so; where it is not (this pip runtime), with the builtin policy."""
    monkeypatch.setattr(sync, "message_filters", None)
    assert collect(None)[0].implementation == "builtin"
    monkeypatch.setattr(sync, "message_filters", _StubMessageFilters)
    _StubMessageFilters.ApproximateTimeSynchronizer.built = []
    s, pairs = collect(None, queue_size=7, slop=0.03)
    assert s.implementation == "message_filters"
    [(inputs, queue_size, slop)] = _StubMessageFilters.ApproximateTimeSynchronizer.built
    assert (inputs, queue_size) == (2, 7)
    # message_filters pairs stamps *less* than its slop apart (its slop truncated to whole nanoseconds), this
    # package's policy at most `slop` apart: given 1 ns more, both pair the same messages
    assert int(slop * 1e9) - 1 == round(0.03 * 1e9)
    s.add(THERMAL, msg(10.01, "t0"))
    s.add(VISIBLE, msg(10.00, "v0"))
    assert pairs == [("v0", "t0")]  # (visible, thermal) whichever arrived first
    s.add(VISIBLE, msg(9.0, "v-back"))  # a stamp that jumps back: a fresh synchronizer, as with the builtin
    assert len(_StubMessageFilters.ApproximateTimeSynchronizer.built) == 2


def test_invalid_arguments():
    with pytest.raises(ValueError):
        ApproximateTimePairs(0, 0.05, print)
    with pytest.raises(ValueError):
        PairSynchronizer(10, -1.0, print, use_message_filters=False)


def test_latest_pair_wins_and_drops_are_counted():
    slot = LatestPairSlot()
    assert slot.take(timeout=0.01) is None
    assert slot.put(1) is False
    assert slot.put(2) is True           # 1 was never taken
    assert slot.put(3) is True
    assert slot.take(timeout=0.01) == 3
    assert (slot.received, slot.dropped) == (3, 2)


def test_take_wakes_on_put_and_close():
    slot = LatestPairSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    worker.start()
    slot.put("pair")
    worker.join(2)
    assert got == ["pair"]
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    worker.start()
    slot.close()
    worker.join(2)
    assert not worker.is_alive() and got == ["pair", None] and slot.closed
