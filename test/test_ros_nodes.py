"""Process-level behaviour: a corrupt model exits with one line; the player publishes and stops at `count`;
`outputs:=[]` publishes nothing."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ros_helpers import Harness, exit_and_log, play_until_exit, ros_doc  # noqa: E402


def test_corrupt_model_exits_with_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "generator.pt"
    bad.write_bytes(b"not a checkpoint")
    code, lines = exit_and_log("cgrp_ros.ros.fusion_node", tmp_path / "fusion.log", "-p", f"generator_model:={bad}")
    assert code == 2
    assert len(lines) == 1 and str(bad) in lines[0] and lines[0].startswith("cgrp_fusion: error:"), lines


def test_both_cameras_remapped_onto_one_topic_exit_with_one_line(tmp_path):
    code, lines = exit_and_log("cgrp_ros.ros.fusion_node", tmp_path / "fusion.log",
                               "-r", "visible/image:=/camera", "-r", "thermal/image:=/camera")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == ("cgrp_fusion: error: visible/image and thermal/image both resolve to /camera: remap each "
                        "to its own camera")


@pytest.mark.parametrize("argument, words", [("max_width:=-5", "max_width out of range"),
                                             ("rate:=-1", "expecting type 'DOUBLE'"),
                                             ("deform:=wild", "unknown preset 'wild'")])
def test_a_bad_player_parameter_exits_with_one_line(tmp_path, argument, words):
    code, lines = exit_and_log("cgrp_ros.ros.player_node", tmp_path / "player.log", "-p", argument)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("cgrp_player: error:") and words in lines[0], lines


def test_player_publishes_count_pairs_then_exits(tmp_path):
    rclpy.init()
    try:
        log = tmp_path / "player.log"
        code, got = play_until_exit(log, "-p", "count:=30", "-p", "rate:=10.0", "-p", "max_width:=160",
                                    "-p", "deform:=moderate", "-p", "stamp_offset:=0.02", "-p", "jitter:=0.005")
        assert code == 0
        assert got["visible"], "nothing received from the player"
        visible, thermal = got["visible"][-1], got["thermal"][-1]
        assert visible.encoding == "bgr8" and visible.width == 160 and thermal.encoding == "mono8"
        offset = (thermal.header.stamp.sec - visible.header.stamp.sec) + \
                 (thermal.header.stamp.nanosec - visible.header.stamp.nanosec) * 1e-9
        assert 0.015 - 1e-6 <= offset <= 0.025 + 1e-6
        assert len(got["visible"]) <= 30  # (a listener may miss the first ones before discovery)
        assert "published 30 pairs (count 30): done" in log.read_text()
    finally:
        rclpy.try_shutdown()


def test_player_skips_a_pair_it_cannot_read_and_plays_the_others(tmp_path, sample_dir):
    """A truncated JPEG among the folders' pairs: one error line naming it, the other pairs played; it ended
    the player with a traceback. Only unreadable pairs: exit code 1 with a line saying so."""
    import shutil

    for sub in ("visible", "thermal"):
        (tmp_path / sub).mkdir()
    names = sorted(p.name for p in (sample_dir / "visible").glob("*.jpg"))[:3]
    for name in names:
        shutil.copy(sample_dir / "visible" / name, tmp_path / "visible" / name)
        shutil.copy(sample_dir / "thermal" / name, tmp_path / "thermal" / name)
    cut = tmp_path / "visible" / names[1]
    cut.write_bytes(cut.read_bytes()[:300])
    # an array that is no image (it ended the player with a ValueError, or kept it logging for ever)
    shutil.copy(sample_dir / "visible" / names[0], tmp_path / "visible" / "zz_flat.jpg")
    np.save(tmp_path / "thermal" / "zz_flat.npy", np.zeros(5, np.float32))
    rclpy.init()
    try:
        log = tmp_path / "player.log"
        code, got = play_until_exit(log, "-p", f"visible_dir:={tmp_path / 'visible'}", "-p",
                                    f"thermal_dir:={tmp_path / 'thermal'}", "-p", "count:=6", "-p", "rate:=20.0",
                                    "-p", "max_width:=160")
        text = log.read_text()
        assert code == 0, text
        assert text.count("skipping pair 1 from now on") == 1 and "truncated JPEG" in text and "Traceback" not in text
        assert text.count("skipping pair 3 from now on") == 1 and "expected H x W" in text
        assert "published 6 pairs (count 6): done" in text
        for other in names[:1] + names[2:]:
            (tmp_path / "visible" / other).write_bytes(b"not an image")
        code, _ = play_until_exit(log, "-p", f"visible_dir:={tmp_path / 'visible'}", "-p",
                                  f"thermal_dir:={tmp_path / 'thermal'}", "-p", "count:=6")
        assert code == 1 and "no pair could be loaded: stopping" in log.read_text()
    finally:
        rclpy.try_shutdown()


def test_every_player_parameter_is_documented():
    """docs/ros.md's cgrp_player table names every parameter the player declares."""
    import re

    from cgrp_ros.ros.player_node import PlayerNode

    section = ros_doc("## cgrp_player", "## Bags")
    documented = {name for row in re.findall(r"^\| (.+?) \| ", section, re.M) for name in re.findall(r"`(\w+)`", row)}
    rclpy.init()
    try:
        node = PlayerNode()
        declared = set(node.list_parameters([], 0).names) - {"use_sim_time", "start_type_description_service"}  # rclpy's
        node.destroy_node()
    finally:
        rclpy.shutdown()
    assert declared and declared <= documented, declared - documented


def test_outputs_can_be_emptied_and_refilled_at_start_and_while_running(tmp_path):
    """`outputs:=[]` publishes nothing: rclpy hands an empty list over as no value at start-up, and an
    empty array as set at run time has no element type (bytes from rclpy, booleans from a YAML `[]`), so a
    string-array parameter refused it ("Wrong parameter type, expected '9' got '5'")."""
    rclpy.init()
    h = Harness(tmp_path / "cgrp_fusion.log", "-p", "outputs:=[]", outputs=("fused",))
    try:
        h.wait_for(lambda: "outputs none;" in h.log(), 30.0, "the start-up line naming no outputs")

        def set_outputs(type_, value):
            parameter = Parameter("outputs", type_, value).to_parameter_msg()
            reply = h.call(h.set_parameters, SetParameters.Request(parameters=[parameter]), f"outputs := {value}")
            return reply.results[0]

        def pairs_received():
            return int(h.diagnostic_value("pairs") or 0)

        def publish_until_received(count):  # at 10 Hz, until /diagnostics (1 Hz) counts `count` more pairs
            target, due = pairs_received() + count, [0.0]

            def received():
                if time.monotonic() >= due[0]:
                    h.publish_pair()
                    due[0] = time.monotonic() + 0.1
                return pairs_received() >= target

            h.wait_for(received, 20.0, f"{count} more pairs")

        publish_until_received(3)
        assert h.received["fused"] == []

        assert set_outputs(Parameter.Type.STRING_ARRAY, ["fused"]).successful
        h.wait_first_output("the fused output once enabled")
        for type_ in (Parameter.Type.BYTE_ARRAY, Parameter.Type.BOOL_ARRAY):
            assert set_outputs(type_, []).successful, type_
        refused = set_outputs(Parameter.Type.INTEGER_ARRAY, [3])
        assert not refused.successful and "expected a list of names" in refused.reason
        refused = set_outputs(Parameter.Type.STRING_ARRAY, ["fused", "thermal"])
        assert not refused.successful and "'thermal' is not one of" in refused.reason
        # `ros2 param delete`: with dynamic typing rclpy would have undeclared it for good
        refused = set_outputs(Parameter.Type.NOT_SET, None)
        assert not refused.successful and "outputs cannot be deleted; [] publishes nothing" in refused.reason

        publish_until_received(2)  # a pair the node saw after the change: nothing fused from here on
        h.received["fused"].clear()
        publish_until_received(3)
        assert h.received["fused"] == [], "fused published with outputs []"
        assert h.proc.poll() is None and "Traceback" not in h.log()
    finally:
        h.close()
