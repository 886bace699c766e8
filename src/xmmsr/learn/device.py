"""Device choice shared by training and inference."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..errors import InputError

# variables through which a scheduler gives a job GPUs (Slurm --gpus, or any CUDA launcher)
GPU_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS")


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def auto_device_type(requested: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; otherwise the request (``gpu`` means cuda)."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    return "cuda" if requested == "gpu" else requested


def allotted_gpus(environ: Mapping[str, str] | None = None) -> str | None:
    """The variable that gives this job GPUs (``NAME=value``), or None."""
    env = os.environ if environ is None else environ
    for name in GPU_ENV:
        value = env.get(name, "").strip()
        none = ("", "-1", "0") if name == "SLURM_GPUS_ON_NODE" else ("", "-1")   # ways of saying "no GPU"
        if value not in none:
            return f"{name}={value}"
    return None


def training_device(requested: str = "auto", environ: Mapping[str, str] | None = None) -> str:
    """The device to train on; refuses to train on the CPU when a GPU was asked for (``train.accelerator``)
    or given to the job, but this torch sees none (a CPU-only build, or no driver): hours on a CPU in a
    GPU job are worse than a clear stop."""
    device = auto_device_type(requested)
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "train.accelerator", f"asks for a GPU ({requested!r}) but torch {torch.__version__} "
                         "sees none", "install a CUDA build of torch on the GPU nodes, or set train.accelerator: cpu")
    given = allotted_gpus(environ)
    if requested == "auto" and device != "cuda" and given is not None:
        raise InputError(None, "GPU", f"the job was given GPUs ({given}) but torch {torch.__version__} sees none "
                         f"(CUDA build: {torch.version.cuda or 'no'})",
                         "install a CUDA build of torch where the GPU jobs run, or set train.accelerator: cpu to "
                         "train on the CPU deliberately")
    return device
