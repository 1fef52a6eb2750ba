"""`cgrp soak` for one minute (issue 5): player + node at 30 Hz on the bundled sequence of one rig (the
node's defaults, self-calibration); no crash, every output well-formed, resident memory growth after
warm-up under 50 MB. The longest test of the suite (~90 s)."""
import json
import subprocess
import sys

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
    assert (out / "soak.md").is_file() and "cgrp soak: OK" in proc.stdout
