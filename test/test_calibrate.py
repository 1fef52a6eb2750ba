"""`cgrp calibrate` (cgrp_ros.core.calibrate): one thermal -> visible homography from many pairs.

Synthetic rigs are built from the bundled aligned pairs (sample/: six RoadScene val pairs, two M3SVD
val frames) with one known homography. The issue's target (mean corner error <= 1 px in thermal
pixels) is for tens of pairs; with the eight pairs here the matcher's per-pair errors (about 1 px
each, correlated within a pair: cross-modal edge offsets and the data sets' own residual alignment)
average down much less, so the bounds below are looser, but still far below the misalignment the
calibration removes (the prior is off by 15-45 px at the corners).
"""
import contextlib
import csv
import io
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cgrp_ros.cli import main


def cgrp(args):
    return main([str(a) for a in args])
from cgrp_ros.core.calibrate import (Calibration, CalibrationError, RigCalibrator, apply_homography,
                                     centred_placement, load_calibration, load_rig, save_calibration)
from cgrp_ros.evaluation.rig import corner_error, similarity_about_centre, synthetic_rig

SIZE = (240, 320)  # the synthetic rig's thermal (H, W)


@pytest.fixture(scope="module")
def aligned_pairs(sample_pairs, m3svd_pairs):
    return list(sample_pairs) + list(m3svd_pairs)


def write_rig(folder, pairs):
    for sub in ("visible", "thermal"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, v, t in pairs:
        cv2.imwrite(str(folder / "visible" / f"{name}.png"), v)
        cv2.imwrite(str(folder / "thermal" / f"{name}.png"), t)


@pytest.fixture(scope="module")
def shifted_rig(aligned_pairs, tmp_path_factory):
    """Same field of view, the thermal rotated 3 deg, scaled 1.03 and shifted (12, -8) px; calibrated
    through the CLI."""
    g = similarity_about_centre(SIZE, 3.0, 1.03, (12.0, -8.0))
    rig = [(n, *synthetic_rig(v, t, g, size=SIZE)[:2]) for n, v, t in aligned_pairs]
    truth = synthetic_rig(aligned_pairs[0][1], aligned_pairs[0][2], g, size=SIZE)[2]
    # a stray frame of another camera, first by name: the rig is what most pairs are
    name, v, t = aligned_pairs[0]
    stray = ("000_stray", cv2.resize(v, (240, 180)), cv2.resize(t, (240, 180)))
    root = tmp_path_factory.mktemp("rig")
    write_rig(root, [stray] + rig)
    out = root / "calib" / "rig.yaml"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cgrp(["calibrate", "--visible", root / "visible", "--thermal", root / "thermal", "--out", out,
                     "--scales", "1", "--refinements", "1", "--device", "cpu"])
    return code, out, truth, stdout.getvalue() + stderr.getvalue()


def test_calibrate_recovers_a_shifted_rotated_rig(shifted_rig):
    code, out, truth, _ = shifted_rig
    assert code == 0
    estimate = load_calibration(out)
    prior = centred_placement(SIZE, SIZE)
    assert corner_error(prior, truth, SIZE) > 15.0
    assert corner_error(estimate, truth, SIZE) < 3.0


def test_a_black_hot_rig_calibrated_with_black_hot_gets_the_white_hot_rigs_calibration(shifted_rig, tmp_path):
    """`cgrp calibrate --black-hot` normalises the thermal as `cgrp fuse --black-hot` does: the same rig with
    its thermal shown hot-dark comes out with the same homography."""
    code, out, truth, _ = shifted_rig
    rig = out.parent.parent
    shutil.copytree(rig / "visible", tmp_path / "visible")
    (tmp_path / "thermal").mkdir()
    for path in sorted((rig / "thermal").glob("*.png")):
        cv2.imwrite(str(tmp_path / "thermal" / path.name), 255 - cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cgrp(["calibrate", "--visible", tmp_path / "visible", "--thermal", tmp_path / "thermal", "--out",
                     tmp_path / "rig.yaml", "--scales", "1", "--refinements", "1", "--device", "cpu",
                     "--black-hot"]) == 0
    assert corner_error(load_calibration(tmp_path / "rig.yaml"), load_calibration(out), SIZE) < 0.05


def test_calibration_file_and_picture(shifted_rig):
    code, out, _, _ = shifted_rig
    data = yaml.safe_load(out.read_text())
    assert np.asarray(data["homography"]).shape == (3, 3)
    assert data["visible_size"] == {"height": SIZE[0], "width": SIZE[1]}
    assert data["thermal_size"] == {"height": SIZE[0], "width": SIZE[1]}
    assert data["pairs_used"] + data["pairs_skipped"] == 9 and data["pairs_used"] >= 6
    assert len(data["skipped"]) == data["pairs_skipped"] and all(data["skipped"].values())
    assert 0 < data["median_residual_px"] < 5
    assert data["date"] and data["command"].startswith("cgrp calibrate")
    assert data["distinct_scenes"] >= 3  # bundled pairs of several places: no few-scenes warning
    assert "scene(s)" not in shifted_rig[3]
    picture = cv2.imread(str(out.with_suffix(".png")))
    assert picture is not None and picture.shape[1] > SIZE[1]


def test_frames_of_one_place_count_as_one_scene_and_other_places_as_others(aligned_pairs):
    """cgrp calibrate counts the scenes of the pairs it used and warns below FEW_SCENES: one scene biases the
    matches its own way (a new user's rig of two M3SVD scenes calibrated 2.2 thermal px off, unwarned)."""
    from cgrp_ros.core.calibrate import FEW_SCENES, distinct_scenes
    from cgrp_ros.core.image import scene_thumbnail

    rng = np.random.default_rng(0)
    frames = [np.clip(aligned_pairs[0][1].astype(np.int16) + rng.integers(-6, 7, aligned_pairs[0][1].shape), 0, 255
                      ).astype(np.uint8) for _ in range(5)]  # a static camera's frames: sensor noise only
    assert distinct_scenes(scene_thumbnail(v) for v in frames) == 1 < FEW_SCENES
    assert distinct_scenes(scene_thumbnail(v) for _, v, _ in aligned_pairs) >= FEW_SCENES


def test_the_edges_picture_shows_the_calibration_lining_the_cameras_up(shifted_rig):
    """rig_edges.jpg: the edges of both cameras through the plain resize (left) and the calibration
    (right); on this rig, off by 15+ px without the calibration, white (coinciding edges) on the right."""
    from cgrp_ros.evaluation.report import ALIGNMENT_TILE_HEIGHT, LABEL_HEIGHT

    _, out, _, printed = shifted_rig
    picture = cv2.imread(str(out.with_name("rig_edges.jpg")))
    assert picture is not None and "rig_edges.jpg" in printed
    views = picture[2 * LABEL_HEIGHT:2 * LABEL_HEIGHT + ALIGNMENT_TILE_HEIGHT]
    white = views.min(axis=2) > 128
    half = white.shape[1] // 2
    resize, calibration = int(white[:, :half].sum()), int(white[:, half:].sum())
    assert calibration > 2 * resize, (resize, calibration)


def test_calibrate_checks_its_result_on_the_edges(shifted_rig):
    """A check the user can trust without ground truth: on the pairs it used, the thermal's edges meet
    the visible image's clearly better with the calibration than with the plain resize (off by 15+ px)."""
    _, out, _, printed = shifted_rig
    check = yaml.safe_load(out.read_text())["edge_check"]
    assert check["pairs_scored"] == yaml.safe_load(out.read_text())["pairs_used"]
    assert check["calibration"] > check["resize"] + 0.1
    assert check["calibration_better_on"] == check["pairs_scored"] and check["calibration_worse_on"] == 0
    assert f"the calibration better on {check['pairs_scored']}, worse on 0" in printed
    assert "worse with the calibration" not in printed


def test_the_edge_check_flags_a_calibration_that_misaligns_an_aligned_rig(aligned_pairs):
    """Cameras already aligned, a calibration 6 px off: the check says so (and cgrp calibrate warns);
    the plain resize itself as the calibration is not flagged."""
    from cgrp_ros.commands.calibrate import edges_got_worse
    from cgrp_ros.core.image import resize_homography
    from cgrp_ros.evaluation.rig import calibration_edge_check

    sizes = {(v.shape[:2], t.shape[:2]) for _, v, t in aligned_pairs}
    for visible_size, thermal_size in sizes:
        pairs = [p for p in aligned_pairs if (p[1].shape[:2], p[2].shape[:2]) == (visible_size, thermal_size)]
        resize = resize_homography(thermal_size, visible_size)
        off = np.array([[1, 0, 6.0], [0, 1, -4.0], [0, 0, 1]]) @ resize
        wrong = calibration_edge_check(pairs, Calibration(off, visible_size, thermal_size))
        assert wrong["pairs_scored"] == len(pairs) and wrong["calibration_worse_on"] == len(pairs)
        assert edges_got_worse(wrong)
        right = calibration_edge_check(pairs, Calibration(resize, visible_size, thermal_size))
        assert right["calibration"] == right["resize"] and not edges_got_worse(right)


def test_a_pair_of_another_size_is_skipped_and_said_why(shifted_rig):
    """The first pair by name is 240x180: the rig's size is the one most pairs share, and the user
    reads which pair was left out and why, on the terminal and in rig.yaml."""
    _, out, _, printed = shifted_rig
    why = "size 240x180 / 240x180 differs from the rig's 320x240 / 320x240"
    assert why in yaml.safe_load(out.read_text())["skipped"]["000_stray"]
    assert f"skipped 000_stray: {why}" in printed
    # eight pairs are fewer than a calibration should rest on: said, not refused
    assert "from only 8 pair(s)" in printed


def test_calibrate_wider_visible_view(aligned_pairs):
    """The visible camera sees 1.6x more at 2x the pixels: the matcher alone (about +-6 % of scale)
    cannot bridge that, the scale search must, and the thermal lands in the visible's centre."""
    g = similarity_about_centre(SIZE, 2.0, 1.0, (6.0, -4.0))
    rig = [(n, *synthetic_rig(v, t, g, 1.6, 2.0, SIZE)[:2]) for n, v, t in aligned_pairs]
    truth = synthetic_rig(aligned_pairs[0][1], aligned_pairs[0][2], g, 1.6, 2.0, SIZE)[2]
    calibration = RigCalibrator(device="cpu", scales=(1.0, 1 / 1.6), refinements=1, search_pairs=4).calibrate(rig)
    assert calibration.scale == pytest.approx(1 / 1.6)
    assert calibration.visible_size == (2 * SIZE[0], 2 * SIZE[1]) and calibration.thermal_size == SIZE
    # the prior (same field of view) is off by about 100 thermal px; the calibration by a few
    assert corner_error(centred_placement(SIZE, calibration.visible_size), truth, SIZE) > 50
    assert corner_error(calibration.homography, truth, SIZE) < 4.0
    centre = cv2.perspectiveTransform(np.array([[[SIZE[1] / 2, SIZE[0] / 2]]]), calibration.homography)[0, 0]
    assert abs(centre[0] - SIZE[1]) < 0.1 * SIZE[1] and abs(centre[1] - SIZE[0]) < 0.1 * SIZE[0]


def test_featureless_pairs_are_refused(tmp_path, capsys):
    for sub in ("visible", "thermal"):
        (tmp_path / sub).mkdir()
    for i, value in enumerate((0, 90, 200)):
        cv2.imwrite(str(tmp_path / "visible" / f"p{i}.png"), np.full((120, 160, 3), value, np.uint8))
        cv2.imwrite(str(tmp_path / "thermal" / f"p{i}.png"), np.full((120, 160), 255 - value, np.uint8))
    out = tmp_path / "out" / "rig.yaml"
    code = cgrp(["calibrate", "--visible", tmp_path / "visible", "--thermal", tmp_path / "thermal", "--out", out,
                 "--scales", "1,0.625", "--device", "cpu"])
    assert code != 0
    err = capsys.readouterr().err
    # names the calibration's own threshold, not cgrp fuse's per-pair registration confidence
    assert "not enough evidence" in err and "match confidence" in err and "working size" not in err, err
    assert not out.exists() and not out.with_suffix(".png").exists()
    # at a smaller working size chance agreement passes that confidence (black frames scored 0.40-0.45 at
    # 128x160 and were used): refused before any work, nothing written
    code = cgrp(["calibrate", "--visible", tmp_path / "visible", "--thermal", tmp_path / "thermal", "--out", out,
                 "--working-size", "128x160", "--device", "cpu"])
    assert code == 2 and "working size 128x160 (HxW) is too small to calibrate" in capsys.readouterr().err
    assert not out.exists()
    # above the default size the refusal names the size as a likely cause too (it blamed only the images,
    # where the same pairs calibrate at 256x320)
    code = cgrp(["calibrate", "--visible", tmp_path / "visible", "--thermal", tmp_path / "thermal", "--out", out,
                 "--scales", "1", "--working-size", "320x480", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "or the working size: the match-confidence minimum was chosen at 256x320" in err, err


def test_fuse_accepts_a_calibration(tmp_path, sample_dir, capsys):
    name = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    visible, thermal = sample_dir / "visible" / f"{name}.jpg", sample_dir / "thermal" / f"{name}.jpg"
    hv, wv = cv2.imread(str(visible), 0).shape
    ht, wt = cv2.imread(str(thermal), 0).shape
    h = centred_placement((ht, wt), (hv, wv)) @ similarity_about_centre((ht, wt), 1.0, 1.0, (3.0, -2.0))
    save_calibration(Calibration(h, (hv, wv), (ht, wt), pairs_used=5), tmp_path / "rig.yaml")
    np.testing.assert_allclose(load_calibration(tmp_path / "rig.yaml"), h)
    code = cgrp(["fuse", "--visible", visible, "--thermal", thermal, "--out", tmp_path / "out",
                 "--calibration", tmp_path / "rig.yaml", "--device", "cpu", "--working-size", "128x160"])
    assert code == 0
    out = tmp_path / "out"
    assert (out / "fused" / f"{name}.png").is_file()
    # the calibration is the prior: the registered thermal is the thermal seen through it and the written
    # flow, not through the flow alone (measured 2026-12-06: mean difference 0.0 grey levels through the
    # calibration, 11.5 without it, inside a 20-px margin; the flow 0 here: the networks keep the calibration)
    registered = cv2.imread(str(out / "registered" / f"{name}.png"), 0).astype(np.float32)
    flow = np.load(out / "flow" / f"{name}.npy")
    ys, xs = np.mgrid[0:hv, 0:wv].astype(np.float32)
    points = np.stack((xs + flow[..., 0], ys + flow[..., 1]), axis=-1).reshape(-1, 1, 2)

    def differs_from_thermal_through(homography):  # mean |registered - thermal at p + flow(p) through it|
        maps = cv2.perspectiveTransform(points, np.linalg.inv(homography)).reshape(hv, wv, 2)
        seen = cv2.remap(cv2.imread(str(thermal), 0), maps[..., 0], maps[..., 1], cv2.INTER_LINEAR)
        return float(np.abs(registered - seen)[20:-20, 20:-20].mean())
    assert differs_from_thermal_through(h) < 1.0
    assert differs_from_thermal_through(np.eye(3)) > 5.0  # same size: the plain resize is the identity
    # and registration.csv's 'as received' edges are those through the calibration: this aligned pair, 0.39
    # through the plain resize, scores lower through a calibration 3.6 px and 1 deg off (measured: 0.20)
    with open(out / "registration.csv") as f:
        row, = csv.DictReader(f)
    assert float(row["edge_agreement_input"]) < 0.3


def test_a_refusal_names_the_pairs_it_could_not_read_and_an_out_the_picture_would_overwrite(tmp_path, capsys):
    """Two of three pairs unreadable, the third featureless: the error says which files were never matched
    (not only that the scenes carry too little structure); --out rig.png (where the checkerboard picture
    goes) and a confidence above 1 are refused before any work."""
    for sub in ("visible", "thermal"):
        (tmp_path / sub).mkdir()
        for name in ("broken", "empty"):
            (tmp_path / sub / f"{name}.png").write_bytes(b"" if name == "empty" else b"not an image")
    cv2.imwrite(str(tmp_path / "visible" / "flat.png"), np.full((120, 160, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "thermal" / "flat.png"), np.full((120, 160), 160, np.uint8))
    folders = ["--visible", tmp_path / "visible", "--thermal", tmp_path / "thermal", "--device", "cpu"]
    out = tmp_path / "out" / "rig.yaml"
    assert cgrp(["calibrate", *folders, "--out", out, "--scales", "1"]) == 2
    err = capsys.readouterr().err
    assert "not enough evidence" in err and "Not matched at all, 2 of 3 pair(s): broken: unreadable" in err, err
    assert "empty: unreadable" in err and not out.exists()
    picture_out = tmp_path / "out" / "rig.png"
    assert cgrp(["calibrate", *folders, "--out", picture_out]) == 2
    assert "checkerboard picture is written to" in capsys.readouterr().err and not picture_out.exists()
    with pytest.raises(SystemExit):
        cgrp(["calibrate", *folders, "--out", out, "--min-confidence", "1.5"])
    assert "must be in 0..1" in capsys.readouterr().err


def test_a_calibration_follows_a_camera_to_another_resolution_and_refuses_a_crop(tmp_path, sample_dir, capsys):
    """A rig.yaml says which sizes it was made at: a camera that delivers the same view at another
    resolution (binning) gets the calibration rescaled; a cropped one a clear error, not a wrong warp."""
    from cgrp_ros.core.pipeline import Pipeline, PipelineConfig

    name = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    visible, thermal = (cv2.imread(str(sample_dir / sub / f"{name}.jpg")) for sub in ("visible", "thermal"))
    (hv, wv), (ht, wt) = visible.shape[:2], thermal.shape[:2]
    h = centred_placement((ht, wt), (hv, wv)) @ similarity_about_centre((ht, wt), 2.0, 1.02, (5.0, -3.0))
    save_calibration(Calibration(h, (hv, wv), (ht, wt), pairs_used=5), tmp_path / "rig.yaml")
    homography, sizes = load_rig(tmp_path / "rig.yaml")
    assert sizes == ((hv, wv), (ht, wt))
    pipeline = Pipeline(PipelineConfig(device="cpu", working_size=(64, 96), homography=homography,
                                       homography_sizes=sizes))
    # a thermal point seen in the full-size visible image, and in one at half the pixels (same view)
    point = np.array([[0.3 * wt, 0.6 * ht]])
    seen = apply_homography(np.linalg.inv(pipeline.visible_to_thermal((hv, wv), (ht, wt))), point)
    half = (hv // 2, wv // 2)
    seen_half = apply_homography(np.linalg.inv(pipeline.visible_to_thermal(half, (ht, wt))), point)
    np.testing.assert_allclose(seen_half, (seen + 0.5) * [[half[1] / wv, half[0] / hv]] - 0.5, atol=1e-9)
    # the thermal at twice its pixels maps the same scene point to the same visible pixel
    seen_double = apply_homography(np.linalg.inv(pipeline.visible_to_thermal((hv, wv), (2 * ht, 2 * wt))),
                                   2 * point + 0.5)
    np.testing.assert_allclose(seen_double, seen, atol=1e-9)
    # a crop of the visible camera: the calibration no longer applies, and cgrp fuse says why
    cv2.imwrite(str(tmp_path / "cropped.png"), visible[:, : wv * 2 // 3])
    code = cgrp(["fuse", "--visible", tmp_path / "cropped.png", "--thermal", sample_dir / "thermal" / f"{name}.jpg",
                 "--out", tmp_path / "out", "--calibration", tmp_path / "rig.yaml", "--device", "cpu",
                 "--working-size", "64x96"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"calibration was made for a visible image of {wv}x{hv}" in err and "aspect ratio" in err, err


def test_swapped_cameras_are_named_as_such(tmp_path, sample_dir, capsys):
    """A 16-bit mono thermal given as the visible image and a colour image as the thermal: cgrp fuse
    warns that the cameras look swapped, and a calibration made the right way round says the sizes are
    its own swapped, not merely of another aspect ratio."""
    name = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    visible = cv2.imread(str(sample_dir / "visible" / f"{name}.jpg"))
    thermal = cv2.imread(str(sample_dir / "thermal" / f"{name}.jpg"), cv2.IMREAD_GRAYSCALE)
    thermal = cv2.resize(thermal[:, : thermal.shape[1] * 3 // 4], (160, 120)).astype(np.uint16) * 200
    cv2.imwrite(str(tmp_path / "thermal16.png"), thermal)
    cv2.imwrite(str(tmp_path / "colour.png"), visible)
    (hv, wv), (ht, wt) = visible.shape[:2], thermal.shape
    save_calibration(Calibration(centred_placement((ht, wt), (hv, wv)), (hv, wv), (ht, wt), pairs_used=5),
                     tmp_path / "rig.yaml")
    code = cgrp(["fuse", "--visible", tmp_path / "thermal16.png", "--thermal", tmp_path / "colour.png",
                 "--out", tmp_path / "out", "--calibration", tmp_path / "rig.yaml", "--device", "cpu",
                 "--working-size", "64x96"])
    err = capsys.readouterr().err
    assert code == 1 and "16-bit single channel and the thermal image is in colour" in err, err
    assert "the two sizes the other way round" in err and "swapped?" in err, err


def test_calibrate_warns_of_swapped_folders_as_fuse_does(tmp_path, sample_dir, capsys):
    """--visible and --thermal swapped on 8-bit images: cgrp fuse warned of a colour thermal, cgrp calibrate
    wrote a calibration of the wrong images without a word."""
    code = cgrp(["calibrate", "--visible", sample_dir / "thermal", "--thermal", sample_dir / "visible",
                 "--out", tmp_path / "rig.yaml", "--device", "cpu", "--min-pairs", "99"])  # (then refused: fast)
    err = capsys.readouterr().err
    assert code == 2 and "is in colour (a false-colour palette?)" in err and "warning: " in err, err


def test_a_rig_yaml_of_nested_aliases_is_refused_before_it_is_expanded(tmp_path):
    """YAML aliases (references) let a 500-byte file stand for 10^8 numbers: np.asarray expanded them, and a
    calibration_file set on a running node stalled it for seconds and took a gigabyte (an audit's attack).
    Five levels here (10^5 numbers); the check looks at the 3x3 structure before numpy does."""
    levels = ["a0: &a0 [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 5)]
    (tmp_path / "rig.yaml").write_text("\n".join(levels) + "\nhomography: [*a4, *a4, *a4]\n")
    with pytest.raises(CalibrationError, match="'homography' is not a 3x3 matrix of numbers"):
        load_rig(tmp_path / "rig.yaml")
    # a hand-written file still loads: YAML reads 1e-5 (no dot) as a string, which numpy converts
    (tmp_path / "hand.yaml").write_text("homography: [[1.0, 0.0, 12], [0.0, 1.0, -8], [1e-5, 0.0, 1.0]]\n")
    np.testing.assert_allclose(load_rig(tmp_path / "hand.yaml")[0][2], [1e-5, 0.0, 1.0])


def test_a_calibration_path_that_cannot_be_a_file_is_said_so(tmp_path):
    """What the node's calibration_file and ~/save_calibration answer (they said "no such file" for a folder
    and "[Errno 17] File exists" for a path under a file)."""
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CalibrationError, match=f"cannot write {tmp_path / 'a_file' / 'rig.yaml'}: "
                                               f"{tmp_path / 'a_file'} is not a folder"):
        save_calibration(Calibration(np.eye(3), (64, 64), (64, 64), pairs_used=3), tmp_path / "a_file" / "rig.yaml")
    with pytest.raises(CalibrationError, match="is a folder, not a rig.yaml"):
        load_calibration(tmp_path)
    os.mkfifo(tmp_path / "fifo")  # it exists: "no such file" sent the user looking for a typo
    with pytest.raises(CalibrationError, match="fifo: not a regular file"):
        load_calibration(tmp_path / "fifo")


def test_a_failed_save_names_the_file_asked_for(tmp_path, monkeypatch):
    """Where the folder takes no new file (/proc) the error named rig.yaml.tmp, a file the user never chose."""
    def refused(self, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "write_text", refused)
    with pytest.raises(CalibrationError) as err:
        save_calibration(Calibration(np.eye(3), (64, 64), (64, 64), pairs_used=3), tmp_path / "rig.yaml")
    assert str(err.value) == f"cannot write {tmp_path / 'rig.yaml'}: No such file or directory"


def test_an_interrupted_save_keeps_the_previous_calibration(tmp_path, monkeypatch):
    """Ctrl-C (or a full disk) while rig.yaml is written leaves the old file whole, not a truncated one."""
    path = tmp_path / "rig.yaml"
    old = Calibration(np.diag([2.0, 2.0, 1.0]), (640, 960), (320, 480), pairs_used=30)
    save_calibration(old, path)
    before = path.read_text()

    write_text = Path.write_text

    def interrupted(self, text, *args, **kwargs):  # half the file written, then Ctrl-C
        write_text(self, text[:len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_calibration(Calibration(np.eye(3), (640, 960), (320, 480), pairs_used=3), path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rig.yaml"]
    np.testing.assert_allclose(load_calibration(path), old.homography)


@pytest.mark.parametrize("content", ["homography: [[1, 0], [0, 1]]\n", "pairs_used: 3\n", "homography: [1, 2\n",
                                     "homography: [[1, 0, 0], [0, 1, 0], [0, 0, 0]]\n",
                                     "homography: [[1, 0, 1.0e+300], [0, 1, 0], [0, 0, 1]]\n",
                                     # sizes that do not belong to the cameras: the thermal a speck of the view
                                     "homography: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\nvisible_size: {height: 351000000, "
                                     "width: 502000000}\nthermal_size: {height: 351, width: 502}\n",
                                     "homography: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\nvisible_size: {height: 0}\n"])
def test_malformed_calibration_is_a_clear_error(tmp_path, sample_dir, capsys, content):
    (tmp_path / "rig.yaml").write_text(content)
    with pytest.raises(CalibrationError):
        load_calibration(tmp_path / "rig.yaml")
    name = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    code = cgrp(["fuse", "--visible", sample_dir / "visible" / f"{name}.jpg", "--thermal",
                 sample_dir / "thermal" / f"{name}.jpg", "--out", tmp_path / "out",
                 "--calibration", tmp_path / "rig.yaml", "--device", "cpu"])
    assert code == 2
    assert "calibration file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_calibrate_writes_its_file_but_exits_1_after_unreadable_or_unpaired_files(aligned_pairs, tmp_path, capsys):
    """As cgrp fuse: the good pairs are used, each bad file is named, and the exit code says the input had
    faults (it was 0). Asked for more pairs than given: the error says so, not that the scenes lack structure."""
    g = similarity_about_centre(SIZE, 3.0, 1.03, (12.0, -8.0))
    write_rig(tmp_path, [(n, *synthetic_rig(v, t, g, size=SIZE)[:2]) for n, v, t in aligned_pairs[:4]])
    (tmp_path / "visible" / "orphan.png").write_bytes((tmp_path / "visible" / f"{aligned_pairs[0][0]}.png").read_bytes())
    (tmp_path / "visible" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "thermal" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "rig.yaml"
    args = ["calibrate", "--visible", tmp_path / "visible", "--thermal", tmp_path / "thermal", "--out", out,
            "--scales", "1", "--refinements", "1", "--device", "cpu"]
    assert cgrp(args) == 1
    printed = capsys.readouterr()
    assert "orphan.png: no partner" in printed.err and "skipped broken: unreadable" in printed.out
    assert "2 problem(s) in the input" in printed.err
    assert yaml.safe_load(out.read_text())["pairs_used"] >= 3
    out.unlink()
    assert cgrp(args + ["--min-pairs", "8"]) == 2
    assert "5 pair(s) to calibrate from, fewer than the 8 asked for" in capsys.readouterr().err
    assert not out.exists()
    for sub in ("visible", "thermal"):
        (tmp_path / sub / "broken.png").unlink()
    assert cgrp(args) == 1  # a file without its partner alone is a fault of the input too
    assert "1 problem(s) in the input" in capsys.readouterr().err and out.is_file()


def test_calibrate_reads_a_bag(aligned_pairs, tmp_path):
    """The same shifted rig recorded as a rosbag2 (raw Image topics): --bag gives the folder's result."""
    from test_bag import THERMAL, VISIBLE, write_bag

    g = similarity_about_centre(SIZE, 3.0, 1.03, (12.0, -8.0))
    rig = [synthetic_rig(v, t, g, size=SIZE) for _, v, t in aligned_pairs]
    write_bag(tmp_path / "rig_bag", [(v, t) for v, t, _ in rig], "mcap", compressed=False)
    out = tmp_path / "rig.yaml"
    assert cgrp(["calibrate", "--bag", tmp_path / "rig_bag", "--visible-topic", VISIBLE, "--thermal-topic", THERMAL,
                 "--out", out, "--scales", "1", "--refinements", "1", "--device", "cpu"]) == 0
    assert corner_error(load_calibration(out), rig[0][2], SIZE) < 3.0
    command = yaml.safe_load(out.read_text())["command"]
    assert command.startswith("cgrp calibrate --bag") and " --slop 0.05 " in command  # the run, reproducible
    from cgrp_ros.commands.calibrate import bag_pairs, stamp_names
    from test_bag import PERIOD, T0
    # named by the visible stamp, as cgrp fuse --bag's registration.csv names them (it was the message's index)
    assert [name for name, _, _ in bag_pairs(tmp_path / "rig_bag", VISIBLE, THERMAL)[0]] == \
        [f"{(T0 + i * PERIOD) * 1e-9:.6f}" for i in range(len(rig))]
    # a stamp that repeats (a driver's bug) keeps the names apart: they key rig.yaml's skipped pairs
    assert stamp_names([T0, T0, T0 + PERIOD], [4, 5, 6]) == [f"{T0 * 1e-9:.6f}#4", f"{T0 * 1e-9:.6f}#5",
                                                             f"{(T0 + PERIOD) * 1e-9:.6f}"]
    assert cgrp(["calibrate", "--bag", tmp_path / "rig_bag", "--out", out]) == 2  # topics missing: a clear error
    (tmp_path / "list.txt").write_text("nothing\n")  # a list of folder names: refused, not silently ignored
    assert cgrp(["calibrate", "--bag", tmp_path / "rig_bag", "--visible-topic", VISIBLE, "--thermal-topic", THERMAL,
                 "--out", out, "--list", tmp_path / "list.txt"]) == 2


def test_calibrate_bag_skips_pairs_stamped_apart(aligned_pairs, tmp_path, capsys):
    """A thermal stamped 70 ms after the visible (beyond --slop 0.05 s): on a moving robot the two saw
    different scenes, so no pair is used, and the error says by how much the stamps miss."""
    from test_bag import THERMAL, VISIBLE, write_bag

    write_bag(tmp_path / "bag", [(v, t) for _, v, t in aligned_pairs[:2]], "mcap", compressed=False,
              thermal_offset=70_000_000)
    out = tmp_path / "rig.yaml"
    assert cgrp(["calibrate", "--bag", tmp_path / "bag", "--visible-topic", VISIBLE, "--thermal-topic", THERMAL,
                 "--out", out, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no visible message has a thermal message within --slop 0.05 s: the closest stamps are 0.070 s apart " \
           "(thermal later; --slop 0.05 s)" in err, err
    assert not out.exists()


def test_eval_rig_calibrate_scores_a_wider_visible_view(aligned_pairs, tmp_path):
    """`cgrp eval --rig --calibrate --edge-fit --mi-fit`: the data set becomes one rig with a 1.6x wider
    visible view at 2x the pixels; the report has the corner error (far below the plain resize's), the
    fused EPE and the two network-free fits' distances to the truth and to the calibration."""
    import json

    write_rig(tmp_path / "data", aligned_pairs)
    out = tmp_path / "out"
    assert cgrp(["eval", "--rig", "--calibrate", "--data", tmp_path / "data", "--rig-size", "240x320",
                 "--view", "1.6,2", "--edge-fit", "--mi-fit", "--one-modality", "--device", "cpu", "--out", out]) == 0
    for flag in ("--edge-fit", "--mi-fit", "--one-modality"):  # not without --calibrate
        assert cgrp(["eval", flag, "--data", tmp_path / "data", "--out", out]) == 2
    result = json.loads((out / "rig_calibration.json").read_text())["data"]
    assert result["visible_size"] == [480, 640] and result["pairs"] == 8
    assert result["corner_error_prior_px"] > 50 and result["corner_error_px"] < 5.0
    # the networks on top of the calibration make it no worse, and the fused EPE meets the report's 1.5-px
    # target (measured 2026-12-06: 0.789 px fused and calibration alone: the networks keep the calibration)
    assert result["epe_calibration_only_px"] < 10
    assert result["epe_fuse_px"] <= result["epe_calibration_only_px"] + 0.5 and result["epe_fuse_px"] <= 1.5
    assert result["edges_scored"] == 8
    # the calibration lines the edges up as well as the truth does; a mapping 1 px off scores 0.029 lower
    # (measured 2026-12-06: truth 0.2943, calibration 0.2940, better / worse on 3 / 3 of 8 pairs)
    assert abs(result["edge_agreement_calibration"] - result["edge_agreement_truth"]) < 0.02
    assert 0 < result["edge_agreement_truth"] <= 1 and 0 < result["edge_agreement_calibration"] <= 1
    for judge in ("edge", "mi"):
        assert np.isfinite(result[f"{judge}_fit_vs_truth_px"]) and np.isfinite(result[f"{judge}_fit_vs_calibration_px"])
    # with the thermal on both sides the truth is exact: the estimator's own error, well below the 1-px target
    # (measured 2026-12-06: 0.33 px, against 0.85 px between the two modalities on the same rig)
    assert result["one_modality_corner_error_px"] < 0.6 and result["one_modality_pairs_used"] == 8
    report = (out / "rig_calibration.md").read_text()
    assert "corner error" in report and "--edge-fit --mi-fit --one-modality" in report
    assert "edge fit's corner error" in report and "MI fit's corner error" in report
    assert "thermal on both sides (exact truth)" in report


@pytest.mark.parametrize("judge", ["edge", "mi"])
def test_the_no_ground_truth_judges_prefer_a_rigs_true_mapping_to_one_a_few_pixels_off(aligned_pairs, judge):
    """The no-ground-truth checks of `cgrp eval --rig --calibrate` (the edge agreement, and the grey
    levels' mutual information): on real pairs turned into a rig with a wider visible view, the true
    homography scores higher than one 3 thermal px off."""
    from cgrp_ros.evaluation.rig import FIT_JUDGES

    score = FIT_JUDGES[judge][0]
    g = similarity_about_centre(SIZE, 5.0, 1.06, (19.0, 19.0))
    for name, visible, thermal in aligned_pairs[:3]:
        v, t, truth = synthetic_rig(visible, thermal, g, 1.6, 2.0, SIZE)
        for dx, dy in ((3, 0), (0, -3)):
            off = truth @ np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]])
            right, wrong = score(v, t, (truth, off))
            assert right > wrong, (name, dx, dy)


@pytest.mark.parametrize("judge", ["edge", "mi"])
def test_the_alignment_fit_finds_the_same_mapping_from_the_truth_and_from_a_start_two_pixels_off(aligned_pairs,
                                                                                                 judge):
    """`cgrp eval --rig --calibrate --edge-fit / --mi-fit`'s network-free second opinions land where
    their judge scores the pairs best, not where they start: from a wider-view rig's true mapping and
    from that mapping spoilt by a 1.25 / -1 px shift and a 0.6 % scale (1.8 px at the corners) each
    comes to mappings within 0.5 px of each other. (Where that is relative to the truth depends on the
    data set's own alignment: on these four RoadScene pairs the edge fit is 1.2 px away, a 0.3 % scale
    and a 0.9-px shift, the MI fit 1.1 px.)"""
    from cgrp_ros.evaluation.rig import alignment_fit

    g = similarity_about_centre(SIZE, 5.0, 1.06, (19.0, 19.0))
    rig = [(name, *synthetic_rig(v, t, g, 1.6, 1.0, SIZE)) for name, v, t in aligned_pairs[:4]]
    truth = rig[0][3]
    start = truth @ similarity_about_centre(SIZE, 0.0, 1.006, (1.25, -1.0))
    from_truth, from_start = (alignment_fit([r[:3] for r in rig], h, SIZE, judge) for h in (truth, start))
    assert corner_error(start, from_truth, SIZE) > 2.0  # measured 2.77 / 2.74; fits 0.36 / 0.27 apart
    assert corner_error(from_start, from_truth, SIZE) < 0.5
    away = truth @ np.array([[1, 0, 5000.0], [0, 1, 0], [0, 0, 1]])  # the thermal lands beside the view
    assert alignment_fit([r[:3] for r in rig[:1]], away, SIZE, judge) is None  # nothing to score: no guess


@pytest.mark.parametrize("rotation, scale, shift, view, pixels", [
    (5.0, 1.06, (19.0, 19.0), 1.6, 2.0),
    (-3.0, 0.97, (-10.0, 6.0), 1.3, 1.5),
])
def test_a_calibrated_wider_rig_stays_where_the_calibration_puts_it(aligned_pairs, rotation, scale, shift, view, pixels):
    """With the true calibration of a rig whose visible camera sees wider at more pixels, the networks
    have nothing left to correct: no pair is moved by more than 0.5 visible px on average. (The
    thermal covers the middle of the working grid; the frame of its footprint, an edge the visible image
    lacks, once drew the matchers to it. With the identity's 5 % margin instead of the calibration's,
    two pairs of the second rig moved by 2.1 and 1.4 px.)"""
    from cgrp_ros.core.pipeline import Pipeline, PipelineConfig

    g = similarity_about_centre(SIZE, rotation, scale, shift)
    truth = synthetic_rig(aligned_pairs[0][1], aligned_pairs[0][2], g, view, pixels, SIZE)[2]
    pipeline = Pipeline(PipelineConfig(device="cpu", homography=truth))
    for name, visible, thermal in aligned_pairs:
        v, t, _ = synthetic_rig(visible, thermal, g, view, pixels, SIZE)
        result = pipeline(v, t, outputs=frozenset({"flow"}))
        seen = cv2.warpPerspective(np.ones(SIZE, np.float32), truth, v.shape[1::-1], flags=cv2.INTER_NEAREST) > 0
        moved = np.linalg.norm(result.flow, axis=2)[seen].mean()
        assert moved <= 0.5, f"{name}: moved by {moved:.2f} px"


def test_a_calibration_a_few_pixels_off_is_corrected(aligned_pairs):
    """With a calibration the local stage starts from it (no global search) and keeps it unless the fine
    matches clearly contradict it: a calibration 6 visible px off in x and 3 in y (a knock) is still
    corrected, like a `mild` misalignment: to 0.6 of the error or less on average, and no pair made
    worse by more than 0.5 px."""
    from cgrp_ros.core.pipeline import Pipeline, PipelineConfig

    g = similarity_about_centre(SIZE, 5.0, 1.06, (19.0, 19.0))
    truth = synthetic_rig(aligned_pairs[0][1], aligned_pairs[0][2], g, 1.6, 2.0, SIZE)[2]
    off = np.array([[1.0, 0.0, 6.0], [0.0, 1.0, 3.0], [0.0, 0.0, 1.0]])  # visible px
    pipeline = Pipeline(PipelineConfig(device="cpu", homography=off @ truth))
    before, after = [], []
    for name, visible, thermal in aligned_pairs:
        v, t, _ = synthetic_rig(visible, thermal, g, 1.6, 2.0, SIZE)
        result = pipeline(v, t, outputs=frozenset({"flow"}))
        seen = cv2.warpPerspective(np.ones(SIZE, np.float32), off @ truth, v.shape[1::-1], flags=cv2.INTER_NEAREST) > 0
        ys, xs = np.nonzero(seen)
        # visible pixel p sees calibrated-thermal pixel p + flow(p); the truth needs p + (6, 3)
        error = result.flow[ys, xs] - np.array([6.0, 3.0], np.float32)
        before.append(float(np.hypot(6.0, 3.0)))
        after.append(float(np.linalg.norm(error, axis=1).mean()))
    assert np.mean(after) <= 0.6 * np.mean(before), after
    assert max(a - b for a, b in zip(after, before)) <= 0.5, after


def test_eval_refuses_a_calibration_of_cameras_with_another_aspect_ratio(tmp_path, sample_dir, capsys):
    """cgrp eval feeds aligned pairs with the thermal at the visible image's size: a rig.yaml of a 640x512
    thermal beside a 1280x720 colour camera cannot apply, which it says before evaluating (it used to fail
    every pair with sizes the files do not have)."""
    save_calibration(Calibration(np.diag([2.0, 1.40625, 1.0]), (720, 1280), (512, 640), pairs_used=30),
                     tmp_path / "rig.yaml")
    code = cgrp(["eval", "--data", sample_dir, "--calibration", tmp_path / "rig.yaml", "--preset", "none",
                 "--methods", "cgrp,none", "--no-fusion-metrics", "--limit", "1", "--out", tmp_path / "eval"])
    err = capsys.readouterr().err
    assert code == 2 and "maps a 640x512 thermal onto a 1280x720 visible image" in err, err
    assert "edge check" in err and not (tmp_path / "eval").exists()
    # one camera's size on both sides, but the data set's pairs (cropped to different sizes) have other aspect
    # ratios: refused before the models load, naming them (it failed at the first such pair, after the others)
    save_calibration(Calibration(np.eye(3), (351, 502), (351, 502), pairs_used=30), tmp_path / "rig.yaml")
    code = cgrp(["eval", "--data", sample_dir, "--calibration", tmp_path / "rig.yaml", "--preset", "none",
                 "--methods", "cgrp,none", "--no-fusion-metrics", "--out", tmp_path / "eval"])
    err = capsys.readouterr().err
    assert code == 2 and "was made for a 502x351 visible image; " in err and "have another aspect ratio (" in err, err
    assert "/FLIR_01415 543x358" in err and "edge check" in err and not (tmp_path / "eval").exists()


def test_two_writers_of_one_file_each_rename_a_whole_file_of_their_own(tmp_path):
    """Two nodes saving one calibration_file at once shared the temporary name rig.yaml.tmp: one renamed
    the other's file away ('No such file or directory') and a reader could meet a mix of both."""
    from cgrp_ros.core.data import replaced_on_success

    path = tmp_path / "rig.yaml"
    with replaced_on_success(path) as first, replaced_on_success(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("first: 1\n")
        second.write_text("second: 2\n")
    assert path.read_text() == "first: 1\n" and [p.name for p in tmp_path.iterdir()] == ["rig.yaml"]


def test_a_temporary_file_a_killed_writer_left_is_removed_by_the_next_writer(tmp_path):
    """A writer killed between writing and renaming left rig.yaml.<pid>-<id>.tmp for good; the next write of
    the file removes it, once its process is gone and it is old (a writer on another machine that shares
    the folder keeps its file)."""
    import os
    import subprocess
    import sys
    import time

    from cgrp_ros.core.data import LEFT_BEHIND_AGE_S, replaced_on_success

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    path = tmp_path / "rig.yaml"
    old = time.time() - LEFT_BEHIND_AGE_S - 5
    left = {name: tmp_path / f"rig.yaml.{name}.tmp" for name in
            (f"{gone}-0badc0de", f"{gone}-fresh001", f"{os.getpid()}-running1")}
    for name, file in left.items():
        file.write_text("half a file")
        if "fresh" not in name:
            os.utime(file, (old, old))
    (tmp_path / "other.yaml.99999999-0badc0de.tmp").write_text("another file's")
    with replaced_on_success(path) as tmp:
        tmp.write_text("new: 1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["rig.yaml", f"rig.yaml.{gone}-fresh001.tmp", f"rig.yaml.{os.getpid()}-running1.tmp",
         "other.yaml.99999999-0badc0de.tmp"])


def test_a_write_that_fails_names_the_file_asked_for_not_the_temporary_one(tmp_path):
    """cgrp export into a read-only folder said 'ro/generator.onnx.30023-dab7dd87.tmp: Read-only file system'."""
    from cgrp_ros.core.data import replaced_on_success

    with pytest.raises(OSError) as err:
        with replaced_on_success(tmp_path / "missing" / "rig.yaml") as tmp:
            tmp.write_text("x")  # its folder does not exist: FileNotFoundError on the temporary name
    assert err.value.filename == str(tmp_path / "missing" / "rig.yaml") and ".tmp" not in str(err.value)


def test_a_replaced_file_keeps_its_link_and_its_permissions(tmp_path):
    """docs/benchmarks.md as a symbolic link became a plain file, and a file's mode went back to the default."""
    import os
    import stat

    from cgrp_ros.core.data import replaced_on_success

    target = tmp_path / "real.md"
    target.write_text("old")
    os.chmod(target, 0o640)
    (tmp_path / "link.md").symlink_to(target)
    with replaced_on_success(tmp_path / "link.md") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "link.md").is_symlink() and target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
