"""Differentiable losses for training (torch, N x C x H x W images in [0, 1])."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.filters import gradient_magnitude


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, device=like.device, dtype=like.dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_map(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004) of 1-channel images, valid-convolution sized."""
    w = _gaussian_window(size, sigma, x)
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x ** 2
    syy = F.conv2d(y * y, w) - mu_y ** 2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))


def ssim_loss(x, y):
    return 1.0 - ssim_map(x, y).mean()


def local_ncc(x: torch.Tensor, y: torch.Tensor, window: int = 9, mask=None, eps: float = 1e-4) -> torch.Tensor:
    """Mean local normalised cross-correlation in [-1, 1] over `window` x `window` patches."""
    k = torch.ones(1, 1, window, window, device=x.device, dtype=x.dtype) / window ** 2
    pad = window // 2
    mu_x, mu_y = F.conv2d(x, k, padding=pad), F.conv2d(y, k, padding=pad)
    sxx = F.conv2d(x * x, k, padding=pad) - mu_x ** 2
    syy = F.conv2d(y * y, k, padding=pad) - mu_y ** 2
    sxy = F.conv2d(x * y, k, padding=pad) - mu_x * mu_y
    ncc = sxy / torch.sqrt(sxx.clamp_min(0) * syy.clamp_min(0) + eps)
    if mask is None:
        return ncc.mean()
    return (ncc * mask).sum() / mask.sum().clamp_min(1.0)


def smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Mean absolute first difference of an N x 2 x H x W flow (penalises folding and noise)."""
    dx = (flow[:, :, :, 1:] - flow[:, :, :, :-1]).abs().mean()
    dy = (flow[:, :, 1:, :] - flow[:, :, :-1, :]).abs().mean()
    return dx + dy


def masked_epe(flow: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean end-point error (pixels) where mask (N x 1 x H x W) is 1."""
    epe = torch.linalg.vector_norm(flow - target, dim=1, keepdim=True)
    return (epe * mask).sum() / mask.sum().clamp_min(1.0)


def gram(features: torch.Tensor) -> torch.Tensor:
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def fusion_loss(fused, visible_y, thermal, w_ssim=1.0, w_intensity=4.0, w_gradient=8.0):
    """Unsupervised fusion loss: SSIM to both sources + max-intensity + max-gradient terms.

    The intensity target is the element-wise max (hot objects stay bright); the gradient
    target keeps the stronger edge of either source (texture from visible, outlines from
    thermal). Returns (total, parts dict).
    """
    l_ssim = 0.5 * (ssim_loss(fused, visible_y) + ssim_loss(fused, thermal))
    l_int = F.l1_loss(fused, torch.maximum(visible_y, thermal))
    l_grad = F.l1_loss(gradient_magnitude(fused),
                       torch.maximum(gradient_magnitude(visible_y), gradient_magnitude(thermal)))
    total = w_ssim * l_ssim + w_intensity * l_int + w_gradient * l_grad
    return total, dict(ssim=l_ssim.item(), intensity=l_int.item(), gradient=l_grad.item())
