"""Shared test setup: an isolated DDS domain over shared memory for every test run, sample data."""
import os
from pathlib import Path

import pytest

from cgrp_ros.ros.node_processes import free_domain

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"

# Every test run gets its own ROS domain and talks over shared memory only (no sockets):
# parallel runs on one machine never see each other (each holds its domain's lock) and nothing leaves
# the machine.
if "ROS_DOMAIN_ID" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(free_domain(100))
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "SHM")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("CGRP_CACHE", str(REPO / ".pytest_cache" / "cgrp"))
# One OpenMP thread per process (node subprocesses inherit it): a test run has several processes on a few
# cores, and torch's threads, each waiting for a core another process holds, made a frame up to 20x
# slower on 2 cores (1.7 s against 23 s, measured 2026-12-07). Tests check behaviour, not speed.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sample_pairs():
    """[(name, visible BGR uint8, thermal uint8)] of the bundled RoadScene val pairs."""
    import cv2

    names = sorted(p.stem for p in (SAMPLE / "visible").glob("*.jpg"))
    return [(n, cv2.imread(str(SAMPLE / "visible" / f"{n}.jpg")), cv2.imread(str(SAMPLE / "thermal" / f"{n}.jpg"), 0))
            for n in names]


@pytest.fixture(scope="session")
def cpu_pipeline():
    """The shipped weights on the torch CPU backend (built once per test session)."""
    from cgrp_ros.core.pipeline import Pipeline, PipelineConfig

    return Pipeline(PipelineConfig(backend="torch", device="cpu"))


@pytest.fixture(scope="session")
def smooth_texture():
    """make(height, width, sigma) -> a deterministic blurred-noise uint8 image (matchable texture)."""
    import cv2
    import numpy as np

    def make(height, width, sigma):
        noise = np.random.default_rng(0).integers(0, 256, (height, width)).astype(np.float32)
        image = cv2.GaussianBlur(noise, (0, 0), sigma)
        return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)

    return make


@pytest.fixture(scope="session")
def m3svd_pairs():
    """[(name, visible BGR uint8, thermal uint8)] of the bundled M3SVD val frames (a second rig)."""
    import cv2

    folder = SAMPLE / "m3svd"
    names = sorted(p.stem for p in (folder / "visible").glob("*.jpg"))
    return [(n, cv2.imread(str(folder / "visible" / f"{n}.jpg")), cv2.imread(str(folder / "thermal" / f"{n}.png"), 0))
            for n in names]
