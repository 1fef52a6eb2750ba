"""The global affine stage: its linear algebra, its flow convention, and what it recovers on real pairs."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cgrp_ros.core.align import GlobalAffine, affine_flow, solve_spd
from cgrp_ros.core.deform import misalign, rng_for
from cgrp_ros.core.filters import normalized_edges
from cgrp_ros.core.warp import warp


def tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]


def test_solve_spd_matches_a_linear_solver():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 6, 6, generator=gen, dtype=torch.float64)
    matrix = a @ a.transpose(1, 2) + 0.1 * torch.eye(6, dtype=torch.float64)
    rhs = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    expected = torch.linalg.solve(matrix, rhs)
    assert torch.allclose(solve_spd(matrix, rhs), expected, atol=1e-9)


def test_affine_flow_follows_the_core_flow_convention():
    """Resampling with the affine's flow equals torch's own affine resampler (align_corners=False)."""
    image = torch.rand(1, 1, 48, 64, generator=torch.Generator().manual_seed(1))
    params = torch.tensor([[0.03, -0.02, 0.1, 0.01, -0.04, -0.05]])
    theta = torch.tensor([[[1.03, -0.02, 0.1], [0.01, 0.96, -0.05]]])
    expected = F.grid_sample(image, F.affine_grid(theta, image.shape, align_corners=False), align_corners=False)
    got = warp(image, affine_flow(params, image))
    assert torch.allclose(got[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=1e-5)
    # a pure translation of c = 0.1 normalised units is 0.1 * W / 2 = 3.2 pixels everywhere
    shift = affine_flow(torch.tensor([[0, 0, 0.1, 0, 0, 0.0]]), image)
    assert torch.allclose(shift[0, 0], torch.full((48, 64), 3.2), atol=1e-5)
    assert torch.allclose(shift[0, 1], torch.zeros(48, 64), atol=1e-5)


def working_pair(visible, thermal, width=320):
    height = round(visible.shape[0] * width / visible.shape[1])
    visible_y = cv2.cvtColor(cv2.resize(visible, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    return visible_y, cv2.resize(thermal, (width, height), interpolation=cv2.INTER_AREA)


def recovered_epe(fixed: np.ndarray, thermal: np.ndarray, preset: str, key: str) -> tuple:
    """(EPE of the global stage, EPE of no registration) in pixels for a seeded misalignment."""
    truth = misalign(thermal, preset, rng_for(0, key))
    with torch.no_grad():
        params = GlobalAffine()(F.avg_pool2d(normalized_edges(tensor(fixed)), 2),
                                F.avg_pool2d(normalized_edges(tensor(truth.misaligned)), 2))
        flow = affine_flow(params, tensor(fixed))[0].numpy().transpose(1, 2, 0)
    error = np.linalg.norm(flow - truth.flow, axis=2)[truth.valid].mean()
    return float(error), float(np.linalg.norm(truth.flow, axis=2)[truth.valid].mean())


def test_recovers_a_misalignment_of_the_same_image(sample_pairs):
    """Mono-modal: only the elastic part (not affine) may remain."""
    _, visible, thermal = sample_pairs[0]
    _, thermal = working_pair(visible, thermal)
    error, unregistered = recovered_epe(thermal, thermal, "moderate", "mono")
    assert unregistered > 4.0
    assert error < 0.4 * unregistered


@pytest.mark.parametrize("preset", ["moderate", "severe"])
def test_aligns_thermal_to_the_visible_edges(sample_pairs, preset):
    """Cross-modal, on real pairs: the stage removes most of the synthetic misalignment."""
    errors, unregistered = [], []
    for name, visible, thermal in sample_pairs[:3]:
        visible_y, thermal = working_pair(visible, thermal)
        error, none = recovered_epe(visible_y, thermal, preset, name)
        errors.append(error)
        unregistered.append(none)
    assert np.mean(errors) < 0.5 * np.mean(unregistered)


def test_featureless_input_leaves_the_identity():
    """A constant image gives no information: the estimate must stay (close to) the identity."""
    flat = torch.full((1, 1, 64, 80), 0.5)
    params = GlobalAffine()(normalized_edges(flat), normalized_edges(flat))
    assert torch.all(torch.isfinite(params))
    assert float(affine_flow(params, flat).abs().max()) < 0.5
