"""Small fixed image filters on N x 1 x H x W tensors, shared by the networks and the losses."""
import torch
import torch.nn.functional as F


def sobel(x: torch.Tensor):
    """(gx, gy) Sobel gradients of a 1-channel image, same size (replicate padding)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype) / 4.0
    xp = F.pad(x, [1, 1, 1, 1], mode="replicate")
    return F.conv2d(xp, kx.view(1, 1, 3, 3)), F.conv2d(xp, kx.t().reshape(1, 1, 3, 3))


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    gx, gy = sobel(x)
    return torch.sqrt(gx ** 2 + gy ** 2 + 1e-8)
