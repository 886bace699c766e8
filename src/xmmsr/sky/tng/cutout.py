"""IllustrisTNG gas cutouts in the ``illustris_python`` HDF5 layout: read, validate, write.

A cutout file (``cutout.hdf5`` of the TNG web API, or a snapshot chunk) holds a ``Header`` group whose
attributes include ``HubbleParam`` (h), ``Omega0``, ``Redshift``, ``Time`` (scale factor a) and
``BoxSize`` (ckpc/h), and a ``PartType0`` group of gas-cell datasets in TNG code units:

* ``Coordinates`` (N, 3) [ckpc/h], ``Masses`` [1e10 Msun/h], ``Density`` [1e10 Msun/h (ckpc/h)^-3],
* ``InternalEnergy`` [(km/s)^2], ``ElectronAbundance`` [n_e / n_H], ``StarFormationRate`` [Msun/yr].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...io import atomic_path

GAS_GROUP = "PartType0"
REQUIRED_FIELDS = ("Coordinates", "Masses", "Density", "InternalEnergy", "ElectronAbundance", "StarFormationRate")
HEADER_ATTRS = ("HubbleParam", "Omega0", "Redshift", "Time")


@dataclass
class GasCutout:
    """The gas cells of one cutout in TNG code units, with the header quantities the physics needs."""

    coordinates: np.ndarray        # (N, 3) ckpc/h
    masses: np.ndarray             # 1e10 Msun/h
    density: np.ndarray            # 1e10 Msun/h / (ckpc/h)^3
    internal_energy: np.ndarray    # (km/s)^2 per unit mass
    electron_abundance: np.ndarray  # n_e / n_H
    star_formation_rate: np.ndarray  # Msun/yr
    hubble: float                  # h
    omega0: float                  # Omega_m at z = 0
    redshift: float                # snapshot redshift
    scale_factor: float            # a = 1 / (1 + z)
    box_size: float | None = None  # ckpc/h (periodic box), when the header has it
    path: str | None = None

    def __len__(self) -> int:
        return int(self.masses.shape[0])


def _missing_fix(path: str | Path) -> str:
    return (f"the cutout is corrupt or incomplete; delete {Path(path).name} and download it again "
            f"(xmmsr tng-download), or export it again with all of {list(REQUIRED_FIELDS)}")


def read_cutout(path: str | Path) -> GasCutout:
    """Read a gas cutout; raise :class:`InputError` naming the file and the missing or bad field."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file", "the cutout does not exist", "give the path of an IllustrisTNG cutout HDF5 file")
    try:
        with h5py.File(p, "r") as f:
            if "Header" not in f:
                raise InputError(p, "Header", "the group is missing", _missing_fix(p))
            attrs = f["Header"].attrs
            missing = [a for a in HEADER_ATTRS if a not in attrs]
            if missing:
                raise InputError(p, f"Header attributes {missing}", "missing", _missing_fix(p))
            if GAS_GROUP not in f:
                raise InputError(p, GAS_GROUP, "the gas group is missing (no gas cells in this cutout)",
                                 "select subhalos that have gas, or " + _missing_fix(p))
            gas = f[GAS_GROUP]
            absent = [name for name in REQUIRED_FIELDS if name not in gas]
            if absent:
                raise InputError(p, f"{GAS_GROUP}/{absent[0]}", f"dataset missing (also missing: {absent[1:]})"
                                 if len(absent) > 1 else "dataset missing", _missing_fix(p))
            data = {name: np.asarray(gas[name][()], dtype=np.float64) for name in REQUIRED_FIELDS}
            box = float(attrs["BoxSize"]) if "BoxSize" in attrs else None
            header = {a: float(np.asarray(attrs[a]).ravel()[0]) for a in HEADER_ATTRS}
    except InputError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError... on truncated or corrupt files
        raise InputError(p, "HDF5 structure", f"cannot be read ({exc.__class__.__name__}: {exc})", _missing_fix(p)) from exc
    n = data["Masses"].shape[0]
    if data["Coordinates"].ndim != 2 or data["Coordinates"].shape != (n, 3):
        raise InputError(p, f"{GAS_GROUP}/Coordinates", f"shape {data['Coordinates'].shape} is not ({n}, 3)",
                         _missing_fix(p))
    for name in REQUIRED_FIELDS[1:]:
        if data[name].shape != (n,):
            raise InputError(p, f"{GAS_GROUP}/{name}", f"shape {data[name].shape} does not match {n} cells",
                             _missing_fix(p))
        if not np.all(np.isfinite(data[name])):
            raise InputError(p, f"{GAS_GROUP}/{name}", "contains NaN or infinite values", _missing_fix(p))
    if n and (np.any(data["Masses"] <= 0) or np.any(data["Density"] <= 0)):
        raise InputError(p, f"{GAS_GROUP}/Masses, Density", "contain non-positive values", _missing_fix(p))
    if not (header["HubbleParam"] > 0 and 0 < header["Omega0"] <= 1 and header["Time"] > 0):
        raise InputError(p, "Header HubbleParam/Omega0/Time", f"unphysical values {header}", _missing_fix(p))
    return GasCutout(coordinates=data["Coordinates"], masses=data["Masses"], density=data["Density"],
                     internal_energy=data["InternalEnergy"], electron_abundance=data["ElectronAbundance"],
                     star_formation_rate=data["StarFormationRate"], hubble=header["HubbleParam"],
                     omega0=header["Omega0"], redshift=header["Redshift"], scale_factor=header["Time"],
                     box_size=box, path=str(p))


def cutout_problem(path: str | Path, fields: tuple[str, ...] = REQUIRED_FIELDS) -> str | None:
    """Why ``path`` is not a complete cutout (a short reason), or None when it opens and has ``fields``."""
    import h5py

    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return "missing or empty"
    try:
        with h5py.File(p, "r") as f:
            if "Header" not in f or any(a not in f["Header"].attrs for a in HEADER_ATTRS):
                return "no complete Header"
            if GAS_GROUP not in f:
                return f"no {GAS_GROUP} group"
            gas = f[GAS_GROUP]
            absent = [name for name in fields if name not in gas]
            if absent:
                return f"missing datasets {absent}"
            lengths = {gas[name].shape[0] for name in fields}
            if len(lengths) != 1:
                return f"datasets of different lengths {sorted(lengths)}"
            for name in fields:  # reading the last element touches the end of every dataset
                dset = gas[name]
                if dset.shape[0]:
                    _ = dset[-1]
    except Exception as exc:  # truncated or corrupt HDF5
        return f"unreadable HDF5 ({exc.__class__.__name__})"
    return None


def write_cutout(path: str | Path, cutout: GasCutout) -> None:
    """Write ``cutout`` atomically in the layout of the TNG API (used for tests, benchmarks and exports)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            header = f.create_group("Header")
            header.attrs["HubbleParam"] = cutout.hubble
            header.attrs["Omega0"] = cutout.omega0
            header.attrs["OmegaLambda"] = 1.0 - cutout.omega0
            header.attrs["Redshift"] = cutout.redshift
            header.attrs["Time"] = cutout.scale_factor
            if cutout.box_size is not None:
                header.attrs["BoxSize"] = cutout.box_size
            header.attrs["NumPart_ThisFile"] = np.array([len(cutout), 0, 0, 0, 0, 0], dtype=np.int64)
            gas = f.create_group(GAS_GROUP)
            gas["Coordinates"] = cutout.coordinates.astype(np.float64)
            gas["Masses"] = cutout.masses.astype(np.float32)
            gas["Density"] = cutout.density.astype(np.float32)
            gas["InternalEnergy"] = cutout.internal_energy.astype(np.float32)
            gas["ElectronAbundance"] = cutout.electron_abundance.astype(np.float32)
            gas["StarFormationRate"] = cutout.star_formation_rate.astype(np.float32)
