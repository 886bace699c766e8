"""The evaluation methods: one registry of every method scored beside the models (name, label, the
tasks it applies to, its role and how it predicts) that the scoring, the report, the model card and
the real-data scores read. A name outside the registry keeps its own name as label: it is never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from . import baselines


@dataclass(frozen=True)
class Settings:
    """What the baselines need beyond the counts and exposures."""

    gaussian_sigma_px: float
    psf_1x_out: np.ndarray              # the 1x PSF on the output grid (Richardson-Lucy)
    psf_out: np.ndarray | None = None   # the output grid's PSF, re-applied after deconvolution (SR)
    rl_iterations: int = 30
    adaptive_snr: float = 3.0           # adaptive smoothing: minimum S/N under the kernel
    wavelet_threshold: float = 0.5      # wavelet: noise level of the Anscombe-stabilised image


T = TypeVar("T")
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
    tuned: str | None = None    # the Settings field chosen per run (validation split) or per real image
    unit: str = ""              # how the tuned value reads, e.g. "sigma {:g} px"


# evaluate config key of the candidates of each tuned Settings field
CANDIDATES = {"gaussian_sigma_px": "gaussian_sigmas", "adaptive_snr": "adaptive_snrs",
              "wavelet_threshold": "wavelet_thresholds"}


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("input", "input (scaled)", ("dn", "sr"), "baseline",
           lambda c, t_in, t_out, s, _: baselines.scaled_input(c, t_in, t_out, s)),
    Method("bicubic", "bicubic", ("sr",), "baseline",
           lambda c, t_in, t_out, s, _: baselines.bicubic(c, t_in, t_out, s)),
    Method("gaussian", "Gaussian smoothing (best width)", ("dn", "sr"), "baseline",
           lambda c, t_in, t_out, s, k: baselines.gaussian(c, t_in, t_out, s, sigma_px=k.gaussian_sigma_px),
           tuned="gaussian_sigma_px", unit="sigma {:g} px"),
    Method("adaptive_smoothing", "adaptive smoothing (asmooth/csmooth)", ("dn", "sr"), "baseline",
           lambda c, t_in, t_out, s, k: baselines.adaptive_smoothing(c, t_in, t_out, s, snr_min=k.adaptive_snr),
           tuned="adaptive_snr", unit="S/N {:g}"),
    Method("wavelet", "wavelet (Anscombe, soft threshold)", ("dn", "sr"), "baseline",
           lambda c, t_in, t_out, s, k: baselines.wavelet(c, t_in, t_out, s, threshold=k.wavelet_threshold),
           tuned="wavelet_threshold", unit="threshold {:g}"),
    Method("richardson_lucy", "Richardson–Lucy", ("dn", "sr"), "baseline",
           lambda c, t_in, t_out, s, k: baselines.richardson_lucy(c, t_in, t_out, s, k.psf_1x_out,
                                                                  iterations=k.rl_iterations,
                                                                  reconvolve=k.psf_out if s > 1 else None)),
    # de-blending only (no image of its own: xmmsr.evaluate.deblend.PsfFit), so scored for no task's images
    Method("psf_fit", "PSF fit, one or two sources (emldetect-like)", (), "baseline"),
    Method("model", "model (RRDB)", ("dn", "sr"), "model"),
    Method("model_gated", "model, sources tested on the input", ("dn", "sr"), "model"),
    Method("model_adversarial", "model + adversarial (ESRGAN)", ("dn", "sr"), "model"),
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


def run(method: Method, counts: np.ndarray, exposure_in: float, exposure_target: float, upscale: int,
        settings: Settings, footprint: np.ndarray | None = None) -> np.ndarray:
    """One baseline's expected counts per output pixel at the target exposure. With ``footprint`` (the
    input pixels with data) it runs on :func:`~xmmsr.evaluate.baselines.fill_outside`'s input and its
    output is 0 outside the footprint, as the models' is."""
    if footprint is None:
        return method.predict(counts, exposure_in, exposure_target, upscale, settings)
    inside = np.asarray(footprint, dtype=bool)
    out = method.predict(baselines.fill_outside(counts, inside), exposure_in, exposure_target, upscale, settings)
    return np.where(np.kron(inside, np.ones((upscale, upscale), dtype=bool)), out, 0.0)


def predict_baselines(task: str, counts: np.ndarray, exposure_in: float, exposure_target: float, upscale: int,
                      settings: Settings, names: Iterable[str] | None = None,
                      footprint: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every baseline of ``task`` (or those of ``names``): expected counts per output pixel at the target
    exposure; ``footprint``: see :func:`run`."""
    wanted = None if names is None else set(names)
    return {m.name: run(m, counts, exposure_in, exposure_target, upscale, settings, footprint)
            for m in baselines_for(task) if wanted is None or m.name in wanted}


def candidates_from_config(eval_cfg: Mapping[str, Any]) -> dict[str, list[float]]:
    """The candidate values of every tuned Settings field, from the ``evaluate`` config section."""
    return {field: [float(v) for v in eval_cfg[key]] for field, key in CANDIDATES.items()}


def tune(task: str, settings: Settings, candidates: Mapping[str, Sequence[float]],
         samples: Iterable[tuple[tuple[Any, ...], T]], loss: Callable[[np.ndarray, T], float]) -> Settings:
    """``settings`` with each tuned baseline of ``task`` given the candidate value of lowest summed
    ``loss(prediction, target)`` over ``samples`` ((counts, exposure_in, exposure_target, upscale[, footprint]),
    target) pairs, read once: e.g. the MSE against the noise-free target over the validation split, or the
    deviance against a real image's remainder. Fields without candidates keep their value."""
    trials = [(m, float(v)) for m in baselines_for(task) if m.tuned and candidates.get(m.tuned)
              for v in candidates[m.tuned]]
    totals = np.zeros(len(trials))
    n = 0
    for args, target in samples:
        for i, (method, value) in enumerate(trials):
            counts, t_in, t_out, upscale, *footprint = args
            totals[i] += loss(run(method, counts, t_in, t_out, upscale, replace(settings, **{method.tuned: value}),
                                  *footprint), target)
        n += 1
    if trials and n == 0:
        raise ValueError("tune: no sample to choose the baselines' parameters on")
    for method in dict.fromkeys(m for m, _ in trials):
        mine = [i for i, (m, _) in enumerate(trials) if m is method]
        settings = replace(settings, **{method.tuned: trials[min(mine, key=lambda i: totals[i])][1]})
    return settings


def tuned_values(task: str, settings: Settings) -> dict[str, float]:
    """Method name -> the value of its tuned parameter in ``settings``."""
    return {m.name: float(getattr(settings, m.tuned)) for m in baselines_for(task) if m.tuned}


def with_values(settings: Settings, values: Mapping[str, float] | None) -> Settings:
    """``settings`` with the tuned parameters of ``values`` (method name -> value, as :func:`tuned_values`)."""
    fields = {REGISTRY[name].tuned: float(v) for name, v in (values or {}).items()
              if name in REGISTRY and REGISTRY[name].tuned}
    return replace(settings, **fields)


def describe_parameter(name: str, value: float) -> str:
    """The tuned parameter of method ``name`` as text, e.g. ``sigma 1.5 px``; empty for untuned methods."""
    method = REGISTRY.get(name)
    return method.unit.format(value) if method is not None and method.tuned and np.isfinite(value) else ""
