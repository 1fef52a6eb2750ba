"""The global and local stages: their linear algebra and robust fit, their flow convention, and
what the shipped matchers do on real pairs of two rigs (recover warps, leave aligned pairs alone,
know when there is nothing to match)."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cgrp_ros.core.align import (GlobalMatcher, LocalMatcher, affine_flow, apply_affine, compose_affine, local_correlation,
                                 normalized_grid, solve_spd, window_offsets)
from cgrp_ros.core.deform import misalign, rng_for
from cgrp_ros.core.models import default_model_path, load_model
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
    several = torch.randn(5, 6, 4, generator=gen, dtype=torch.float64)  # four systems, one factorisation
    assert torch.allclose(solve_spd(matrix, several), torch.linalg.solve(matrix, several), atol=1e-9)


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


def test_robust_fit_ignores_outlier_matches():
    """A third of the matches are wrong (random positions): the IRLS fit still finds the affine
    (a rig's kind: rotation, scale, shift; no shear or per-axis stretch, which the fit's priors damp)."""
    cells = normalized_grid(torch.zeros(1, 1, 30, 40))
    truth = pixel_affine([[1.04, -0.03], [0.03, 1.04]], (0.12, -0.08), 30, 40)
    position = apply_affine(truth, cells).flatten(2).clone()
    gen = torch.Generator().manual_seed(0)
    wrong = torch.rand(position.shape[-1], generator=gen) < 0.33
    position[:, :, wrong] = torch.rand(1, 2, int(wrong.sum()), generator=gen) * 2 - 1
    params, residual = GlobalMatcher().fit(cells, position, torch.ones(1, position.shape[-1]))
    # within a tenth of a cell everywhere, despite the outliers and the prior's pull to the identity
    flow_error = (affine_flow(params, cells[:, :1]) - affine_flow(truth, cells[:, :1])).abs().max()
    assert float(flow_error) < 0.1
    assert float(residual[0, ~wrong].max()) < 0.1


def pixel_affine(matrix, shift, height, width) -> torch.Tensor:
    """params (1 x 6, as in apply_affine) of the pixel-space 2 x 2 `matrix` about the image centre
    followed by `shift` (normalised units) on a height x width grid."""
    (m00, m01), (m10, m11) = matrix
    return torch.tensor([[m00 - 1.0, m01 * height / width, shift[0], m10 * width / height, m11 - 1.0, shift[1]]],
                        dtype=torch.float32)


def test_the_fit_keeps_rotation_and_scale_but_damps_shear_and_axis_stretch():
    """Exact matches of a rig-like affine (4 deg rotation, 3 % scale) on a 4:3 grid are fitted as they
    are; a 6 % shear and a 3 % stretch of one axis, which two bolted square-pixel cameras never
    produce, are damped, the more so the weaker the evidence (real match weights are mostly well
    below 1)."""
    cells = normalized_grid(torch.zeros(1, 1, 30, 40))
    weight = torch.ones(1, 30 * 40)
    c, s = np.cos(np.radians(4.0)), np.sin(np.radians(4.0))
    rig = pixel_affine([[1.03 * c, -1.03 * s], [1.03 * s, 1.03 * c]], (0.05, -0.03), 30, 40)
    params, _ = GlobalMatcher().fit(cells, apply_affine(rig, cells).flatten(2), weight)
    assert float((affine_flow(params, cells[:, :1]) - affine_flow(rig, cells[:, :1])).abs().max()) < 0.05  # cells
    sheared = apply_affine(pixel_affine([[1.0, 0.03], [0.03, 1.0]], (0.0, 0.0), 30, 40), cells).flatten(2)
    stretched = apply_affine(pixel_affine([[1.0, 0.0], [0.0, 1.03]], (0.0, 0.0), 30, 40), cells).flatten(2)
    fitted_shear, fitted_stretch = [], []
    for evidence in (1.0, 0.1):
        params, _ = GlobalMatcher().fit(cells, sheared, evidence * weight)
        fitted_shear.append(float(params[0, 1] * 40 / 30 + params[0, 3] * 30 / 40))
        params, _ = GlobalMatcher().fit(cells, stretched, evidence * weight)
        fitted_stretch.append(float(params[0, 4] - params[0, 0]))
    assert 0.0 < fitted_shear[1] < 0.25 * 0.06 and fitted_shear[1] < fitted_shear[0] < 0.75 * 0.06
    assert 0.0 < fitted_stretch[1] < 0.25 * 0.03 and fitted_stretch[1] < fitted_stretch[0] < 0.75 * 0.03


def test_passes_from_the_prior_fit_a_shift_and_damp_rotation_and_scale():
    """The local stage's fit with `near_prior` 1 (a pass that starts from the prior): matches of a
    1 deg rotation and 1 % scale about the centre plus a 2-cell shift, with weak evidence (weights
    0.1, like real matches), give the shift but at most a third of the rotation and of the scale;
    the same matches in the same batch with `near_prior` 0 (a pass from the global estimate) give
    the rotation and the scale."""
    cells = normalized_grid(torch.zeros(2, 1, 30, 40))
    weight = torch.full((2, 30 * 40), 0.1)
    c, s = 1.01 * np.cos(np.radians(1.0)), 1.01 * np.sin(np.radians(1.0))
    truth = pixel_affine([[c, -s], [s, c]], (0.1, 0.0), 30, 40).expand(2, 6)  # 0.1 unit = 2 cells in x
    params, _ = LocalMatcher().fit(cells, apply_affine(truth, cells).flatten(2), weight, torch.tensor([1.0, 0.0]))

    def rotation_and_scale(p):  # pixel space: (D - B) / 2 in radians, (a + e) / 2 relative
        return float(p[3] * 30 / 40 - p[1] * 40 / 30) / 2, float(p[0] + p[4]) / 2

    rotation, scale = rotation_and_scale(params[0])
    assert abs(rotation) < np.radians(1.0) / 3 and abs(scale) < 0.01 / 3
    assert abs(float(params[0, 2]) - 0.1) < 0.01  # the shift, within a fifth of a cell
    rotation, scale = rotation_and_scale(params[1])
    assert rotation == pytest.approx(np.radians(1.0), rel=0.2) and scale == pytest.approx(0.01, rel=0.2)


def test_no_evidence_keeps_the_identity():
    """Matches with zero weight carry no evidence: the prior (identity) wins and the stage falls back."""
    torch.manual_seed(0)  # an untrained matcher: fixed weights, so the test does not depend on the draw
    matcher = GlobalMatcher()
    cells = normalized_grid(torch.zeros(1, 1, 8, 10))
    params, _ = matcher.fit(cells, torch.rand(1, 2, 80) * 2 - 1, torch.zeros(1, 80))
    assert float(params.abs().max()) < 1e-6
    flat = torch.full((1, 1, 64, 80), 0.5)
    with torch.no_grad():
        params, confidence, fallback = matcher(flat, flat)
    assert torch.all(torch.isfinite(params)) and float(fallback) == 1.0 and float(params.abs().max()) == 0.0


def test_window_offsets_follow_the_cost_volume_order():
    """Features shifted by (dx, dy) = (2, -1) cells peak at that displacement of the cost volume."""
    fixed = F.normalize(torch.randn(1, 8, 12, 14, generator=torch.Generator().manual_seed(0)), dim=1)
    moving = torch.roll(fixed, shifts=(-1, 2), dims=(2, 3))  # moving(p + (2, -1)) = fixed(p)
    cost = local_correlation(fixed, moving, 3)
    best = window_offsets(3, cost)[cost.argmax(dim=1)][0, 3:-3, 3:-3]
    assert torch.all(best == torch.tensor([2.0, -1.0]))


def test_local_matches_read_a_sub_cell_shift():
    """Probability split between displacements of 1 and 2 cells to the right: a 1.5-cell match
    everywhere, and the fitted affine is that translation (less the identity prior's small pull)."""
    matcher = LocalMatcher()
    cells = normalized_grid(torch.zeros(1, 1, 30, 40))
    offsets = window_offsets(matcher.RADIUS, cells)
    prob = torch.zeros(1, offsets.shape[0], 30, 40)
    for dx in (1.0, 2.0):
        prob[:, int(((offsets[:, 0] == dx) & (offsets[:, 1] == 0)).nonzero())] = 0.5
    position, weight = matcher.matches(prob, cells)
    params, _ = matcher.fit(cells, position, weight)
    flow = affine_flow(params, cells[:, :1])  # in cells of that grid
    assert torch.allclose(weight, torch.ones_like(weight))
    assert torch.allclose(flow[0, 0], torch.full((30, 40), 1.5), atol=0.03)
    assert float(flow[0, 1].abs().max()) < 0.01



def test_global_matches_average_only_the_cells_around_the_peak():
    """On a 5 x 7 grid (rows and columns differ, so x and y cannot be swapped unnoticed): each visible
    cell's match is the probability-weighted mean of the thermal cells within 1.5 cells of its best
    one (the diagonal neighbour included), and cells 2 cells away, right or below, pull nothing."""
    matcher = GlobalMatcher()
    cells = normalized_grid(torch.zeros(1, 1, 5, 7))
    grid = cells.flatten(2)[0]                                           # 2 x 35, normalised

    def q(row, col):
        return row * 7 + col

    weights = {q(2, 2): 0.5, q(2, 3): 0.2, q(3, 3): 0.1, q(1, 2): 0.05,  # the peak and three neighbours
               q(2, 4): 0.1, q(4, 2): 0.05}                              # two cells away: not counted
    prob = torch.zeros(1, 35, 35)
    for index, value in weights.items():
        prob[:, :, index] = value
    position, mass = matcher.matches(prob, cells)
    near = {index: value for index, value in weights.items() if index not in (q(2, 4), q(4, 2))}
    expected = sum(value * grid[:, index] for index, value in near.items()) / sum(near.values())
    assert torch.allclose(mass, torch.full((1, 35), 0.85))
    assert torch.allclose(position[0], expected[:, None].expand(-1, 35), atol=1e-6)

# -- the shipped matcher on real pairs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def matcher():
    return load_model(default_model_path("registration"), "registration").global_stage


def working_pair(visible, thermal, width=320):
    """Visible luminance and thermal at the working width, cropped to multiples of 8 rows/columns."""
    height = round(visible.shape[0] * width / visible.shape[1]) // 8 * 8
    size = (width, height)
    visible_y = cv2.cvtColor(cv2.resize(visible, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    return visible_y, cv2.resize(thermal, size, interpolation=cv2.INTER_AREA)


def recovered_epe(matcher, visible_y: np.ndarray, thermal: np.ndarray, preset: str, key: str) -> tuple:
    """(EPE of the global stage, EPE of no registration) in pixels for a seeded misalignment."""
    truth = misalign(thermal, preset, rng_for(0, key))
    with torch.no_grad():
        params, _, _ = matcher(tensor(visible_y), tensor(truth.misaligned))
        flow = affine_flow(params, tensor(visible_y))[0].numpy().transpose(1, 2, 0)
    error = np.linalg.norm(flow - truth.flow, axis=2)[truth.valid].mean()
    return float(error), float(np.linalg.norm(truth.flow, axis=2)[truth.valid].mean())


@pytest.mark.parametrize("preset", ["moderate", "severe"])
def test_aligns_thermal_to_the_visible_image(matcher, sample_pairs, preset):
    """Cross-modal, on real pairs: the global stage alone removes most of a synthetic misalignment."""
    errors, unregistered = [], []
    for name, visible, thermal in sample_pairs[:3]:
        error, none = recovered_epe(matcher, *working_pair(visible, thermal), preset, name)
        errors.append(error)
        unregistered.append(none)
    assert np.mean(errors) < 0.3 * np.mean(unregistered)


def test_leaves_aligned_pairs_of_two_rigs_alone(matcher, sample_pairs, m3svd_pairs):
    """Already aligned input (RoadScene and M3SVD rigs): the affine moves no pixel by 1 px or more."""
    for name, visible, thermal in sample_pairs[:3] + m3svd_pairs:
        visible_y, thermal = working_pair(visible, thermal)
        with torch.no_grad():
            params, confidence, _ = matcher(tensor(visible_y), tensor(thermal))
        moved = affine_flow(params, tensor(visible_y)).norm(dim=1).max()
        assert float(moved) < 1.0, f"{name}: moved by up to {float(moved):.2f} px (confidence {float(confidence):.2f})"


def test_local_stage_finishes_a_nearly_right_affine(sample_pairs, m3svd_pairs):
    """Real aligned pairs of two rigs, started 6 px off either way (the global stage's error is
    about half an 8-px cell): the local stage at least halves the error on every pair and leaves
    1.5 px or less on average; started right, it stays exactly there."""
    local = load_model(default_model_path("registration"), "registration").local_stage
    errors = []
    for name, visible, thermal in sample_pairs[:3] + m3svd_pairs:
        visible_y, thermal = working_pair(visible, thermal)
        v, t = tensor(visible_y), tensor(thermal)
        with torch.no_grad():
            for shift in (6.0, -6.0):
                start = torch.tensor([[0.0, 0.0, 2 * shift / v.shape[-1], 0.0, 0.0, 0.0]])
                errors.append(float(affine_flow(local.refine(v, t, start)[0], v).norm(dim=1).mean()))
                assert errors[-1] < 3.0, f"{name}: {errors[-1]:.2f} px from aligned, started {shift:+.0f} px"
            stay = affine_flow(local.refine(v, t, torch.zeros(1, 6))[0], v).norm(dim=1).max()
        assert float(stay) < 0.5, f"{name}: an aligned start moved by up to {float(stay):.2f} px"
    assert np.mean(errors) < 1.5, errors


def test_the_prior_wins_back_an_aligned_pair_but_not_a_shifted_one(sample_pairs, m3svd_pairs):
    """The final model selection at the fine level: an aligned pair that an earlier stage moved by 2 px
    goes back to the identity; the same pair with its thermal really shifted by 4 px keeps the affine."""
    local = load_model(default_model_path("registration"), "registration").local_stage
    for name, visible, thermal in sample_pairs[:2] + m3svd_pairs[:1]:
        visible_y, thermal = working_pair(visible, thermal)
        v, t = tensor(visible_y), tensor(thermal)
        shifted = tensor(np.ascontiguousarray(np.roll(thermal, -4, axis=1)))  # thermal(x) = aligned(x + 4)
        with torch.no_grad():
            wrong = torch.tensor([[0.0, 0.0, 2 * 2.0 / v.shape[-1], 0.0, 0.0, 0.0]])   # 2 px off
            right = torch.tensor([[0.0, 0.0, -2 * 4.0 / v.shape[-1], 0.0, 0.0, 0.0]])  # the true 4 px
            assert float(local.prior_wins(v, t, wrong)) == 1.0, f"{name}: a 2 px move of an aligned pair was kept"
            assert float(local.prior_wins(v, shifted, right)) == 0.0, f"{name}: a real 4 px shift was undone"


def test_a_wrong_global_peak_does_not_drag_a_slightly_shifted_pair_away(sample_pairs, m3svd_pairs):
    """Real pairs of two rigs, the thermal shifted by 3 px, the local stage handed a start 22 px the
    wrong way (a global peak beyond the window's reach): from that start alone it stays about 20 px
    off; also started from the prior, as the registration does, it keeps the better start and lands
    within 1 px of the truth."""
    local = load_model(default_model_path("registration"), "registration").local_stage
    for name, visible, thermal in sample_pairs[:3] + m3svd_pairs:
        visible_y, thermal = working_pair(visible, thermal)
        v = tensor(visible_y)
        width = v.shape[-1]
        shifted = tensor(np.ascontiguousarray(np.roll(thermal, -3, axis=1)))  # thermal(x) = aligned(x + 3)
        truth = affine_flow(torch.tensor([[0.0, 0.0, -2 * 3.0 / width, 0.0, 0.0, 0.0]]), v)
        with torch.no_grad():
            for wrong in (22.0, -22.0):
                start = torch.tensor([[0.0, 0.0, 2 * wrong / width, 0.0, 0.0, 0.0]])
                alone = (affine_flow(local.refine(v, shifted, start)[0], v) - truth).norm(dim=1).mean()
                both = (affine_flow(local.refine(v, shifted, start, prior_start=True)[0], v) - truth).norm(dim=1).mean()
                assert float(alone) > 10.0, f"{name}: the window reached the truth from {wrong:+.0f} px ({float(alone):.2f} px)"
                assert float(both) < 1.0, f"{name}: {float(both):.2f} px off with the prior start too"


@pytest.mark.parametrize("global_over_prior, prior_kept",
                         [(1.01, True), (0.999 / (1.0 - LocalMatcher.PRIOR_START_MARGIN), True), (1.1, False)])
def test_the_global_start_replaces_the_prior_start_only_when_clearly_better(monkeypatch, global_over_prior,
                                                                           prior_kept):
    """The two starts of the local stage end with nearly equal inlier scores (a pair with little
    structure): the start from the input's own alignment is kept, as any move away from the prior
    must be clearly better; the global one wins only by more than PRIOR_START_MARGIN. The confidence
    is the higher score either way."""
    local = LocalMatcher()
    global_score = 0.290 * global_over_prior
    monkeypatch.setattr(local, "FINE_FACTOR", 1)
    monkeypatch.setattr(local, "prior_wins", lambda *args, **kwargs: torch.zeros(1))
    from_prior, from_global = torch.tensor([[0.0, 0.0, 0.02, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.2, 0.0, 0.0, 0.0]])

    def coarse_passes(visible_y, thermal, params, visible_features, near_prior=None):
        if bool((params == 0).all()):
            return from_prior, torch.tensor([0.290])
        return from_global, torch.tensor([global_score])

    monkeypatch.setattr(local, "coarse_passes", coarse_passes)
    image = torch.rand(1, 1, 32, 48, generator=torch.Generator().manual_seed(0))
    start = torch.tensor([[0.0, 0.0, 0.25, 0.0, 0.0, 0.0]])
    params, confidence = local.refine(image, image, start, prior_start=True)
    assert torch.equal(params, from_prior if prior_kept else from_global)
    assert float(confidence) == pytest.approx(global_score)


@pytest.mark.parametrize("preset", ["mild", "moderate"])
def test_the_fine_pass_leaves_less_error_than_the_4px_cells(sample_pairs, m3svd_pairs, preset):
    """Real pairs of two rigs misaligned by a preset, the local stage started from the global estimate:
    its last pass on 2x upsampled images (2-px cells) leaves less affine error than the 4-px cells
    alone -- on average by more than 10 %, and on no pair more."""
    network = load_model(default_model_path("registration"), "registration")
    local = network.local_stage
    assert local.FINE_FACTOR == 2
    errors = {1: [], 2: []}
    for name, visible, thermal in sample_pairs + m3svd_pairs:
        visible_y, thermal = working_pair(visible, thermal)
        truth = misalign(thermal, preset, rng_for(0, name))
        v, t = tensor(visible_y), tensor(truth.misaligned)
        with torch.no_grad():
            start, _ = network.global_stage.estimate(v, t)
            for factor in errors:
                local.FINE_FACTOR = factor
                flow = affine_flow(local.refine(v, t, start)[0], v)[0].numpy().transpose(1, 2, 0)
                errors[factor].append(float(np.linalg.norm(flow - truth.flow, axis=2)[truth.valid].mean()))
        assert errors[2][-1] <= errors[1][-1] + 0.05, f"{name}: {errors[2][-1]:.2f} px with the fine pass, {errors[1][-1]:.2f} without"
    assert np.mean(errors[2]) < 0.9 * np.mean(errors[1]), errors


def test_falls_back_when_nothing_is_shared(matcher, sample_pairs):
    """A constant thermal (lens cap) or the thermal of another scene: low confidence, the identity."""
    _, visible, thermal = sample_pairs[0]
    visible_y, _ = working_pair(visible, thermal)
    _, other = working_pair(sample_pairs[3][1], sample_pairs[3][2])
    other = cv2.resize(other, visible_y.shape[::-1])
    for moving in (np.full_like(visible_y, 90), other):
        with torch.no_grad():
            params, confidence, fallback = matcher(tensor(visible_y), tensor(moving))
        assert float(fallback) == 1.0 and float(confidence) < float(matcher.threshold)
        assert float(params.abs().max()) == 0.0



def test_the_dense_levels_run_only_where_their_flow_is_kept(sample_pairs):
    """A pair that keeps its prior (a lens cap: it falls back) comes out unmoved without the dense
    levels running (their flow would be dropped: a third of a registration saved); a misaligned pair
    goes through all three."""
    net = load_model(default_model_path("registration"), "registration").eval()
    _, visible, thermal = sample_pairs[0]
    visible_y, thermal = working_pair(visible, thermal)
    misaligned = misalign(thermal, "moderate", rng_for(0, "dense")).misaligned
    with torch.no_grad():
        capped = net(tensor(visible_y), tensor(visible_y), tensor(np.full_like(visible_y, 90)))
        moved = net(tensor(visible_y), tensor(visible_y), tensor(misaligned))
    assert float(capped.fallback) == 1.0 and capped.levels == []
    assert capped.flow.shape == (1, 2, *visible_y.shape) and float(capped.flow.abs().max()) == 0.0
    assert float(moved.fallback) == 0.0 and len(moved.levels) == 3
    assert float(moved.flow.abs().max()) > 1.0

def test_a_pair_that_falls_back_skips_the_fine_pass(sample_pairs, monkeypatch):
    """The thermal of another scene: the 4x4-cell passes move it, with too little confidence. Its flow
    is the prior's (zero), and the fine pass, whose result would be dropped, does not run for it (on
    images upsampled 2x it is most of the affine stages' time); a misaligned pair runs it."""
    net = load_model(default_model_path("registration"), "registration").eval()
    upsampled, fine_inputs = net.local_stage.upsampled, []
    monkeypatch.setattr(net.local_stage, "upsampled", lambda image: fine_inputs.append(image) or upsampled(image))
    _, visible, thermal = sample_pairs[0]
    visible_y, thermal = working_pair(visible, thermal)
    other = cv2.resize(working_pair(sample_pairs[2][1], sample_pairs[2][2])[1], visible_y.shape[::-1])
    misaligned = misalign(thermal, "moderate", rng_for(0, "dense")).misaligned
    with torch.no_grad():
        coarse_params = net.affine_coarse(tensor(visible_y), tensor(other))[0]
        flow, _, fallback = net.global_estimate(tensor(visible_y), tensor(other))
        assert float(coarse_params.abs().max()) > 0 and float(fallback) == 1.0  # moved, but not trusted
        assert float(flow.abs().max()) == 0.0 and fine_inputs == []
        flow, _, fallback = net.global_estimate(tensor(visible_y), tensor(misaligned))
    assert float(fallback) == 0.0 and len(fine_inputs) == 2  # both images upsampled
    assert float(flow.abs().max()) > 1.0


def test_compose_affine_is_function_composition():
    coords = normalized_grid(torch.zeros(1, 1, 6, 9))
    outer = torch.tensor([[0.05, -0.02, 0.1, 0.03, -0.04, -0.2]])
    inner = torch.tensor([[-0.03, 0.01, -0.05, 0.02, 0.06, 0.07]])
    expected = apply_affine(outer, apply_affine(inner, coords))
    assert torch.allclose(apply_affine(compose_affine(outer, inner), coords), expected, atol=1e-6)
