"""Fixed image filters (cgrp_ros.core.filters) shared by the networks and the losses."""
import numpy as np
import pytest
import torch

from cgrp_ros.core.filters import box_filter


@pytest.mark.parametrize("size", [3, 15])
def test_box_filter_is_the_window_mean_with_replicated_borders(size):
    """Every output pixel is the plain mean of the size x size window around it, the image's border
    pixels repeated outside it (checked against a direct numpy loop)."""
    image = torch.rand(1, 1, 23, 31, generator=torch.Generator().manual_seed(0))
    half = size // 2
    padded = np.pad(image[0, 0].numpy(), half, mode="edge")
    expected = np.array([[padded[y:y + size, x:x + size].mean() for x in range(31)] for y in range(23)])
    result = box_filter(image, size)
    assert result.shape == image.shape
    np.testing.assert_allclose(result[0, 0].numpy(), expected, atol=1e-6)
