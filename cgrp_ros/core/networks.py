"""The three CGRP networks as small composable torch modules.

All images are float32 in [0, 1], N x C x H x W, with H and W multiples of
:data:`SIZE_MULTIPLE`. Flows follow :mod:`cgrp_ros.core.warp` (N x 2 x H x W, pixels).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .align import GlobalMatcher, LocalMatcher, affine_flow, any_pair, local_correlation
from .filters import gradient_magnitude, instance_standardize
from .layers import conv
from .warp import upsample2, warp

# The networks' coarsest stride (global matcher and dense levels 1/8, generator 1/4). Inputs are padded
# to it by reflection, which the networks never see in training (they train on crops): the fewer padded
# rows the better. At 32, a 4:3 image (240 x 320) carried 16 mirrored rows that pulled the affine fit
# towards a vertical compression (M3SVD val `moderate` 0.225 -> 0.198 of the unregistered EPE at 8).
SIZE_MULTIPLE = 8


# ----------------------------------------------------------------------------------------------
# (1) Generator: visible -> pseudo-thermal (CPSTN's generator, ResNet style)
# ----------------------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
            nn.InstanceNorm2d(channels, affine=True), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
            nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x):
        """N x C x H x W -> the same shape."""
        return x + self.body(x)


class Generator(nn.Module):
    """Visible BGR (N x 3 x H x W) -> pseudo-thermal (N x 1 x H x W).

    Strided encoder to 1/4, residual blocks, upsample+conv decoder (no transposed convs, so
    no checkerboard). Purely local operators: it changes appearance, not geometry.
    """

    def __init__(self, width: int = 16, blocks: int = 4):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 7, padding=3, padding_mode="reflect"), nn.InstanceNorm2d(w, affine=True), nn.ReLU(True),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.InstanceNorm2d(2 * w, affine=True), nn.ReLU(True),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.InstanceNorm2d(4 * w, affine=True), nn.ReLU(True))
        self.blocks = nn.Sequential(*[ResidualBlock(4 * w) for _ in range(blocks)])
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.InstanceNorm2d(2 * w, affine=True), nn.ReLU(True),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(2 * w, w, 3, padding=1), nn.InstanceNorm2d(w, affine=True), nn.ReLU(True),
            nn.Conv2d(w, 1, 7, padding=3, padding_mode="reflect"), nn.Sigmoid())

    def forward(self, visible: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.blocks(self.encoder(visible)))


class PatchDiscriminator(nn.Module):
    """70x70-style patch discriminator on 1-channel images; also exposes its features (style loss)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stages = nn.ModuleList([
            conv(1, w, 4, 2), conv(w, 2 * w, 4, 2), conv(2 * w, 4 * w, 4, 2), conv(4 * w, 4 * w, 3, 1)])
        self.head = nn.Conv2d(4 * w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """N x 1 x H x W -> logits N x 1 x ~H/8 x ~W/8 (real vs generated, per patch); with
        `return_features` also each stage's features, fine -> coarse."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        logits = self.head(x)
        return (logits, features) if return_features else logits


# ----------------------------------------------------------------------------------------------
# (2) Registration: multi-level coarse-to-fine (MRRN), pseudo-thermal (fixed) vs thermal (moving)
# ----------------------------------------------------------------------------------------------
def structure_input(appearance: torch.Tensor, structure_source: torch.Tensor) -> torch.Tensor:
    """N x 2 x H x W: the standardised appearance image and the standardised gradient magnitude
    of `structure_source` (registration ignores global gain/offset differences)."""
    return torch.cat((instance_standardize(appearance),
                      instance_standardize(gradient_magnitude(structure_source))), dim=1)


class FeaturePyramid(nn.Module):
    """Shared extractor F^k: features at 1/2, 1/4, ... of the input, one stage per entry of `channels`."""

    def __init__(self, channels=(16, 32, 48), in_channels: int = 2):
        super().__init__()
        stages, cin = [], in_channels
        for cout in channels:
            stages.append(nn.Sequential(conv(cin, cout, 3, 2), conv(cout, cout, 3)))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor):
        """N x in_channels x H x W -> [N x channels[k] x H/2^(k+1) x W/2^(k+1)], fine -> coarse."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class LevelEstimator(nn.Module):
    """One pyramid level: M_C (coarse) reads the local cost volume around the current estimate,
    the fixed features and the incoming flow and predicts a correction; M_R (refine, dilated
    convs) adds a residual. Both heads start at zero, so an untrained level passes its prior
    (the global affine at the coarsest level) through unchanged: an under-trained network
    degrades to the global stage, not below it.

    (An explicit soft-argmax match trained with a match-likelihood loss was tried and removed:
    on cross-modal pairs it made the flow worse than its own prior; models/MODEL_CARD.md.)
    """

    def __init__(self, channels: int, radius: int, hidden: int):
        super().__init__()
        self.radius = radius
        cost = (2 * radius + 1) ** 2
        self.coarse = nn.Sequential(conv(cost + channels + 2, hidden), conv(hidden, hidden),
                                    conv(hidden, hidden // 2), conv(hidden // 2, 2, act=False))
        self.refine = nn.Sequential(conv(channels + 2, hidden // 2, dilation=1), conv(hidden // 2, hidden // 2, dilation=2),
                                    conv(hidden // 2, hidden // 2, dilation=4), conv(hidden // 2, 2, act=False))
        for head in (self.coarse[-1][0], self.refine[-1][0]):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @staticmethod
    def embed(feat):
        """Unit vectors of channel-centred features: post-ReLU features are all positive, so
        without centring every cosine similarity is near 1."""
        return F.normalize(feat - feat.mean(dim=(2, 3), keepdim=True), dim=1)

    def forward(self, fixed_feat, moving_feat, flow):
        """-> refined flow (level pixels)."""
        warped = warp(moving_feat, flow, padding_mode="border")
        cost = local_correlation(self.embed(fixed_feat), self.embed(warped), self.radius)
        flow = flow + self.coarse(torch.cat((cost, fixed_feat, flow), dim=1))
        return flow + self.refine(torch.cat((fixed_feat, flow), dim=1))


class Registration(NamedTuple):
    """What :class:`RegistrationNet` returns."""
    flow: torch.Tensor          # N x 2 x H x W, pixels; zero where the registration fell back
    levels: list                # each dense level's flow in its own pixels, coarse -> fine (training); empty
                                # where no pair reached them (every pair kept its prior)
    confidence: torch.Tensor    # N in [0, 1]: the local stage's inlier score (the global one without it)
    fallback: torch.Tensor      # N, 1.0 where the confidence was below threshold (flow = the prior)


def searches(search) -> bool:
    """Whether the global stage must run for a batch. `search`: None (every pair searches), a number
    for the whole batch, or an N tensor of 0 / 1 per pair. A number is a constant of a traced graph,
    so a graph traced with 0 has no global stage (onnx `registration_affine_calibrated`); a tensor is an
    input of it, so the traced graph keeps the stage and discards its result where 0."""
    if search is None:
        return True
    if not torch.is_tensor(search):
        return bool(search)
    return any_pair(search)


class RegistrationNet(nn.Module):
    """Dense deformation field that warps the thermal onto the pseudo-thermal.

    Two stages. (a) A global affine (:class:`~cgrp_ros.core.align.GlobalMatcher`): learned
    descriptors of the visible luminance and of the thermal compared over the whole image, a
    robust affine fit to the matches and a confidence; with too little evidence it returns the
    prior (the identity: the input's own alignment, or the rig calibration) and the whole
    registration does too -- an aligned pair with nothing to match must come out as it went in.
    (b) Coarse-to-fine dense levels starting from that affine: a shared pyramid for the fixed
    side [pseudo-thermal, edge strength of the visible image] and the moving side [thermal,
    edge strength of the thermal]; each level matches features in a small window around the
    current estimate and corrects it, so the levels only learn the local (elastic) residual.
    Where the global stage kept the identity (the matches show no misalignment) the dense levels'
    correction is dropped too: on aligned pairs it was measured to be noise (1.2-1.8 px). They do not
    run at all when no pair of the batch needs them.

    forward(pseudo_thermal, visible_y, thermal) -> :class:`Registration`. Three dense levels
    (1/8, 1/4, 1/2): after the global stage only the local residual is left (the 'severe'
    preset's elastic part is <= 3 % of the width), and radius 2 at 1/8 reaches +-16 px.
    """

    DEFAULT_THRESHOLD = 0.1

    def __init__(self, channels=(16, 32, 48), radii=(1, 2, 2), hidden=(24, 32, 48), match_dim: int = 64,
                 confidence_threshold: float = DEFAULT_THRESHOLD, local_dim: int = 32):
        super().__init__()
        self.global_stage = GlobalMatcher(match_dim, confidence_threshold)
        # refines the global affine at 1/4 resolution and gives the confidence (local_dim 0: no local
        # stage, the global stage's confidence is used)
        self.local_stage = LocalMatcher(local_dim, confidence_threshold) if local_dim else None
        self.pyramid = FeaturePyramid(channels)
        self.levels = nn.ModuleList([LevelEstimator(c, r, h) for c, r, h in zip(channels, radii, hidden)])

    @property
    def confidence_stage(self):
        """The stage whose inlier score is the registration's confidence, with its threshold."""
        return self.local_stage if self.local_stage is not None else self.global_stage

    def affine_estimate(self, visible_y: torch.Tensor, thermal: torch.Tensor, search=None):
        """The global stage's affine refined by the local stage, before any fallback:
        (params N x 6 as in :func:`~cgrp_ros.core.align.apply_affine`, confidence N in [0, 1]).

        `search`: 0 where the prior is a rig calibration, 1 (the default) to search globally. The
        local stage then starts from the prior instead of from the global search, whose occasional
        wrong peak it would otherwise refine (measured on calibrated synthetic rigs: pairs moved 3-5
        visible px off their true calibration), and keeps it unless the fine matches clearly
        contradict it (:attr:`~cgrp_ros.core.align.LocalMatcher.CALIBRATION_MARGIN`). Either a number
        for the whole batch or an N tensor, one per pair; the global stage runs only when some pair
        searches (:func:`searches`). A searching pair's local stage also starts from the prior and
        keeps that start unless the global one scores clearly higher (``prior_start``), in case the
        global peak was wrong."""
        params, confidence, near_prior = self.affine_coarse(visible_y, thermal, search)
        return self.affine_fine(visible_y, thermal, params, near_prior, search), confidence

    def affine_coarse(self, visible_y: torch.Tensor, thermal: torch.Tensor, search=None):
        """:meth:`affine_estimate` up to the local stage's fine pass: (params N x 6, confidence N,
        near_prior N: 1 where the estimate comes from the prior's start, for :meth:`affine_fine`)."""
        if self.local_stage is None:
            params, confidence = self.global_stage.estimate(visible_y, thermal)
            return params, confidence, torch.zeros_like(confidence)
        margin = self.prior_margin(search, visible_y.dtype)
        if not searches(search):
            prior = visible_y.new_zeros(visible_y.shape[0], 6)
            return self.local_stage.refine_coarse(visible_y, thermal, prior, margin)
        params, _ = self.global_stage.estimate(visible_y, thermal)
        if torch.is_tensor(search):  # per pair: those that do not search keep their prior
            params = params * search.to(params.dtype)[:, None]
        return self.local_stage.refine_coarse(visible_y, thermal, params, margin, prior_start=True)

    def affine_fine(self, visible_y: torch.Tensor, thermal: torch.Tensor, params: torch.Tensor,
                    near_prior: torch.Tensor, search=None) -> torch.Tensor:
        """The local stage's fine pass on :meth:`affine_coarse`'s estimate -> params N x 6. A pair
        whose estimate is the prior keeps it: where none moved, nothing runs."""
        if self.local_stage is None:
            return params
        return self.local_stage.refine_fine(visible_y, thermal, params, self.prior_margin(search, params.dtype),
                                            near_prior)

    def prior_margin(self, search, dtype):
        """The local stage's margin for keeping the prior: IDENTITY_MARGIN where the pair searches,
        CALIBRATION_MARGIN where the prior is a calibration (a number, or N for a per-pair `search`)."""
        local = self.local_stage
        if not searches(search):
            return local.CALIBRATION_MARGIN
        if not torch.is_tensor(search):
            return local.IDENTITY_MARGIN
        searched = search.to(dtype)
        return searched * local.IDENTITY_MARGIN + (1.0 - searched) * local.CALIBRATION_MARGIN

    def global_estimate(self, visible_y: torch.Tensor, thermal: torch.Tensor, search=None):
        """(the affine stages' flow N x 2 x H x W in pixels, confidence N, fallback N); the flow is
        zero where it fell back. `search`: see :meth:`affine_estimate`."""
        params, confidence, fallback, near_prior = self.global_estimate_coarse(visible_y, thermal, search)
        params = self.affine_fine(visible_y, thermal, params, near_prior, search)
        return affine_flow(params, thermal), confidence, fallback

    def global_estimate_coarse(self, visible_y: torch.Tensor, thermal: torch.Tensor, search=None):
        """:meth:`global_estimate` before the fine pass: (params N x 6, zero where the pair fell back, so
        that the fine pass skips it; confidence N; fallback N; near_prior N, see :meth:`affine_coarse`)."""
        params, confidence, near_prior = self.affine_coarse(visible_y, thermal, search)
        fallback = self.confidence_stage.fallback(confidence)
        return params * (1.0 - fallback)[:, None], confidence, fallback, near_prior

    def forward(self, pseudo_thermal: torch.Tensor, visible_y: torch.Tensor, thermal: torch.Tensor,
                initial_flow: torch.Tensor | None = None, search=None) -> Registration:
        """pseudo_thermal, visible_y (the visible luminance), thermal: N x 1 x H x W in [0, 1].

        `initial_flow` (N x 2 x H x W, pixels) replaces the affine stages (training of the dense
        levels fits the affine on the whole image and passes its crop, as inference sees it);
        then there is no fallback. `search` (a number, or N): 0 to start the local stage from the
        prior instead of the global search (:meth:`affine_estimate`)."""
        if initial_flow is None:
            initial_flow, confidence, fallback = self.global_estimate(visible_y, thermal, search)
            # no evidence of any misalignment (the global stage kept the identity, or fell back):
            # the pair is left as it came; the dense levels' own noise would only move it
            keep = (initial_flow.abs().amax(dim=(1, 2, 3)) == 0).to(initial_flow.dtype)
            if not any_pair(keep < 1):  # no pair left to refine: the dense levels' flow would be dropped
                flow = torch.zeros_like(initial_flow)
                return Registration(flow, [], confidence, fallback)
        else:
            confidence = fallback = keep = torch.zeros_like(initial_flow[:, 0, 0, 0])
        fixed = self.pyramid(structure_input(pseudo_thermal, visible_y))
        moving = self.pyramid(structure_input(thermal, thermal))
        flow, outputs = None, []
        for level in reversed(range(len(fixed))):
            f, m = fixed[level], moving[level]
            if flow is None:  # the average of an affine flow over a cell is its value at the cell centre
                factor = 2 ** (level + 1)
                prior = F.avg_pool2d(initial_flow, factor) / factor
            else:
                prior = upsample2(flow)
            flow = self.levels[level](f, m, prior)
            outputs.append(flow)
        flow = upsample2(flow) * (1.0 - torch.maximum(fallback, keep))[:, None, None, None]  # finest level is 1/2
        return Registration(flow, outputs, confidence, fallback)


# ----------------------------------------------------------------------------------------------
# (3) Fusion: dual path + interaction fusion module (DIFN)
# ----------------------------------------------------------------------------------------------
class DenseBlock(nn.Module):
    """Residual dense block: each conv sees all previous outputs; 1x1 fuse + skip."""

    def __init__(self, channels: int, growth: int = 8, layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList([conv(channels + i * growth, growth) for i in range(layers)])
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x):
        """N x C x H x W -> the same shape."""
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return x + self.fuse(torch.cat(features, dim=1))


class InteractionFusion(nn.Module):
    """IFM: a shared attention map from the product of both paths re-weights each path; per-pixel
    weights blend each path's original and attended features; the two are merged by a conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.key_v = nn.Conv2d(channels, channels, 3, padding=1)
        self.key_t = nn.Conv2d(channels, channels, 3, padding=1)
        self.blend_v = nn.Conv2d(2 * channels, 2, 3, padding=1)
        self.blend_t = nn.Conv2d(2 * channels, 2, 3, padding=1)
        self.merge = conv(2 * channels, channels)

    def forward(self, visible_feat, thermal_feat):
        """Two N x C x H x W feature maps -> one N x C x H x W."""
        attention = torch.sigmoid(self.key_v(visible_feat) * self.key_t(thermal_feat))
        paths = []
        for feat, blend in ((visible_feat, self.blend_v), (thermal_feat, self.blend_t)):
            attended = feat * attention
            w = torch.softmax(blend(torch.cat((feat, attended), dim=1)), dim=1)
            paths.append(w[:, :1] * feat + w[:, 1:] * attended)
        return self.merge(torch.cat(paths, dim=1))


class FusionNet(nn.Module):
    """(visible luminance, registered thermal), each N x 1 x H x W -> fused luminance N x 1 x H x W.

    Each path: a full-resolution conv (keeps fine detail), then a stride-2 conv and a residual
    dense block; the IFM mixes the paths at 1/2 resolution (4x cheaper); the decoder upsamples
    and joins the full-resolution features of both paths.
    """

    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        self.stem_v, self.stem_t = conv(1, c // 2), conv(1, c // 2)
        self.path_v = nn.Sequential(conv(c // 2, c, stride=2), DenseBlock(c))
        self.path_t = nn.Sequential(conv(c // 2, c, stride=2), DenseBlock(c))
        self.interaction = InteractionFusion(c)
        self.mid = DenseBlock(c)
        self.decoder = nn.Sequential(conv(c + c, c), nn.Conv2d(c, 1, 3, padding=1))

    def forward(self, visible_y: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        sv, st = self.stem_v(visible_y), self.stem_t(thermal)
        merged = self.mid(self.interaction(self.path_v(sv), self.path_t(st)))
        merged = F.interpolate(merged, size=visible_y.shape[2:], mode="bilinear", align_corners=False)
        # predict a residual on the mean of the inputs: trains fast and starts from a sane image
        return torch.clamp(0.5 * (visible_y + thermal) + self.decoder(torch.cat((merged, sv, st), dim=1)), 0.0, 1.0)


NETWORKS = {"generator": Generator, "registration": RegistrationNet, "fusion": FusionNet}
