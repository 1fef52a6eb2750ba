"""Global affine alignment: Gauss-Newton on the zero-normalised correlation of structure images.

Local cross-modal matches are unreliable at coarse scales (measured: a dense network trained
from the identity on our CPU budget made alignment worse). A global affine, fitted to the whole
image at once, is the robust first step for the rigid part of a camera misalignment
(translation, rotation, scale, shear); the registration network's dense levels then only
correct what is left.

Parameters are an affine in normalised coordinates (``align_corners=False``: u = (2x + 1) / W - 1),
so the same six numbers describe the warp at every pyramid level. ``params`` is N x 6:
(a, b, c, d, e, f) with

    u_moving = (1 + a) u + b v + c,    v_moving = d u + (1 + e) v + f

mapping a fixed-image point to the moving-image point it shows. Everything is made of plain
tensor ops with a fixed number of iterations, so the stage exports to ONNX with dynamic sizes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def pixels_per_unit(coords: torch.Tensor) -> torch.Tensor:
    """N x 2 x 1 x 1 (W/2, H/2): pixels per normalised unit of a :func:`normalized_grid`."""
    return 1.0 / (coords[:, :, 1:2, 1:2] - coords[:, :, 0:1, 0:1])


def affine_flow(params: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The affine as a flow in pixels (N x 2 x H x W, core convention) at `like`'s resolution."""
    coords = normalized_grid(like)
    return (apply_affine(params, coords) - coords) * pixels_per_unit(coords)


def solve_spd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve N x k x k symmetric positive definite systems (N x k right-hand sides) by Cholesky.

    Written out element by element (k = 6 here) because ONNX has no linear-solve operator.
    """
    k = matrix.shape[-1]
    low = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1):
            s = matrix[:, i, j]
            for m in range(j):
                s = s - low[i][m] * low[j][m]
            low[i][j] = torch.sqrt(s.clamp_min(1e-12)) if i == j else s / low[j][j]
    y = []
    for i in range(k):  # L y = rhs
        s = rhs[:, i]
        for m in range(i):
            s = s - low[i][m] * y[m]
        y.append(s / low[i][i])
    x = [None] * k
    for i in reversed(range(k)):  # L^T x = y
        s = y[i]
        for m in range(i + 1, k):
            s = s - low[m][i] * x[m]
        x[i] = s / low[i][i]
    return torch.stack(x, dim=1)


def _masked_standardize(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-4):
    """(x - mean) / std over `mask` per image and channel; also returns the std."""
    count = mask.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    mean = (x * mask).sum(dim=(2, 3), keepdim=True) / count
    centred = (x - mean) * mask
    std = torch.sqrt((centred ** 2).sum(dim=(2, 3), keepdim=True) / count + eps)
    return centred / std, std


def _central_gradients(x: torch.Tensor):
    """(d/dx, d/dy) per pixel by central differences (replicate border), N x C x H x W each."""
    padded = F.pad(x, [1, 1, 1, 1], mode="replicate")
    gx = 0.5 * (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2])
    gy = 0.5 * (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1])
    return gx, gy


class GlobalAffine(nn.Module):
    """Fit the affine that best aligns `moving` to `fixed` (both N x C x H x W structure images).

    Coarse to fine over an average-pooling pyramid; at each level a fixed number of damped
    Gauss-Newton steps on the sum over channels of the squared difference of the zero-mean,
    unit-variance images inside the valid (sampled-inside) region -- the enhanced correlation
    coefficient criterion, so gain and offset differences between the modalities do not matter.
    A step that would move the image by more than `max_step` (normalised units) is shrunk.
    The coarsest `translation_levels` fit a translation only: on a few dozen pixels rotation and
    scale are poorly determined and let the fit drift (measured on RoadScene val).
    """

    def __init__(self, levels: int = 3, iterations: int = 10, damping: float = 1e-2, max_step: float = 0.1,
                 translation_levels: int = 1):
        super().__init__()
        self.levels, self.iterations, self.damping, self.max_step = levels, iterations, damping, max_step
        self.translation_levels = translation_levels

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, params: torch.Tensor | None = None):
        """-> params N x 6 (see the module docstring)."""
        if params is None:
            params = fixed.new_zeros(fixed.shape[0], 6)
        pyramid = [(fixed, moving)]
        for _ in range(self.levels - 1):
            f, m = pyramid[-1]
            pyramid.append((F.avg_pool2d(f, 2), F.avg_pool2d(m, 2)))
        for index, (f, m) in enumerate(reversed(pyramid)):
            coords = normalized_grid(f[:, :1])
            translation_only = index < self.translation_levels
            for _ in range(self.iterations):
                params = params + self._step(f, m, coords, params, translation_only)
        return params

    def _step(self, fixed, moving, coords, params, translation_only=False):
        where = apply_affine(params, coords)
        grid = where.permute(0, 2, 3, 1)
        warped = F.grid_sample(moving, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        inside = F.grid_sample(torch.ones_like(moving[:, :1]), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        mask = (inside > 0.999).to(fixed.dtype)
        fixed_n, _ = _masked_standardize(fixed, mask)
        warped_n, std = _masked_standardize(warped, mask)
        scale = pixels_per_unit(coords)
        gx, gy = _central_gradients(warped)
        gx = gx * scale[:, 0:1] / std * mask  # d(warped_n) / d(normalised coordinate)
        gy = gy * scale[:, 1:2] / std * mask
        u, v = coords[:, 0:1], coords[:, 1:2]
        # d(warped_n)/d(params) expressed at the current estimate (a first-order approximation)
        if translation_only:
            jac = torch.stack((gx, gy), dim=1)
        else:
            jac = torch.stack((gx * u, gx * v, gx, gy * u, gy * v, gy), dim=1)  # N x 6 x C x H x W
        jac = jac.flatten(2)
        residual = (warped_n - fixed_n).flatten(1)
        count = mask.sum(dim=(1, 2, 3)).clamp_min(1.0)[:, None]
        hessian = torch.einsum("nip,njp->nij", jac, jac) / count[:, :, None]
        gradient = torch.einsum("nip,np->ni", jac, residual) / count
        eye = torch.eye(jac.shape[1], dtype=jac.dtype, device=jac.device)
        # Levenberg-Marquardt; the absolute term keeps a featureless image at the current estimate
        damped = hessian * (1.0 + self.damping * eye) + 1e-2 * eye
        step = -solve_spd(damped, gradient)
        # keep a single step bounded: a flat or degenerate image must not throw the warp away
        if translation_only:
            zero = torch.zeros_like(step[:, :1])
            step = torch.cat((zero, zero, step[:, 0:1], zero, zero, step[:, 1:2]), dim=1)
        size = step.abs().amax(dim=1, keepdim=True)
        return step * torch.clamp(self.max_step / (size + 1e-12), max=1.0)
