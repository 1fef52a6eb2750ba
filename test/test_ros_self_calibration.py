"""Online self-calibration (issue 10): cgrp_player plays a real video of one rig (sample/sequence, ten
M3SVD frames, looped) at 10 Hz with ONE fixed `moderate` misalignment; cgrp_fusion runs with its
defaults in its own process. After 5 s the published deformation holds still, is close to the truth,
diagnostics say 'converged', and ~/save_calibration writes a file that `cgrp fuse --calibration` takes."""
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from cgrp_ros.core.deform import misalign, rng_for  # noqa: E402
from cgrp_ros.ros.image_conversions import image_to_numpy  # noqa: E402
from ros_helpers import RELIABLE, RELIABLE_INPUTS, Spinner, documented_diagnostic_keys, start_node, stop_node  # noqa: E402

SEQUENCE = Path(__file__).resolve().parents[1] / "sample" / "sequence"


def truth_flow():
    """The player's one misalignment of the 240 x 320 frames (fixed_rig: rng_for(seed 0, 'rig'))."""
    name = sorted(p.stem for p in (SEQUENCE / "thermal").glob("*.png"))[0]
    thermal = cv2.imread(str(SEQUENCE / "thermal" / f"{name}.png"), 0)
    truth = misalign(thermal, "moderate", rng_for(0, "rig"))
    return truth.flow, truth.valid


def test_the_node_self_calibrates_on_a_fixed_rig_and_saves_the_calibration(tmp_path):
    from cgrp_ros.cli import main as cgrp

    rclpy.init()
    processes = []
    try:
        spinner = Spinner("self_calibration_tester")
        flows, statuses = [], []
        spinner.node.create_subscription(Image, "cgrp_fusion/deformation",
                                         lambda m: flows.append((time.monotonic(), image_to_numpy(m).copy())), RELIABLE)
        spinner.node.create_subscription(DiagnosticArray, "/diagnostics", statuses.append, 10)
        calibration = tmp_path / "rig.yaml"
        node_log, player_log = tmp_path / "fusion.log", tmp_path / "player.log"
        processes.append(start_node("cgrp_ros.ros.fusion_node", node_log, *RELIABLE_INPUTS,
                                    "-p", f"calibration_file:={calibration}", "-p", "outputs:=[deformation]"))
        processes.append(start_node("cgrp_ros.ros.player_node", player_log, "-p", "rate:=10.0", "-p", "deform:=moderate",
                                    "-p", "fixed_rig:=true", "-p", f"visible_dir:={SEQUENCE / 'visible'}",
                                    "-p", f"thermal_dir:={SEQUENCE / 'thermal'}"))
        spinner.wait_for(lambda: flows, 90.0, "the first deformation", processes[0], node_log)
        first = flows[0][0]
        spinner.wait_for(lambda: flows[-1][0] - first >= 5.0, 30.0, "5 s of deformations", processes[0], node_log)

        truth, valid = truth_flow()
        final = flows[-1][1]
        epe = float(np.linalg.norm(final - truth, axis=-1)[valid].mean())
        unregistered = float(np.linalg.norm(truth, axis=-1)[valid].mean())
        last_second = [f for t, f in flows if t >= flows[-1][0] - 1.0]
        shimmer = np.mean([np.linalg.norm(a - b, axis=-1).mean() for a, b in zip(last_second, last_second[1:])])
        # issue 10: within 1.5 px of the truth after 5 s (measured 1.06-1.11 px; 11.2 px unregistered)
        assert epe <= 1.5, (epe, unregistered)
        assert shimmer <= 0.2, shimmer

        def rig_state():
            for array in reversed(statuses):
                for status in array.status:
                    values = {kv.key: kv.value for kv in status.values}
                    if "self-calibration" in values:
                        return values["self-calibration"]
            return None

        spinner.wait_for(lambda: rig_state() == "converged", 5.0, "diagnostics saying converged", processes[0], node_log)
        # the no-ground-truth check in the same status: the estimate lines the edges up better than the
        # misaligned input, and nothing warns
        latest = [status for array in statuses for status in array.status
                  if any(kv.key == "self-calibration" for kv in status.values)][-1]
        values = {kv.key: kv.value for kv in latest.values}
        assert set(values) <= documented_diagnostic_keys(), set(values) - documented_diagnostic_keys()  # docs/ros.md
        edges = values["edge agreement received / rig estimate"]
        received, estimate = (float(v) for v in edges.split(" (")[0].split(" / "))
        assert estimate > received + 0.05, edges
        assert latest.level == DiagnosticStatus.OK and "edges up worse" not in latest.message, latest.message

        client = spinner.node.create_client(Trigger, "cgrp_fusion/save_calibration")
        response = spinner.call(client, Trigger.Request(), 10.0, "the save_calibration answer", processes[0], node_log)
        assert response.success, response.message
        assert calibration.is_file() and "converged" in response.message
        # a later change of another parameter does not adopt the file just written (it would restart the
        # estimate): calibration_file is read at activation and when it is set
        setter = spinner.node.create_client(SetParameters, "cgrp_fusion/set_parameters")
        request = SetParameters.Request(parameters=[Parameter("fusion_scale", value=0.6).to_parameter_msg()])
        assert spinner.call(setter, request, 10.0, "the answer to setting fusion_scale", processes[0],
                            node_log).results[0].successful
        spinner.wait_for(lambda: "parameters changed: fusion_scale" in node_log.read_text(), 5.0,
                         "the parameter change in the log", processes[0], node_log)
        spinner.spin(1.5)
        assert "the rig estimate starts again" not in node_log.read_text() and rig_state() == "converged"
    finally:
        for proc in processes:
            if proc.poll() is None:
                stop_node(proc, signal.SIGINT, timeout=5.0)
        rclpy.try_shutdown()

    # the saved file is a calibration cgrp fuse accepts, and on its own it aligns the rig far better than nothing
    from cgrp_ros.core.calibrate import apply_homography, load_calibration

    name = sorted(p.stem for p in (SEQUENCE / "visible").glob("*.jpg"))[0]
    thermal = cv2.imread(str(SEQUENCE / "thermal" / f"{name}.png"), 0)
    cv2.imwrite(str(tmp_path / f"{name}.png"), misalign(thermal, "moderate", rng_for(0, "rig")).misaligned)
    assert cgrp(["fuse", "--visible", str(SEQUENCE / "visible" / f"{name}.jpg"), "--thermal",
                 str(tmp_path / f"{name}.png"), "--out", str(tmp_path / "fused"), "--calibration", str(calibration),
                 "--device", "cpu"]) == 0
    ys, xs = np.nonzero(valid)
    points = np.stack((xs, ys), 1).astype(float)[::50]
    sampled = truth[points[:, 1].astype(int), points[:, 0].astype(int)]
    mapped = apply_homography(np.linalg.inv(load_calibration(calibration)), points)  # visible px -> thermal px
    error = np.linalg.norm(mapped - (points + sampled), axis=1).mean()
    assert error < 0.3 * unregistered, (error, unregistered)
