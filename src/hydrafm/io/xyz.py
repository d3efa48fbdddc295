"""Atoms with HydrAFM labels ↔ extended XYZ (Å), through ase.

Every atom carries a ``label`` (O, Na, K, H_up, H_flat, H_down) and a
``confidence`` (0–1); the element follows from the label. Writes are atomic
(temporary file, then rename) and refuse to replace a file unless asked.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms

from .errors import AFMFileError, CorruptFileError

LABELS: tuple[str, ...] = ("O", "Na", "K", "H_up", "H_flat", "H_down")
ELEMENT: dict[str, str] = {"O": "O", "Na": "Na", "K": "K", "H_up": "H", "H_flat": "H", "H_down": "H"}


def _column(features: Any, name: str) -> np.ndarray | None:
    if features is None:
        return None
    try:
        if name in features:
            return np.asarray(features[name])
    except TypeError:
        return None
    return None


def points_to_atoms(
    coords: np.ndarray,
    features: Mapping[str, Any] | Any | None,
    axis_labels: Sequence[str] | None = None,
) -> Atoms:
    """Atoms from napari-style point coordinates (``(z, y, x)`` or ``(y, x)``, Å) and features.

    ``features`` needs a ``label`` column; ``confidence`` defaults to 1 (atoms
    placed by hand).
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(len(coords), -1) if len(coords) else np.zeros((0, 3))
    n, d = coords.shape
    if d < 2:
        raise ValueError(f"points need at least (y, x) coordinates, got {d} dimension(s)")
    labels = _column(features, "label")
    if labels is None:
        labels = _column(features, "species")
    if labels is None:
        if n:
            raise ValueError("the points have no 'label' feature (O, Na, K, H_up, H_flat, H_down)")
        labels = np.array([], dtype=str)
    labels = np.asarray([str(v) for v in labels])
    bad = sorted(set(labels) - set(LABELS))
    if bad:
        raise ValueError(f"unknown atom label(s) {bad}; expected one of {list(LABELS)}")
    conf = _column(features, "confidence")
    conf = np.ones(n) if conf is None else np.nan_to_num(np.asarray(conf, dtype=np.float64), nan=1.0)
    x, y = coords[:, -1], coords[:, -2]
    z = coords[:, -3] if d >= 3 else np.zeros(n)
    atoms = Atoms(symbols=[ELEMENT[lab] for lab in labels], positions=np.column_stack([x, y, z]))
    atoms.new_array("label", labels.astype("<U6"))
    atoms.new_array("confidence", conf.astype(np.float64))
    return atoms


def atoms_to_points(atoms: Atoms) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(z, y, x)`` coordinates and ``label``/``confidence`` features for a napari Points layer."""
    pos = atoms.get_positions()
    coords = pos[:, ::-1].copy()
    labels = atoms.arrays.get("label")
    if labels is None:
        labels = np.array(atoms.get_chemical_symbols())
    conf = atoms.arrays.get("confidence", np.ones(len(atoms)))
    return coords, {"label": np.asarray(labels).astype(str), "confidence": np.asarray(conf, dtype=float)}


def write_xyz(atoms: Atoms, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write extended XYZ with ``label`` and ``confidence`` columns (positions in Å)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".xyz", dir=path.parent)
    os.close(fd)
    try:
        from ase.io import write

        columns = ["symbols", "positions"] + [c for c in ("label", "confidence") if c in atoms.arrays]
        write(tmp, atoms, format="extxyz", columns=columns)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_xyz(path: str | Path) -> Atoms:
    """Read an (extended) XYZ file; atoms without a ``label`` get their element as label."""
    from ase.io import read

    path = Path(path)
    try:
        atoms = read(path, format="extxyz")
    except FileNotFoundError:
        raise CorruptFileError(path, "file not found") from None
    except Exception as exc:  # ase raises many kinds of errors on bad files
        raise CorruptFileError(path, f"unreadable XYZ ({type(exc).__name__}: {exc})") from None
    if "label" not in atoms.arrays:
        atoms.new_array("label", np.array(atoms.get_chemical_symbols(), dtype="<U6"))
    if "confidence" not in atoms.arrays:
        atoms.new_array("confidence", np.ones(len(atoms)))
    return atoms


__all__ = ["LABELS", "ELEMENT", "AFMFileError", "points_to_atoms", "atoms_to_points", "write_xyz", "read_xyz"]
