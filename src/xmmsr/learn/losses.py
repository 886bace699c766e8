"""Training losses, all over the detector mask only (validation metrics: :mod:`xmmsr.evaluate.metrics`).

Network values live in normalised space (see :mod:`.normalise`); the Poisson term is evaluated on
linear expected counts at the target exposure, where the Poisson likelihood of the target counts is
defined.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

POISSON_FLOOR = 1.0e-2  # counts: softplus sharpness of the positivity constraint of the Poisson mean
LOG_FLOOR = 1.0e-8  # counts: floor of the mean inside logarithms (softplus underflows to 0 far below zero)
LOSS_TERMS = ("l1", "poisson", "ssim", "ms_ssim")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over mask > 0, per batch (mask broadcast over channels)."""
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def positive_counts(mu: torch.Tensor) -> torch.Tensor:
    """A smooth positive version of predicted counts (identity above ~0.05 counts)."""
    return F.softplus(mu, beta=1.0 / POISSON_FLOOR)


def poisson_nll(mu: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked Poisson negative log-likelihood (without the log k! constant) of ``counts`` given mean ``mu``."""
    mu = positive_counts(mu)
    return masked_mean(mu - counts * torch.log(mu.clamp(min=LOG_FLOOR)), mask)


def data_range(target: torch.Tensor) -> float:
    """Dynamic range of a batch of normalised targets (at least 1)."""
    return max(float(target.amax() - target.amin()), 1.0)


def ssim_value(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, multiscale: bool = False) -> torch.Tensor:
    """SSIM (or MS-SSIM) of masked images (pixels outside the mask set to 0 in both)."""
    mask = mask.to(pred.dtype)
    fn = ms_ssim if multiscale else ssim
    return fn(pred * mask, target * mask, data_range=data_range(target))


def loss_terms(weights: dict[str, float], pred: torch.Tensor, target: torch.Tensor, mu: torch.Tensor,
               counts: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weighted terms asked for (weight > 0) and their sum under ``loss``.

    ``pred``/``target``: normalised network values; ``mu``: predicted expected counts; ``counts``: target counts.
    """
    terms: dict[str, torch.Tensor] = {}
    if weights.get("l1", 0) > 0:
        terms["l1"] = masked_mean((pred - target).abs(), mask)
    if weights.get("poisson", 0) > 0:
        terms["poisson"] = poisson_nll(mu, counts, mask)
    if weights.get("ssim", 0) > 0:
        terms["ssim"] = 1.0 - ssim_value(pred, target, mask)
    if weights.get("ms_ssim", 0) > 0:
        terms["ms_ssim"] = 1.0 - ssim_value(pred, target, mask, multiscale=True)
    if not terms:
        raise ValueError("train.loss: every weight is 0; give at least one positive loss weight")
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    return terms
