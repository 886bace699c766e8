"""The evaluation methods: one registry of every method scored beside the models (name, label, the
tasks it applies to, its role and how it predicts) that the scoring, the report, the model card and
the real-data scores read. A name outside the registry keeps its own name as label: it is never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from . import baselines


@dataclass(frozen=True)
class Settings:
    """What the baselines need beyond the counts and exposures."""

    gaussian_sigma_px: float
    psf_1x_out: np.ndarray              # the 1x PSF on the output grid (Richardson-Lucy)
    psf_out: np.ndarray | None = None   # the output grid's PSF, re-applied after deconvolution (SR)
    rl_iterations: int = 30


Predictor = Callable[[np.ndarray, float, float, int, Settings], np.ndarray]


@dataclass(frozen=True)
class Method:
    """One method: ``role`` is ``baseline`` (classical, computed here), ``model`` (a network) or
    ``reference`` (the truth, shown but not a competitor)."""

    name: str
    label: str
    tasks: tuple[str, ...]
    role: str
    predict: Predictor | None = None


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("input", "input (scaled)", ("dn", "sr"), "baseline",
           lambda c, t_in, t_out, s, _: baselines.scaled_input(c, t_in, t_out, s)),
    Method("bicubic", "bicubic", ("sr",), "baseline",
           lambda c, t_in, t_out, s, _: baselines.bicubic(c, t_in, t_out, s)),
    Method("gaussian", "Gaussian smoothing (best width)", ("dn", "sr"), "baseline",
           lambda c, t_in, t_out, s, k: baselines.gaussian(c, t_in, t_out, s, sigma_px=k.gaussian_sigma_px)),
    Method("richardson_lucy", "Richardson–Lucy", ("dn", "sr"), "baseline",
           lambda c, t_in, t_out, s, k: baselines.richardson_lucy(c, t_in, t_out, s, k.psf_1x_out,
                                                                  iterations=k.rl_iterations,
                                                                  reconvolve=k.psf_out if s > 1 else None)),
    Method("model", "model (RRDB)", ("dn", "sr"), "model"),
    Method("finetuned", "fine-tuned model", ("dn", "sr"), "model"),
    Method("truth", "truth (noise-free)", ("dn", "sr"), "reference"),
)}


def label(name: str) -> str:
    """The label of a method (its name when it is not registered)."""
    return REGISTRY[name].label if name in REGISTRY else name


def role(name: str) -> str:
    """``baseline``, ``model`` or ``reference`` (``model`` for unregistered names: networks under other names)."""
    return REGISTRY[name].role if name in REGISTRY else "model"


def baselines_for(task: str) -> list[Method]:
    """The classical baselines scored for ``task``, in registry order."""
    return [m for m in REGISTRY.values() if m.role == "baseline" and task in m.tasks]


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in registry order, unregistered ones after them in their own order (never dropped)."""
    names = list(dict.fromkeys(names))
    return [n for n in REGISTRY if n in names] + [n for n in names if n not in REGISTRY]


def predict_baselines(task: str, counts: np.ndarray, exposure_in: float, exposure_target: float, upscale: int,
                      settings: Settings, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Every baseline of ``task`` (or those of ``names``): expected counts per output pixel at the target
    exposure."""
    wanted = None if names is None else set(names)
    return {m.name: m.predict(counts, exposure_in, exposure_target, upscale, settings)
            for m in baselines_for(task) if wanted is None or m.name in wanted}
