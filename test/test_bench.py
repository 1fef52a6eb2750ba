"""cgrp bench: the peers measured beside cgrp, the per-frame profile, and the --ros table (issue 12)."""
import json

import cv2
import numpy as np
import pytest

from cgrp_ros.cli import main
from cgrp_ros.evaluation.bench import PEERS, bench_input, bench_markdown, bench_targets, ecc_blend, homography_blend
from cgrp_ros.core.image import luminance
from cgrp_ros.evaluation.evaluate import misaligned_sample
from cgrp_ros.ros.bench import ros_markdown
from cgrp_ros.ros.node_processes import camera_sequence


def test_bench_measures_the_peers_beside_cgrp(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--runs", "1", "--warmup", "0", "--sizes", "64x96", "--backends", "torch-cpu",
                 "--no-startup", "--out", str(out)]) == 0
    document = json.loads((out / "bench.json").read_text())
    assert [(p["config"], p["size"]) for p in document["peers"]] == [(name, "64x96") for name in PEERS]
    for peer in document["peers"]:
        assert set(peer["stages_ms"]) == {"preprocess", "registration", "fusion", "total"}
        assert peer["stages_ms"]["total"]["p50"] > 0 and peer["fps"] > 0
    text = (out / "bench.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| config | size |"))
    assert header.endswith("| × homography+blend | × ecc+blend |")
    cgrp_row = next(line for line in text.splitlines() if line.startswith("| `torch-cpu` | 64x96 |"))
    assert cgrp_row.split("|")[-3].strip().endswith("×") and cgrp_row.split("|")[-2].strip().endswith("×")
    assert "| `homography+blend` (peer) | 64x96 |" in text and "| `ecc+blend` (peer) | 64x96 |" in text
    assert "Per-frame profile" in text and "| generator % |" in text
    # the pair without its misalignment: the affine stages keep it, so the generator does not run
    result = document["results"][0]
    assert result["aligned"]["stages_ms"]["generator"]["p50"] == 0.0 < result["stages_ms"]["generator"]["p50"]
    assert "| `torch-cpu, aligned` | 64x96 |" in text and "| `torch-cpu, frame` | 64x96 |" in text
    assert document["input"].startswith("bundled pair FLIR_00233") and "misaligned `moderate`" in document["input"]
    assert "\nInput: bundled pair FLIR_00233" in text
    assert document["startup"] == [] and "Start-up" not in text  # --no-startup


def test_the_bench_times_a_real_pair_misaligned_as_asked():
    visible, thermal, description = bench_input((64, 96), "severe")
    assert visible.shape == (64, 96, 3) and thermal.shape == (64, 96) and thermal.dtype == np.uint8
    _, aligned, _ = bench_input((64, 96), "none")
    # a real scene (not flat), and the `severe` preset moved the thermal
    assert aligned.std() > 20 and np.abs(thermal.astype(int) - aligned).mean() > 10
    assert "FLIR_00233" in description and "`severe`" in description


def test_the_bench_times_your_cameras_resolutions(tmp_path):
    """--cameras: the frame is timed at the cameras' resolutions (its full-resolution work included), the
    networks still at the working size; the ROS bench plays the sequence at those resolutions."""
    visible, thermal, description = bench_input((64, 96), cameras=((270, 480), (128, 160)))
    assert visible.shape == (270, 480, 3) and thermal.shape == (128, 160)
    assert "resized to the cameras (HxW, as --cameras): visible 270x480, thermal 128x160" in description
    out = tmp_path / "bench"
    assert main(["bench", "--runs", "1", "--warmup", "0", "--sizes", "64x96", "--backends", "torch-cpu",
                 "--no-startup", "--cameras", "270x480,128x160", "--out", str(out)]) == 0
    assert "visible 270x480, thermal 128x160" in json.loads((out / "bench.json").read_text())["input"]
    assert "Targets: not checked: they are set for inputs at the working size" in (out / "bench.md").read_text()
    folder, played = camera_sequence(tmp_path / "ros", ((90, 160), (60, 80)))
    frames = sorted((folder / "visible").iterdir())
    assert len(frames) == 10 and cv2.imread(str(frames[0])).shape == (90, 160, 3)
    assert cv2.imread(str(sorted((folder / "thermal").iterdir())[0]), cv2.IMREAD_UNCHANGED).shape[:2] == (60, 80)
    assert played.endswith("visible 90x160, thermal 60x80")


def _document(cgrp_ms: float, peer_ms: dict) -> dict:
    """A bench.json document with one cgrp row and peers at 256x320, totals in ms (every percentile alike)."""
    def row(name, stages, total):
        ms = {stage: dict(p50=total / len(stages), p95=total / len(stages), mean=total / len(stages))
              for stage in stages}
        ms["total"] = dict(p50=total, p95=total, mean=total)
        return dict(config=name, size="256x320", stages_ms=ms, fps=1000.0 / total)

    cgrp = row("torch-cpu", ("preprocess", "generator", "registration", "fusion", "postprocess"), cgrp_ms)
    cgrp["peak_rss_mib"] = 90.0
    peers = [row(name, ("preprocess", "registration", "fusion"), ms) for name, ms in peer_ms.items()]
    return dict(results=[cgrp], peers=peers, unavailable=[], startup=[])


def test_markdown_gives_cgrp_time_as_a_multiple_of_each_peer_and_the_stage_shares():
    text = bench_markdown(_document(300.0, {"homography+blend": 0.5, "ecc+blend": 60.0}))
    assert "| 300.0 | 300.0 | 3.33 | 90 (RSS) | 600× | 5.0× |" in text
    assert "| `torch-cpu` | 256x320 | 20 | 20 | 20 | 20 | 20 | 300.0 |" in text  # five equal stages: 20 % each
    assert "| `homography+blend` (peer) | 256x320 | 0.167 / 0.167 | — |" in text


def test_peers_blend_the_visible_luminance_with_the_mapped_thermal():
    visible, thermal, _ = bench_input((64, 96))
    fused, ms = homography_blend(visible, thermal, np.eye(3))
    expected = (luminance(visible).astype(np.int32) + thermal + 1) // 2
    assert fused.shape == (64, 96) and np.abs(fused.astype(np.int32) - expected).max() <= 1
    assert ms["total"] >= ms["registration"] > 0

    # a thermal equal to the visible luminance moved by (2, -1) px: ECC finds the shift back, so the
    # blend is the visible luminance (a blend without registration is ~4 grey levels off on average)
    _, frame, _ = misaligned_sample("none")
    frame = cv2.resize(frame, (104, 72), interpolation=cv2.INTER_AREA)
    visible, moved = frame[4:68, 4:100], luminance(frame)[5:69, 2:98]
    fused, ms = ecc_blend(visible, moved)
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(fused[inner].astype(np.int32) - luminance(visible)[inner]).mean() < 0.5
    assert set(ms) == {"preprocess", "registration", "fusion", "total"}


def test_ros_table_shows_the_rate_ratio_and_the_time_to_first_output():
    document = dict(config="torch-cpu", size="256x320", player_rate_hz=30.0, input_rate_hz=30.0,
                    output_rate_hz=15.0, output_input_ratio=0.5, first_output_s=4.2, measured_s=20.0,
                    latency_ms=dict(p50=120.0, p95=150.0, mean=125.0))
    text = ros_markdown(document)
    assert "| output / input |" in text and "| first output s |" in text
    assert "| 30.0 | 15.00 | 0.50 | 120 | 150 | 20 | 4.2 |" in text
    assert "fused output >= 0.8 x the input rate: MISSED: 0.50 x" in text
    assert "latency p50 <= 80 ms: MISSED: 120 ms" in text
    assert "first fused output <= 5 s after the node is launched: holds: 4.2 s" in text


def test_the_gpu_target_of_issue_12_counts_the_three_networks_only():
    def document(generator, registration, fusion):
        stages = {name: {"p50": ms} for name, ms in (("preprocess", 9.0), ("generator", generator),
                                                     ("registration", registration), ("fusion", fusion),
                                                     ("postprocess", 9.0), ("total", 99.0))}
        row = dict(config="torch-cuda-fp16", size="512x640", fps=10.0, stages_ms=stages)
        return dict(results=[row], unavailable=[], startup=[])

    def verdict(doc):
        return dict(bench_targets(doc))["networks end to end >= 500 pairs/s at 512x640 fp16 on a CUDA GPU"]

    assert verdict(document(0.5, 1.0, 0.4)).startswith("holds: `torch-cuda-fp16` 1.9 ms")  # 526 pairs/s
    assert verdict(document(1.0, 1.0, 0.5)).startswith("MISSED")                          # 400 pairs/s
    assert verdict(dict(results=[], unavailable=[], startup=[])).startswith("not measured")


def test_without_the_sample_folder_the_bench_times_a_synthetic_scene(monkeypatch, tmp_path):
    import cgrp_ros.evaluation.evaluate as E

    monkeypatch.setattr(E, "sample_dir", lambda: tmp_path / "missing")
    name, visible, thermal = E.misaligned_sample("moderate")
    assert name == "synthetic" and visible.shape[:2] == thermal.shape and thermal.dtype == np.uint8
    _, _, aligned = E.misaligned_sample("none")
    assert aligned.std() > 5 and np.abs(thermal.astype(int) - aligned).mean() > 1
    assert "bundled pair synthetic" in bench_input((32, 48))[2]


def test_asking_only_for_what_this_machine_lacks_is_an_error_not_an_empty_table(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "bench"
    assert main(["bench", "--backends", "torch-cuda,torch-cuda-fp16", "--sizes", "64x96", "--out", str(out)]) == 2
    assert "torch-cuda: not available on this machine (torch sees no CUDA GPU)" in capsys.readouterr().err
    assert not out.exists()


def test_a_size_that_does_not_fit_is_refused_before_any_is_measured(tmp_path, capsys):
    """--sizes 256x320,4000x4000 measured the first size for minutes, then refused the second, wrote nothing
    and left an empty --out (an audit); an empty --backends said 'none ... available: ' with nothing named."""
    out = tmp_path / "bench"
    assert main(["bench", "--backends", "torch-cpu", "--sizes", "64x96,4000x4000", "--out", str(out)]) == 2
    out_text, err = capsys.readouterr()
    assert "--sizes: working_size 4000x4000 (HxW) needs about" in err and " at 64x96" not in out_text, (out_text, err)
    assert not out.exists()
    assert main(["bench", "--backends", ",", "--out", str(out)]) == 2
    assert "--backends names no configuration; expected some of torch-cpu" in capsys.readouterr().err
