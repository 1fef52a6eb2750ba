"""Metrics against hand-computed values on tiny arrays and against known properties."""
import math

import cv2
import numpy as np
import pytest

from cgrp_ros.evaluation import metrics as M
from cgrp_ros.core.deform import misalign, rng_for
from cgrp_ros.core.warp import warp_numpy

# 2 x 2 images: A varies down the rows, B across the columns (their centred values are orthogonal)
A = np.array([[0, 0], [10, 10]], np.uint8)
B = np.array([[0, 10], [0, 10]], np.uint8)


@pytest.fixture(scope="module")
def texture(smooth_texture):
    return smooth_texture(48, 64, 2)


def test_identical_images():
    assert M.mae(A, A) == 0 and M.rmse(A, A) == 0
    assert M.correlation(A, A) == pytest.approx(1.0)
    assert M.mutual_information(A, A) == pytest.approx(M.entropy(A)) == pytest.approx(1.0)


def test_intensity_shift():
    shifted = A.astype(np.float64) + 5
    assert M.mae(A, shifted) == pytest.approx(5.0)
    assert M.rmse(A, shifted) == pytest.approx(5.0)
    assert M.correlation(A, shifted) == pytest.approx(1.0)


def test_orthogonal_patterns():
    assert M.mae(A, B) == pytest.approx(5.0)            # |0-0|, |0-10|, |10-0|, |10-10|
    assert M.rmse(A, B) == pytest.approx(math.sqrt(50))
    assert M.correlation(A, B) == pytest.approx(0.0)
    assert M.mutual_information(A, B) == pytest.approx(0.0)  # joint histogram = product of marginals


def test_spatially_shifted_image(texture):
    moved = np.roll(texture, 3, axis=1)
    assert M.mae(texture, moved) > 0
    assert M.correlation(texture, moved) < M.correlation(texture, texture)
    assert M.mutual_information(texture, moved) < M.mutual_information(texture, texture)


def test_mask_selects_pixels():
    mask = np.array([[True, False], [True, False]])
    assert M.mae(A, B, mask) == pytest.approx(5.0)        # pixels (0,0) and (1,0): 0 and 10
    assert math.isnan(M.mae(A, B, np.zeros((2, 2), bool)))


def test_entropy_values():
    assert M.entropy(np.full((4, 4), 7, np.uint8)) == 0.0
    assert M.entropy(np.array([[0, 255]], np.uint8)) == pytest.approx(1.0)
    assert M.entropy(np.array([[0, 1, 2, 3]], np.uint8)) == pytest.approx(2.0)


def test_constant_images():
    flat = np.full((16, 16), 80, np.uint8)
    assert math.isnan(M.correlation(flat, A.repeat(8, 0).repeat(8, 1)))  # undefined, not 0
    assert M.standard_deviation(flat) == 0 and M.spatial_frequency(flat) == 0 and M.average_gradient(flat) == 0
    assert M.ssim(flat, flat) == pytest.approx(1.0)
    assert math.isnan(M.qabf(flat, flat, flat))


def test_mutual_information_symmetric(texture):
    other = np.random.default_rng(1).integers(0, 256, texture.shape).astype(np.uint8) // 2 + texture // 2
    assert M.mutual_information(texture, other) == pytest.approx(M.mutual_information(other, texture))
    assert M.mutual_information(texture, other) >= 0


def test_gradient_measures_hand_computed():
    assert M.standard_deviation(np.array([[0, 10]])) == pytest.approx(5.0)
    assert M.spatial_frequency(B) == pytest.approx(10.0)      # row differences 10, column differences 0
    assert M.average_gradient(B) == pytest.approx(math.sqrt(100 / 2))


def test_ssim_and_vif_of_identical(texture):
    assert M.ssim(texture, texture) == pytest.approx(1.0)
    assert M.vif(texture, texture) == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(texture + np.random.default_rng(2).normal(0, 20, texture.shape), 0, 255)
    assert M.ssim(texture, noisy) < 1.0 and M.vif(texture, noisy) < 1.0
    assert M.ssim(texture, noisy) == pytest.approx(M.ssim(noisy, texture))


def test_qabf_perfect_fusion(texture):
    # F = A = B: relative strength and orientation are 1 everywhere: the product of the two sigmoids at 1
    q_g = 0.9994 / (1 + math.exp(-15 * (1 - 0.5)))
    q_a = 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))
    assert M.qabf(texture, texture, texture) == pytest.approx(q_g * q_a)
    assert M.qabf(texture, texture, np.full_like(texture, 128)) < 0.1


def test_flow_errors():
    reference = np.random.default_rng(3).normal(0, 4, (8, 10, 2)).astype(np.float32)
    assert M.flow_errors(reference, reference) == dict(epe=0.0, epe_lt1=1.0, epe_lt3=1.0)
    off = reference + np.array([3.0, 4.0], np.float32)
    assert M.flow_errors(off, reference) == pytest.approx(dict(epe=5.0, epe_lt1=0.0, epe_lt3=0.0))
    half = reference + np.array([0.0, 2.0], np.float32)
    assert M.flow_errors(half, reference) == pytest.approx(dict(epe=2.0, epe_lt1=0.0, epe_lt3=1.0))


def test_exact_field_registers_the_misalignment(texture):
    truth = misalign(texture, "moderate", rng_for(0, "texture"))
    registered = warp_numpy(truth.misaligned, truth.flow)
    scores = M.registration_metrics(registered, texture, truth.valid, truth.flow, truth.flow)
    assert scores["epe"] == 0.0 and scores["epe_lt1"] == 1.0
    # a flow 1 px off everywhere scores 1 px (epe_lt1 is left out: float32 rounding puts 1 px on either side)
    wrong = truth.flow + np.float32([1.0, 0.0])
    off = M.registration_metrics(registered, texture, truth.valid, wrong, truth.flow)
    assert off["epe"] == pytest.approx(1.0, abs=1e-4) and off["epe_lt3"] == 1.0
    assert scores["mae"] < 0.1 * M.mae(truth.misaligned, texture, truth.valid)  # only resampling error left
    assert scores["ncc"] > 0.99


def test_fusion_metrics_columns(texture):
    values = M.fusion_metrics(texture, texture, texture)
    assert list(values) == list(M.FUSION_COLUMNS)
    assert values["ssim"] == pytest.approx(1.0) and values["cc"] == pytest.approx(1.0)
    assert values["fmi"] == pytest.approx(2 * M.entropy(texture))
    assert values["vif"] == pytest.approx(2.0, abs=1e-5)


def test_rejects_colour():
    with pytest.raises(ValueError):
        M.entropy(np.zeros((4, 4, 3), np.uint8))


def test_edge_agreement_prefers_the_true_alignment_of_real_pairs(sample_pairs, m3svd_pairs):
    """On real pairs of two rigs, the published alignment lines the edges up better than the same
    pair with the thermal moved by a few pixels; the score needs no ground truth."""
    import cv2

    for name, visible, thermal in sample_pairs[:3] + m3svd_pairs[:1]:
        visible_y = cv2.cvtColor(visible, cv2.COLOR_BGR2GRAY)
        thermal = cv2.resize(thermal, visible_y.shape[::-1], interpolation=cv2.INTER_AREA)
        step = 4.0 * visible_y.shape[1] / M.EDGE_WIDTH  # 4 px of the 400-px view the score works at
        inner = np.zeros(visible_y.shape, bool)
        inner[16:-16, 16:-16] = True
        aligned = M.edge_agreement(visible_y, thermal, inner)
        for dx, dy in ((1, 0), (0, 1), (-1, -1)):
            flow = np.zeros(visible_y.shape + (2,), np.float32)
            flow[..., 0], flow[..., 1] = dx * step, dy * step
            assert aligned > M.edge_agreement(visible_y, warp_numpy(thermal, flow), inner), (name, dx, dy)
        assert -1.0 <= aligned <= 1.0


def test_edge_agreement_properties(texture):
    assert M.edge_agreement(texture, texture) == pytest.approx(1.0)
    assert M.edge_agreement(texture, 255 - texture) == pytest.approx(1.0, abs=1e-6)  # polarity does not matter
    assert math.isnan(M.edge_agreement(texture, np.full_like(texture, 7)))       # no edges: undefined
    # also where resizing to the scoring width leaves float rounding's ripples on it (a lens cap's 30 at
    # 502 px wide scored 0.003, counted as a pair scored)
    wide = cv2.resize(texture, (502, 351))
    assert math.isnan(M.edge_agreement(wide, np.full_like(wide, 30)))
    assert math.isnan(M.edge_agreement(texture, texture, np.zeros(texture.shape, bool)))
    with pytest.raises(ValueError):
        M.edge_agreement(texture, texture[:, :-1])


def test_edge_agreement_of_a_sliver_is_nan_at_a_bounded_size(texture):
    """A 1200 x 2 px image (a hostile or broken camera) was scored at 400 px wide, 240000 px tall: 9 s and
    2.6 GB in the node's worker. Its height is capped, and too thin a sliver has no region to score."""
    sliver = np.ascontiguousarray(np.tile(texture[:, :2], (1200 // texture.shape[0] + 1, 1))[:1200])
    assert math.isnan(M.edge_agreement(sliver, sliver))
    tall = np.ascontiguousarray(np.tile(texture, (6, 1)))  # taller than 4:1: scored at 1600 px tall, still scored
    assert tall.shape[0] > 4 * tall.shape[1] and M.edge_agreement(tall, tall) == pytest.approx(1.0)


def test_edge_comparison_counts_only_changes_beyond_the_margin():
    """`cgrp fuse` and `cgrp calibrate` say on how many pairs the registration lined the edges up better or
    worse: a change within EDGE_MARGIN_OF_DIFFERENCE (0.01, the interpolation's own effect) is neither."""
    c = M.edge_comparison([0.20, 0.20, 0.20, 0.20, float("nan")], [0.215, 0.205, 0.185, 0.195, 0.3])
    assert (c["better"], c["worse"], c["scored"]) == (1, 1, 4)
    assert c["before"] == pytest.approx(0.20) and c["after"] == pytest.approx(0.2)


def test_the_per_pair_targets_apply_to_their_presets():
    """Issue 9's per-pair targets: an aligned pair (`none`) must not move more than MOVED_LIMIT_PX; at `mild`
    no pair may end worse than unregistered by more than WORSE_MARGIN_PX; the larger presets have none."""
    from cgrp_ros.evaluation.protocol import MOVED_LIMIT_PX, WORSE_MARGIN_PX, misses_pair_target

    assert misses_pair_target("none", MOVED_LIMIT_PX + 0.1, 0.0) and not misses_pair_target("none", MOVED_LIMIT_PX, 0.0)
    assert misses_pair_target("mild", 3.0 + WORSE_MARGIN_PX + 0.1, 3.0)
    assert not misses_pair_target("mild", 3.0 + WORSE_MARGIN_PX - 0.1, 3.0)
    assert not any(misses_pair_target(preset, 30.0, 3.0) for preset in ("moderate", "severe", "peer"))
