"""Intensity normalisation between counts and network space, recorded in every checkpoint.

Counts are first turned into a count rate per 1x-pixel area, ``rate = counts / exposure * upscale**2``,
so that inputs (20 ks, 1x) and targets (100 ks, 1x or 2x) share one scale. Then:

* ``asinh`` (default): ``y = asinh(rate / scale)``; linear for faint pixels, logarithmic for bright
  ones; never clips.
* ``log``: ``y = log1p(rate / scale)``.
* ``sqrt_clamp`` (the reference): ``y = sqrt(min(rate, scale) / scale)``; clips everything above
  ``scale`` (2.23e-3 counts/s/pixel in the reference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

METHODS = ("asinh", "log", "sqrt_clamp")
MAX_VALUE = 30.0  # network values beyond this are not physical (asinh: 5e12 x scale)


@dataclass(frozen=True)
class Normalisation:
    """Counts <-> network values; ``scale`` is a count rate (counts/s per 1x pixel)."""

    method: str = "asinh"
    scale: float = 5.0e-5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown normalisation {self.method!r}; expected one of {METHODS}")
        if not self.scale > 0:
            raise ValueError(f"normalisation scale must be > 0, got {self.scale}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        return cls(method=str(d["method"]), scale=float(d["scale"]))

    def forward(self, counts: torch.Tensor, exposure_s: torch.Tensor | float, upscale: int = 1) -> torch.Tensor:
        """Counts per pixel at ``exposure_s`` -> network values."""
        x = self.rate(counts, exposure_s, upscale) / self.scale
        if self.method == "asinh":
            return torch.asinh(x)
        if self.method == "log":
            return torch.log1p(x.clamp(min=0.0))
        return torch.sqrt(x.clamp(0.0, 1.0))

    def inverse(self, values: torch.Tensor, exposure_s: torch.Tensor | float, upscale: int = 1) -> torch.Tensor:
        """Network values -> expected counts per pixel at ``exposure_s`` (may be slightly negative).

        Values are limited to +-MAX_VALUE (for asinh, 5e12 x scale) so that float32 cannot overflow."""
        if self.method == "asinh":
            x = torch.sinh(values.clamp(-MAX_VALUE, MAX_VALUE))
        elif self.method == "log":
            x = torch.expm1(values.clamp(max=MAX_VALUE))
        else:
            x = values * values.abs()
        return x * self.scale * _expand(exposure_s, values) / upscale**2

    @staticmethod
    def rate(counts: torch.Tensor, exposure_s: torch.Tensor | float, upscale: int = 1) -> torch.Tensor:
        """Count rate per 1x-pixel area."""
        return counts * upscale**2 / _expand(exposure_s, counts)


def _expand(exposure_s: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """Per-sample exposures broadcast over (N, C, H, W)."""
    if isinstance(exposure_s, torch.Tensor) and exposure_s.ndim == 1:
        return exposure_s.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))
    return exposure_s
