"""The Pipeline with the shipped weights: shapes, dtypes, inputs, backends, and that it registers."""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from cgrp_ros.core.backends import flow_agreement
from cgrp_ros.core.deform import misalign, rng_for
from cgrp_ros.core.errors import InputError, ModelLoadError
from cgrp_ros.core.image import working_shape
from cgrp_ros.core.networks import SIZE_MULTIPLE
from cgrp_ros.core.pipeline import Pipeline, PipelineConfig, Registration
from cgrp_ros.core.warp import valid_mask


def _check(result, shape, thermal_dtype, colour):
    h, w = shape
    assert result.fused.shape == (h, w) and result.fused.dtype == np.uint8
    assert result.flow.shape == (h, w, 2) and result.flow.dtype == np.float32
    assert result.pseudo_thermal.shape == (h, w) and result.pseudo_thermal.dtype == np.uint8
    assert result.registered_thermal.shape == (h, w) and result.registered_thermal.dtype == thermal_dtype
    if colour:
        assert result.fused_color.shape == (h, w, 3) and result.fused_color.dtype == np.uint8
    else:
        assert result.fused_color is None
    assert np.isfinite(result.flow).all()
    assert set(result.timings) >= {"preprocess", "generator", "registration", "fusion", "postprocess", "total"}


@pytest.mark.parametrize("shape", [(120, 160), (351, 502), (97, 333), (600, 420)])
def test_outputs_follow_the_visible_resolution(cpu_pipeline, sample_pairs, shape):
    import cv2
    _, visible, thermal = sample_pairs[0]
    visible = cv2.resize(visible, shape[::-1])
    _check(cpu_pipeline(visible, thermal), shape, np.uint8, colour=True)


def test_fused_colour_keeps_the_visible_chroma_and_carries_the_fused_luminance(cpu_pipeline, sample_pairs):
    """The colour output is the visible image with its luminance replaced by the fused one: in YCrCb its
    Y is the grey fused image and its Cr, Cb the visible image's (within rounding), where no channel of
    B, G, R had to be clipped."""
    _, visible, thermal = sample_pairs[0]
    visible = (visible.astype(np.float32) * 0.5 + 64).astype(np.uint8)  # mid-range: room for the change
    result = cpu_pipeline(visible, thermal)
    fused = cv2.cvtColor(result.fused_color, cv2.COLOR_BGR2YCrCb).astype(int)
    original = cv2.cvtColor(visible, cv2.COLOR_BGR2YCrCb).astype(int)
    unclipped = ((result.fused_color > 0) & (result.fused_color < 255)).all(axis=2)
    assert unclipped.mean() > 0.95
    assert np.abs(fused[:, :, 0] - result.fused.astype(int))[unclipped].max() <= 1
    assert np.abs(fused[:, :, 1:] - original[:, :, 1:])[unclipped].max() <= 1
    assert np.abs(result.fused.astype(int) - original[:, :, 0]).mean() > 2  # (the luminance did change)


def test_a_working_size_too_large_for_the_machine_is_refused_with_one_that_fits():
    """The global search's memory grows with the square of the working area: on a CPU a size that would
    need more than 3/4 of the machine's memory is refused (the kernel would kill the process), with a
    size that fits; a GPU refuses such an allocation itself, as an error of that pair."""
    from cgrp_ros.core.pipeline import search_memory_bytes, working_size_problem

    gib8 = 8 * 2**30
    assert working_size_problem((720, 1280), "cpu", gib8) is None      # ~5 GB of 8
    problem = working_size_problem((1024, 1280), "cpu", gib8)            # ~10 GB of 8
    assert problem.startswith("working_size 1024x1280 (HxW) needs about 10 GB") and "this machine's 9 GB" in problem
    fits = tuple(int(v) for v in problem.rsplit(" ", 1)[1].split("x"))
    assert working_size_problem(fits, "cpu", gib8) is None and search_memory_bytes(fits) > 0.5 * 0.75 * gib8
    assert working_size_problem((4096, 4096), "cuda", gib8) is None
    with pytest.raises(InputError, match="global search"):
        Pipeline(PipelineConfig(backend="torch", device="cpu", working_size=(4096, 4096)))


def test_thermal_bit_depths_and_mono_visible(cpu_pipeline, sample_pairs):
    _, visible, thermal = sample_pairs[1]
    radiometric = (thermal.astype(np.uint16) * 40 + 20000)  # 16-bit camera counts
    r16 = cpu_pipeline(visible, radiometric)
    _check(r16, visible.shape[:2], np.uint16, colour=True)
    assert r16.registered_thermal.max() > 20000  # raw counts, not rescaled
    r8 = cpu_pipeline(visible, thermal)
    # the AGC maps the 16-bit image onto the 8-bit one's range: the fusion sees nearly the same input
    # (measured 2026-12-06: 1.72 grey levels; a constant thermal instead gives 29.7)
    assert np.abs(r16.fused.astype(int) - r8.fused).mean() < 5
    rf = cpu_pipeline(visible[:, :, 1], thermal.astype(np.float32) / 7.0 + 290.0)  # kelvin-like floats
    _check(rf, visible.shape[:2], np.float32, colour=False)
    # and so does a float thermal, fused with one channel of the visible (measured 2026-12-06: 1.92)
    assert np.abs(rf.fused.astype(int) - r8.fused).mean() < 5


def test_thermal_of_another_resolution_lands_in_the_visible_frame(cpu_pipeline, sample_pairs):
    import cv2
    _, visible, thermal = sample_pairs[2]
    visible_hr = cv2.resize(visible, None, fx=2, fy=2)  # a 2x higher-resolution visible camera
    result = cpu_pipeline(visible_hr, thermal)
    _check(result, visible_hr.shape[:2], np.uint8, colour=True)
    # the pair is aligned: no flow, and the thermal lands where a plain resize puts it
    # (measured 2026-12-06: mean |flow| 0.000 px; MAE 0.23 grey levels, a 4-px shift would give 8.3)
    assert np.abs(result.flow).mean() < 0.25
    resized = cv2.resize(thermal, visible_hr.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    assert np.abs(result.registered_thermal.astype(float) - resized).mean() < 2.0


def test_where_the_thermal_does_not_see_the_fused_image_is_the_visible_one(sample_pairs):
    """A calibrated thermal that sees the central 70 % of the visible view: outside its footprint the
    fused picture is the visible one (it was darkened, 8-9 grey levels on these pairs, with a seam),
    and inside the thermal still shows (measured 2026-12-07: mean |fused - visible| 9 or more grey levels)."""
    from cgrp_ros.core.calibrate import centred_placement

    for _, visible, thermal in sample_pairs:
        hv, wv = visible.shape[:2]
        to_visible = centred_placement(thermal.shape, (hv, wv), 0.7)  # thermal px -> visible px
        narrow = cv2.warpPerspective(cv2.resize(thermal, (wv, hv)), to_visible, thermal.shape[::-1],
                                     flags=cv2.WARP_INVERSE_MAP)  # what the narrower thermal camera sees
        result = Pipeline(PipelineConfig(backend="torch", device="cpu", homography=to_visible,
                                         homography_sizes=((hv, wv), thermal.shape)))(visible, narrow)
        (x0, y0), (x1, y1) = to_visible[:2, 2], to_visible[:2, :2] @ (np.array(thermal.shape[::-1]) - 1) + to_visible[:2, 2]
        outside = np.ones((hv, wv), bool)
        outside[int(y0) - 8:int(y1) + 9, int(x0) - 8:int(x1) + 9] = False  # (the fusion runs at a quarter of the pixels)
        inside = np.zeros((hv, wv), bool)
        inside[int(y0) + 8:int(y1) - 8, int(x0) + 8:int(x1) - 8] = True
        luminance = cv2.cvtColor(visible, cv2.COLOR_BGR2GRAY).astype(float)
        fused = result.fused.astype(float)
        assert np.abs(fused[outside] - luminance[outside]).max() <= 1.0
        assert np.abs(fused[inside] - luminance[inside]).mean() > 5.0
        assert result.registered_thermal[outside].max() == 0  # documented: 0 where the thermal has no data


def test_frames_fused_with_a_rig_estimate_are_those_of_a_fresh_flow(sample_pairs):
    """A rig's running estimate is one read-only flow frame after frame; what derives from it alone (its
    working-size copy, the resampling maps, the coverage of a calibrated thermal) is worked out once. The
    outputs are those of the same flow given afresh, and a writable flow changed in place is followed."""
    from cgrp_ros.core.calibrate import centred_placement

    _, visible, thermal = sample_pairs[0]
    hv, wv = visible.shape[:2]
    to_visible = centred_placement(thermal.shape, (hv, wv), 0.8)
    pipeline = Pipeline(PipelineConfig(device="cpu", working_size=(96, 128), homography=to_visible,
                                       homography_sizes=((hv, wv), thermal.shape)))
    yy, xx = np.mgrid[0:hv, 0:wv].astype(np.float32)
    estimate = np.stack([2.0 + 0.01 * xx, -1.5 + 0.005 * yy], -1).astype(np.float32)
    estimate.setflags(write=False)
    fresh = pipeline(visible, thermal, registration=Registration(estimate.copy(), 0.5, False))
    for _ in range(2):
        cached = pipeline(visible, thermal, registration=Registration(estimate, 0.5, False))
        for name in ("fused", "fused_color", "registered_thermal"):
            np.testing.assert_array_equal(getattr(cached, name), getattr(fresh, name), err_msg=name)
    writable = estimate.copy()
    before = pipeline(visible, thermal, registration=Registration(writable, 0.5, False)).registered_thermal
    writable += 6.0
    after = pipeline(visible, thermal, registration=Registration(writable, 0.5, False)).registered_thermal
    assert np.abs(after.astype(float) - before).mean() > 1.0


def test_a_thermal_of_a_new_size_every_frame_keeps_the_rig_estimates_cache_bounded(sample_pairs):
    """What per_flow keeps is keyed by the thermal's size too: a sender that changes it with every pair
    (the estimate unchanged) grew the node's memory by 2.4 MB a pair, without end."""
    from cgrp_ros.core.pipeline import FLOW_CACHE_SIZE

    _, visible, thermal = sample_pairs[0]
    pipeline = Pipeline(PipelineConfig(device="cpu", working_size=(96, 128)))
    estimate = np.zeros(visible.shape[:2] + (2,), np.float32)
    estimate.setflags(write=False)
    for extra in range(3 * FLOW_CACHE_SIZE):
        resized = cv2.resize(thermal, (thermal.shape[1] + extra, thermal.shape[0]))
        pipeline(visible, resized, outputs={"registered_thermal"}, registration=Registration(estimate, 0.5, False))
        assert len(pipeline._flow_cache[1]) <= FLOW_CACHE_SIZE


def test_a_homography_that_folds_the_thermal_over_or_loses_it_is_refused(sample_pairs):
    """Hand-written homographies a new user may get wrong: a perspective term that puts the horizon
    inside the thermal image, a scale that shrinks it to a dot. They fused without a word (an image
    folded over; nothing of the thermal to see); a rotated mount (180 degrees) stays accepted."""
    _, visible, thermal = sample_pairs[0]
    (h, w) = visible.shape[:2]
    cases = ((np.array([[1, 0, 0], [0, 1, 0], [-0.02, 0, 1.0]]), "beyond the horizon"),
             (np.diag([1e-4, 1e-4, 1.0]), "wholly outside"),
             (np.array([[-1, 0, w - 1], [0, -1, h - 1], [0, 0, 1.0]]), None))
    for homography, words in cases:
        pipeline = Pipeline(PipelineConfig(backend="torch", device="cpu", working_size=(96, 128), homography=homography))
        if words is None:
            assert pipeline(visible, thermal, outputs={"fused"}).fused.shape == (h, w)
        else:
            with pytest.raises(InputError, match=words):
                pipeline(visible, thermal, outputs={"fused"})


def test_only_requested_outputs_are_computed(cpu_pipeline, sample_pairs):
    _, visible, thermal = sample_pairs[0]
    result = cpu_pipeline(visible, thermal, outputs={"flow"})
    assert result.fused is None and result.registered_thermal is None and result.pseudo_thermal is None
    assert result.flow.shape == visible.shape[:2] + (2,)


@pytest.mark.parametrize("visible, thermal, match", [
    (np.zeros((1, 1, 3), np.uint8), np.zeros((10, 10), np.uint8), "too small"),
    (np.zeros((10, 10, 2), np.uint8), np.zeros((10, 10), np.uint8), "shape"),
    (np.zeros((10, 10, 3), np.int64), np.zeros((10, 10), np.uint8), "dtype"),
    (np.zeros((10, 10, 3), np.uint8), "not an image", "numpy array"),
    (np.zeros((10, 10, 3), np.uint8), np.full((10, 10), np.nan, np.float32), "no finite pixel"),
    # 60 MP (a broken driver, a hostile publisher): refused before outputs of several GB are allocated
    (np.zeros((6000, 10000), np.uint8), np.zeros((10, 10), np.uint8), "above 50 MP"),
    # a float visible of 8-bit values (a TIFF, a conversion forgotten): clipped to [0, 1] it fused as white
    (np.linspace(0, 255, 300, dtype=np.float64).reshape(10, 10, 3), np.zeros((10, 10), np.uint8), "expected in"),
])
def test_unusable_input_raises_input_error(cpu_pipeline, visible, thermal, match):
    with pytest.raises(InputError, match=match):
        cpu_pipeline(visible, thermal)


def test_torch_and_onnxruntime_backends_agree(sample_pairs):
    """(The graphs come from the test run's ONNX cache, $CGRP_CACHE, shared with the node tests: exported
    once per run. test_cli's export test checks a fresh export.)"""
    name, visible, aligned = sample_pairs[3]
    # misaligned, so that the search, both local starts, the fine pass and the dense levels all move
    # the flow (on an aligned pair both backends keep the identity: zeros against zeros)
    thermal = misalign(aligned, "moderate", rng_for(0, name)).misaligned
    torch_pipe = Pipeline(PipelineConfig(backend="torch", device="cpu"))
    ort_pipe = Pipeline(PipelineConfig(backend="onnxruntime", device="cpu"))
    assert ort_pipe.backend.providers == ["CPUExecutionProvider"]
    for shape in [(180, 250), visible.shape[:2]]:  # two sizes: the ONNX graphs have dynamic H/W
        v = cv2.resize(visible, shape[::-1])
        t = cv2.resize(thermal, shape[::-1])
        a, b = torch_pipe(v, t), ort_pipe(v, t)
        assert np.linalg.norm(a.flow, axis=-1).mean() > 3.0  # the registration moved it
        agree = flow_agreement(a.flow, b.flow)
        assert agree["ok"], agree  # within float rounding (FLOW_AGREEMENT_PX)
        assert np.abs(a.fused.astype(int) - b.fused).max() <= 1
        assert np.abs(a.pseudo_thermal.astype(int) - b.pseudo_thermal).max() <= 1
    assert "registration_coarse_calibrated" not in ort_pipe.backend.sessions  # exported and loaded only when needed
    # the aligned pair: the affine stages keep the identity, so onnxruntime skips the fine pass's graph (as
    # torch skips the pass) and the dense one, and both backends return a zero flow
    graphs, run = [], ort_pipe.backend._run
    ort_pipe.backend._run = lambda graph, *inputs: graphs.append(graph) or run(graph, *inputs)
    a, b = torch_pipe(visible, aligned), ort_pipe(visible, aligned)
    assert not a.flow.any() and not b.flow.any()
    assert "registration_coarse" in graphs and "registration_fine" not in graphs and "registration_dense" not in graphs
    graphs.clear()
    ort_pipe(visible, thermal)
    assert "registration_fine" in graphs and "registration_dense" in graphs
    # with a calibration no pair searches: onnxruntime runs the graph without the global stage, and the
    # local stage starts from the prior
    shift = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]])
    torch_pipe, ort_pipe = (Pipeline(PipelineConfig(backend=b, device="cpu", homography=shift))
                            for b in ("torch", "onnxruntime"))
    a, b = torch_pipe(visible, thermal), ort_pipe(visible, thermal)
    assert flow_agreement(a.flow, b.flow)["ok"]
    assert a.registration_confidence == pytest.approx(b.registration_confidence, abs=1e-4)
    assert set(ort_pipe.backend.sessions) == {"generator", "registration_coarse_calibrated", "registration_fine_calibrated",
                                              "registration_dense", "fusion"}


def test_a_missing_onnx_graph_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
    """An onnx_dir from an older `cgrp export` lacks registration_coarse_calibrated.onnx; a calibrated
    Pipeline exports it there, and says what to do when the folder cannot be written."""
    from cgrp_ros.core import backends

    backends.export_onnx(PipelineConfig().model_paths(), tmp_path, graphs=["generator", "fusion"])

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(backends, "export_onnx", read_only)
    with pytest.raises(ModelLoadError, match=r"registration_coarse_calibrated\.onnx.*cgrp export --out"):
        Pipeline(PipelineConfig(backend="onnxruntime", device="cpu", homography=np.eye(3), onnx_dir=str(tmp_path)))


def test_registration_improves_alignment_on_val_pairs(cpu_pipeline, sample_pairs):
    """Shipped weights, moderate preset: the registered thermal is closer to the aligned one."""
    for name, visible, thermal in sample_pairs[:3]:
        m = misalign(thermal, "moderate", rng_for(0, name))
        result = cpu_pipeline(visible, m.misaligned)
        region = m.valid & valid_mask(result.flow)
        mae_before = np.abs(m.misaligned.astype(np.float32) - thermal)[region].mean()
        mae_after = np.abs(result.registered_thermal.astype(np.float32) - thermal)[region].mean()
        epe_before = np.linalg.norm(m.flow, axis=2)[m.valid].mean()
        epe_after = np.linalg.norm(result.flow - m.flow, axis=2)[m.valid].mean()
        assert mae_after < 0.8 * mae_before, f"{name}: MAE {mae_before:.2f} -> {mae_after:.2f}"
        assert epe_after < 0.6 * epe_before, f"{name}: EPE {epe_before:.2f} -> {epe_after:.2f} px"


def test_a_4_by_3_pair_is_registered_without_mirrored_rows(cpu_pipeline, m3svd_pairs):
    """A 640x480 camera works at 240x320 with no padding: mirrored rows below the image (never seen in
    training) used to pull the fit towards a vertical compression (this pair: 0.31 of the unregistered EPE)."""
    assert working_shape(480, 640, (256, 320), SIZE_MULTIPLE) == ((240, 320), (240, 320))
    name, visible, thermal = next(p for p in m3svd_pairs if p[0] == "val_0114_1609_0005")  # forest
    m = misalign(thermal, "moderate", rng_for(0, name))
    result = cpu_pipeline(visible, m.misaligned)
    region = m.valid & valid_mask(result.flow)
    epe_before = np.linalg.norm(m.flow, axis=2)[region].mean()
    epe_after = np.linalg.norm(result.flow - m.flow, axis=2)[region].mean()
    assert epe_after < 0.2 * epe_before, f"{name}: EPE {epe_before:.2f} -> {epe_after:.2f} px"


def test_aligned_pairs_of_two_rigs_stay_aligned(cpu_pipeline, sample_pairs, m3svd_pairs):
    """Do no harm: already aligned RoadScene and M3SVD pairs come out aligned (flow within 1 px of zero)."""
    for name, visible, thermal in sample_pairs[:3] + m3svd_pairs:
        result = cpu_pipeline(visible, thermal)
        moved = np.linalg.norm(result.flow, axis=2)
        assert moved.mean() < 1.0, f"{name}: moved by {moved.mean():.2f} px on average"
        assert 0.0 <= result.registration_confidence <= 1.0


def test_registration_falls_back_without_shared_structure(cpu_pipeline, sample_pairs):
    """A lens-capped thermal, or the thermal of another scene: the prior (zero flow), flagged."""
    _, visible, thermal = sample_pairs[0]
    other = sample_pairs[3][2]
    for moving in (np.full_like(thermal, 90), cv2.resize(other, thermal.shape[::-1])):
        result = cpu_pipeline(visible, moving)
        assert result.registration_fallback
        assert result.registration_confidence < cpu_pipeline.confidence_threshold
        assert np.abs(result.flow).max() == 0.0


@pytest.mark.parametrize("working_size", [(64, 96), (96, 128), (128, 160)])
def test_featureless_pairs_fall_back_at_small_working_sizes_too(sample_pairs, working_size):
    """With few cells the matches agree with some affine by chance: a black (noisy) visible image and two
    zero images scored above the model's threshold at these sizes and moved by 6-45 px; they keep the
    prior, and real pairs at that size are still registered."""
    pipeline = Pipeline(PipelineConfig(backend="torch", device="cpu", working_size=working_size))
    name, visible, thermal = sample_pairs[0]
    black = np.random.default_rng(0).integers(0, 4, visible.shape).astype(np.uint8)
    for v, t in ((black, thermal), (np.zeros_like(visible), np.zeros_like(thermal))):
        registration = pipeline.register(v, t)
        assert registration.fallback and np.abs(registration.flow).max() == 0.0, registration.confidence
    moved = pipeline.register(visible, misalign(thermal, "moderate", rng_for(0, name)).misaligned)
    assert not moved.fallback and np.abs(moved.flow).mean() > 1.0


def test_a_pair_that_keeps_its_prior_runs_the_generator_only_for_its_output(cpu_pipeline, sample_pairs):
    """The pseudo-thermal feeds only the dense levels: a pair the affine stages leave at its prior (here
    a lens cap, which falls back) is fused without the generator, and still gets a pseudo-thermal, the
    same as a moved pair of that visible image, when it is asked for."""
    name, visible, thermal = sample_pairs[0]
    capped = np.full_like(thermal, 90)
    kept = cpu_pipeline(visible, capped, outputs={"flow", "fused"})
    assert kept.registration_fallback and kept.timings["generator"] == 0.0 and kept.fused is not None
    with_pseudo = cpu_pipeline(visible, capped)
    moved = cpu_pipeline(visible, misalign(thermal, "moderate", rng_for(0, name)).misaligned)
    assert np.abs(moved.flow).max() > 1.0 and moved.timings["generator"] > 0.0
    assert np.array_equal(with_pseudo.pseudo_thermal, moved.pseudo_thermal)
    assert np.array_equal(with_pseudo.fused, kept.fused)

def test_fusion_only_and_generator_only_entry_points(cpu_pipeline, sample_pairs):
    _, visible, thermal = sample_pairs[0]
    fused, fused_color = cpu_pipeline.fuse(visible, thermal)
    assert fused.shape == thermal.shape and fused_color.shape == visible.shape
    pseudo = cpu_pipeline.pseudo_thermal(visible)
    assert pseudo.shape == thermal.shape and pseudo.dtype == np.float32
    assert 0.0 <= pseudo.min() and pseudo.max() <= 1.0


def test_an_onnx_graph_appears_whole_and_a_damaged_one_is_exported_again(tmp_path, caplog):
    """Two nodes sharing the ONNX cache: one exporting a graph while the other loads it read half a graph
    (written in place). A graph cut short (an interrupted export, a full disk) failed every later start."""
    from cgrp_ros.core import backends

    paths = PipelineConfig().model_paths()
    assert backends.export_onnx(paths, tmp_path, graphs=["fusion"]) == {"fusion": tmp_path / "fusion.onnx"}
    assert [p.name for p in tmp_path.iterdir()] == ["fusion.onnx"]  # no temporary file left
    whole = (tmp_path / "fusion.onnx").read_bytes()
    (tmp_path / "fusion.onnx").write_bytes(whole[:len(whole) // 3])
    backend = backends.OnnxBackend.__new__(backends.OnnxBackend)  # only its session(): one graph, not five
    import onnxruntime
    backend.model_paths, backend.onnx_dir, backend.sessions = paths, tmp_path, {}
    backend._ort, backend._threads, backend._fp16, backend._wanted = onnxruntime, 1, False, ["CPUExecutionProvider"]
    with caplog.at_level("WARNING", logger="cgrp_ros"):
        session = backend.session("fusion")
    assert [i.name for i in session.get_inputs()] == ["visible_y", "registered_thermal"]
    assert (tmp_path / "fusion.onnx").stat().st_size == len(whole) and "exporting it again" in caplog.text


def test_a_read_only_onnx_dir_keeps_tensorrt_with_its_engines_elsewhere(tmp_path, monkeypatch):
    """TensorRT's engine cache could not be made in a read-only onnx_dir, and the node fell back to the CPU."""
    from cgrp_ros.core.backends import provider_settings

    monkeypatch.setenv("CGRP_CACHE", str(tmp_path / "cache"))
    read_only = tmp_path / "onnx"
    read_only.write_text("")  # no folder can be made inside it (as in a read-only one, even for root)
    (trt, options), cuda = provider_settings(["TensorrtExecutionProvider", "CUDAExecutionProvider"], read_only)
    assert trt == "TensorrtExecutionProvider" and cuda[0] == "CUDAExecutionProvider"
    assert Path(options["trt_engine_cache_path"]).parent == tmp_path / "cache"


def test_tensorrt_keeps_its_engines_beside_the_onnx_files(tmp_path):
    from cgrp_ros.core.backends import provider_settings

    settings = provider_settings(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                                 tmp_path, fp16=True)
    (trt, trt_options), (cuda, _), cpu = settings
    assert (trt, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt_options["trt_engine_cache_enable"] and trt_options["trt_fp16_enable"]
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "tensorrt") and (tmp_path / "tensorrt").is_dir()
    assert provider_settings(["CPUExecutionProvider"], tmp_path) == ["CPUExecutionProvider"]


def test_a_config_is_copied_checked_and_named_in_its_errors(cpu_pipeline, sample_pairs):
    """Library use: Pipeline(config, **overrides) leaves `config` as it was and refuses a field it does not
    know; values of the wrong shape or type are an InputError naming the field, not a Python error later."""
    from cgrp_ros.core.pipeline import Registration

    config = PipelineConfig(backend="torch", device="cpu")
    small = Pipeline(config, working_size=(64, 96))
    assert small.config.working_size == (64, 96) and config.working_size == (256, 320)
    for overrides, words in ((dict(working_sise=(64, 96)), "unknown PipelineConfig field(s): working_sise"),
                             (dict(working_size="64x96"), "working_size must be (height, width)"),
                             (dict(fusion_scale=None), "fusion_scale must be a number"),
                             (dict(thermal_percentiles=(1, 2, 3)), "thermal_percentiles must be (low, high)"),
                             (dict(homography=np.eye(3), homography_sizes=((351, 502),)), "homography_sizes must be"),
                             (dict(homography=np.eye(3), homography_sizes=((351, 0), (10, 10))), "at least 1x1")):
        with pytest.raises(InputError, match=re.escape(words)):
            Pipeline(config, **overrides)
    _, visible, thermal = sample_pairs[0]
    for call in (lambda: small(visible, None), lambda: small.register(visible, None),
                 lambda: small(np.zeros((4, 40000), np.uint8), thermal)):
        with pytest.raises(InputError):
            call()
    # a flow of float64 (numpy's default) to fuse with is taken as float32
    flow = np.zeros(visible.shape[:2] + (2,), np.float64)
    assert small(visible, thermal, outputs={"fused"}, registration=Registration(flow)).flow.dtype == np.float32


def test_a_camera_whose_working_grid_is_padded_is_not_stretched(cpu_pipeline, sample_pairs):
    """A 270x480 camera works at 180x320, padded to 184 rows for the networks: the padding must be cut off
    before the outputs are scaled back (else the picture stretches by 184/180, 4-6 px at the bottom of this
    one and 24 at a 1920x1080 camera's). The pseudo-thermal against that of an unpadded 240x320 view."""
    _, visible, thermal = sample_pairs[0]

    def pseudo(size):
        shrink = lambda image: cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)  # noqa: E731
        return cpu_pipeline(shrink(visible), shrink(thermal), outputs={"pseudo_thermal"}).pseudo_thermal
    padded = pseudo((270, 480)).astype(np.float32)
    unpadded = cv2.resize(pseudo((240, 320)), (480, 270), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    rows = slice(170, 255)  # the bottom, where a stretch has moved the picture most
    error = {dy: np.abs(padded[rows.start + dy:rows.stop + dy] - unpadded[rows]).mean() for dy in range(-8, 9)}
    assert abs(min(error, key=error.get)) <= 1, error  # measured: 0 (a stretched picture: -4)


class EditedStage:
    """A backend whose `stage` outputs pass through `edit(outputs)` (a fault or a verdict to provoke)."""

    def __init__(self, backend, stage, edit):
        self.backend, self.stage, self.edit = backend, stage, edit

    def __call__(self, stage, *inputs):
        outputs = self.backend(stage, *inputs)
        return self.edit(outputs) if stage == self.stage else outputs

    def __getattr__(self, name):
        return getattr(self.backend, name)


def test_a_non_finite_registration_is_a_fallback_to_the_prior(sample_pairs):
    """NaN out of the networks is never published: the flow is the prior's (zero), and the pair says it fell
    back, with confidence 0, so the node and cgrp fuse warn as for a pair without evidence."""
    from cgrp_ros.core.deform import misalign, rng_for

    pipeline = Pipeline(PipelineConfig(backend="torch", device="cpu"))
    # NaN out of the dense registration (a fp16 overflow, a broken export)
    pipeline.backend = EditedStage(pipeline.backend, "registration_dense",
                                   lambda outputs: (np.full_like(outputs[0], np.nan), outputs[1]))
    _, visible, thermal = sample_pairs[0]
    moved = misalign(thermal, "moderate", rng_for(0, "nan")).misaligned  # the dense levels run only on a moved pair
    result = pipeline(visible, moved)
    assert not result.flow.any() and result.registration_fallback and result.registration_confidence == 0.0
    assert np.isfinite(result.fused_image.astype(np.float32)).all()


def test_below_chance_confidence_keeps_the_prior_whatever_affine_was_found(sample_pairs):
    """Matches no better than chance are no evidence: the pair keeps its prior (no warp) and says it fell
    back, even where the network's affine is not the identity (here: a pair that really is misaligned)."""
    from cgrp_ros.core.deform import misalign, rng_for

    pipeline = Pipeline(PipelineConfig(backend="torch", device="cpu"))
    _, visible, thermal = sample_pairs[0]
    moved = misalign(thermal, "moderate", rng_for(0, "chance")).misaligned
    assert pipeline(visible, moved).flow.any()  # the affine the wrapper keeps below is not the identity
    # the global stage reports a confidence below chance, whatever affine it found
    pipeline.backend = EditedStage(pipeline.backend, "registration_affine", lambda outputs: (
        outputs[0], outputs[1], np.zeros_like(outputs[2]), np.zeros_like(outputs[3])))
    result = pipeline(visible, moved)
    assert not result.flow.any() and result.registration_fallback


def test_reconfigure_swaps_a_checked_copy_of_the_config(sample_pairs):
    """The node changes working_size and the thermal's gain between pairs while a registration may run in
    the background: the change is checked as at construction, and a call holding the old config keeps it."""
    pipeline = Pipeline(PipelineConfig(backend="torch", device="cpu"), working_size=(64, 96))
    before = pipeline.config
    assert pipeline.reconfigure(working_size=[96, 128], agc_8bit=True)
    assert (pipeline.config.working_size, pipeline.config.agc_8bit) == ((96, 128), True)
    assert (before.working_size, before.agc_8bit) == ((64, 96), False)  # not changed in place
    assert not pipeline.reconfigure(working_size=(96, 128))
    for changes, words in ((dict(fusion_scale=3.0), "fusion_scale must be a number in [0.1, 1]"),
                           (dict(working_size=(8, 8)), "working_size"),
                           (dict(backend="onnxruntime"), "not changeable without a new Pipeline: backend")):
        with pytest.raises(InputError, match=re.escape(words)):
            pipeline.reconfigure(**changes)
        assert pipeline.config.working_size == (96, 128) and pipeline.config.fusion_scale == 0.5
    _, visible, thermal = sample_pairs[0]
    assert pipeline(visible, thermal).fused_image.shape[:2] == visible.shape[:2]


def test_a_black_hot_thermal_fuses_like_the_white_hot_one(cpu_pipeline, sample_pairs):
    """A camera set to a black-hot palette delivers the inverted image: with black_hot the fused image is
    the white-hot one's (hot is bright), and without it clearly not; registered_thermal keeps the
    camera's own values."""
    name, visible, thermal = sample_pairs[0]
    white = cpu_pipeline(visible, thermal)
    inverted = (255 - thermal).astype(np.uint8)
    black = Pipeline(PipelineConfig(backend="torch", device="cpu", black_hot=True))(visible, inverted)
    plain = cpu_pipeline(visible, inverted)
    difference = lambda a, b: float(np.abs(a.astype(float) - b.astype(float)).mean())  # noqa: E731
    assert difference(black.fused_image, white.fused_image) < 1.0
    assert difference(plain.fused_image, white.fused_image) > 10 * max(difference(black.fused_image, white.fused_image), 0.5)
    assert difference(black.registered_thermal, inverted) < difference(black.registered_thermal, thermal)
