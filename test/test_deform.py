"""Synthetic misalignment: preset magnitudes, determinism and the exact ground-truth flow."""
import numpy as np
import pytest

from cgrp_ros.core.deform import PRESETS, misalign, random_displacement, rng_for
from cgrp_ros.core.warp import warp_numpy


@pytest.mark.parametrize("name", ["mild", "moderate", "severe", "peer"])
def test_preset_parameters_stay_within_their_bounds(name):
    preset, h, w = PRESETS[name], 300, 500
    tx_bound, ty_bound = preset.translation_bounds(h, w)
    rotation_bound = preset.rotation_bound(h, w)
    seen_translation = 0.0
    for seed in range(40):
        d, p = random_displacement(h, w, name, rng_for(seed, "img"))
        tx, ty = p["translation_px"]
        assert abs(tx) <= tx_bound and abs(ty) <= ty_bound
        assert abs(p["rotation_deg"]) <= rotation_bound == p["rotation_bound_deg"]
        assert abs(p["scale"] - 1.0) <= preset.scale + 1e-12
        assert 0.0 <= p["elastic_px"] <= preset.elastic * w
        seen_translation = max(seen_translation, abs(tx), abs(ty))
        # the whole field is bounded by translation + rotation/scale at the corners + elastic
        corner = np.hypot(w / 2, h / 2)
        bound = np.hypot(tx_bound, ty_bound) \
            + corner * (np.deg2rad(rotation_bound) + preset.scale) * 1.01 + preset.elastic * w + 1e-3
        assert np.linalg.norm(d, axis=2).max() <= bound
    assert seen_translation > 0.5 * preset.translation * w  # the bound is actually used


def test_none_preset_leaves_the_image_where_it_is(sample_pairs):
    _, _, thermal = sample_pairs[0]
    d, p = random_displacement(*thermal.shape, "none", rng_for(0, "x"))
    assert not d.any() and p["rotation_bound_deg"] == 0.0
    m = misalign(thermal, "none", rng_for(0, "x"))
    np.testing.assert_array_equal(m.misaligned, thermal)
    assert not m.flow.any() and m.valid.all()


@pytest.mark.parametrize("height, width, expected", [(500, 500, 7.0), (480, 640, 8.96), (1024, 1280, 17.92),
                                                     (250, 200, 3.5)])
def test_peer_rotation_bound_is_7_degrees_per_500_px_of_the_longer_side(height, width, expected):
    assert PRESETS["peer"].rotation_bound(height, width) == pytest.approx(expected)
    angles = [random_displacement(height, width, "peer", rng_for(seed, "img"))[1]["rotation_deg"]
              for seed in range(60)]
    assert max(abs(a) for a in angles) <= expected
    assert max(abs(a) for a in angles) > 0.8 * expected  # the size-dependent bound is actually used


def test_peer_translation_is_7_percent_of_width_in_x_and_of_height_in_y():
    h, w = 200, 800
    assert PRESETS["peer"].translation_bounds(h, w) == pytest.approx((56.0, 14.0))
    shifts = np.array([random_displacement(h, w, "peer", rng_for(seed, "img"))[1]["translation_px"]
                       for seed in range(60)])
    assert np.abs(shifts[:, 0]).max() <= 56.0 and np.abs(shifts[:, 1]).max() <= 14.0
    assert np.abs(shifts[:, 0]).max() > 40.0  # x uses W, y uses H
    # the other presets keep their old convention: both axes relative to W
    assert PRESETS["moderate"].translation_bounds(h, w) == pytest.approx((24.0, 24.0))


def test_mild_is_the_papers_protocol_without_rotation_or_scale():
    for seed in range(10):
        _, p = random_displacement(100, 200, "mild", rng_for(seed))
        assert p["rotation_deg"] == 0.0 and p["scale"] == 1.0


def test_same_seed_and_name_give_the_same_warp():
    a, _ = random_displacement(50, 80, "severe", rng_for(0, "FLIR_00001"))
    b, _ = random_displacement(50, 80, "severe", rng_for(0, "FLIR_00001"))
    c, _ = random_displacement(50, 80, "severe", rng_for(0, "FLIR_00002"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_ground_truth_flow_registers_the_misaligned_image(sample_pairs):
    _, _, thermal = sample_pairs[0]
    m = misalign(thermal, "severe", rng_for(0, "x"))
    assert m.misaligned.dtype == thermal.dtype and m.misaligned.shape == thermal.shape
    before = np.abs(m.misaligned.astype(np.float32) - thermal)[m.valid].mean()
    after = np.abs(warp_numpy(m.misaligned.astype(np.float32), m.flow) - thermal)[m.valid].mean()
    assert m.valid.mean() > 0.8
    assert after < 0.1 * before  # only interpolation blur remains
