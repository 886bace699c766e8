"""The final model file: weights + everything inference needs, loadable with ``weights_only=True``.

The file is a plain dict of tensors and built-in types (no pickled objects):

* ``format``: ``"xmmsr-model"``, ``format_version``: 2, ``software``: xmmsr version
* ``task``: ``"dn"`` or ``"sr"``; ``architecture``: :class:`Architecture` fields
* ``normalisation``: :class:`Normalisation` fields
* ``input_exposure_s`` / ``target_exposure_s``: exposures the model was trained for
* ``train_config``: the ``train`` and ``model`` config sections; ``provenance``: dataset hash, seeds...
* ``uncertainty_calibration`` (optional): :class:`~xmmsr.learn.calibration.UncertaintyCalibration` fields,
  added by the release rule from the evaluation of this model
* ``state_dict``: generator weights
* ``digest``: ``sha256:`` of all the above (:func:`content_digest`), checked on load: a damaged file is
  refused instead of giving wrong predictions. Version 1 files (no digest) still load, unchecked.

The bytes depend only on the content (the zip entries are named ``archive/``, not after a temporary
file), so the same training gives the same file.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import PACKAGE_DATA
from ..errors import InputError
from ..io import atomic_path
from . import TASKS
from .calibration import UncertaintyCalibration
from .model import Architecture, Generator, build_generator
from .normalise import Normalisation

FORMAT = "xmmsr-model"
FORMAT_VERSION = 2          # 2: a digest of the content
READABLE_VERSIONS = (1, 2)


@dataclass
class TrainedModel:
    """A generator ready for inference, with its normalisation and exposures."""

    generator: Generator
    architecture: Architecture
    normalisation: Normalisation
    input_exposure_s: float
    target_exposure_s: float
    train_config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    uncertainty_calibration: UncertaintyCalibration | None = None

    @property
    def task(self) -> str:
        return self.architecture.task

    @property
    def upscale(self) -> int:
        return self.architecture.upscale


def save_model(path: str | Path, model: TrainedModel) -> None:
    """Write the model file atomically."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "software": f"xmmsr {__version__}",
        "task": model.task,
        "architecture": model.architecture.to_dict(),
        "normalisation": model.normalisation.to_dict(),
        "input_exposure_s": float(model.input_exposure_s),
        "target_exposure_s": float(model.target_exposure_s),
        "train_config": model.train_config,
        "provenance": model.provenance,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.generator.state_dict().items()},
    }
    if model.uncertainty_calibration is not None:
        payload["uncertainty_calibration"] = model.uncertainty_calibration.to_dict()
    payload["digest"] = content_digest(payload)
    write_torch_file(payload, path)


def write_torch_file(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` whose bytes depend only on ``payload`` (serialised in memory, so the zip entries do not
    carry a file name), written atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def content_digest(payload: dict[str, Any]) -> str:
    """``sha256:`` of a model file's content: its metadata (canonical JSON) and every weight tensor (name,
    dtype, shape and bytes, in name order); the ``digest`` entry itself is left out."""
    h = hashlib.sha256()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "digest")}
    h.update(json.dumps(meta, sort_keys=True, default=repr).encode())
    for name in sorted(payload["state_dict"]):
        tensor = payload["state_dict"][name].detach().cpu().contiguous()
        h.update(f"\n{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a model file written by :func:`save_model` (safe: ``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file", "the model file does not exist", "give the model.pt written by the train rule")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one holding pickled objects beyond tensors and plain types
        raise InputError(p, "file", f"cannot be read as an xmmsr model file ({exc.__class__.__name__})",
                         "give the model.pt written by the train rule (not a Lightning .ckpt)") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(p, "format", "is not an xmmsr model file", "give the model.pt written by the train rule")
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise InputError(p, "format_version", f"version {payload.get('format_version')} is not supported "
                         f"(this xmmsr reads {list(READABLE_VERSIONS)})", "retrain or use the xmmsr version that wrote it")
    damaged = "the file is damaged (a copy or download went wrong)"
    fix = "copy or download the model file again, or retrain it"
    if payload["format_version"] >= 2:
        try:
            digest = content_digest(payload)
        except Exception as exc:  # entries of the wrong type or shape
            raise InputError(p, "state_dict", f"cannot be checked ({exc.__class__.__name__}): {damaged}", fix) from None
        if payload.get("digest") != digest:
            raise InputError(p, "digest", f"does not match the content: {damaged}", fix)
    else:
        warnings.warn(f"{p}: a version 1 model file has no digest, so damage cannot be detected; re-save it with "
                      "this xmmsr (load and save_model) to add one", stacklevel=2)
    if payload.get("task") not in TASKS:
        raise InputError(p, "task", f"{payload.get('task')!r} is not a task this xmmsr runs (dn or sr)",
                         "give a DN or SR model.pt written by the train rule")
    try:
        arch = Architecture(**payload["architecture"])
        generator = build_generator(arch)
        generator.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(p, "architecture", f"does not match the stored weights ({exc.__class__.__name__})",
                         "give a model.pt written by the train rule of this xmmsr version") from None
    calibration = None
    if payload.get("uncertainty_calibration") is not None:
        try:
            calibration = UncertaintyCalibration.from_dict(payload["uncertainty_calibration"])
        except (TypeError, ValueError, KeyError) as exc:
            raise InputError(p, "uncertainty_calibration", f"cannot be read ({exc})",
                             "release the model again (rule release) or remove the entry") from None
    generator.eval().to(device)
    return TrainedModel(generator=generator, architecture=arch,
                        normalisation=Normalisation.from_dict(payload["normalisation"]),
                        input_exposure_s=payload["input_exposure_s"], target_exposure_s=payload["target_exposure_s"],
                        train_config=payload.get("train_config", {}), provenance=payload.get("provenance", {}),
                        uncertainty_calibration=calibration)


SHIPPED_DIR = "resources/models"   # the pretrained models inside the package (MODEL_CARD.md beside them)


def shipped_model(task: str, root: Path | None = None) -> Path:
    """The model file shipped for ``task`` (``resources/models/{task}.pt`` of the package)."""
    if task not in TASKS:
        raise InputError(None, "--task", f"{task!r} is not a task", f"use one of {list(TASKS)}")
    path = (root if root is not None else PACKAGE_DATA / SHIPPED_DIR) / f"{task}.pt"
    if not path.is_file():
        raise InputError(path, "file", f"no pretrained {task} model is installed",
                         "reinstall xmmsr, or give --model with a model.pt written by the train rule")
    return path
