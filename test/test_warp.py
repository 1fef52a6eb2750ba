"""The flow convention and the resampler: registered[y, x] = thermal[y + flow_y, x + flow_x]."""
import numpy as np
import pytest
import torch

from cgrp_ros.core.deform import random_displacement, rng_for
from cgrp_ros.core.warp import flow_to_color, invert_flow, upsample2, valid_mask, warp, warp_numpy


def test_known_integer_shift_is_recovered_exactly():
    rng = np.random.default_rng(0)
    thermal = rng.random((40, 60)).astype(np.float32)
    flow = np.zeros((40, 60, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0  # sample 3 px to the right, 2 px up
    registered = warp_numpy(thermal, flow)
    np.testing.assert_array_equal(registered[2:, :-3], thermal[:-2, 3:])
    mask = valid_mask(flow)
    assert mask[2:, :-3].all() and not mask[:2].any() and not mask[:, -3:].any()
    assert np.all(registered[~mask] == 0)


def test_torch_and_numpy_resamplers_agree_on_fractional_flow():
    rng = np.random.default_rng(1)
    image = rng.random((32, 48)).astype(np.float32)
    flow = (rng.random((32, 48, 2)).astype(np.float32) - 0.5) * 6
    expected = warp_numpy(image, flow)
    got = warp(torch.from_numpy(image)[None, None], torch.from_numpy(flow.transpose(2, 0, 1))[None])[0, 0].numpy()
    inside = valid_mask(flow)
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-4)


def test_invert_flow_undoes_a_smooth_warp():
    h, w = 60, 80
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.stack((4 + 0.05 * ys, -3 + 0.04 * xs), axis=2).astype(np.float32)  # affine-ish displacement
    f = invert_flow(d)
    # f(p) = -d(p + f(p)) at interior pixels
    residual = f + warp_numpy(d, f)
    inside = valid_mask(f)
    assert np.abs(residual[inside]).max() < 0.01


@pytest.mark.parametrize("preset", ["moderate", "severe", "peer"])
def test_invert_flow_of_the_eval_presets_is_exact_where_it_samples_inside(preset):
    # the ground truth of cgrp eval: it stops once the iteration has settled (the same residual as all 40
    # steps: at most ~0.016 px, the 1/32-px sampling grid of cv2.remap times the field's gradient)
    d, _ = random_displacement(480, 640, preset, rng_for(0, preset))
    f = invert_flow(d)
    residual = np.linalg.norm(f + warp_numpy(d, f), axis=2)
    inside = valid_mask(f)
    assert inside.mean() > 0.5 and residual[inside].max() < 0.02 and residual[inside].mean() < 0.001


def test_upsample2_doubles_size_and_displacement():
    flow = torch.full((1, 2, 4, 6), 1.5)
    up = upsample2(flow)
    assert up.shape == (1, 2, 8, 12)
    assert torch.allclose(up, torch.full_like(up, 3.0))


def test_flow_colour_is_white_at_rest_and_coloured_in_motion():
    flow = np.zeros((8, 8, 2), np.float32)
    flow[:, 4:, 0] = 5.0
    colour = flow_to_color(flow)
    assert colour.shape == (8, 8, 3) and colour.dtype == np.uint8
    assert (colour[:, :4] == 255).all()
    assert colour[:, 4:].min() < 128
