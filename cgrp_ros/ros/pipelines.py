"""Reconfiguration without an outage: a new Pipeline is built beside the running one.

cgrp_fusion's worker keeps fusing with the running Pipeline while `PipelineBuilder` builds the
requested configuration in a background thread; the worker swaps the new one in between two pairs
(`take`). Several requests in a row build only the latest: a build that a newer request made stale
is thrown away when it ends, and the latest is built next. What the running Pipeline can take as it
is (`LIGHT`: read by the core on every pair) is applied without a build (`Pipeline.reconfigure`), so a
`working_size` change keeps onnxruntime's sessions (the exported models have dynamic height and
width). A build that fails leaves the running Pipeline in place and is not retried until the
configuration changes again.

ROS-free: `build` is any callable config -> Pipeline (cgrp_ros.core.pipeline.Pipeline, or anything with
its `config` and `reconfigure`).
"""
from __future__ import annotations

import copy
import dataclasses
import threading
import time

from ..core.errors import CgrpError
from ..core.pipeline import PER_CALL_FIELDS as LIGHT  # PipelineConfig fields read per pair


def heavy_key(config) -> tuple:
    """What needs a new Pipeline: every PipelineConfig field except LIGHT."""
    return tuple((f.name, repr(getattr(config, f.name))) for f in dataclasses.fields(config) if f.name not in LIGHT)


class PipelineBuilder:
    """Builds requested configurations in a background thread; the worker takes them between pairs.

    on_built(pipeline, seconds) and on_failed(exc) are called from the builder thread (on_failed also from the
    worker's, in `take`, for LIGHT values the running Pipeline refuses).
    """

    def __init__(self, build, running_config, on_built=None, on_failed=None):
        self._build = build
        self._on_built = on_built or (lambda pipeline, seconds: None)
        self._on_failed = on_failed or (lambda exc: None)
        self._cond = threading.Condition()
        self._wanted = None                        # the latest requested PipelineConfig
        self._light_pending = False                # LIGHT fields of _wanted not yet applied by the worker
        self._ready = None                         # a built Pipeline waiting for the worker
        self._target = heavy_key(running_config)   # heavy key of the running (or ready) Pipeline
        self._failed = None                        # heavy key whose build failed
        self._closed = False
        self.error = None                          # why the latest build (or LIGHT change) failed, while it stands
        self.builds = 0                            # Pipelines built and handed over
        self.discarded = 0                         # builds thrown away because a newer request came
        self._thread = threading.Thread(target=self._run, name="cgrp_fusion_builder", daemon=True)
        self._thread.start()

    def request(self, config) -> None:
        """Ask for `config` (never blocks). The latest request wins."""
        with self._cond:
            self._wanted, self._light_pending = copy.copy(config), True
            if heavy_key(config) == self._target:
                self.error = None  # back to what runs: an earlier failure no longer stands
            self._cond.notify_all()

    def take(self, pipeline):
        """In the worker, between pairs: (the Pipeline to use from now on, whether it is a new one)."""
        with self._cond:
            ready, self._ready = self._ready, None
            wanted, light, self._light_pending = self._wanted, self._light_pending, False
        if ready is not None:
            pipeline, light = ready, True
        if light and wanted is not None and pipeline is not None:
            try:
                pipeline.reconfigure(**{name: getattr(wanted, name) for name in LIGHT})
            except CgrpError as exc:  # (the node checks values before it asks): the running ones stay
                with self._cond:
                    self.error = str(exc)  # stands until the next request (diagnostics ERROR)
                self._on_failed(exc)
        return pipeline, ready is not None

    @property
    def busy(self) -> bool:
        """A build is wanted or running (for tests and diagnostics)."""
        with self._cond:
            return self._needs_build() or self._building

    _building = False

    def _needs_build(self) -> bool:
        if self._wanted is None:
            return False
        key = heavy_key(self._wanted)
        return key != self._target and key != self._failed

    def _run(self):
        while True:
            with self._cond:
                self._building = False
                self._cond.wait_for(lambda: self._closed or self._needs_build())
                if self._closed:
                    return
                config, key, self._building = copy.copy(self._wanted), heavy_key(self._wanted), True
            start = time.monotonic()
            try:
                pipeline = self._build(config)
            except CgrpError as exc:
                with self._cond:
                    self._failed, self.error = key, str(exc)
                self._on_failed(exc)
                continue
            with self._cond:
                if self._closed:
                    return
                if heavy_key(self._wanted) != key:  # superseded while it was built: build the latest next
                    self.discarded += 1
                    continue
                self._ready, self._target, self._failed, self.error = pipeline, key, None, None
                self._light_pending = True  # the new Pipeline gets the latest LIGHT values too
                self.builds += 1
            self._on_built(pipeline, time.monotonic() - start)

    @property
    def thread(self) -> threading.Thread:
        """The thread that builds (a daemon): still alive after close() while a build finishes."""
        return self._thread

    def close(self, timeout: float = 0.5) -> bool:
        """Stop; a build in progress is abandoned (its thread is a daemon and drops the result). False if
        that build is still running after `timeout` s (e.g. inside an ONNX export)."""
        with self._cond:
            self._closed, self._ready = True, None
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()
