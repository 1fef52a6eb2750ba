"""Lens undistortion (cgrp_ros.core.camera), the CameraInfo adapter (cgrp_ros.ros.camera_info), and
that fusing two cameras of different intrinsics registers the thermal within 1.5 px with camera_info."""
import cv2
import numpy as np
import pytest

from cgrp_ros.core.camera import Intrinsics, distort, distort_points, undistort, undistort_points, undistortion_maps
from cgrp_ros.core.errors import InputError
from cgrp_ros.core.stream import StreamPipeline

SIZE = (240, 320)  # (height, width)
K = [[260.0, 0.0, 161.0], [0.0, 258.0, 117.5], [0.0, 0.0, 1.0]]
LENSES = {  # strong lenses of each model: up to ~20 px displacement at the corners of SIZE
    "plumb_bob": [-0.3, 0.08, 0.001, -0.002, 0.0],
    "rational_polynomial": [-0.25, 0.05, 0.0005, 0.001, 0.0, 0.02, 0.0, 0.0],
    "equidistant": [0.08, -0.04, 0.01, 0.0],
}


def _camera(model, size=SIZE, k=K):
    return Intrinsics.from_matrix(k, LENSES[model], model, size)


def _dot_grid(spacing=24, margin=20):
    """N x 2 pinhole positions (x, y) of a grid of dots, off the pixel centres."""
    xs = np.arange(margin, SIZE[1] - margin, spacing) + 0.37
    ys = np.arange(margin, SIZE[0] - margin, spacing) + 0.61
    return np.stack(np.meshgrid(xs, ys), axis=2).reshape(-1, 2)


def _render_dots(where, dots, sigma=1.6):
    """Gaussian dots at `dots`, sampled at the (H x W x 2) pinhole positions `where`: float32 in [0, 1]."""
    image = np.zeros(where.shape[:2], np.float32)
    for x, y in dots:
        image += np.exp(-((where[..., 0] - x) ** 2 + (where[..., 1] - y) ** 2) / (2 * sigma ** 2)).astype(np.float32)
    return image


def _centroids(image, dots):
    """The intensity-weighted centroid of each bright blob, matched to the nearest of `dots` (N x 2)."""
    count, labels = cv2.connectedComponents((image > 0.2).astype(np.uint8))
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    weight = np.bincount(labels.ravel(), image.ravel(), count)[1:]
    found = np.stack([np.bincount(labels.ravel(), (image * xx).ravel(), count)[1:] / weight,
                      np.bincount(labels.ravel(), (image * yy).ravel(), count)[1:] / weight], axis=1)
    return found[np.argmin(np.linalg.norm(found[None] - dots[:, None], axis=2), axis=1)]


@pytest.mark.parametrize("model", LENSES)
def test_known_distortion_is_undone_within_half_a_pixel(model):
    camera = _camera(model)
    h, w = SIZE
    raw_grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), axis=2)
    dots = _dot_grid()
    # the raw image, rendered exactly: each raw pixel shows the scene at its pinhole position
    raw = _render_dots(undistort_points(raw_grid.reshape(-1, 2), camera).reshape(h, w, 2), dots)
    before = np.linalg.norm(_centroids(raw, dots) - dots, axis=1)
    after = np.linalg.norm(_centroids(undistort(raw, camera), dots) - dots, axis=1)
    assert after.max() < 0.5, f"{model}: dots off by up to {after.max():.2f} px after undistortion"
    assert before.max() > 8.0, f"{model}: the lens should visibly move the dots ({before.max():.1f} px)"


@pytest.mark.parametrize("model", LENSES)
def test_points_round_trip_and_distort_is_undistorts_inverse(model, sample_pairs):
    camera = _camera(model)
    points = np.random.default_rng(0).uniform([0, 0], [SIZE[1] - 1, SIZE[0] - 1], (200, 2))
    assert np.abs(undistort_points(distort_points(points, camera), camera) - points).max() < 1e-6
    image = cv2.resize(sample_pairs[0][2], SIZE[::-1])
    back = undistort(distort(image, camera), camera).astype(np.float32)
    inner = (slice(30, -30), slice(30, -30))
    assert np.abs(back - image)[inner].mean() < 4.0  # two bilinear resamplings of the same scene


def test_undistort_keeps_dtype_channels_and_size_and_skips_a_lens_without_distortion():
    camera = _camera("plumb_bob")
    for image in (np.full(SIZE + (3,), 200, np.uint8), np.full(SIZE, 30000, np.uint16),
                  np.full(SIZE, 300.5, np.float32), np.full(SIZE + (4,), 7, np.uint8)):
        out = undistort(image, camera)
        assert out.shape == image.shape and out.dtype == image.dtype
        assert np.isclose(float(out[SIZE[0] // 2, SIZE[1] // 2].ravel()[0]), float(image[0, 0].ravel()[0]), rtol=1e-4)
    plain = Intrinsics.from_matrix(K, [0.0] * 5, "plumb_bob", SIZE)
    image = np.zeros(SIZE, np.uint8)
    assert undistort(image, plain) is image
    assert camera.rectified() == Intrinsics(camera.K, (0.0,) * 5, "plumb_bob", SIZE)
    with pytest.raises(InputError, match="thermal image is .* but its camera_info is for"):  # which camera's
        undistort(np.zeros((SIZE[0] + 1, SIZE[1]), np.uint8), camera, "thermal")


def test_maps_are_cached_per_intrinsics():
    undistortion_maps.cache_clear()
    image = np.zeros(SIZE, np.uint8)
    for _ in range(3):
        undistort(image, _camera("plumb_bob"))
        undistort(image, _camera("equidistant"))
    info = undistortion_maps.cache_info()
    assert (info.misses, info.hits) == (2, 4)


@pytest.mark.parametrize("k, d, model, size, match", [
    (np.zeros((3, 3)), [], "plumb_bob", SIZE, "uncalibrated"),
    (K, [0.1, 0.0, 0.0], "plumb_bob", SIZE, "plumb_bob takes 4 or 5"),
    (K, [0.1] * 5, "equidistant", SIZE, "equidistant takes 4"),
    (K, [0.1] * 5, "pinhole_unknown", SIZE, "unsupported distortion model 'pinhole_unknown'"),
    # quoted cut: a 300 kB name reached /diagnostics and the log whole, every second
    (K, [0.1] * 5, "x" * 300_000, SIZE, r"unsupported distortion model 'x{40}\.\.\. \(300000 characters\)': expected"),
    (K, [float("nan")] * 5, "plumb_bob", SIZE, "D must be finite"),
    # finite but absurd: the undistorted image came out black and /diagnostics said "undistorting" (an audit)
    (K, [1e300, 0.0, 0.0, 0.0, 0.0], "plumb_bob", SIZE, "maps 100% of the undistorted image outside the raw one"),
    (K, [0.0] * 5, "plumb_bob", (0, 320), "image size"),
])
def test_unusable_intrinsics_raise_input_error(k, d, model, size, match):
    with pytest.raises(InputError, match=match):
        Intrinsics.from_matrix(k, d, model, size)


def test_an_image_of_another_size_is_refused():
    with pytest.raises(InputError, match="320x240"):
        undistort(np.zeros((100, 100), np.uint8), _camera("plumb_bob"))


# -- the CameraInfo adapter ------------------------------------------------------------------------------
def _camera_info(camera: Intrinsics, **fields):
    from sensor_msgs.msg import CameraInfo

    values = dict(height=camera.size[0], width=camera.size[1], distortion_model=camera.model, d=list(camera.D),
                  k=list(camera.K))
    return CameraInfo(**{**values, **fields})


def test_camera_info_to_intrinsics_applies_roi_and_binning():
    pytest.importorskip("sensor_msgs")
    from sensor_msgs.msg import RegionOfInterest

    from cgrp_ros.ros.camera_info import intrinsics_from_camera_info

    camera = _camera("rational_polynomial", size=(480, 640), k=[[500, 0, 320], [0, 490, 240], [0, 0, 1]])
    assert intrinsics_from_camera_info(_camera_info(camera)) == camera
    binned = intrinsics_from_camera_info(_camera_info(camera, binning_x=2, binning_y=2))
    assert binned.size == (240, 320) and binned.K[0] == 250 and binned.K[2] == 160 and binned.K[5] == 120
    roi = RegionOfInterest(x_offset=100, y_offset=40, width=200, height=100)
    cropped = intrinsics_from_camera_info(_camera_info(camera, roi=roi))
    assert cropped.size == (100, 200) and cropped.K[2] == 220 and cropped.K[5] == 200
    with pytest.raises(InputError, match="uncalibrated"):
        intrinsics_from_camera_info(_camera_info(camera, k=[0.0] * 9))


def test_plan_follows_the_latest_camera_info_of_each_camera():
    pytest.importorskip("sensor_msgs")
    from std_msgs.msg import Header

    from cgrp_ros.ros.camera_info import CameraInfos, with_header
    from cgrp_ros.ros.sync import THERMAL, VISIBLE

    visible = _camera("rational_polynomial")
    thermal = _camera("plumb_bob", size=(120, 160), k=np.diag([0.5, 0.5, 1.0]) @ K)
    infos = CameraInfos()
    shapes = (SIZE + (3,), (120, 160))
    assert infos.plan(*shapes).camera_info is None and infos.plan(*shapes).intrinsics is None
    visible_msg = _camera_info(visible)
    infos.update(VISIBLE, visible_msg)
    plan = infos.plan(*shapes)  # thermal not yet known: fused as they are, the visible camera's own info
    assert plan.intrinsics is None and plan.camera_info is visible_msg and plan.problem is None
    infos.update(THERMAL, _camera_info(thermal))
    plan = infos.plan(*shapes)
    assert plan.intrinsics == (visible, thermal) and plan.problem is None
    out = with_header(plan.camera_info, Header(frame_id="cam"))
    assert out.header.frame_id == "cam" and (out.height, out.width) == SIZE and out.distortion_model == "plumb_bob"
    assert list(out.d) == [0.0] * 5 and list(out.k) == list(visible.K)
    assert list(out.p) == [K[0][0], 0, K[0][2], 0, 0, K[1][1], K[1][2], 0, 0, 0, 1, 0]
    plan = infos.plan(SIZE + (3,), (100, 160))  # a thermal of another size than its camera_info
    assert plan.intrinsics is None and plan.camera_info is visible_msg
    assert "thermal/camera_info is for 160x120 images but the thermal image is 160x100" in plan.problem
    plan = infos.plan((100, 100, 3), (120, 160))
    assert plan.intrinsics is None and plan.camera_info is None and plan.problem.startswith("visible/camera_info")
    with pytest.raises(InputError):
        infos.update(THERMAL, _camera_info(thermal, k=[0.0] * 9))
    assert not infos.known(THERMAL) and infos.plan(*shapes).intrinsics is None


# -- two cameras with different intrinsics through the pipeline ---------------------------------------
VISIBLE_LENS = ("rational_polynomial", [-0.08, 0.01, 0.0005, -0.0005, 0.0, 0.01, 0.0, 0.0])
THERMAL_LENS = ("plumb_bob", [-0.3, 0.0, 0.0, 0.0, 0.0])  # a strong wide-angle barrel
THERMAL_SCALE = 0.75  # the thermal camera has fewer pixels over the same field of view


def distorted_rig(visible, thermal, shift=(0.0, 0.0)):
    """An aligned pair (same pinhole view) -> what two cameras with other lenses and resolutions see.

    Returns (raw visible, visible Intrinsics, raw thermal, thermal Intrinsics): the visible camera
    keeps the pair's pixels with a mild rational_polynomial lens, the thermal camera sees the same
    field of view at 0.75x the pixels through a k1 = -0.3 lens. Both raw images are cropped so that
    every pixel shows the scene (no black corners); K's principal point moves with the crop.
    `shift` (x, y), visible px: the thermal camera is also turned so that its pinhole image shows the
    scene moved by this much (a misalignment that camera_info does not know and the network corrects).
    """
    h, w = visible.shape[:2]
    translation = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    thermal = cv2.warpAffine(thermal, translation, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    k_full = np.array([[0.8 * w, 0, (w - 1) / 2], [0, 0.8 * w, (h - 1) / 2], [0, 0, 1]])
    my, mx = round(0.12 * h), round(0.12 * w)
    crop = (slice(my, h - my), slice(mx, w - mx))
    k_crop = k_full - np.array([[0, 0, mx], [0, 0, my], [0, 0, 0]])
    size = (h - 2 * my, w - 2 * mx)
    raw = []
    for image, (model, d) in ((visible, VISIBLE_LENS), (thermal, THERMAL_LENS)):
        full = Intrinsics.from_matrix(k_full, d, model, (h, w))
        seen = distort(np.ones((h, w), np.float32), full)[crop]
        assert seen.min() > 0.99, "the crop must show the scene everywhere"
        raw.append(distort(image, full)[crop])
    visible_camera = Intrinsics.from_matrix(k_crop, VISIBLE_LENS[1], VISIBLE_LENS[0], size)
    th, tw = round(size[0] * THERMAL_SCALE), round(size[1] * THERMAL_SCALE)
    sx, sy = tw / size[1], th / size[0]  # pixel centres: x' = (x + 0.5) * sx - 0.5
    k_thermal = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]]) @ k_crop
    thermal_camera = Intrinsics.from_matrix(k_thermal, THERMAL_LENS[1], THERMAL_LENS[0], (th, tw))
    return raw[0], visible_camera, cv2.resize(raw[1], (tw, th), interpolation=cv2.INTER_AREA), thermal_camera


def true_flow_without_undistortion(visible_camera, thermal_camera, shift=(0.0, 0.0)):
    """The flow (core convention, H x W x 2 visible px) that registers the raw thermal onto the raw
    visible image: raw visible pixel -> pinhole -> thermal pinhole (moved by the rig's `shift`, see
    :func:`distorted_rig`) -> raw thermal pixel, back through the pipeline's prior (the resize of the
    thermal to the visible grid)."""
    h, w = visible_camera.size
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), axis=2).reshape(-1, 2)
    sx, sy = thermal_camera.size[1] / w, thermal_camera.size[0] / h
    pinhole = undistort_points(grid, visible_camera) + np.asarray(shift, np.float64)
    raw_thermal = distort_points((pinhole + 0.5) * (sx, sy) - 0.5, thermal_camera)
    return ((raw_thermal + 0.5) / (sx, sy) - 0.5 - grid).reshape(h, w, 2)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (4.0, -3.0)], ids=["aligned", "thermal-turned-5px"])
def test_two_cameras_with_different_lenses_register_within_1_5_px_with_camera_info(cpu_pipeline, sample_pairs, shift):
    """The registered thermal's error (flow end-point error against the true mapping, visible px, mean
    over the image) on every sample pair, with each camera's camera_info and without it.

    `aligned`: undistorted, the pair is aligned, so with camera_info the truth is no flow at all and
    the network must keep it. Measured: 0.00 px on every pair (before the local stage's fine pass
    FLIR_01415, a low-confidence pair, was moved 2.6 px); without camera_info 1.6 .. 3.7 px (the
    network absorbs part of the lenses' affine share, not their distortion; the true mapping moves
    3.3 .. 4.8 px on average and 15 .. 23 px at the corners).
    `thermal-turned-5px`: the thermal camera also looks (4, -3) px away, which camera_info does not
    say, so with it the network must correct that shift on the rectified pair. Measured 2026-12-06:
    0.67 .. 1.68 px, mean 1.05 (of 5 px); without camera_info 1.76 .. 3.08 px, mean 2.34.
    With camera_info the error must be below the issue's 1.5 px bound on average; without it above.
    """
    pytest.importorskip("sensor_msgs")
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from cgrp_ros.ros.camera_info import CameraInfos
    from cgrp_ros.ros.fusion_outputs import fuse_pair
    from cgrp_ros.ros.image_conversions import numpy_to_image
    from cgrp_ros.ros.sync import THERMAL, VISIBLE

    rows = []  # (name, EPE with camera_info, EPE without, 95th percentile with, without)
    for name, visible, thermal in sample_pairs:
        raw_visible, visible_camera, raw_thermal, thermal_camera = distorted_rig(visible, thermal, shift)
        header = Header(frame_id="visible")
        messages = (numpy_to_image(raw_visible, "bgr8", Image, header),
                    numpy_to_image(raw_thermal, "mono8", Image, header))
        infos = CameraInfos()
        infos.update(VISIBLE, _camera_info(visible_camera))
        infos.update(THERMAL, _camera_info(thermal_camera))
        plan = infos.plan(raw_visible.shape, raw_thermal.shape)
        assert plan.intrinsics == (visible_camera, thermal_camera)
        every_pair = StreamPipeline(cpu_pipeline, registration_rate=0)
        rectified = fuse_pair(every_pair, *messages, {"deformation", "registered_thermal"}, 0.0, plan.intrinsics)
        plain = fuse_pair(every_pair, *messages, {"deformation"})
        assert rectified.images["registered_thermal"][0].shape == raw_visible.shape[:2]
        # with camera_info the outputs are in the rectified visible frame, where the thermal is off by `shift`
        error_with = np.linalg.norm(rectified.images["deformation"][0] - np.float32(shift), axis=2)
        truth = true_flow_without_undistortion(visible_camera, thermal_camera, shift)
        error_without = np.linalg.norm(plain.images["deformation"][0] - truth, axis=2)
        rows.append((name, error_with.mean(), error_without.mean(), np.percentile(error_with, 95),
                     np.percentile(error_without, 95)))
    report = "; ".join(f"{n}: {a:.2f} px (p95 {c:.1f}), without camera_info {b:.2f} px (p95 {d:.1f})"
                       for n, a, b, c, d in rows)
    with_info, without_info = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    assert with_info.mean() < 1.5, report
    if shift == (0.0, 0.0):
        assert (with_info < 0.5).sum() >= len(rows) - 1, report  # the aligned pair is left alone
        assert without_info.mean() > 1.5 and without_info.mean() > 3 * with_info.mean(), report
    else:
        assert with_info.mean() < 0.4 * np.hypot(*shift), report  # the network corrected most of it
        assert without_info.mean() > 1.5 and without_info.mean() > 1.5 * with_info.mean(), report


def test_camera_files_undistort_folders_for_fuse_and_calibrate(tmp_path, sample_dir, capsys):
    """Folders of a rig with a distorting thermal lens: --visible/--thermal-camera-info (camera_calibration's
    YAML) undistort each image first, as the node does with camera_info; a file of another size, or one of
    the two files alone, is a clear error."""
    import yaml

    from cgrp_ros.cli import main
    from cgrp_ros.commands.calibrate import _loader
    from cgrp_ros.core.camera import Intrinsics, distort, load_camera_yaml, undistort

    name = sorted(p.stem for p in (sample_dir / "visible").glob("*.jpg"))[0]
    visible = cv2.resize(cv2.imread(str(sample_dir / "visible" / f"{name}.jpg")), (128, 96))
    thermal = cv2.resize(cv2.imread(str(sample_dir / "thermal" / f"{name}.jpg"), 0), (128, 96))
    k = [[110.0, 0, 64], [0, 110.0, 48], [0, 0, 1]]
    cameras = (Intrinsics.from_matrix(k, [0] * 5, size=(96, 128)),
               Intrinsics.from_matrix(k, [-0.35, 0.1, 0, 0, 0], size=(96, 128)))
    for sub, image in (("visible", visible), ("thermal", distort(thermal, cameras[1]))):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / f"{name}.png"), image)
    for side, camera in zip(("visible", "thermal"), cameras):  # as camera_calibration writes ost.yaml
        (tmp_path / f"{side}.yaml").write_text(yaml.safe_dump({
            "image_width": 128, "image_height": 96, "camera_name": side, "distortion_model": "plumb_bob",
            "camera_matrix": {"rows": 3, "cols": 3, "data": list(camera.K)},
            "distortion_coefficients": {"rows": 1, "cols": 5, "data": list(camera.D)}}))
    assert load_camera_yaml(tmp_path / "thermal.yaml") == cameras[1]
    files = ["--visible-camera-info", tmp_path / "visible.yaml", "--thermal-camera-info", tmp_path / "thermal.yaml"]
    run = lambda out, *extra: main([str(a) for a in ["fuse", "--visible", tmp_path / "visible", "--thermal",  # noqa: E731
                                                     tmp_path / "thermal", "--out", tmp_path / out, "--device", "cpu",
                                                     "--working-size", "96x128", *extra]])
    assert run("with", *files) == 0 and run("without") == 0
    registered = {out: cv2.imread(str(tmp_path / out / "registered" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
                  for out in ("with", "without")}
    error = {out: np.abs(image[12:-12, 16:-16].astype(float) - thermal[12:-12, 16:-16]).mean()
             for out, image in registered.items()}
    assert error["with"] < 0.6 * error["without"], error  # the thermal where the pinhole camera sees it
    # cgrp calibrate reads the same undistorted images
    np.testing.assert_array_equal(_loader(tmp_path / "thermal" / f"{name}.png", cameras[1])(),
                                  undistort(distort(thermal, cameras[1]), cameras[1]))
    # a lens-capped thermal (constant) is warned of as received: undistorted with a pincushion lens (k1 > 0),
    # its black border hid it
    for sub, image in (("visible", visible), ("thermal", np.full_like(thermal, 30))):
        (tmp_path / "capped" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "capped" / sub / "capped.png"), image)
    pincushion = yaml.safe_load((tmp_path / "thermal.yaml").read_text())
    pincushion["distortion_coefficients"]["data"] = [0.3, 0.0, 0.0, 0.0, 0.0]
    (tmp_path / "pincushion.yaml").write_text(yaml.safe_dump(pincushion))
    capsys.readouterr()
    assert main([str(a) for a in ["fuse", "--visible", tmp_path / "capped" / "visible", "--thermal",
                                  tmp_path / "capped" / "thermal", "--out", tmp_path / "capped_out", "--device", "cpu",
                                  "--working-size", "96x128", files[0], files[1], files[2],
                                  tmp_path / "pincushion.yaml"]]) == 0
    assert "warning: capped: thermal image is constant (value 30)" in capsys.readouterr().err
    assert run("one", files[2], files[3]) == 2 and "give both" in capsys.readouterr().err
    (tmp_path / "thermal.yaml").write_text("image_width: 640\n")
    assert run("bad", *files) == 2 and "no 'camera_matrix' field" in capsys.readouterr().err
