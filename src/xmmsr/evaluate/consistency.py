"""Data consistency: is a prediction compatible with the short-exposure counts it was made from?

A prediction (expected counts per output pixel at the target exposure) is forward-modelled back to
the input: for SR convolved with the degradation kernel K (the 2x PSF convolved with K is the 1x PSF,
see :func:`degradation_kernel`) and summed over 2x2 blocks; then scaled to the input exposure
(:func:`forward_model`). The input counts are compared with that mean by the Poisson deviance
(:func:`consistency`). A method that invents a source, removes one, or moves flux around more than
the input allows gets a larger deviance there; a prediction that is merely smoother than the truth
but fits the data is not penalised. This is what "hallucination" can be checked against without
knowing the truth.

Reference values. Even the noise-free truth does not score 0: the input counts are a Poisson draw, and
the mean deviance of a Poisson count k about its true mean mu is about 1 + 1/(6 mu) for mu >~ 5, peaks
at 1.15 near mu = 1 and falls well below 1 at low counts (0.84 at mu = 0.3, 0.47 at 0.1, 0.09 at 0.01;
see :func:`expected_deviance`).
The pn background at 20 ks is a fraction of a count per 4" pixel, so most pixels are in the low-count
regime and the truth's mean deviance is well below 1. The summary therefore reports
``consistency_deviance_expected`` (the mean deviance expected if the forward-modelled prediction were
the truth), and the evaluation scores the noise-free truth with the same function as a reference.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage, stats
from scipy.signal import fftconvolve

from ..instrument.model import PnInstrument
from ..instrument.psf import PsfModel
from ..metrics import deviance_map

REGULARISATION = 1e-5       # Wiener/Tikhonov term, relative to max |FT(PSF_2x)|^2
MU_FLOOR = 1e-3             # floor of the forward-modelled mean (counts): a zero prediction under a
                            # count gets a large but finite deviance
BLOCK_PX = 3                # window (input pixels) of the smoothed residual map
INCONSISTENT_SIGMA = 3.0    # |smoothed deviance residual| above which a pixel counts as inconsistent
SR_EDGE_EROSION_PX = 1      # SR: input pixels next to the mask edge are left out (the prediction is 0
                            # in gaps, so K brings in no flux from there; the 1x truth has it)


def degradation_kernel(instrument: PnInstrument, upscale: int, r_max_arcsec: float | None = None,
                       regularisation: float = REGULARISATION) -> np.ndarray:
    """Kernel K on the ``upscale`` grid with PSF_2x * K = PSF_1x (both on-axis, pixel-integrated on that
    grid), by regularised Fourier division K = FT^-1[P1 conj(P2) / (|P2|^2 + eps max|P2|^2)], cropped to
    radius ``r_max_arcsec``, clipped at 0 and normalised to sum 1. ``upscale=1``: the 1x1 identity.

    ``r_max_arcsec`` defaults to the PSF's truncation radius (``psf.max_radius_arcsec``, 300"), which
    the simulator also uses: the 1x PSF has ~3 % more of its flux beyond 60" than the 2x one, which a
    kernel cropped at 60" cannot move there (it then over-predicts the cores of bright sources by 3 %).
    """
    s = int(upscale)
    if s != upscale or s < 1:
        raise ValueError(f"upscale must be a positive integer, got {upscale}")
    if s == 1:
        return np.ones((1, 1), dtype=np.float64)
    psf = instrument.psf
    r_max = float(psf.max_radius_arcsec if r_max_arcsec is None else r_max_arcsec)
    pixel = float(instrument.geometry.image_grid(s).pixel_arcsec)
    k = _wiener_kernel(psf, instrument.aim_offaxis_arcmin, s, pixel, r_max, float(regularisation))
    return k.copy()


@lru_cache(maxsize=8)
def _wiener_kernel(psf: PsfModel, theta: float, upscale: int, pixel: float, r_max: float, eps: float) -> np.ndarray:
    p_lo = np.asarray(psf.kernel(pixel, theta, resolution=1, r_max_arcsec=r_max))
    p_hi = np.asarray(psf.kernel(pixel, theta, resolution=upscale, r_max_arcsec=r_max))
    n = int(2 ** np.ceil(np.log2(2 * p_lo.shape[0])))
    f_lo = np.fft.rfft2(p_lo, (n, n))
    f_hi = np.fft.rfft2(p_hi, (n, n))
    power = np.abs(f_hi) ** 2
    k = np.fft.fftshift(np.fft.irfft2(f_lo * np.conj(f_hi) / (power + eps * power.max()), (n, n)))
    h = p_lo.shape[0] // 2
    c = n // 2
    k = k[c - h: c + h + 1, c - h: c + h + 1]
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1] * pixel
    k = np.where(xx**2 + yy**2 <= r_max**2, np.clip(k, 0.0, None), 0.0)
    k /= k.sum()
    k.setflags(write=False)
    return k


def forward_model(pred: np.ndarray, upscale: int, kernel: np.ndarray, exposure_pred: float,
                  exposure_input: float, footprint: np.ndarray | None = None) -> np.ndarray:
    """Expected counts per input (1x) pixel at ``exposure_input`` implied by ``pred`` (expected counts per
    output pixel at ``exposure_pred``): convolve with ``kernel`` (``fftconvolve``, ``mode="same"``: flux
    carried beyond the image edge is lost, as in an observation), sum ``upscale`` x ``upscale`` blocks,
    scale by ``exposure_input / exposure_pred``.

    ``footprint`` (the output pixels where ``pred`` holds the sky; 0 in chip gaps and beyond the field):
    a normalised convolution, conv(pred) / conv(footprint) inside it and 0 outside, so that the pixels
    beside a gap get from under it what their other surroundings give, not the gap's zeros."""
    p = np.asarray(pred, dtype=np.float64)
    s = int(upscale)
    if p.ndim != 2 or p.shape[0] % s or p.shape[1] % s:
        raise ValueError(f"prediction of shape {p.shape} is not a 2-D image divisible into {s}x{s} blocks")
    kern = np.asarray(kernel, dtype=np.float64)
    if kern.size == 1:
        conv = p * float(kern.ravel()[0])
    elif footprint is None:
        conv = np.maximum(fftconvolve(p, kern, mode="same"), 0.0)
    else:
        inside = np.asarray(footprint, dtype=bool)
        if inside.shape != p.shape:
            raise ValueError(f"footprint shape {inside.shape} differs from the prediction's {p.shape}")
        weight = fftconvolve(inside.astype(np.float64), kern, mode="same") / kern.sum()
        conv = np.maximum(fftconvolve(np.where(inside, p, 0.0), kern, mode="same"), 0.0)
        conv = np.where(inside, conv / np.maximum(weight, 1e-3), 0.0)
    binned = conv.reshape(p.shape[0] // s, s, p.shape[1] // s, s).sum(axis=(1, 3))
    return binned * (float(exposure_input) / float(exposure_pred))


def consistency(pred: np.ndarray, input_counts: np.ndarray, mask_input: np.ndarray, upscale: int,
                kernel: np.ndarray, exposure_pred: float,
                exposure_input: float) -> tuple[dict[str, float], np.ndarray]:
    """Poisson consistency of ``input_counts`` with the forward-modelled ``pred``.

    mu = max(forward_model(pred), ``MU_FLOOR``); per input pixel the deviance d = 2 [k ln(k/mu) - (k - mu)]
    and the signed deviance residual r = sign(k - mu) sqrt(d). Over the mask (for SR less the pixels
    next to its edge, ``SR_EDGE_EROSION_PX``):

    * ``consistency_deviance``: mean d;
    * ``consistency_deviance_expected``: mean of the deviance expected if mu were the true mean
      (:func:`expected_deviance`); the noise-free truth scores about this;
    * ``consistency_chi``: mean r (more negative when the prediction has more flux than the counts;
      biased negative at low counts even for the truth, since k = 0 gives -sqrt(2 mu): -0.26 at mu = 0.15);
    * ``inconsistent_fraction``: fraction of pixels whose smoothed residual |R| > ``INCONSISTENT_SIGMA``,
      where R is the signed deviance residual of the counts summed over the ``BLOCK_PX`` x ``BLOCK_PX``
      window around the pixel (masked pixels left out) given mu summed over the same window: a Poisson
      significance of the local discrepancy, about N(0, 1) for a consistent prediction.

    Returns the summary and the map R (0 outside the mask), where the prediction is inconsistent.
    """
    k = np.asarray(input_counts, dtype=np.float64)
    mu = np.maximum(forward_model(pred, upscale, kernel, exposure_pred, exposure_input), MU_FLOOR)
    if mu.shape != k.shape:
        raise ValueError(f"forward-modelled prediction {mu.shape} and input counts {k.shape} differ in shape")
    m = np.asarray(mask_input, dtype=bool) & np.isfinite(k)
    if int(upscale) > 1 and SR_EDGE_EROSION_PX > 0:
        m = ndimage.binary_erosion(m, iterations=SR_EDGE_EROSION_PX, border_value=0)
    nan = float("nan")
    if not m.any():
        return ({"consistency_deviance": nan, "consistency_deviance_expected": nan, "consistency_chi": nan,
                 "inconsistent_fraction": nan}, np.zeros_like(k))
    dev = deviance_map(mu, k)
    r = np.sign(k - mu) * np.sqrt(dev)
    k_block = ndimage.uniform_filter(np.where(m, k, 0.0), BLOCK_PX, mode="constant") * BLOCK_PX**2
    mu_block = ndimage.uniform_filter(np.where(m, mu, 0.0), BLOCK_PX, mode="constant") * BLOCK_PX**2
    k_block = np.maximum(np.rint(k_block), 0.0) if np.all(k[m] == np.rint(k[m])) else np.maximum(k_block, 0.0)
    mu_block = np.maximum(mu_block, MU_FLOOR)
    big = np.sign(k_block - mu_block) * np.sqrt(deviance_map(mu_block, k_block))
    big = np.where(m, big, 0.0)
    summary = {
        "consistency_deviance": float(dev[m].mean()),
        "consistency_deviance_expected": float(expected_deviance(mu[m]).mean()),
        "consistency_chi": float(r[m].mean()),
        "inconsistent_fraction": float((np.abs(big[m]) > INCONSISTENT_SIGMA).mean()),
    }
    return summary, big


def expected_deviance(mu: np.ndarray | float) -> np.ndarray:
    """E[d] of the Poisson deviance of k ~ Poisson(mu) about mu: exact sums tabulated on a log grid
    (1e-6 to 1e4) and interpolated; 1 + 1/(6 mu) + 1/(6 mu^2) above the grid."""
    grid, values = _deviance_table()
    m = np.asarray(mu, dtype=np.float64)
    out = np.interp(np.log(np.clip(m, grid[0], None)), np.log(grid), values)
    big = np.maximum(m, 1.0)
    return np.where(m > grid[-1], 1.0 + 1.0 / (6.0 * big) + 1.0 / (6.0 * big**2), out)


@lru_cache(maxsize=1)
def _deviance_table() -> tuple[np.ndarray, np.ndarray]:
    grid = np.logspace(-6.0, 4.0, 501)
    values = np.empty_like(grid)
    for i, mu in enumerate(grid):
        kmax = int(mu + 12.0 * np.sqrt(mu) + 30)
        k = np.arange(kmax + 1, dtype=np.float64)
        values[i] = float(np.sum(stats.poisson.pmf(k, mu) * deviance_map(mu, k)))
    return grid, values
