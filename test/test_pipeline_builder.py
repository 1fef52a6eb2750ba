"""PipelineBuilder (cgrp_ros.ros.pipelines) with a fake, gated build: the worker keeps the running
Pipeline until a new one is ready, only the latest request is built, LIGHT changes build nothing."""
import dataclasses
import threading

from cgrp_ros.core.errors import InputError, ModelLoadError
from cgrp_ros.core.pipeline import PipelineConfig
from cgrp_ros.ros.pipelines import PipelineBuilder


@dataclasses.dataclass
class FakePipeline:
    config: PipelineConfig

    def reconfigure(self, **changes):  # (the real one checks every field: test_pipeline)
        if min(changes.get("working_size", (32, 32))) < 32:
            raise InputError("working_size too small")
        self.config = dataclasses.replace(self.config, **changes)


class GatedBuild:
    """build(config) blocks until `release()`; records what it was asked to build."""

    def __init__(self):
        self.started, self.gate, self.built = threading.Semaphore(0), threading.Semaphore(0), []

    def __call__(self, config):
        self.started.release()
        assert self.gate.acquire(timeout=10)
        if config.backend == "broken":
            raise ModelLoadError("/x.pt", "file not found")
        self.built.append(config.backend)
        return FakePipeline(config)

    def release(self):
        self.gate.release()


def wait(predicate, what):
    event = threading.Event()
    for _ in range(1000):
        if predicate():
            return
        event.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_only_the_latest_request_is_built_and_the_running_pipeline_serves_meanwhile():
    build = GatedBuild()
    running = FakePipeline(PipelineConfig(backend="torch"))
    builder = PipelineBuilder(build, running.config)
    try:
        builder.request(PipelineConfig(backend="onnxruntime"))
        assert build.started.acquire(timeout=10)                     # building 'onnxruntime' ...
        builder.request(PipelineConfig(backend="torch", device="cpu"))  # ... while two newer requests come
        builder.request(PipelineConfig(backend="onnxruntime", device="cpu"))
        assert builder.take(running) == (running, False)             # the worker keeps fusing with the old one
        build.release()                                              # the stale build ends: thrown away
        assert build.started.acquire(timeout=10)                     # the latest is built next
        build.release()
        wait(lambda: builder.builds == 1, "the latest build")
        pipeline, swapped = builder.take(running)
        assert swapped and (pipeline.config.backend, pipeline.config.device) == ("onnxruntime", "cpu")
        assert build.built == ["onnxruntime", "onnxruntime"] and builder.discarded == 1  # 'torch, cpu' never built
    finally:
        builder.close()


def test_light_changes_are_applied_without_a_build():
    build = GatedBuild()
    running = FakePipeline(PipelineConfig(backend="onnxruntime", working_size=(256, 320)))
    builder = PipelineBuilder(build, running.config)
    try:
        builder.request(PipelineConfig(backend="onnxruntime", working_size=(96, 128), agc_8bit=True,
                                       thermal_percentiles=(2.0, 98.0)))
        pipeline, swapped = builder.take(running)
        assert pipeline is running and not swapped
        assert (running.config.working_size, running.config.agc_8bit, running.config.thermal_percentiles) == \
            ((96, 128), True, (2.0, 98.0))
        assert not build.started.acquire(timeout=0.2) and not builder.busy
    finally:
        builder.close()


def test_a_refused_light_change_keeps_the_running_values_and_is_reported():
    running = FakePipeline(PipelineConfig(backend="torch", working_size=(96, 128)))
    failures = []
    builder = PipelineBuilder(GatedBuild(), running.config, on_failed=failures.append)
    try:
        builder.request(PipelineConfig(backend="torch", working_size=(8, 8), agc_8bit=True))
        assert builder.take(running) == (running, False)  # the worker goes on
        assert running.config.working_size == (96, 128) and not running.config.agc_8bit
        assert [str(exc) for exc in failures] == ["working_size too small"]
        assert builder.error == "working_size too small"  # /diagnostics says it (it was only a log line)
        builder.request(PipelineConfig(backend="torch", working_size=(64, 96)))
        assert builder.error is None and builder.take(running) == (running, False)
        assert running.config.working_size == (64, 96)
    finally:
        builder.close()


def test_a_failed_build_keeps_the_running_pipeline_and_reports_until_the_config_changes():
    build = GatedBuild()
    running = FakePipeline(PipelineConfig(backend="torch"))
    failures = []
    builder = PipelineBuilder(build, running.config, on_failed=failures.append)
    try:
        builder.request(PipelineConfig(backend="broken"))
        assert build.started.acquire(timeout=10)
        build.release()
        wait(lambda: builder.error is not None, "the failure")
        assert "file not found" in builder.error and len(failures) == 1
        builder.request(PipelineConfig(backend="broken", working_size=(64, 96)))  # a light change: no retry
        assert not build.started.acquire(timeout=0.2)
        assert builder.take(running) == (running, False) and running.config.working_size == (64, 96)
        builder.request(PipelineConfig(backend="torch", working_size=(64, 96)))  # back to what runs
        assert builder.error is None
    finally:
        builder.close()


def test_close_says_whether_a_build_in_progress_stopped():
    """The node must not wait for a build still inside an ONNX export at exit, nor let the interpreter exit
    under it (SIGINT during a backend change aborted the process): close() tells it which."""
    build = GatedBuild()
    builder = PipelineBuilder(build, PipelineConfig(backend="torch"))
    builder.request(PipelineConfig(backend="onnxruntime"))
    assert build.started.acquire(timeout=10)
    assert builder.close(timeout=0.05) is False   # held in the build
    build.release()
    wait(lambda: builder.close(timeout=0.05), "the abandoned build to end")
    idle = PipelineBuilder(GatedBuild(), PipelineConfig(backend="torch"))
    assert idle.close() is True
