"""Registration and fusion quality metrics (numpy + OpenCV only).

Conventions shared by every function here:

* Images are single-channel H x W arrays (uint8, or float holding intensities on the
  0..255 scale). Colour images must be converted to grey / luminance first.
* Histogram-based metrics (entropy, mutual information) quantise to 256 grey levels by
  default, so float inputs are clipped to [0, 255] for them.
* Logarithms are base 2: entropies and mutual informations are in bits.
* Flows are H x W x 2 float32 in pixels, x first (the core's convention, see ``warp.py``).
* ``mask`` arguments are H x W bool arrays selecting the pixels that are scored; an empty
  selection gives NaN. Metrics undefined for an input (e.g. correlation of a constant
  image) return NaN rather than an arbitrary number.

Definitions and references are in docs/metrics.md.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..core.warp import endpoint_error

GREY_LEVELS = 256
_EPS = 1e-10

# Qabf constants (Xydeas & Petrovic 2000): sigmoid gain, slope and centre for edge strength (g)
# and orientation (alpha) preservation.
_QABF_G = (0.9994, -15.0, 0.5)
_QABF_A = (0.9879, -22.0, 0.8)


# -- helpers ----------------------------------------------------------------------------------------
def _grey(image) -> np.ndarray:
    """H x W array -> float64; rejects anything that is not one channel."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise ValueError(f"expected a single-channel H x W image, got shape {image.shape}")
    return image.astype(np.float64)


def _selected(image, mask) -> np.ndarray:
    """The scored values of `image` as a 1-D float64 array."""
    values = _grey(image)
    return values.ravel() if mask is None else values[np.asarray(mask, bool)]


def _levels(values: np.ndarray, bins: int) -> np.ndarray:
    """0..255 intensities -> integer bin indices 0..bins-1."""
    # integer arithmetic: the floor division of floats took 3/4 of the time (the MI fit calls this ~3000 times)
    return np.clip(np.rint(values), 0, GREY_LEVELS - 1).astype(np.int64) * bins // GREY_LEVELS


def _entropy_of(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log2(p)))


# -- registration metrics ----------------------------------------------------------------------------
def mae(a, b, mask=None) -> float:
    """Mean absolute difference of two images (their units; grey levels for 0..255 images)."""
    a, b = _selected(a, mask), _selected(b, mask)
    return float(np.mean(np.abs(a - b))) if a.size else float("nan")


def rmse(a, b, mask=None) -> float:
    """Root mean squared difference of two images (their units)."""
    a, b = _selected(a, mask), _selected(b, mask)
    return float(np.sqrt(np.mean((a - b) ** 2))) if a.size else float("nan")


def correlation(a, b, mask=None) -> float:
    """Pearson correlation in [-1, 1] (= zero-mean normalised cross-correlation, NCC, = CC).

    NaN when either image is constant on the selection.
    """
    a, b = _selected(a, mask), _selected(b, mask)
    if a.size == 0:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denominator) if denominator > _EPS else float("nan")


ncc = correlation


def entropy(image, mask=None, bins: int = GREY_LEVELS) -> float:
    """Shannon entropy of the grey-level histogram, bits (0 for a constant image, <= log2(bins))."""
    values = _selected(image, mask)
    if values.size == 0:
        return float("nan")
    return _entropy_of(np.bincount(_levels(values, bins), minlength=bins))


def mutual_information(a, b, mask=None, bins: int = GREY_LEVELS) -> float:
    """MI(a; b) = H(a) + H(b) - H(a, b) from the joint grey-level histogram, bits. Symmetric, >= 0."""
    a, b = _selected(a, mask), _selected(b, mask)
    if a.size == 0:
        return float("nan")
    joint = np.bincount(_levels(a, bins) * bins + _levels(b, bins), minlength=bins * bins).reshape(bins, bins)
    return max(0.0, _entropy_of(joint.sum(axis=1)) + _entropy_of(joint.sum(axis=0)) - _entropy_of(joint))


def flow_errors(flow, reference_flow, mask=None) -> dict:
    """Mean end-point error (px) and the shares (0..1) of pixels under 1 px and 3 px error."""
    epe = endpoint_error(flow, reference_flow)
    epe = epe.ravel() if mask is None else epe[np.asarray(mask, bool)]
    if epe.size == 0:
        return dict(epe=float("nan"), epe_lt1=float("nan"), epe_lt3=float("nan"))
    return dict(epe=float(epe.mean()), epe_lt1=float(np.mean(epe < 1.0)), epe_lt3=float(np.mean(epe < 3.0)))


EDGE_WIDTH = 400        # px: edge agreement is computed at this width, so a pixel means the same on every camera
EDGE_SIGMA = 1.0        # px at EDGE_WIDTH: smoothing before the Sobel gradients
EDGE_LOCAL_SIGMA = 8.0  # px at EDGE_WIDTH: the neighbourhood an edge's strength is normalised by
EDGE_MARGIN = 12        # px at EDGE_WIDTH cut from the scored region's border (the filters' support)
EDGE_MAX_HEIGHT = 4 * EDGE_WIDTH  # px: a taller image is scored at this height, narrower than EDGE_WIDTH (an
                                  # image of H x W = 1200 x 2 px at 400 px wide: 240000 px tall, gigabytes, seconds)
# the smallest difference of two edge_agreement scores of one pair read as a difference: the smoothing
# of two half-pixel bilinear warps moves it further on 1 of 137 training pairs (docs/metrics.md)
EDGE_MARGIN_OF_DIFFERENCE = 0.01


def gradient_magnitude(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """H x W float32 Sobel gradient magnitude of a grey image smoothed by a Gaussian of `sigma` px."""
    smooth = cv2.GaussianBlur(np.asarray(image, np.float32), (0, 0), sigma)
    return cv2.magnitude(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))


def normalised_edges(image: np.ndarray) -> np.ndarray:
    """H x W float32 gradient magnitude of a grey image divided by its local mean: a faint edge in a
    dull region counts as much as a strong one, so two modalities of different contrast are compared
    on where their edges are, not on how strong."""
    magnitude = gradient_magnitude(image, EDGE_SIGMA)
    local = cv2.GaussianBlur(magnitude, (0, 0), EDGE_LOCAL_SIGMA)
    return magnitude / (local + 0.1 * float(magnitude.mean()) + 1e-6)


def edge_agreement(a, b, mask=None) -> float:
    """How well the edges of two images of different modalities coincide, no ground truth needed:
    the correlation ([-1, 1], higher = better aligned) of their normalised gradient magnitudes, both
    resized to EDGE_WIDTH px wide (at most EDGE_MAX_HEIGHT tall), over `mask` shrunk by EDGE_MARGIN px. NaN
    on too small an overlap, or where either image is constant there.

    A judge between given alignments of one pair (e.g. a data set's published alignment against a
    registration), not an objective to optimise: searched over warps, a hand-made cross-modal score
    like this one can peak at wrong ones (issue 9)."""
    a, b = _grey(a), _grey(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    size = (EDGE_WIDTH, max(1, round(a.shape[0] * EDGE_WIDTH / a.shape[1])))
    if size[1] > EDGE_MAX_HEIGHT:
        size = (max(1, round(a.shape[1] * EDGE_MAX_HEIGHT / a.shape[0])), EDGE_MAX_HEIGHT)
    resize = lambda image: cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)  # noqa: E731
    inside = np.ones(size[::-1], bool) if mask is None else \
        cv2.resize(np.asarray(mask, np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    inside = cv2.erode(np.pad(inside, 1).astype(np.uint8), np.ones((2 * EDGE_MARGIN + 1,) * 2, np.uint8))[1:-1, 1:-1]
    if inside.sum() < 100:
        return float("nan")
    a, b = resize(a), resize(b)
    if _flat(a[inside > 0]) or _flat(b[inside > 0]):  # a constant image: its "edges" would be rounding noise
        return float("nan")
    return correlation(normalised_edges(a), normalised_edges(b), inside > 0)


def _flat(values: np.ndarray) -> bool:
    """Whether `values` hold no structure: their spread within float rounding of their size."""
    return float(np.ptp(values)) <= 1e-5 * (float(np.abs(values).max()) + 1.0)


def edge_comparison(before, after) -> dict:
    """Two edge_agreement scores per pair (sequences of one length, e.g. as received and as registered):
    their means over the pairs scored both ways (NaN when none), on how many of them `after` is better
    and worse by more than EDGE_MARGIN_OF_DIFFERENCE, and how many were scored."""
    scores = np.array([before, after], np.float64).reshape(2, -1)
    scores = scores[:, np.isfinite(scores).all(axis=0)]
    change = scores[1] - scores[0]
    mean = lambda values: float(values.mean()) if values.size else float("nan")  # noqa: E731
    return dict(before=mean(scores[0]), after=mean(scores[1]), better=int(np.sum(change > EDGE_MARGIN_OF_DIFFERENCE)),
                worse=int(np.sum(change < -EDGE_MARGIN_OF_DIFFERENCE)), scored=int(scores.shape[1]))


def registration_metrics(registered, aligned, mask=None, flow=None, reference_flow=None) -> dict:
    """mae, rmse, ncc, mi of registered vs aligned thermal (0..255), + epe/epe_lt1/epe_lt3 given flows."""
    out = dict(mae=mae(registered, aligned, mask), rmse=rmse(registered, aligned, mask),
               ncc=correlation(registered, aligned, mask), mi=mutual_information(registered, aligned, mask))
    if flow is not None and reference_flow is not None:
        out.update(flow_errors(flow, reference_flow, mask))
    return out


# -- fusion metrics: the fused image alone ------------------------------------------------------------
def standard_deviation(image) -> float:
    """Population standard deviation of the intensities (contrast), image units."""
    return float(np.std(_grey(image)))


def spatial_frequency(image) -> float:
    """sqrt(RF^2 + CF^2): RMS of horizontal (row) and vertical (column) first differences."""
    f = _grey(image)
    row_frequency_sq = np.mean(np.diff(f, axis=1) ** 2) if f.shape[1] > 1 else 0.0
    column_frequency_sq = np.mean(np.diff(f, axis=0) ** 2) if f.shape[0] > 1 else 0.0
    return float(np.sqrt(row_frequency_sq + column_frequency_sq))


def average_gradient(image) -> float:
    """Mean over pixels of sqrt((dx^2 + dy^2) / 2) with forward differences on the (H-1) x (W-1) grid."""
    f = _grey(image)
    if min(f.shape) < 2:
        return 0.0
    dx = f[:-1, 1:] - f[:-1, :-1]
    dy = f[1:, :-1] - f[:-1, :-1]
    return float(np.mean(np.sqrt((dx * dx + dy * dy) / 2.0)))


# -- fusion metrics: fused vs a source -----------------------------------------------------------------
def _gaussian_filter(image: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Gaussian-window local mean, 'valid' part only (no border effects): (H-size+1) x (W-size+1)."""
    k = cv2.getGaussianKernel(size, sigma, cv2.CV_64F)
    r = size // 2
    out = cv2.sepFilter2D(image, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT)
    return out[r:image.shape[0] - r, r:image.shape[1] - r]


def _local_moments(a, b, size, sigma):
    """Local means, variances and covariance under a Gaussian window (valid region)."""
    mu_a, mu_b = _gaussian_filter(a, size, sigma), _gaussian_filter(b, size, sigma)
    var_a = np.maximum(_gaussian_filter(a * a, size, sigma) - mu_a ** 2, 0.0)
    var_b = np.maximum(_gaussian_filter(b * b, size, sigma) - mu_b ** 2, 0.0)
    cov = _gaussian_filter(a * b, size, sigma) - mu_a * mu_b
    return mu_a, mu_b, var_a, var_b, cov


def ssim(a, b, data_range: float = 255.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004): 11 x 11 Gaussian window, sigma 1.5,
    K1 = 0.01, K2 = 0.03, averaged over the positions where the window fits. SSIM(x, x) = 1."""
    a, b = _grey(a), _grey(b)
    if min(a.shape) < window:
        window = max(1, min(a.shape) // 2 * 2 - 1)  # tiny images: the largest odd window that fits
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b, var_a, var_b, cov = _local_moments(a, b, window, sigma)
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def vif(reference, distorted, noise_variance: float = 2.0) -> float:
    """Pixel-domain visual information fidelity (Sheikh & Bovik 2006), 4 scales.

    Information about `reference` kept in `distorted` over the information in `reference`
    itself; VIF(x, x) = 1, less for a degraded image, > 1 possible for contrast enhancement.
    """
    ref, dist = _grey(reference), _grey(distorted)
    numerator = denominator = 0.0
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        sigma = size / 5.0
        if scale > 1:  # low-pass then decimate by two
            if min(ref.shape) < size:
                break
            ref = _gaussian_filter(ref, size, sigma)[::2, ::2]
            dist = _gaussian_filter(dist, size, sigma)[::2, ::2]
        if min(ref.shape) < size:
            break
        _, _, var_r, var_d, cov = _local_moments(ref, dist, size, sigma)
        gain = cov / (var_r + _EPS)
        noise = var_d - gain * cov
        # degenerate windows, as in the reference implementation: flat reference, flat output, negative gain
        flat_ref = var_r < _EPS
        gain[flat_ref], noise[flat_ref], var_r[flat_ref] = 0.0, var_d[flat_ref], 0.0
        flat_dist = var_d < _EPS
        gain[flat_dist], noise[flat_dist] = 0.0, 0.0
        negative = gain < 0
        noise[negative], gain[negative] = var_d[negative], 0.0
        noise = np.maximum(noise, _EPS)
        numerator += np.sum(np.log10(1.0 + gain ** 2 * var_r / (noise + noise_variance)))
        denominator += np.sum(np.log10(1.0 + var_r / noise_variance))
    return float(numerator / denominator) if denominator > 0 else float("nan")


def _sobel_strength_orientation(image):
    """Sobel edge strength g and orientation alpha = atan(sy / sx) in [-pi/2, pi/2]."""
    sx = cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    sy = cv2.Sobel(image, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    strength = np.hypot(sx, sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        orientation = np.where(sx == 0, np.pi / 2 * np.sign(sy), np.arctan(sy / sx))
    return strength, orientation


def _edge_preservation(g_src, a_src, g_fused, a_fused):
    """Q^{SF}: per-pixel preservation (0..~1) of the source's edge strength and orientation in F."""
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_strength = np.where(g_src > g_fused, g_fused / g_src, g_src / g_fused)
    relative_strength = np.nan_to_num(relative_strength, nan=1.0)  # both flat: nothing lost
    relative_orientation = 1.0 - np.abs(a_src - a_fused) / (np.pi / 2)
    gamma_g, kappa_g, sigma_g = _QABF_G
    gamma_a, kappa_a, sigma_a = _QABF_A
    q_g = gamma_g / (1.0 + np.exp(kappa_g * (relative_strength - sigma_g)))
    q_a = gamma_a / (1.0 + np.exp(kappa_a * (relative_orientation - sigma_a)))
    return q_g * q_a


def qabf(source_a, source_b, fused) -> float:
    """Gradient-based fusion quality Q^{AB/F} (Xydeas & Petrovic 2000), 0..~0.975.

    Edge preservation of each source in F, weighted by the source's edge strength (L = 1).
    NaN when both sources are flat (no edges to preserve).
    """
    g_a, a_a = _sobel_strength_orientation(_grey(source_a))
    g_b, a_b = _sobel_strength_orientation(_grey(source_b))
    g_f, a_f = _sobel_strength_orientation(_grey(fused))
    weight = np.sum(g_a + g_b)
    if weight <= _EPS:
        return float("nan")
    kept = _edge_preservation(g_a, a_a, g_f, a_f) * g_a + _edge_preservation(g_b, a_b, g_f, a_f) * g_b
    return float(np.sum(kept) / weight)


def fusion_metrics(fused, visible, thermal) -> dict:
    """The fusion table's columns for a fused image vs its two (aligned) sources, all H x W 0..255.

    en, sd, sf, ag: of the fused image alone; fmi = MI(F, V) + MI(F, T); cc and ssim = mean of
    the two sources' values; vif = VIF(V -> F) + VIF(T -> F); qabf combines both by definition.
    """
    return dict(
        en=entropy(fused), sd=standard_deviation(fused), sf=spatial_frequency(fused), ag=average_gradient(fused),
        fmi=mutual_information(fused, visible) + mutual_information(fused, thermal),
        cc=(correlation(fused, visible) + correlation(fused, thermal)) / 2.0,
        ssim=(ssim(fused, visible) + ssim(fused, thermal)) / 2.0,
        vif=vif(visible, fused) + vif(thermal, fused),
        qabf=qabf(visible, thermal, fused),
    )


# Column name -> (description, True when higher is better); the evaluation's CSV/report order.
REGISTRATION_COLUMNS = {
    "mae": ("mean |registered - aligned| thermal, grey levels", False),
    "rmse": ("RMS(registered - aligned) thermal, grey levels", False),
    "ncc": ("normalised cross-correlation registered vs aligned", True),
    "mi": ("mutual information registered vs aligned, bits", True),
    "epe": ("mean flow end-point error vs ground truth, px", False),
    "epe_lt1": ("share of pixels with EPE < 1 px", True),
    "epe_lt3": ("share of pixels with EPE < 3 px", True),
    "coverage": ("share of the valid region the method samples inside", True),
    "edge_agreement": ("edges of registered thermal vs visible image coincide (no ground truth), -1..1", True),
}
FUSION_COLUMNS = {
    "en": ("entropy of F, bits", True),
    "sd": ("standard deviation of F", True),
    "sf": ("spatial frequency of F", True),
    "ag": ("average gradient of F", True),
    "fmi": ("MI(F,V) + MI(F,T), bits", True),
    "cc": ("mean of CC(F,V), CC(F,T)", True),
    "ssim": ("mean of SSIM(F,V), SSIM(F,T)", True),
    "vif": ("VIF(V->F) + VIF(T->F)", True),
    "qabf": ("Q^{AB/F} edge preservation", True),
}
