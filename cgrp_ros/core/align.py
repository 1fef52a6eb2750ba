"""Global affine stage: learned cross-modal matches over the whole image, a robust affine fit,
and a confidence that says when to fall back to the prior.

The previous stage (Gauss-Newton on the correlation of contrast-normalised edges) converged, but
its hand-made criterion itself peaked at wrong warps on cameras it was not tuned on, and nothing
noticed. Here a pair of small encoders (one per modality, trained on synthetic misalignments of
aligned pairs from two rigs) describes every 8 x 8 cell of the visible and of the thermal image;
every visible cell is compared with *every* thermal cell (a global search, no initial guess), the
match is read off around the best peak, and an affine is fitted to all matches by iteratively
reweighted least squares (Cauchy weights), pulled towards the identity where evidence is thin,
towards no shear and towards equal scales in x and y (two square-pixel cameras bolted together
produce neither a shear nor a per-axis stretch). The share of cells whose match is both sharp and
consistent with that affine is the stage's confidence; below a threshold the stage returns the
identity (the prior) and says so. A second matcher (:class:`LocalMatcher`) then refines that affine
with matches at 1/4 resolution, searched only near the global estimate: the global cells are 8
working pixels wide, and their matches fix the affine to about half a cell, which on a 'mild'
misalignment is as large as the misalignment itself. The dense levels of the registration network
then correct only the local residual.

Parameters are an affine in normalised coordinates (``align_corners=False``: u = (2x + 1) / W - 1),
so the same six numbers describe the warp at every pyramid level. ``params`` is N x 6:
(a, b, c, d, e, f) with

    u_moving = (1 + a) u + b v + c,    v_moving = d u + (1 + e) v + f

mapping a fixed-image point to the moving-image point it shows. Everything is made of plain
tensor ops with a fixed number of iterations, so the stage exports to ONNX with dynamic sizes.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .filters import instance_standardize, normalized_edges
from .layers import conv
from .warp import pixel_grid


def normalized_grid(like: torch.Tensor) -> torch.Tensor:
    """N x 2 x H x W normalised coordinates (u, v) of `like`'s pixel centres (align_corners=False)."""
    grid = pixel_grid(like)
    size = torch.amax(grid, dim=(2, 3), keepdim=True) + 1.0  # (W, H)
    return (2.0 * grid + 1.0) / size - 1.0


def apply_affine(params: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """N x 2 x H x W coordinates (u, v) -> where `params` (N x 6) maps them."""
    p = params[:, :, None, None]
    u, v = coords[:, 0:1], coords[:, 1:2]
    return torch.cat(((1.0 + p[:, 0:1]) * u + p[:, 1:2] * v + p[:, 2:3],
                      p[:, 3:4] * u + (1.0 + p[:, 4:5]) * v + p[:, 5:6]), dim=1)


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """params of x -> outer(inner(x)), both N x 6 as in :func:`apply_affine`."""
    def matrix(p):
        one = torch.ones_like(p[:, 0])
        zero = torch.zeros_like(one)
        return torch.stack((torch.stack((1 + p[:, 0], p[:, 1], p[:, 2]), 1),
                            torch.stack((p[:, 3], 1 + p[:, 4], p[:, 5]), 1),
                            torch.stack((zero, zero, one), 1)), 1)
    m = matrix(outer) @ matrix(inner)
    return torch.stack((m[:, 0, 0] - 1, m[:, 0, 1], m[:, 0, 2], m[:, 1, 0], m[:, 1, 1] - 1, m[:, 1, 2]), dim=1)


def pixels_per_unit(coords: torch.Tensor) -> torch.Tensor:
    """N x 2 x 1 x 1 (W/2, H/2): pixels per normalised unit of a :func:`normalized_grid`."""
    return 1.0 / (coords[:, :, 1:2, 1:2] - coords[:, :, 0:1, 0:1])


def cell_distance(position: torch.Tensor, target: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """N x P distances in cells between N x 2 x P normalised positions (or displacements) on the grid
    `cells` (N x 2 x h x w, a :func:`normalized_grid`)."""
    return ((position - target) * pixels_per_unit(cells).flatten(2)).pow(2).sum(dim=1).sqrt()


def moved(params: torch.Tensor) -> torch.Tensor:
    """N in {0, 1} (params' dtype): 1 where the affine `params` (N x 6) is not the identity."""
    return (params.abs().amax(dim=1) > 0).to(params.dtype)


def any_pair(mask: torch.Tensor) -> bool:
    """Whether optional work must run for a batch: some pair needs it (`mask`, N), or the graph is
    being traced for ONNX, which must hold the work for every input."""
    return torch.jit.is_tracing() or bool(mask.any())


def affine_flow(params: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The affine as a flow in pixels (N x 2 x H x W, core convention) at `like`'s resolution."""
    coords = normalized_grid(like)
    return (apply_affine(params, coords) - coords) * pixels_per_unit(coords)


def warp_affine(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """`image` (N x C x H x W) resampled at the points `params` maps its pixel centres to
    (bilinear, borders replicated): the moving image as seen through the affine."""
    coords = normalized_grid(image)
    return F.grid_sample(image, apply_affine(params, coords).permute(0, 2, 3, 1), mode="bilinear",
                         padding_mode="border", align_corners=False)


def solve_spd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve N x k x k symmetric positive definite systems for right-hand sides N x k or N x k x m
    (m systems at once).

    Gauss-Jordan elimination on whole rows, k steps of a few tensor operations each, because ONNX has
    no linear-solve operator and the affine fits solve a 6 x 6 system in every IRLS step: written out
    element by element (a Cholesky factorisation), the solves made up a third of the registration
    graph and doubled onnxruntime's session start-up. No pivoting: the pivots of a positive definite
    matrix are positive (clamped against round-off).
    """
    single = rhs.dim() == 2
    rhs = rhs[:, :, None] if single else rhs
    k = matrix.shape[-1]
    eye = torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    # unit diagonal first (Jacobi scaling): the fits' systems mix entries of 1e0 and 1e3
    scale = (matrix * eye).sum(dim=2).clamp_min(1e-12).rsqrt()[:, :, None]     # N x k x 1
    system = torch.cat((matrix * scale * scale.transpose(1, 2), rhs * scale), dim=2)  # N x k x (k + m)
    for i in range(k):
        row = system[:, i]                                                      # N x (k + m)
        row = (row / row[:, i, None].clamp_min(1e-12))[:, None]                 # N x 1 x (k + m)
        # subtract row i from every row, in proportion to its entry in column i; then row i is the
        # scaled pivot row
        system = system - (system[:, :, i] - eye[i])[:, :, None] * row
    x = system[:, :, k:] * scale
    return x[:, :, 0] if single else x


def match_input(image: torch.Tensor) -> torch.Tensor:
    """N x 2 x H x W encoder input: the standardised image and its standardised contrast-normalised
    edges (outlines count alike whatever their contrast, so a street light cannot dominate)."""
    return torch.cat((instance_standardize(image), instance_standardize(normalized_edges(image))), dim=1)


class MatchEncoder(nn.Module):
    """N x 1 x H x W image in [0, 1] -> N x D x H/8 x W/8 unit-length cell descriptors.

    Three stride-2 stages, then dilated convolutions at 1/8 that widen the receptive field to
    about 100 px, so a cell is described by its surroundings, not only by its own few edges.
    """

    STRIDE = 8

    def __init__(self, channels=(16, 32, 64), dim: int = 64):
        super().__init__()
        c1, c2, c3 = channels
        self.body = nn.Sequential(conv(2, c1, stride=2), conv(c1, c1), conv(c1, c2, stride=2), conv(c2, c2),
                                  conv(c2, c3, stride=2), conv(c3, c3, dilation=2), conv(c3, c3, dilation=4),
                                  nn.Conv2d(c3, dim, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.body(match_input(image))
        return F.normalize(features - features.mean(dim=(2, 3), keepdim=True), dim=1)


def cauchy(residual: torch.Tensor, scale: float) -> torch.Tensor:
    """Cauchy robust weight 1 / (1 + (r / scale)^2)."""
    return 1.0 / (1.0 + (residual / scale) ** 2)


def local_correlation(fixed: torch.Tensor, moving: torch.Tensor, radius: int) -> torch.Tensor:
    """Cost volume N x (2r+1)^2 x H x W: sum over channels of fixed(p) * moving(p + (dx, dy)), the
    displacements in row-major order (dy outer, dx inner; see :func:`window_offsets`).

    With unit-length feature vectors this is the cosine similarity, in [-1, 1] whatever the
    channel count; outside the moving image it is 0.
    """
    _, _, height, width = fixed.shape
    padded = F.pad(moving, [radius] * 4)
    costs = []
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            shifted = padded[:, :, dy:dy + height, dx:dx + width]
            costs.append((fixed * shifted).sum(dim=1, keepdim=True))
    return torch.cat(costs, dim=1)


def window_offsets(radius: int, like: torch.Tensor) -> torch.Tensor:
    """(2r+1)^2 x 2 displacements (dx, dy) in cells, in :func:`local_correlation`'s order."""
    steps = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack((dx.flatten(), dy.flatten()), dim=1)


class AffineFromMatches(nn.Module):
    """Robust affine fit to cell matches, and model selection against the identity.

    Subclasses set the constants; residuals are in cells of the grid the matches live on.
    """

    ROBUST_SCALES = (4.0, 2.0, 1.0, 1.0, 1.0)  # IRLS Cauchy scales (cells), coarse to fine
    INLIER_SCALE = 1.0                   # cells: the inlier score counts matches within about this
    PRIOR_WEIGHT = 5.0                   # weight of the identity prior, in fully confident cells
    # weight of the no-shear prior on the pixel-space shear B + D of [[1 + a, B], [D, 1 + e]]: rotation,
    # isotropic scale and translation are free, as a rig or a zoom makes them, but two cameras bolted
    # together do not shear, and sheared fits were match noise (a 7.6 % shear moved one aligned
    # RoadScene pair 5 px). Chosen on training pairs: 100 in steps 13-14 (against 0, 30, 300, 1000);
    # with the local stage's two starts (steps 15-16) 300 beat 30, 100, 1000 and 3000
    # (models/MODEL_CARD.md step 17)
    SHEAR_WEIGHT = 300.0
    # weight of the equal-axis-scales prior on a - e: square-pixel cameras scale alike in x and y (the
    # per-axis difference of an aspect change is the prior's or the calibration's job), and free axis
    # scales turned match noise into a per-axis stretch. Chosen on training pairs against 0, 30, 100,
    # 300, 3000 and 10000 (models/MODEL_CARD.md step 14)
    AXIS_SCALE_WEIGHT = 1000.0
    # weights of the priors on the rotation (D - B) and the isotropic scale (a + e) of a fit, applied
    # only to pairs the caller marks (`near_prior`): the local stage's passes that start from the prior.
    # 0 here: the global search must find rotations and scales.
    ROTATION_WEIGHT = 0.0
    SCALE_WEIGHT = 0.0
    IDENTITY_MARGIN = 0.05               # keep the identity unless the affine explains > 5 % more

    def fit(self, cells: torch.Tensor, position: torch.Tensor, weight: torch.Tensor, near_prior=None):
        """IRLS affine fit of cell centre -> matched position, pulled towards the identity (PRIOR_WEIGHT),
        towards no shear (SHEAR_WEIGHT), towards equal axis scales (AXIS_SCALE_WEIGHT) and, where
        `near_prior` (N in {0, 1}) is 1, towards no rotation (ROTATION_WEIGHT) and no scale change
        (SCALE_WEIGHT). -> (params N x 6, residual N x P in cells)."""
        n = cells.shape[0]
        source = cells.flatten(2)                                 # N x 2 x P
        design = torch.cat((source, torch.ones_like(source[:, :1])), dim=1)  # N x 3 x P
        per_cell = pixels_per_unit(cells).flatten(2)              # N x 2 x 1: (W / 2, H / 2)
        # The fit solves for the 3 x 2 change X = A - identity of the affine A (rows u, v, 1 -> columns
        # u', v'): every prior pulls X towards 0, so the identity comes out exactly where there is no
        # evidence. Each prior but the identity's pulls one linear combination g . X (summed over both
        # columns) towards 0, with
        #   shear B + D:          g = [[0, W/H], [H/W, 0], [0, 0]]  (in pixels B = b W / H, D = d H / W)
        #   axis scales a - e:    g = [[1, 0], [0, -1], [0, 0]]
        #   rotation D - B:       g = [[0, -W/H], [H/W, 0], [0, 0]]
        #   scale a + e:          g = [[1, 0], [0, 1], [0, 0]].
        # They couple the two columns, so the fit solves for both at once: one 6 x 6 system on X's
        # columns stacked (u' then v'), the data's 3 x 3 normal matrix twice on the diagonal plus the
        # priors' sum of w g g^T.
        aspect = per_cell[:, 0, 0] / per_cell[:, 1, 0]
        zero, one = torch.zeros_like(aspect), torch.ones_like(aspect)

        def direction(u_column, v_column):  # N x 6: the columns of a 3 x 2 g, stacked
            return torch.cat((torch.stack(u_column, dim=1), torch.stack(v_column, dim=1)), dim=1)

        priors = [(direction((zero, aspect, zero), (1.0 / aspect, zero, zero)), self.SHEAR_WEIGHT * one),
                  (direction((one, zero, zero), (zero, -one, zero)), self.AXIS_SCALE_WEIGHT * one)]
        if near_prior is not None and (self.ROTATION_WEIGHT > 0 or self.SCALE_WEIGHT > 0):
            priors += [(direction((zero, -aspect, zero), (1.0 / aspect, zero, zero)),
                        self.ROTATION_WEIGHT * near_prior),
                       (direction((one, zero, zero), (zero, one, zero)), self.SCALE_WEIGHT * near_prior)]
        g = torch.stack([p[0] for p in priors], dim=2)                                 # N x 6 x k
        w = torch.stack([p[1] for p in priors], dim=1)[:, None, :]                     # N x 1 x k
        identity = self.PRIOR_WEIGHT * torch.eye(6, dtype=cells.dtype, device=cells.device)
        prior_matrix = (g * w) @ g.transpose(1, 2) + identity                         # N x 6 x 6
        zeros = cells.new_zeros(n, 3, 3)
        shift = position - source                                  # N x 2 x P: the matches' displacement
        robust = torch.ones_like(weight)
        change = residual = None
        for scale in self.ROBUST_SCALES:
            weighted = design * (weight * robust)[:, None, :]                          # N x 3 x P
            # matrix products, not three-operand einsums: onnxruntime's Einsum took 1.3 ms for each of
            # these 3 x 3 sums (67 ms of a 256x320 registration)
            normal = weighted @ design.transpose(1, 2)                                 # N x 3 x 3
            rhs = weighted @ shift.transpose(1, 2)                                     # N x 3 x 2
            system = torch.cat((torch.cat((normal, zeros), dim=2), torch.cat((zeros, normal), dim=2)), dim=1)
            change = solve_spd(system + prior_matrix, rhs.transpose(1, 2).reshape(n, 6))  # N x 6
            predicted = change.reshape(n, 2, 3) @ design                               # N x 2 x P
            residual = cell_distance(predicted, shift, cells)
            robust = cauchy(residual, scale)
        return change, residual  # X's columns stacked are the params (a, b, c, d, e, f)

    def inlier_score(self, cells, position, weight, params):
        """N in [0, 1]: the matches' weight, Cauchy-discounted by their distance (cells) from where
        `params` sends their cell: the share of sharp matches that agree with the affine."""
        residual = cell_distance(apply_affine(params, cells).flatten(2), position, cells)
        return (weight * cauchy(residual, self.INLIER_SCALE)).mean(dim=1)

    def select(self, cells, position, weight, near_prior=None):
        """Fit (`near_prior`: see :meth:`fit`), then model selection: the fitted affine replaces the
        identity only if it explains the matches clearly better (by IDENTITY_MARGIN of the inlier
        score). On an aligned pair the fit's free parameters otherwise turn match noise into a small
        but real warp (measured: about a 1 px shear on aligned RoadScene / M3SVD pairs).
        -> (params N x 6, inlier score N in [0, 1])."""
        params, _ = self.fit(cells, position, weight, near_prior)
        score = self.inlier_score(cells, position, weight, params)
        identity_score = self.inlier_score(cells, position, weight, torch.zeros_like(params))
        keep = (identity_score >= (1.0 - self.IDENTITY_MARGIN) * score).to(params.dtype)
        return params * (1.0 - keep)[:, None], torch.maximum(score, identity_score)

    def fallback(self, confidence: torch.Tensor) -> torch.Tensor:
        """N in {0, 1}: 1 where the confidence is below the stage's `threshold` buffer (keep the prior)."""
        return (confidence < self.threshold).to(confidence.dtype)


class GlobalMatcher(AffineFromMatches):
    """Affine from the visible luminance to the thermal, with a confidence; the identity when unsure.

    forward(visible_y, thermal) (N x 1 x H x W in [0, 1], H and W multiples of 8) ->
    (params N x 6 as in :func:`apply_affine`, confidence N in [0, 1], fallback N in {0, 1}).

    `threshold`: confidence below which the prior (the identity) is returned instead; chosen on
    the training split (models/MODEL_CARD.md) and stored with the weights.
    """

    PEAK_RADIUS = 1.5                    # cells around the best match that make the sub-cell estimate
    PASSES = 2                           # match, warp by the estimate, match again

    def __init__(self, dim: int = 64, threshold: float = 0.1):
        super().__init__()
        self.visible_encoder = MatchEncoder(dim=dim)
        self.thermal_encoder = MatchEncoder(dim=dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # cosine similarity -> logits
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def correlation(self, visible_y: torch.Tensor, thermal: torch.Tensor, visible_features=None):
        """(match probabilities N x P x Q over thermal cells q for each visible cell p,
        cell centres N x 2 x h x w in normalised coordinates). `visible_features`: the visible
        encoder's output when already computed (a second pass)."""
        fv = self.visible_encoder(visible_y) if visible_features is None else visible_features
        ft = self.thermal_encoder(thermal)
        logits = (fv.flatten(2).transpose(1, 2) @ ft.flatten(2)) * self.log_scale.exp()  # N x P x Q
        return torch.softmax(logits, dim=2), normalized_grid(fv[:, :1])

    def matches(self, prob: torch.Tensor, cells: torch.Tensor):
        """Sub-cell match of every visible cell: the probability-weighted mean position within
        PEAK_RADIUS cells of its best thermal cell (a second peak elsewhere cannot drag it).
        -> (positions N x 2 x P normalised, weights N x P = probability mass at the peak)."""
        grid = cells.flatten(2)                                   # N x 2 x Q (same grid both sides)
        per_cell = pixels_per_unit(cells).flatten(2)              # N x 2 x 1: cells per normalised unit
        best = torch.argmax(prob, dim=2)                          # N x P
        peak = torch.gather(grid, 2, best[:, None, :].expand(-1, 2, -1))  # N x 2 x P
        # squared distance in cells from each peak to every thermal cell, per axis on the grid's w
        # columns and h rows and only then summed over the h x w cells: the same numbers as the
        # distance computed cell by cell at P x Q x 2 (1280 x 1280 x 2 at 256x320), in 40 % of the time
        columns, rows = cells[:, 0, 0, :], cells[:, 1, :, 0]          # N x w (u), N x h (v)
        dx2 = ((columns[:, None, :] - peak[:, 0, :, None]) * per_cell[:, 0, :, None]).pow(2)  # N x P x w
        dy2 = ((rows[:, None, :] - peak[:, 1, :, None]) * per_cell[:, 1, :, None]).pow(2)        # N x P x h
        near = ((dx2[:, :, None, :] + dy2[:, :, :, None]).flatten(2) <= self.PEAK_RADIUS ** 2).to(prob.dtype)
        local = prob * near
        mass = local.sum(dim=2)
        position = (grid @ local.transpose(1, 2)) / mass.clamp_min(1e-12)[:, None]  # N x 2 x P
        return position, mass

    def estimate(self, visible_y: torch.Tensor, thermal: torch.Tensor):
        """Before the fallback: (params N x 6, confidence N).

        Two passes: the second matches the thermal warped by the first affine, where rotation
        and scale no longer distort the descriptors, and its (small) affine is composed with the
        first. The confidence is the last pass's inlier score.

        (Smoothing the last pass's residual matches into an elastic field was tried and made
        every preset worse, aligned pairs included: the matches' local errors are correlated.)"""
        fv = self.visible_encoder(visible_y)
        prob, cells = self.correlation(visible_y, thermal, fv)
        params, confidence = self.select(cells, *self.matches(prob, cells))
        for _ in range(self.PASSES - 1):
            prob, cells = self.correlation(visible_y, warp_affine(thermal, params), fv)
            second, confidence = self.select(cells, *self.matches(prob, cells))
            params = compose_affine(params, second)
        return params, confidence

    def forward(self, visible_y: torch.Tensor, thermal: torch.Tensor):
        """-> (affine params N x 6, confidence N, fallback N); params are zero where it fell back."""
        params, confidence = self.estimate(visible_y, thermal)
        fallback = self.fallback(confidence)
        return params * (1.0 - fallback)[:, None], confidence, fallback


class LocalEncoder(nn.Module):
    """N x 1 x H x W image in [0, 1] -> N x D x H/4 x W/4 unit-length cell descriptors.

    Two stride-2 stages and dilated convolutions at 1/4 (receptive field about 60 px): enough
    context to tell neighbouring cells apart within the local matcher's window, fine enough to
    place a match to a fraction of 4 pixels.
    """

    STRIDE = 4

    def __init__(self, channels=(16, 32), dim: int = 32):
        super().__init__()
        c1, c2 = channels
        self.body = nn.Sequential(conv(2, c1, stride=2), conv(c1, c1), conv(c1, c2, stride=2), conv(c2, c2),
                                  conv(c2, c2, dilation=2), conv(c2, c2, dilation=4), nn.Conv2d(c2, dim, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.body(match_input(image))
        return F.normalize(features - features.mean(dim=(2, 3), keepdim=True), dim=1)


class LocalMatcher(AffineFromMatches):
    """Refines an affine with matches at 1/4 resolution, searched within RADIUS cells of it.

    refine(visible_y, thermal, params) (N x 1 x H x W in [0, 1], H and W multiples of 4; params
    N x 6 as in :func:`apply_affine`, e.g. the global stage's) -> (refined params N x 6,
    confidence N in [0, 1]). Each pass warps the thermal by the current estimate, matches every
    visible cell within +-RADIUS cells (+-12 working pixels), fits an affine correction to the
    matches (kept only if it explains them clearly better than none) and composes it with the
    estimate. The confidence is the last pass's inlier score: the share of fine matches that are
    sharp and agree with the final affine. It separates pairs with nothing to match from hard but
    related ones (night, smoke) better than the global stage's score, which also counts the
    coarse cells (models/MODEL_CARD.md); `threshold` is chosen on training pairs like the global one.

    A last pass runs on both images upsampled FINE_FACTOR x (cells of 4 / FINE_FACTOR working
    pixels): the same encoders then place each match FINE_FACTOR x more finely, and the model
    selection against the prior is repeated there. It runs only where the coarser passes moved the
    estimate; the confidence stays the coarser passes' score (its threshold was chosen on it).
    """

    RADIUS = 3                           # cells (4 px) searched around the current estimate
    PEAK_RADIUS = 1.5                    # cells around the best match that make the sub-cell estimate
    ROBUST_SCALES = (2.0, 1.0, 0.5, 0.5, 0.5)
    INLIER_SCALE = 0.5
    IDENTITY_MARGIN = 0.05               # chosen on training pairs (models/MODEL_CARD.md)
    # a rig calibration, estimated from many frames, is a stronger prior than the identity: the final
    # affine replaces it only if it explains the fine matches by more than this (chosen on the training
    # splits' calibrated synthetic rigs, models/MODEL_CARD.md step 10)
    CALIBRATION_MARGIN = 0.15
    PASSES = 2
    # the last pass's upsampling: 2-px cells (measured on training pairs against 1 and 3,
    # models/MODEL_CARD.md step 11)
    FINE_FACTOR = 2
    # passes that start from the prior (the input's own alignment, or a calibration) fit their
    # correction with a prior against rotation and scale: a pair near its prior is off by a shift,
    # and on aligned pairs of unseen rigs the free fit turned match noise into a 0.5-1 deg rotation
    # and a 0.3-1 % scale, 4-7 px at the corners of a 1024x768 image. Passes from the global estimate
    # stay free: they correct its rotation and scale. Chosen on training pairs against 0, 300 and 1000
    # (models/MODEL_CARD.md step 18)
    ROTATION_WEIGHT = 100.0
    SCALE_WEIGHT = 100.0
    # the start from the prior is kept against the start from the global estimate unless the latter
    # ends with an inlier score higher by more than this. Smaller than IDENTITY_MARGIN since the
    # passes from the prior are damped (above): at 0.05 they kept too small a rotation on `moderate`
    # pairs. Chosen on training pairs against 0, 0.01, 0.03 and 0.05 (models/MODEL_CARD.md step 19)
    PRIOR_START_MARGIN = 0.02

    def __init__(self, dim: int = 32, threshold: float = 0.1):
        super().__init__()
        self.dim = dim
        self.visible_encoder = LocalEncoder(dim=dim)
        self.thermal_encoder = LocalEncoder(dim=dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def correlation(self, visible_y: torch.Tensor, thermal: torch.Tensor, visible_features=None):
        """(match probabilities N x K x h x w over the K = (2 RADIUS + 1)^2 displacements of
        :func:`window_offsets`, cell centres N x 2 x h x w in normalised coordinates).
        `visible_features`: the visible encoder's output when already computed."""
        fv = self.visible_encoder(visible_y) if visible_features is None else visible_features
        ft = self.thermal_encoder(thermal)
        cost = local_correlation(fv, ft, self.RADIUS) * self.log_scale.exp()
        return torch.softmax(cost, dim=1), normalized_grid(fv[:, :1])

    def matches(self, prob: torch.Tensor, cells: torch.Tensor):
        """Sub-cell match of every visible cell: the probability-weighted mean displacement within
        PEAK_RADIUS cells of its best one. -> (positions N x 2 x P normalised, weights N x P =
        probability mass at the peak)."""
        offsets = window_offsets(self.RADIUS, prob)                        # K x 2, cells
        best = torch.argmax(prob, dim=1)                                   # N x h x w
        peak = offsets[best].permute(0, 3, 1, 2)                           # N x 2 x h x w
        # squared distance per axis, then summed (whole cells: exact in any order)
        dx2 = (offsets[:, 0, None, None] - peak[:, None, 0]).pow(2)       # N x K x h x w
        dy2 = (offsets[:, 1, None, None] - peak[:, None, 1]).pow(2)
        near = (dx2 + dy2 <= self.PEAK_RADIUS ** 2).to(prob.dtype)         # N x K x h x w
        local = prob * near
        mass = local.sum(dim=1)                                            # N x h x w
        shift = (offsets.t() @ local.flatten(2)).reshape(peak.shape) / mass.clamp_min(1e-12)[:, None]  # N x 2 x h x w
        position = cells + shift / pixels_per_unit(cells)
        return position.flatten(2), mass.flatten(1)

    def refine(self, visible_y: torch.Tensor, thermal: torch.Tensor, params: torch.Tensor, prior_margin=None,
               prior_start: bool = False):
        """`prior_margin` (float or N, default IDENTITY_MARGIN): see :meth:`prior_wins`.

        `prior_start`: also run the 4x4-cell passes from the prior (the identity) and keep, per pair,
        the start from the prior unless the start from the global estimate ends with an inlier score
        higher by more than PRIOR_START_MARGIN: leaving the prior's basin must be clearly better, as any
        move away from the prior must. A wrong peak of the global search can sit farther off than the
        input itself (measured on a `mild` pair with little structure: 17.7 px against 6.4
        unregistered), and the window then refines the wrong basin (models/MODEL_CARD.md, steps 15
        and 16). The confidence is the higher of the two scores. Passes from the prior fit with the
        rotation and scale priors (ROTATION_WEIGHT, SCALE_WEIGHT), and so does the fine pass of an
        estimate that comes from them."""
        params, confidence, from_prior = self.refine_coarse(visible_y, thermal, params, prior_margin, prior_start)
        return self.refine_fine(visible_y, thermal, params, prior_margin, from_prior), confidence

    def refine_coarse(self, visible_y, thermal, params, prior_margin=None, prior_start: bool = False):
        """:meth:`refine` without its fine pass: (params N x 6, confidence N, from_prior N in {0, 1}:
        1 where the estimate comes from the prior's start, the fine pass's `near_prior`)."""
        fv = self.visible_encoder(visible_y)
        start_moved = moved(params)
        from_prior = 1.0 - start_moved  # per pair: the estimate starts from the prior
        params, confidence = self.coarse_passes(visible_y, thermal, params, fv, from_prior)
        if prior_start and any_pair(start_moved):  # from an identity start it would repeat the passes
            prior_params, prior_confidence = self.coarse_passes(visible_y, thermal, torch.zeros_like(params), fv,
                                                                torch.ones_like(from_prior))
            prior_kept = (prior_confidence >= (1.0 - self.PRIOR_START_MARGIN) * confidence).to(params.dtype)
            params = prior_kept[:, None] * prior_params + (1.0 - prior_kept[:, None]) * params
            from_prior = torch.maximum(from_prior, prior_kept)
            confidence = torch.maximum(confidence, prior_confidence)
        params = params * (1.0 - self.prior_wins(visible_y, thermal, params, fv, prior_margin))[:, None]
        return params, confidence, from_prior

    def coarse_passes(self, visible_y, thermal, params, visible_features, near_prior=None):
        """PASSES passes at 4x4 cells from `params`, each correction composed with the estimate;
        `near_prior` (N): see :meth:`AffineFromMatches.fit`.
        -> (params N x 6, confidence N: the last pass's inlier score)."""
        for _ in range(self.PASSES):
            prob, cells = self.correlation(visible_y, warp_affine(thermal, params), visible_features)
            correction, confidence = self.select(cells, *self.matches(prob, cells), near_prior)
            params = compose_affine(params, correction)
        return params, confidence

    def upsampled(self, image: torch.Tensor) -> torch.Tensor:
        """N x C x H x W -> N x C x (FINE_FACTOR H) x (FINE_FACTOR W), bilinear: the fine pass's input."""
        return F.interpolate(image, scale_factor=float(self.FINE_FACTOR), mode="bilinear", align_corners=False)

    def refine_fine(self, visible_y, thermal, params, prior_margin=None, near_prior=None):
        """The last pass on both images upsampled FINE_FACTOR x, then model selection against the
        prior there. Pairs whose estimate is still the prior (all six parameters 0) keep it;
        `near_prior` (N): see :meth:`AffineFromMatches.fit`. -> params N x 6."""
        refined = moved(params)
        if self.FINE_FACTOR <= 1 or not any_pair(refined):
            return params  # no fine pass, or no pair of the batch to refine
        fine_y, fine_thermal = self.upsampled(visible_y), self.upsampled(thermal)
        fv = self.visible_encoder(fine_y)
        prob, cells = self.correlation(fine_y, warp_affine(fine_thermal, params), fv)
        correction, _ = self.select(cells, *self.matches(prob, cells), near_prior)
        params = compose_affine(params, correction) * refined[:, None]
        wins = self.prior_wins(fine_y, fine_thermal, params, fv, prior_margin)
        return params * (1.0 - wins)[:, None]

    def prior_wins(self, visible_y, thermal, params, visible_features=None, margin=None) -> torch.Tensor:
        """N in {0, 1}: 1 where the untouched thermal's own fine matches are explained as well by the
        prior (the identity, within `margin` (float or N), default IDENTITY_MARGIN) as by the final
        affine. Model selection at the fine level for the whole estimate: the global stage judged the
        identity on 8-px cells and moved aligned pairs of unseen rigs by 1-2 working px (measured:
        aligned pairs moved 0.42 / 0.34 / 1.29 working px on RoadScene / M3SVD / other_cameras val with
        it, 0.28 / 0.14 / 0.71 with this check; `mild` and `moderate` unchanged). Judged only where the
        affine stays within RADIUS - 1 cells, as far as the window can see a match."""
        prob, cells = self.correlation(visible_y, thermal, visible_features)
        position, weight = self.matches(prob, cells)
        score = self.inlier_score(cells, position, weight, params)
        prior_score = self.inlier_score(cells, position, weight, torch.zeros_like(params))
        reach = cell_distance(apply_affine(params, cells).flatten(2), cells.flatten(2), cells).amax(dim=1)
        margin = self.IDENTITY_MARGIN if margin is None else margin
        return ((prior_score >= (1.0 - margin) * score) & (reach <= self.RADIUS - 1)).to(params.dtype)
