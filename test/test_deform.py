"""Synthetic misalignment: preset magnitudes, determinism and the exact ground-truth flow."""
import numpy as np
import pytest

from cgrp_ros.core.deform import PRESETS, misalign, random_displacement, rng_for
from cgrp_ros.core.warp import warp_numpy


@pytest.mark.parametrize("name", ["mild", "moderate", "severe"])
def test_preset_parameters_stay_within_their_bounds(name):
    preset, h, w = PRESETS[name], 300, 500
    seen_translation = 0.0
    for seed in range(40):
        d, p = random_displacement(h, w, name, rng_for(seed, "img"))
        tx, ty = p["translation_px"]
        assert abs(tx) <= preset.translation * w and abs(ty) <= preset.translation * w
        assert abs(p["rotation_deg"]) <= preset.rotation_deg
        assert abs(p["scale"] - 1.0) <= preset.scale + 1e-12
        assert 0.0 <= p["elastic_px"] <= preset.elastic * w
        seen_translation = max(seen_translation, abs(tx), abs(ty))
        # the whole field is bounded by translation + rotation/scale at the corners + elastic
        corner = np.hypot(w / 2, h / 2)
        bound = np.hypot(preset.translation * w, preset.translation * w) \
            + corner * (np.deg2rad(preset.rotation_deg) + preset.scale) * 1.01 + preset.elastic * w + 1e-3
        assert np.linalg.norm(d, axis=2).max() <= bound
    assert seen_translation > 0.5 * preset.translation * w  # the bound is actually used


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
