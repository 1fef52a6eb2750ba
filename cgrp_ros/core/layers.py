"""Building blocks shared by the networks."""
import torch.nn as nn


def conv(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, act: bool = True) -> nn.Sequential:
    """k x k convolution (same padding) followed by LeakyReLU(0.1) unless `act` is False."""
    layers = [nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation)]
    if act:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)
