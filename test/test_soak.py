"""`cgrp soak` for one minute (issue 5): player + node at 30 Hz on the bundled sequence of one rig (the
node's defaults, self-calibration); no crash, every output well-formed, the rig estimate converged,
resident memory growth after warm-up under 50 MB. The longest test of the suite (~90 s)."""
import json
import subprocess
import sys

import cv2
import pytest

pytest.importorskip("rclpy")


def test_one_minute_soak_keeps_serving_with_bounded_memory(tmp_path):
    out = tmp_path / "soak"
    proc = subprocess.run([sys.executable, "-m", "cgrp_ros.cli", "soak", "--minutes", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "soak.json").read_text())
    totals, memory = report["totals"], report["memory"]
    assert report["ok"] and report["failures"] == []
    assert totals["malformed"] == 0 and totals["outputs_checked"] > 0 and totals["published"] > 0
    assert totals["inference_errors"] == 0 and totals["bad_messages"] == 0
    assert memory["growth_mb"] is not None and memory["growth_mb"] < 50.0, memory
    assert len(report["windows"]) >= 5 and all(w["out"] > 0 for w in report["windows"]), report["windows"]
    # one rig: the self-calibration converges and goes on registering in the background (one every
    # ~2 s: 4-6 per window in a local run, converged from the first window)
    assert all(w["registrations"] > 0 for w in report["windows"]), report["windows"]
    assert "converged" in {w["self_calibration"] for w in report["windows"]}, report["windows"]
    assert (out / "soak.md").is_file() and "cgrp soak: OK" in proc.stdout
    figure = cv2.imread(str(out / "soak.png"))
    assert figure is not None and figure.shape == (660, 900, 3) and "soak.png" in (out / "soak.md").read_text()
    floors, highs = report["memory"]["samples"], report["memory"]["highs"]
    assert len(floors) == len(highs) >= 50 and all(f[1] <= h[1] for f, h in zip(floors, highs))


# RSS samples (s, MB) of the node in one CI run of the soak above: a background registration every 2 s
# spikes 40-85 MB above a flat floor of ~384 MB; the medians of the first and last windows after the
# warm-up differ by 52.6 MB, the floors by 2.9 MB.
CI_RUN_SAMPLES = [
    (1, 415), (2, 376.5), (3, 381.8), (4, 409.1), (5, 382.6), (6.1, 398), (7.1, 385),
    (8.1, 430.9), (9.1, 384.4), (10.1, 400.2), (11.1, 384.4), (12.1, 400.5), (13.1, 384.4), (14.1, 437.5),
    (15.2, 383.5), (16.2, 450.4), (17.2, 386.1), (18.2, 402.1), (19.2, 383.7), (20.2, 443.8), (21.2, 386.3),
    (22.2, 408.9), (23.2, 386.4), (24.2, 445.5), (25.2, 386.1), (26.3, 424.6), (27.3, 387.7), (28.3, 455.6),
    (29.3, 387.1), (30.3, 450.6), (31.3, 394.7), (32.3, 450.9), (33.3, 386.4), (34.3, 449.4), (35.3, 408.6),
    (36.3, 448.5), (37.3, 386.2), (38.3, 449), (39.4, 393.8), (40.4, 449.2), (41.4, 386.4), (42.4, 470.3),
    (43.4, 386.2), (44.4, 447.6), (45.4, 387), (46.4, 470.8), (47.4, 392.8), (48.4, 454.4), (49.4, 386.4),
    (50.5, 456.2), (51.5, 386.4), (52.5, 470.1), (53.5, 437.7), (54.5, 448), (55.5, 394.4), (56.5, 445.1),
    (57.5, 410), (58.5, 446.4), (59.5, 453.9),
]


def test_memory_growth_reads_registration_spikes_as_no_growth_and_a_leak_as_growth():
    from cgrp_ros.evaluation.soak import memory_growth

    baseline, growth = memory_growth(CI_RUN_SAMPLES, warmup=20.0, window=10.0)
    assert baseline == 383.5 and abs(growth) < 5, growth
    leaking = [(t, rss + 1.0 * t) for t, rss in CI_RUN_SAMPLES]  # the same run leaking 1 MB/s
    assert memory_growth(leaking, warmup=20.0, window=10.0)[1] > 30
    assert memory_growth(CI_RUN_SAMPLES[:15], warmup=20.0, window=10.0) == (None, None)  # ended in the warm-up


def test_the_soak_fails_on_a_malformed_output_and_says_which(tmp_path):
    """The soak's judge without a node: a deformation with a NaN, and a fused image of the wrong size,
    are reported by name, the report says why the run failed, and the exit code is 1."""
    import numpy as np
    from sensor_msgs.msg import Image

    from cgrp_ros.ros.image_conversions import numpy_to_image
    from cgrp_ros.ros.soak import Observations, SoakConfig, write_report

    def message(array, encoding, stamp_s):
        msg = numpy_to_image(array, encoding, Image)
        msg.header.stamp.sec = stamp_s
        return msg

    seen = Observations(now=lambda: 1.03)
    visible = Image(height=48, width=64, encoding="bgr8", step=192, data=bytes(48 * 192))
    visible.header.stamp.sec = 1
    seen.on_visible(visible)
    flow = np.zeros((48, 64, 2), np.float32)
    flow[3, 4, 0] = np.nan
    seen.on_output("deformation", message(flow, "32FC2", 1))
    seen.on_output("fused", message(np.zeros((24, 32, 3), np.uint8), "bgr8", 1))
    seen.memory = [(t, 300.0) for t in range(0, 40)]
    row = seen.close_window(t=10.0, span=10.0, deltas={"pairs": 1, "dropped pairs": 0, "registrations": 1})
    assert row["frames_in"] == 1 and row["out"] == 1 and row["latency_p50_ms"] == 30.0
    seen.on_visible(visible)  # in the unfinished last window: counted in the totals when the run ends
    seen.fold_window()
    assert seen.totals["in"] == 2 and seen.windows == [row]

    code = write_report(SoakConfig(out=tmp_path, minutes=0.5), seen, served=True)
    report = json.loads((tmp_path / "soak.json").read_text())
    assert code == 1 and not report["ok"] and report["totals"]["malformed"] == 2
    failure = " ".join(report["failures"])
    assert "deformation: non-finite flow" in failure and "fused: 32x24, the visible image is 64x48" in failure
    interrupted = Observations(now=lambda: 1.0)
    interrupted.failures.append("interrupted")  # Ctrl-C: the report is written, the exit code is the shell's
    assert write_report(SoakConfig(out=tmp_path, minutes=0.5), interrupted, served=False) == 130


def test_a_node_that_dies_is_named_with_its_exit_code_and_log(tmp_path):
    """demo, soak and `bench --ros` stop on the first node that exits and say which, how and why."""
    from cgrp_ros.ros.node_processes import node_exit

    class Process:
        def __init__(self, code):
            self.returncode = code

        def poll(self):
            return self.returncode

    (tmp_path / "ros_player.log").write_text("starting\nplaying 10 pairs\nvisible_dir: no images found\n")
    assert node_exit(Process(None), Process(None), tmp_path, "ros_") is None
    message = node_exit(Process(None), Process(2), tmp_path, "ros_")
    assert message.startswith("cgrp_player exited (2):") and message.endswith("visible_dir: no images found")


def test_the_soak_plays_the_rig_at_your_cameras_resolutions(tmp_path):
    """--cameras: the player's sequence is the bundled one resized to the cameras (a full-HD camera's
    memory and throughput can be soaked); unrelated pairs cannot be resized to one rig's cameras."""
    from cgrp_ros.cli import main
    from cgrp_ros.ros.soak import SoakConfig, soak_parameters

    _, player = soak_parameters(SoakConfig(out=tmp_path, cameras=((90, 160), (60, 80))))
    visible = sorted((tmp_path / player["visible_dir"]).iterdir())
    thermal = sorted((tmp_path / player["thermal_dir"]).iterdir())
    assert len(visible) == len(thermal) == 10 and player["fixed_rig"] == "true"
    assert cv2.imread(str(visible[0])).shape == (90, 160, 3)
    assert cv2.imread(str(thermal[0]), cv2.IMREAD_UNCHANGED).shape[:2] == (60, 80)
    assert main(["soak", "--source", "pairs", "--cameras", "1080x1920", "--out", str(tmp_path / "o")]) == 2


def test_a_soak_shorter_than_its_warm_up_is_refused_before_it_starts(tmp_path, capsys):
    """Memory growth is measured after the warm-up: a run that would end inside it is refused at once,
    not failed after its minutes."""
    from cgrp_ros.cli import main

    assert main(["soak", "--minutes", "0.2", "--out", str(tmp_path / "o")]) == 2
    assert "--warmup 20 s" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["soak", "--warmup", "-1", "--out", str(tmp_path / "o")]) == 2


def test_at_camera_resolutions_the_warm_up_waits_for_the_output_queues_to_fill():
    """A 4-minute soak at 1080x1920 read 'FAIL: resident memory grew 93.4 MB' with a 20 s warm-up: the
    node's memory steps up ~70 MB near 55 s as its reliable output queues of 6-17 MB images fill, then
    stays flat; with 90 s the same run read 35.9 MB, OK."""
    from cgrp_ros.ros.soak import warmup_for

    cameras = ((1080, 1920), (512, 640))
    assert warmup_for(None, 10.0) == 20.0 and warmup_for(cameras, 10.0) == 90.0
    assert warmup_for(cameras, 1.0) == 30.0  # a short run keeps half of it to measure


@pytest.mark.parametrize("args, warmup", [([], 20.0), (["--cameras", "1080x1920,512x640"], 90.0),
                                          (["--cameras", "1080x1920", "--warmup", "15"], 15.0)])
def test_cgrp_soak_takes_the_warm_up_for_its_cameras(monkeypatch, tmp_path, args, warmup):
    import cgrp_ros.ros.soak as soak
    from cgrp_ros.cli import main

    configs = []
    monkeypatch.setattr(soak, "run_soak", lambda config: configs.append(config) or 0)
    assert main(["soak", "--out", str(tmp_path / "o"), *args]) == 0
    assert configs[0].warmup == warmup


def test_two_runs_on_one_machine_get_different_ros_domains():
    """A test run beside a demo (or a second test run) must not share a DDS domain, whatever their pids."""
    from cgrp_ros.ros.node_processes import free_domain

    # another process holds the domain this one would try first; it prints once it holds the lock
    holder = subprocess.Popen([sys.executable, "-c", "import time\n"
                               "from cgrp_ros.ros.node_processes import free_domain\n"
                               "print(free_domain(150, count=1), flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "150"
        mine = free_domain(150, count=3)
        assert mine in (151, 152)
        assert free_domain(150, count=3) not in (150, mine)  # a second claim in this process too
    finally:
        holder.kill()
        holder.wait()


def test_a_domain_whose_lock_file_cannot_be_opened_is_skipped(tmp_path, monkeypatch):
    """Another user's lock file in /tmp (or one fs.protected_regular refuses) ended cgrp demo with
    'Permission denied': that domain is someone else's, the next one is tried."""
    import os
    import tempfile

    from cgrp_ros.ros.node_processes import free_domain

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tried_first = 160 + os.getpid() % 2  # (the search starts at the pid's own domain)
    (tmp_path / f"cgrp_ros_domain_{tried_first}.lock").mkdir()  # cannot be opened as a file, as another user's
    assert free_domain(160, count=2) == 160 + (tried_first + 1) % 2
