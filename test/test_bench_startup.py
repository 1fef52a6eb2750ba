"""cgrp bench's start-up times: seconds to build a Pipeline per backend (issue 11, item 7)."""
import json

from cgrp_ros.cli import main
from cgrp_ros.evaluation.bench import Config, bench_markdown, bench_targets, startup_times


def test_startup_times_per_backend_and_cache_state():
    rows = startup_times([Config("torch-cpu", "torch", "cpu"), Config("onnxruntime-cpu", "onnxruntime", "cpu"),
                          Config("torch-cuda", "torch", "cuda", available=False, reason="no GPU")], cold=False)
    assert [(r["config"], r["cache"]) for r in rows] == [("torch-cpu", "n/a"), ("onnxruntime-cpu", "warm")]
    assert all(r["seconds"] > 0 for r in rows)  # (how fast: the bench's figure, not a unit test's)
    document = dict(results=[], unavailable=[], startup=rows)
    text = bench_markdown(document)
    assert "| `onnxruntime-cpu` | warm |" in text and "start-up s" in text
    target, verdict = bench_targets(document)[-1]
    assert "warm ONNX cache" in target and verdict.split(":")[0] in ("holds", "MISSED")  # (this machine's own)
    # the verdict follows the seconds (rows of known seconds; a real start-up time is a benchmark's figure)
    for seconds, expected in ((1.5, "holds: 1.50 s"), (4.0, "MISSED: 4.00 s")):
        row = dict(config="onnxruntime-cpu", cache="warm", seconds=seconds)
        assert bench_targets(dict(results=[], unavailable=[], startup=[row]))[-1][1] == expected


def test_bench_json_has_startup(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--runs", "1", "--warmup", "0", "--sizes", "64x96", "--backends", "torch-cpu",
                 "--out", str(out)]) == 0
    document = json.loads((out / "bench.json").read_text())
    assert [(r["config"], r["cache"]) for r in document["startup"]] == [("torch-cpu", "n/a")]
    assert "Start-up" in (out / "bench.md").read_text()
    assert main(["bench", "--runs", "1", "--warmup", "0", "--sizes", "64x96", "--backends", "torch-cpu",
                 "--no-startup", "--out", str(out)]) == 0
    assert json.loads((out / "bench.json").read_text())["startup"] == []
