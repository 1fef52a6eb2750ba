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


def test_bench_writes_every_stage_and_the_startup_and_names_what_it_could_not_run(tmp_path):
    """`cgrp bench` with the start-up timed (the default): bench.json has each stage's percentiles, the
    start-up per backend, and the backends this machine cannot run with the reason (torch-cuda without a
    GPU); bench.md has the tables. (`--no-startup`: test_bench.py.)"""
    out = tmp_path / "bench"
    assert main(["bench", "--runs", "2", "--warmup", "0", "--sizes", "64x96", "--backends", "torch-cpu,torch-cuda",
                 "--out", str(out)]) == 0
    document = json.loads((out / "bench.json").read_text())
    measured = {r["config"] for r in document["results"]}
    assert "torch-cpu" in measured
    assert measured | {u["config"] for u in document["unavailable"]} == {"torch-cpu", "torch-cuda"}
    assert all(u["reason"] for u in document["unavailable"])
    stages = document["results"][0]["stages_ms"]
    assert set(stages) == {"preprocess", "generator", "registration", "fusion", "postprocess", "total"}
    assert stages["total"]["p95"] >= stages["total"]["p50"] > 0
    assert [r["config"] for r in document["startup"]] == sorted(measured)
    text = (out / "bench.md").read_text()
    assert "| `torch-cpu` | 64x96 |" in text and "Start-up" in text and "| `torch-cpu` | n/a |" in text
