"""Device choice shared by training and inference."""

from __future__ import annotations

import torch


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def auto_device_type(requested: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; otherwise the request (``gpu`` means cuda)."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    return "cuda" if requested == "gpu" else requested
