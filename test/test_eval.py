"""cgrp eval and cgrp bench end to end on tiny inputs, and the classical baselines' flow convention."""
import csv
import json

import numpy as np
import pytest

from cgrp_ros.cli import main
from cgrp_ros.core import evaluate as E
from cgrp_ros.core.warp import warp_numpy


@pytest.fixture(scope="module")
def scene(smooth_texture):
    return smooth_texture(96, 128, 3)


def test_affine_to_flow_translation():
    flow = E.affine_to_flow(np.array([[1, 0, 2.5], [0, 1, -1.0]]), (4, 5))
    assert np.allclose(flow[..., 0], 2.5) and np.allclose(flow[..., 1], -1.0)


@pytest.mark.parametrize("registrar", ["ecc", "dis"])
def test_classical_registrars_use_the_core_convention(scene, registrar):
    true_flow = np.zeros(scene.shape + (2,), np.float32)
    true_flow[..., 0], true_flow[..., 1] = 3.0, -2.0
    moving = warp_numpy(scene, -true_flow)  # scene(p) = moving(p + true_flow)
    flow = E.ecc_flow(scene, moving) if registrar == "ecc" else E.dis_flow(scene, moving)
    inner = (slice(16, -16), slice(16, -16))
    assert np.median(np.abs(flow[inner] - true_flow[inner])) < 0.5


def test_eval_end_to_end(sample_dir, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(sample_dir), "--limit", "2", "--out", str(out), "--device", "cpu",
                 "--working-size", "64x96", "--figures", "1", "--preset", "mild"]) == 0
    for name in ("report.md", "metrics.csv", "metrics.json", "hist_epe.png", "hist_abs_error.png"):
        assert (out / name).is_file(), name
    assert len(list(out.glob("example_*.png"))) == len(list(out.glob("compare_*.png"))) == 1
    with open(out / "metrics.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == E.COLUMNS
    assert reader.fieldnames[:7] == ["image", "method", "mae", "rmse", "ncc", "mi", "epe"]
    assert len(rows) == 2 * len(E.METHODS)
    assert {(r["image"], r["method"]) for r in rows} == {(i, m) for i in {r["image"] for r in rows} for m in E.METHODS}
    document = json.loads((out / "metrics.json").read_text())
    assert set(document["summary"]) == set(E.METHODS) and document["summary"]["cgrp"]["mae"]["n"] == 2
    report = (out / "report.md").read_text()
    assert "`cgrp`" in report and "**" in report and "Targets" in report


def test_eval_is_deterministic_in_seed(sample_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        main(["eval", "--data", str(sample_dir), "--limit", "1", "--out", str(tmp_path / name), "--device", "cpu",
              "--working-size", "64x96", "--figures", "0"])
        with open(tmp_path / name / "metrics.csv") as f:
            runs.append({r["method"]: r for r in csv.DictReader(f)})
    assert runs[0]["none"] == runs[1]["none"]  # depends on the misalignment only: bit-identical
    for method in E.METHODS:  # OpenCV's parallel ECC may differ in the last digits
        for column in E.COLUMNS[2:]:
            assert float(runs[0][method][column]) == pytest.approx(float(runs[1][method][column]), rel=1e-3, abs=1e-6)


def test_eval_reports_missing_data(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "visible/ and thermal/" in capsys.readouterr().err


def test_bench_writes_json(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--runs", "2", "--warmup", "0", "--sizes", "64x96", "--backends", "torch-cpu,torch-cuda",
                 "--out", str(out)]) == 0
    document = json.loads((out / "bench.json").read_text())
    measured = {r["config"] for r in document["results"]}
    assert "torch-cpu" in measured
    assert measured | {u["config"] for u in document["unavailable"]} == {"torch-cpu", "torch-cuda"}
    stages = document["results"][0]["stages_ms"]
    assert set(stages) == {"preprocess", "generator", "registration", "fusion", "postprocess", "total"}
    assert stages["total"]["p95"] >= stages["total"]["p50"] > 0
    assert (out / "bench.md").read_text().count("|") > 10


def test_bench_names_every_backend_and_says_why_one_cannot_run():
    from cgrp_ros.core.bench import configurations

    configs = {c.label: c for c in configurations()}
    assert set(configs) == {"torch-cpu", "torch-cuda", "torch-cuda-fp16",
                            "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt"}
    assert configs["onnxruntime-cuda"].onnx_providers == ("CUDAExecutionProvider",)
    assert configs["onnxruntime-tensorrt"].onnx_providers[0] == "TensorrtExecutionProvider"
    for config in configs.values():
        assert config.available or config.reason.startswith("not available on this machine")


def test_an_explicit_gpu_provider_without_a_gpu_falls_back_to_cpu(caplog):
    from cgrp_ros.core.backends import OnnxBackend, nvidia_driver_present
    from cgrp_ros.core.pipeline import PipelineConfig

    if nvidia_driver_present():
        pytest.skip("this machine has a GPU")
    backend = OnnxBackend(PipelineConfig().model_paths(), device="cuda", providers=("CUDAExecutionProvider",))
    assert backend.providers == ["CPUExecutionProvider"] and backend.device == "cpu"
    assert "falling back to CPU" in caplog.text
