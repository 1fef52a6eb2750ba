"""`cgrp fuse` and `cgrp export` end to end, as a user runs them."""
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def cgrp(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "cgrp_ros.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pair_folders(tmp_path_factory, sample_dir):
    """Two sample pairs (thermal as .png: extensions may differ), one corrupt thermal, one orphan."""
    root = tmp_path_factory.mktemp("pairs")
    vis, th = root / "visible", root / "thermal"
    vis.mkdir(), th.mkdir()
    names = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[:2]
    for n in names:
        shutil.copy(sample_dir / "visible" / f"{n}.jpg", vis)
        cv2.imwrite(str(th / f"{n}.png"), cv2.imread(str(sample_dir / "thermal" / f"{n}.jpg"), 0))
    shutil.copy(sample_dir / "visible" / f"{names[0]}.jpg", vis / "broken.jpg")
    (th / "broken.png").write_bytes(b"this is not a png")
    shutil.copy(sample_dir / "visible" / f"{names[1]}.jpg", vis / "orphan.jpg")
    # a JPEG cut short (a copy interrupted): libjpeg would decode it with a grey bottom and only print a warning
    (vis / "cut.jpg").write_bytes((sample_dir / "visible" / f"{names[0]}.jpg").read_bytes()[:3000])
    shutil.copy(th / f"{names[0]}.png", th / "cut.png")
    return vis, th, names


@pytest.fixture(scope="module")
def fuse_run(pair_folders, tmp_path_factory):
    vis, th, names = pair_folders
    out = tmp_path_factory.mktemp("fused")
    return cgrp("fuse", "--visible", vis, "--thermal", th, "--out", out, "--video", out / "fused.mp4", "--fps", "5"), \
        out, names


def test_fuse_writes_every_output_for_every_good_pair(fuse_run, pair_folders):
    proc, out, names = fuse_run
    vis, _, _ = pair_folders
    for n in names:
        visible = cv2.imread(str(vis / f"{n}.jpg"))
        fused = cv2.imread(str(out / "fused" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        assert fused.shape == visible.shape  # colour visible -> colour fused
        assert cv2.imread(str(out / "registered" / f"{n}.png"), 0).shape == visible.shape[:2]
        assert cv2.imread(str(out / "pseudo" / f"{n}.png"), 0).shape == visible.shape[:2]
        flow = np.load(out / "flow" / f"{n}.npy")
        assert flow.shape == visible.shape[:2] + (2,) and flow.dtype == np.float32
        assert cv2.imread(str(out / "flow_vis" / f"{n}.png")).shape == visible.shape
        assert cv2.imread(str(out / "alignment" / f"{n}.jpg")) is not None  # the edges, for a person to judge
    assert sorted(p.stem for p in (out / "alignment").iterdir()) == sorted(names)


def test_fuse_video_has_a_frame_per_fused_pair(fuse_run):
    """--video: a frame per good pair (not the broken one) at --fps, five labelled tiles side by side."""
    proc, out, names = fuse_run
    video = cv2.VideoCapture(str(out / "fused.mp4"))
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == len(names) and video.get(cv2.CAP_PROP_FPS) == 5
    height, width = frames[0].shape[:2]
    assert height == 360 + 22 and width > 4 * height  # VIDEO_TILE_HEIGHT and its label, five tiles wide
    assert f"video of {len(names)} pair(s) at 5 fps" in proc.stdout


def test_fuse_video_name_is_checked_before_anything_runs(pair_folders, tmp_path):
    vis, th, _ = pair_folders
    proc = cgrp("fuse", "--visible", vis, "--thermal", th, "--out", tmp_path / "out", "--video", tmp_path / "v.gif")
    assert proc.returncode == 2 and "must end in .mp4 or .avi" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_fuse_writes_the_registration_confidence_of_every_fused_pair(fuse_run):
    _, out, names = fuse_run
    with open(out / "registration.csv") as f:
        reader = csv.DictReader(f)
        rows = {r["name"]: r for r in reader}
    assert reader.fieldnames == ["name", "registration_confidence", "registration_fallback", "mean_flow_px",
                                 "edge_agreement_input", "edge_agreement_registered"]
    assert sorted(rows) == sorted(names)  # not the broken pair
    for n in names:
        assert 0.0 <= float(rows[n]["registration_confidence"]) <= 1.0
        assert rows[n]["registration_fallback"] in ("0", "1")
        # aligned sample pairs: the registration leaves them where they are (the column checked against the
        # written flow on a shifted pair below), and their edges meet before registration and still after it
        # (measured 2026-12-06: flow exactly 0, mean_flow_px 0.000; edges 0.3915 and 0.3251, unchanged)
        assert float(rows[n]["mean_flow_px"]) < 0.5
        assert float(rows[n]["edge_agreement_input"]) > 0.2
        assert float(rows[n]["edge_agreement_registered"]) > float(rows[n]["edge_agreement_input"]) - 0.02


def test_fuse_tells_which_pairs_the_registration_lined_up(sample_dir, tmp_path):
    """No ground truth on a user's own recordings: registration.csv's edge columns and the summary line
    say that the registration lined up a misaligned pair and left an aligned one as it was; its
    mean_flow_px says by how much it moved the misaligned one."""
    vis, th = tmp_path / "visible", tmp_path / "thermal"
    vis.mkdir(), th.mkdir()
    n = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    thermal = cv2.imread(str(sample_dir / "thermal" / f"{n}.jpg"), 0)
    shifted = cv2.warpAffine(thermal, np.float32([[1, 0, 9], [0, 1, -6]]), thermal.shape[::-1],
                             borderMode=cv2.BORDER_REFLECT)  # the thermal camera 9 px right, 6 px up
    for name, image in (("aligned", thermal), ("shifted", shifted)):
        shutil.copy(sample_dir / "visible" / f"{n}.jpg", vis / f"{name}.jpg")
        cv2.imwrite(str(th / f"{name}.png"), image)
    proc = cgrp("fuse", "--visible", vis, "--thermal", th, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "out" / "registration.csv") as f:
        rows = {r["name"]: {k: float(v) for k, v in r.items() if k.startswith(("edge", "mean"))}
                for r in csv.DictReader(f)}
    assert rows["shifted"]["edge_agreement_input"] < rows["aligned"]["edge_agreement_input"] - 0.2
    assert rows["shifted"]["edge_agreement_registered"] > rows["shifted"]["edge_agreement_input"] + 0.2
    assert abs(rows["aligned"]["edge_agreement_registered"] - rows["aligned"]["edge_agreement_input"]) <= 0.01
    # mean_flow_px is the mean magnitude of the flow written to flow/NAME.npy, and on the shifted pair that
    # flow undoes the shift: about |(9, -6)| = 10.8 px (measured 2026-12-06: 11.127 px, mean flow (9.04, -6.45);
    # edges 0.0012 as received, 0.4583 registered)
    flow = np.load(tmp_path / "out" / "flow" / "shifted.npy")
    assert rows["shifted"]["mean_flow_px"] == pytest.approx(np.hypot(flow[..., 0], flow[..., 1]).mean(), rel=1e-3)
    assert abs(rows["shifted"]["mean_flow_px"] - np.hypot(9, 6)) < 1.5
    np.testing.assert_allclose(flow.reshape(-1, 2).mean(axis=0), (9, -6), atol=1.5)
    assert "better on 1, worse on 0 of 2 pair(s)" in proc.stdout

    # and a person sees it: OUT/alignment/NAME.jpg, the edges as received (left) and as registered (right),
    # white where both cameras' edges coincide
    from cgrp_ros.evaluation.report import ALIGNMENT_TILE_HEIGHT, LABEL_HEIGHT

    def coinciding_edges(name):  # white pixels in the whole-view tiles: (input, registered)
        picture = cv2.imread(str(tmp_path / "out" / "alignment" / f"{name}.jpg"))
        views = picture[2 * LABEL_HEIGHT:2 * LABEL_HEIGHT + ALIGNMENT_TILE_HEIGHT]
        white = views.min(axis=2) > 128
        half = white.shape[1] // 2
        return int(white[:, :half].sum()), int(white[:, half:].sum())
    received, registered = coinciding_edges("shifted")
    assert registered > 1.5 * received, (received, registered)
    received, registered = coinciding_edges("aligned")
    assert abs(registered - received) < 0.1 * received, (received, registered)


def test_low_registration_confidence_is_a_warning_not_an_error(sample_dir, tmp_path, monkeypatch, capsys):
    from cgrp_ros.cli import main
    from cgrp_ros.commands import fuse
    from cgrp_ros.core.pipeline import FusionResult, Pipeline

    class LowConfidence:  # stands in for the Pipeline: a pair with too little shared structure
        confidence_threshold = 0.3
        homography = None
        visible_to_thermal, thermal_in_visible = Pipeline.visible_to_thermal, Pipeline.thermal_in_visible
        per_flow, _thermal_maps = Pipeline.per_flow, Pipeline._thermal_maps
        input_warnings, stretch_warning = Pipeline.input_warnings, Pipeline.stretch_warning

        def __call__(self, visible, thermal, outputs=None):
            h, w = visible.shape[:2]
            return FusionResult(fused=visible[:, :, 0], fused_color=visible, registered_thermal=thermal,
                                flow=np.zeros((h, w, 2), np.float32), pseudo_thermal=visible[:, :, 0],
                                registration_confidence=0.12, registration_fallback=True)

    monkeypatch.setattr(fuse, "pipeline_from_args", lambda args: LowConfidence())
    n = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    assert main(["fuse", "--visible", str(sample_dir / "visible" / f"{n}.jpg"),
                 "--thermal", str(sample_dir / "thermal" / f"{n}.jpg"), "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert f"warning: {n}: low registration confidence 0.120: registered with the prior" in captured.err
    assert "1 with low registration confidence" in captured.out
    with open(tmp_path / "registration.csv") as f:
        row, = csv.DictReader(f)
    edges = row.pop("edge_agreement_input"), row.pop("edge_agreement_registered")
    assert row == dict(name=n, registration_confidence="0.1200", registration_fallback="1", mean_flow_px="0.000")
    assert edges[0] == edges[1] and float(edges[0]) > 0.2  # the prior alone: the pair as it came
    assert (tmp_path / "fused" / f"{n}.png").is_file()


def test_fuse_names_the_bad_files_and_fails_without_a_traceback(fuse_run):
    proc, out, _ = fuse_run
    assert proc.returncode != 0
    assert "broken.png" in proc.stderr and "not a readable image" in proc.stderr
    assert "orphan.jpg" in proc.stderr and "no partner" in proc.stderr
    assert "cut.jpg: a truncated JPEG (no end-of-image marker)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "fused" / "broken.png").exists()


def test_fuse_single_files(sample_dir, tmp_path):
    n = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    proc = cgrp("fuse", "--visible", sample_dir / "visible" / f"{n}.jpg",
                "--thermal", sample_dir / "thermal" / f"{n}.jpg", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    visible = cv2.imread(str(sample_dir / "visible" / f"{n}.jpg"))
    fused = cv2.imread(str(tmp_path / "fused" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
    # at the visible camera's resolution, and not the visible image passed through: the thermal is in it
    assert fused.shape[:2] == visible.shape[:2]
    grey = cv2.cvtColor(visible, cv2.COLOR_BGR2GRAY).astype(float)
    fused_grey = (fused if fused.ndim == 2 else cv2.cvtColor(fused, cv2.COLOR_BGR2GRAY)).astype(float)
    assert np.abs(fused_grey - grey).mean() > 5.0


def test_missing_model_is_one_clear_line(sample_dir, tmp_path):
    (tmp_path / "models").mkdir()
    proc = cgrp("fuse", "--visible", sample_dir / "visible", "--thermal", sample_dir / "thermal",
                "--out", tmp_path / "out", "--models", tmp_path / "models")
    assert proc.returncode == 2
    assert "generator.pt" in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_model_is_one_clear_line(sample_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models, ignore=shutil.ignore_patterns("onnx", "*.md"))
    (models / "registration.pt").write_bytes(b"\x00garbage")
    proc = cgrp("fuse", "--visible", sample_dir / "visible", "--thermal", sample_dir / "thermal",
                "--out", tmp_path / "out", "--models", models)
    assert proc.returncode == 2
    assert "registration.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_export_writes_onnx_that_matches_torch_and_fuse_runs_it(tmp_path, sample_dir):
    onnx = tmp_path / "onnx"
    proc = cgrp("export", "--out", onnx)
    assert proc.returncode == 0, proc.stderr
    for graph in ("generator", "registration_coarse", "registration_fine", "registration_coarse_calibrated",
                  "registration_fine_calibrated", "registration_dense", "fusion"):
        assert (onnx / f"{graph}.onnx").stat().st_size > 10_000
    # searching, and from a calibration: the flow, and the generator's and the fusion network's 8-bit outputs
    # (the flow alone passed a fusion.onnx of other weights)
    assert proc.stdout.count("within tolerance") == 6, proc.stdout
    stamp = (onnx / "exported_from.txt").read_text().splitlines()
    assert stamp[1].startswith("generator: ") and len(stamp) == 4
    # graphs of other weights than those given (a retrain, the graphs not exported again) are said so
    (onnx / "exported_from.txt").write_text("0123456789abcdef\ngenerator: /old/generator.pt\n")
    exported = {p.name: p.stat().st_mtime_ns for p in onnx.iterdir()}
    name = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    proc = cgrp("fuse", "--visible", sample_dir / "visible" / f"{name}.jpg", "--thermal",
                sample_dir / "thermal" / f"{name}.jpg", "--out", tmp_path / "out", "--backend", "onnxruntime",
                "--onnx-dir", onnx, "--working-size", "64x96")
    assert proc.returncode == 0, proc.stderr
    assert f"the graphs in {onnx} were exported from other weights or code (generator: /old/generator.pt)" in proc.stderr
    assert (tmp_path / "out" / "fused" / f"{name}.png").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in onnx.iterdir()} == exported  # those graphs, none exported again


def test_fuse_list_and_limit_pick_the_pairs(sample_dir, tmp_path):
    names = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))
    (tmp_path / "some.txt").write_text(f"# two of them\n{names[3]}.jpg\n\n{names[1]}\n")
    proc = cgrp("fuse", "--visible", sample_dir / "visible", "--thermal", sample_dir / "thermal",
                "--out", tmp_path / "out", "--list", tmp_path / "some.txt", "--limit", "1", "--working-size", "96x128")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.stem for p in (tmp_path / "out" / "fused").iterdir()) == [names[1]]  # listed, first by name


def test_listed_names_without_a_pair_and_two_files_of_one_name_are_reported(sample_dir, tmp_path):
    """A typo in --list is a problem named in the output (fuse: exit 1; eval: refused before it runs), not a
    silently smaller run; x.jpg beside x.png is a warning naming the one used."""
    name = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    for sub in ("visible", "thermal"):
        (tmp_path / "data" / sub).mkdir(parents=True)
        shutil.copy(sample_dir / sub / f"{name}.jpg", tmp_path / "data" / sub / f"{name}.jpg")
    shutil.copy(sample_dir / "visible" / f"{name}.jpg", tmp_path / "data" / "visible" / f"{name}.png")
    (tmp_path / "list.txt").write_text(f"{name}.jpg\nFLIR_TYPO.jpg\n")
    data = tmp_path / "data"
    proc = cgrp("fuse", "--visible", data / "visible", "--thermal", data / "thermal", "--out", tmp_path / "out",
                "--list", tmp_path / "list.txt", "--working-size", "64x96")
    assert proc.returncode == 1, proc.stderr
    assert "FLIR_TYPO: listed, but in neither folder" in proc.stderr
    assert f"{data / 'visible' / name}.png: the same name as {data / 'visible' / name}.jpg, which is used" in proc.stderr
    assert (tmp_path / "out" / "fused" / f"{name}.png").is_file()  # the pair that is there is still fused
    proc = cgrp("fuse", "--visible", data / "visible" / f"{name}.jpg", "--thermal", data / "thermal" / f"{name}.jpg",
                "--out", tmp_path / "out", "--working-size", "64x96")  # into the same folder again: said
    assert proc.returncode == 0 and f"{tmp_path / 'out'} holds an earlier run's results" in proc.stderr
    proc = cgrp("eval", "--data", data, "--list", tmp_path / "list.txt", "--out", tmp_path / "eval",
                "--methods", "none")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"1 name(s) of {tmp_path / 'list.txt'} have no pair: FLIR_TYPO" in proc.stderr


@pytest.mark.parametrize("command", ["fuse", "calibrate", "eval"])
def test_a_missing_list_file_is_one_clear_line(sample_dir, tmp_path, command):
    inputs = ["--data", sample_dir] if command == "eval" else ["--visible", sample_dir / "visible", "--thermal",
                                                               sample_dir / "thermal"]
    out = tmp_path / ("rig.yaml" if command == "calibrate" else "out")
    proc = cgrp(command, *inputs, "--out", out, "--list", tmp_path / "missing.txt")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'missing.txt'}: cannot read the list of names" in proc.stderr


def test_bad_homography_and_unwritable_output_are_one_clear_line(sample_dir, tmp_path):
    """No traceback for what a user gets wrong: a .npy that is no matrix, a text file of 5 numbers, a
    matrix of strings, a translation that overflows (it fused with a NaN flow and exit 0), an output
    folder under a file."""
    n = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    pair = ["--visible", sample_dir / "visible" / f"{n}.jpg", "--thermal", sample_dir / "thermal" / f"{n}.jpg"]
    (tmp_path / "h.npy").write_bytes(b"not a numpy file")
    (tmp_path / "h.txt").write_text("1 0 0 0 1\n")
    np.save(tmp_path / "strings.npy", np.full((3, 3), "a"))
    (tmp_path / "far.txt").write_text("1 0 1e300\n0 1 0\n0 0 1\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "rig.yaml").write_text("homography: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\n")
    cases = [(["--homography", tmp_path / "h.npy", "--out", tmp_path / "o1"], "cannot read a 3x3 matrix"),
             (["--homography", tmp_path / "rig.yaml", "--out", tmp_path / "o5"], "cgrp calibrate goes to --calibration"),
             (["--homography", tmp_path / "h.txt", "--out", tmp_path / "o2"], "must be a 3x3 matrix, got shape (5,)"),
             (["--homography", tmp_path / "strings.npy", "--out", tmp_path / "o3"], "not a 3x3 matrix of numbers"),
             (["--homography", tmp_path / "far.txt", "--out", tmp_path / "o4"], "too large for a camera rig"),
             (["--out", tmp_path / "a_file" / "out"], f"{tmp_path / 'a_file'}")]
    for extra, words in cases:
        proc = cgrp("fuse", *pair, *extra, "--working-size", "96x128")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert words in proc.stderr.strip().splitlines()[-1], proc.stderr
    proc = cgrp("calibrate", "--visible", sample_dir / "visible", "--thermal", sample_dir / "thermal",
                "--out", tmp_path / "a_file" / "rig.yaml")
    assert proc.returncode == 2 and f"cannot write {tmp_path / 'a_file' / 'rig.yaml'}" in proc.stderr
    assert "scale search" not in proc.stderr  # refused before any work
    proc = cgrp("calibrate", "--visible", sample_dir / "visible", "--thermal", sample_dir / "thermal",
                "--out", tmp_path)  # a folder, as cgrp fuse takes: refused before the work, nothing written
    assert proc.returncode == 2 and f"e.g. {tmp_path / 'rig.yaml'}" in proc.stderr, proc.stderr
    assert "scale search" not in proc.stderr and not list(tmp_path.parent.glob(tmp_path.name + ".*tmp"))


def test_eval_rig_refuses_pictures_that_are_not_one_video(sample_dir, tmp_path):
    """The bundled RoadScene pictures share the name stem FLIR_ but not a size: not a sequence of one rig."""
    proc = cgrp("eval", "--rig", "--data", sample_dir, "--limit", "2", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "sequence 'FLIR' (frames named FLIR_NNNN) mixes image sizes" in proc.stderr


@pytest.mark.parametrize("command, words", [
    (["demo", "--frames", "0"], "argument --frames: must be > 0"), (["soak", "--minutes", "-1"], "must be > 0"),
    (["demo", "--rate", "x"], "argument --rate: expected a number"), (["eval", "--seed", "-1"], "must be >= 0"),
    (["eval", "--limit", "0"], "must be > 0"), (["fuse", "--limit", "0"], "must be > 0"),
    (["calibrate", "--refinements", "-1"], "must be >= 0"), (["calibrate", "--every", "0"], "must be > 0"),
    (["bench", "--ros", "--duration", "0"], "must be > 0"),
    (["fuse", "--slop", "-1", "--out", "x"], "argument --slop: must be >= 0"),
    (["fuse", "--fps", "0", "--out", "x"], "argument --fps: must be > 0"),
    (["fuse", "--queue-size", "0", "--out", "x"], "argument --queue-size: must be > 0"),
    (["eval", "--rig", "--registration-rate", "0"], "argument --registration-rate: must be > 0"),
    (["bench", "--cameras", "1080x1920,512x640,256x320"], "expected HxW or HxW,HxW (visible, thermal)"), (["train", "fusion", "--threads", "-1"], "must be > 0"),
    (["train", "global", "--preset", "wild"], "unknown preset 'wild'"),
    (["train", "fusion", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["demo", "--models", "/nonexistent"], "cannot load model '/nonexistent/generator.pt': file not found")])
def test_counts_and_rates_are_checked_when_parsed(command, words, capsys):
    from cgrp_ros.cli import main

    try:
        code = main(command)  # in this process: argparse exits, a refused configuration returns 2
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and words in capsys.readouterr().err


def test_a_file_and_a_folder_or_reversed_percentiles_are_refused_at_once(sample_dir, tmp_path):
    n = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    proc = cgrp("fuse", "--visible", sample_dir / "visible" / f"{n}.jpg", "--thermal", sample_dir / "thermal",
                "--out", tmp_path / "o1")
    assert proc.returncode == 2 and "give two files or two folders" in proc.stderr
    proc = cgrp("fuse", "--visible", sample_dir / "visible", "--thermal", sample_dir / "thermal", "--out",
                tmp_path / "o2", "--thermal-percentiles", "99", "1")
    assert proc.returncode == 2 and "percentiles must satisfy 0 <= low < high <= 100" in proc.stderr
    assert not (tmp_path / "o2").exists()  # refused before any pair


def test_eval_refuses_a_benchmarks_file_it_could_not_write_before_evaluating(sample_dir, tmp_path, capsys):
    from cgrp_ros.cli import main

    (tmp_path / "a_file").write_text("x")
    code = main(["eval", "--data", str(sample_dir), "--limit", "1", "--out", str(tmp_path / "out"),
                 "--write-benchmarks", str(tmp_path / "a_file" / "benchmarks.md")])
    assert code == 2 and f"{tmp_path / 'a_file'} is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing evaluated


def test_folders_named_differently_are_summarised_with_an_example_of_each(sample_dir, tmp_path, capsys):
    """Thermal files named `x_ir.jpg` beside visible `x.jpg`: no pair. The terminal gets ten names, a
    count of the rest and an example from each folder, not one line per file."""
    from cgrp_ros.cli import main

    (tmp_path / "v").mkdir(), (tmp_path / "t").mkdir()
    for i in range(15):
        shutil.copy(sample_dir / "visible" / "FLIR_00233.jpg", tmp_path / "v" / f"f{i:02d}.jpg")
        shutil.copy(sample_dir / "thermal" / "FLIR_00233.jpg", tmp_path / "t" / f"f{i:02d}_ir.jpg")
    for command in ("fuse", "calibrate"):
        out = tmp_path / ("o" if command == "fuse" else "rig.yaml")
        assert main([command, "--visible", str(tmp_path / "v"), "--thermal", str(tmp_path / "t"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("no partner") == 10 and "... and 20 more" in err, err
        assert "'f00.jpg'" in err and "'f00_ir.jpg'" in err and "no visible/thermal pairs found" in err
    # an empty --visible folder is said so, in one line (it was "no partner" for each thermal image)
    (tmp_path / "empty").mkdir()
    assert main(["fuse", "--visible", str(tmp_path / "empty"), "--thermal", str(tmp_path / "t"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty'}: no images in this folder (read: .bmp," in err and "no partner" not in err, err


def test_flow_pictures_carry_their_scale_and_a_colour_key():
    """flow_vis/ and the demo's flow pictures were scaled to each one's own maximum with no key: a 0.1 px
    flow looked like 60 px, and no flow was a blank white image."""
    from cgrp_ros.core.warp import flow_to_color
    from cgrp_ros.evaluation.report import flow_picture

    flow = np.zeros((120, 160, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -4.0  # 5 px, right and up
    picture = flow_picture(flow)
    plain = flow_to_color(flow)
    assert picture.shape == plain.shape and picture.dtype == np.uint8
    assert picture[2:10, 2:40].mean() < 100 < plain[2:10, 2:40].mean()  # the label's dark box, top left
    # the key: the wheel's rim in the flow's direction has the flow's colour; its centre is white (no motion)
    radius, margin = 10, 2
    centre = np.array([160 - margin - radius - 1, 120 - margin - radius - 1])
    rim = np.round(centre + 0.9 * radius * np.array([3.0, -4.0]) / 5.0).astype(int)
    assert np.abs(picture[rim[1], rim[0]].astype(int) - plain[60, 80]).max() <= 40
    assert picture[centre[1], centre[0]].min() >= 230
    assert flow_picture(np.zeros((120, 160, 2), np.float32))[:12, :60].mean() < 200  # "0 px" said, not blank


def test_fuse_warns_of_pairs_that_carry_no_information_as_the_node_does(sample_dir, tmp_path):
    """A constant thermal (a lens cap) and a float thermal with NaN pixels are fused, each with the warning the
    node logs (core.image.content_warnings); on folders `cgrp fuse` said nothing of them."""
    name = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    visible = cv2.imread(str(sample_dir / "visible" / f"{name}.jpg"))
    thermal = cv2.imread(str(sample_dir / "thermal" / f"{name}.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    thermal[:10, :10] = np.nan
    for sub in ("visible", "thermal"):
        (tmp_path / sub).mkdir()
    for pair in ("capped", "nan"):
        cv2.imwrite(str(tmp_path / "visible" / f"{pair}.png"), visible)
    cv2.imwrite(str(tmp_path / "thermal" / "capped.png"), np.full(thermal.shape, 30, np.uint8))
    cv2.imwrite(str(tmp_path / "thermal" / "nan.tiff"), thermal)
    visible01 = visible.astype(np.float32) / 255  # a float visible with a NaN corner: fused, now said
    visible01[:4, :5] = np.nan
    cv2.imwrite(str(tmp_path / "visible" / "nanvis.tiff"), visible01)
    cv2.imwrite(str(tmp_path / "thermal" / "nanvis.png"), (np.nan_to_num(thermal) * 255).astype(np.uint8))
    # a thermal camera set to a colour palette, and the visible folder given for the thermal too: fused, said
    grey = (np.nan_to_num(thermal) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "visible" / "palette.png"), visible)
    cv2.imwrite(str(tmp_path / "thermal" / "palette.png"), cv2.applyColorMap(grey, cv2.COLORMAP_JET))
    cv2.imwrite(str(tmp_path / "visible" / "twice.png"), visible)
    cv2.imwrite(str(tmp_path / "thermal" / "twice.png"), visible)
    # a 1x1 constant thermal is refused: its error alone, not first a warning that it is constant
    cv2.imwrite(str(tmp_path / "visible" / "tiny.png"), visible)
    cv2.imwrite(str(tmp_path / "thermal" / "tiny.png"), np.full((1, 1), 19, np.uint8))
    proc = cgrp("fuse", "--visible", tmp_path / "visible", "--thermal", tmp_path / "thermal", "--out", tmp_path / "out",
                "--working-size", "64x96")
    assert proc.returncode == 1, proc.stderr
    assert "tiny" in proc.stderr and "too small" in proc.stderr and "value 19" not in proc.stderr, proc.stderr
    assert "cgrp fuse: warning: palette: thermal image is in colour (a false-colour palette?)" in proc.stderr
    assert "cgrp fuse: warning: twice: the visible and the thermal image are the same picture" in proc.stderr
    assert ("cgrp fuse: warning: capped: thermal image is constant (value 30): fused, but it carries no "
            "information") in proc.stderr, proc.stderr
    assert "cgrp fuse: warning: nan: thermal image has 100 NaN/inf pixels: fused with them treated as missing" \
        in proc.stderr, proc.stderr
    assert "cgrp fuse: warning: nanvis: visible image has 60 NaN/inf values: fused with NaN as black" \
        in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "fused").iterdir()) == \
        ["capped.png", "nan.png", "nanvis.png", "palette.png", "twice.png"]
    closing = proc.stdout.strip().splitlines()[-1]  # names the confidence threshold, whatever the count
    assert closing.startswith("cgrp fuse: 5 pair(s) written to") and "low registration confidence (below 0." in closing


def test_fuse_warns_once_of_cameras_of_different_aspect_ratio_without_a_calibration(sample_dir, tmp_path):
    """A 5:4 thermal beside a 4:3 visible camera is stretched onto the visible frame, which the registration
    does not undo: one warning for the folders (the cameras' fault, not a pair's), naming both sizes."""
    names = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[:2]
    for sub in ("visible", "thermal"):
        (tmp_path / sub).mkdir()
    for name in names:
        visible = cv2.resize(cv2.imread(str(sample_dir / "visible" / f"{name}.jpg")), (160, 120))
        thermal = cv2.imread(str(sample_dir / "thermal" / f"{name}.jpg"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(tmp_path / "visible" / f"{name}.png"), visible)
        cv2.imwrite(str(tmp_path / "thermal" / f"{name}.png"), cv2.resize(thermal, (160, 128)))
    proc = cgrp("fuse", "--visible", tmp_path / "visible", "--thermal", tmp_path / "thermal", "--out", tmp_path / "out",
                "--working-size", "64x96")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "differ in aspect ratio" in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"cgrp fuse: warning: {names[0]}: the visible camera's 160x120 and the thermal's "
                               "160x128") and "cgrp calibrate" in lines[0]


def test_fuse_checks_a_missing_file_a_list_of_files_and_an_output_that_is_a_file_before_the_models(
        sample_dir, tmp_path):
    name = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    visible, thermal = sample_dir / "visible" / f"{name}.jpg", sample_dir / "thermal" / f"{name}.jpg"
    (tmp_path / "list.txt").write_text("other\n")
    (tmp_path / "afile").write_text("")
    cases = {"nope.jpg: no such file": ("--visible", visible, "--thermal", tmp_path / "nope.jpg"),
             "selects pairs of two folders": ("--visible", visible, "--thermal", thermal, "--list", tmp_path / "list.txt"),
             f"cannot write to --out {tmp_path / 'afile'}": ("--visible", visible, "--thermal", thermal)}
    for words, arguments in cases.items():
        out = tmp_path / "afile" if "afile" in words else tmp_path / "out"
        proc = cgrp("fuse", *arguments, "--out", out, "--device", "cpu")
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "cgrp pipeline:" not in proc.stderr  # (the models' line)


def test_an_output_folder_behind_a_symlink_loop_is_a_reason_not_a_crash(tmp_path):
    """~/save_calibration and every command check their output path with unwritable_reason: a link to
    itself made Path.resolve raise RuntimeError, which ended the node."""
    from cgrp_ros.core.data import unwritable_reason

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert "cannot be resolved" in unwritable_reason(loop / "rig.yaml")
    assert unwritable_reason(tmp_path / "new" / "rig.yaml") is None


def test_a_file_that_is_no_image_says_what_it_is_and_an_unread_type_is_named(tmp_path, sample_dir):
    """An empty file or text saved as .jpg is not "a truncated JPEG"; a partner of a type not read (x.gif
    beside x.jpg) is named with the types that are; WebP is read."""
    from cgrp_ros.core.data import find_pairs, read_image
    from cgrp_ros.core.errors import InputError

    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(InputError, match="empty.jpg: an empty file"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(InputError, match=r"text.jpg: not a readable image \(named .jpg, but not a JPEG\)"):
        read_image(tmp_path / "text.jpg")
    png = cv2.imencode(".png", np.full((4, 6), 9, np.uint8))[1].tobytes()
    (tmp_path / "png.jpg").write_bytes(png)  # named .jpg, read by its content
    assert read_image(tmp_path / "png.jpg").shape == (4, 6)
    vis, th = tmp_path / "visible", tmp_path / "thermal"
    vis.mkdir(), th.mkdir()
    visible = cv2.imread(str(next((sample_dir / "visible").glob("*.jpg"))))
    for name in ("a", "b"):
        cv2.imwrite(str(vis / f"{name}.jpg"), visible)
    cv2.imwrite(str(th / "a.webp"), visible[..., 0])
    (th / "b.gif").write_bytes(b"GIF89a")
    cv2.imwrite(str(vis / "c.jpg"), visible)
    (vis / "c.json").write_text("{}")  # a sidecar beside it is no partner
    listing = find_pairs(vis, th)
    assert [name for name, _, _ in listing.pairs] == ["a"] and read_image(th / "a.webp").shape[:2] == visible.shape[:2]
    gif, sidecar = listing.problems()
    assert gif.startswith(f"{vis / 'b.jpg'}: no partner") and f"({th / 'b.gif'} is there, of a type not read" in gif
    assert sidecar == f"{vis / 'c.jpg'}: no partner with the same name in the other folder"


def test_an_out_that_is_a_file_is_refused_by_name_before_any_work(tmp_path, capsys):
    """export and bench said 'File exists' (bench after minutes of measuring), train failed after the run."""
    from cgrp_ros.cli import main

    (tmp_path / "a_file").write_text("x")
    for command in (["export"], ["bench", "--backends", "torch-cpu"]):
        assert main([*command, "--out", str(tmp_path / "a_file")]) == 2
        err = capsys.readouterr().err
        assert f"cannot write --out {tmp_path / 'a_file'}: {tmp_path / 'a_file'} is not a folder" in err, err
