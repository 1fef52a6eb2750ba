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


def normalized_edges(x: torch.Tensor, window: int = 15) -> torch.Tensor:
    """Gradient magnitude (after a 3 x 3 box blur) divided by its local mean over `window` pixels
    plus half its image mean: edges of every contrast count alike, so a few bright street lights
    in a night-time visible image cannot outweigh the scene's outlines."""
    blurred = F.avg_pool2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), 3, 1)
    edges = gradient_magnitude(blurred)
    local = F.avg_pool2d(F.pad(edges, [window // 2] * 4, mode="replicate"), window, 1)
    return edges / (local + 0.5 * edges.mean(dim=(2, 3), keepdim=True))


def instance_standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance per image and channel: global gain/offset differences vanish."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    return (x - mean) / (std + eps)
