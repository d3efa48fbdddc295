"""Atoms with HydrAFM labels ↔ extended XYZ (Å), through ase.

Every atom carries a ``label`` (O, Na, K, H_up, H_flat, H_down) and a
``confidence`` (0–1); the element follows from the label. Predicted molecules also
carry ``mol`` (molecule id; −1 = none) and ``shell`` (the ``mol`` of the ion whose
hydration shell the atom is in; −1 = none), written as integer columns. Writes are
atomic (temporary file, then rename) and refuse to replace a file unless asked.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

from .errors import AFMFileError, CorruptFileError

LABELS: tuple[str, ...] = ("O", "Na", "K", "H_up", "H_flat", "H_down")
#: integer per-atom columns of predicted molecules (−1 = none)
GROUP_COLUMNS: tuple[str, ...] = ("mol", "shell")
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
    placed by hand). ``mol`` and ``shell`` columns, when present, are kept (missing
    values become −1). With ``(y, x)`` coordinates the heights come from a ``z`` column
    when there is one (missing values 0), else 0.
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
    zcol = _column(features, "z") if d < 3 else None
    z = coords[:, -3] if d >= 3 else (np.zeros(n) if zcol is None or not n
                                      else np.nan_to_num(np.asarray(zcol, dtype=np.float64), nan=0.0))
    from ase import Atoms

    atoms = Atoms(symbols=[ELEMENT[lab] for lab in labels], positions=np.column_stack([x, y, z]))
    atoms.new_array("label", labels.astype("<U6"))
    atoms.new_array("confidence", conf.astype(np.float64))
    for name in GROUP_COLUMNS:
        col = _column(features, name)
        if col is not None and n:
            atoms.new_array(name, np.nan_to_num(np.asarray(col, dtype=np.float64), nan=-1).astype(int))
    return atoms


def atoms_to_points(atoms: Atoms) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(z, y, x)`` coordinates and ``label``/``confidence``/``mol``/``shell`` features for napari Points.

    ``mol`` and ``shell`` are −1 for atoms without them.
    """
    pos = atoms.get_positions()
    coords = pos[:, ::-1].copy()
    labels = atoms.arrays.get("label")
    if labels is None:
        labels = np.array(atoms.get_chemical_symbols())
    conf = atoms.arrays.get("confidence", np.ones(len(atoms)))
    feats = {"label": np.asarray(labels).astype(str), "confidence": np.asarray(conf, dtype=float)}
    for name in GROUP_COLUMNS:
        feats[name] = np.asarray(atoms.arrays.get(name, np.full(len(atoms), -1)), dtype=int)
    return coords, feats


def write_xyz(atoms: Atoms, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write extended XYZ with ``label``, ``confidence`` (and ``mol``, ``shell``, Refine's ``fit``) columns (Å)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".xyz", dir=path.parent)
    os.close(fd)
    try:
        from ase.io import write

        columns = ["symbols", "positions"] + [c for c in ("label", "confidence", *GROUP_COLUMNS, "fit")
                                              if c in atoms.arrays]
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


def read_structure(path: str | Path) -> Atoms:
    """Read a structure file in any format ase knows (.xyz, .cif, POSCAR, .pdb, ...).

    Raises
    ------
    CorruptFileError
        Naming the file and the reason: missing, a folder, empty, a format ase does not know, or
        the parser's own message; also when the file holds no atoms.
    """
    from ase.io import read
    from ase.io.formats import UnknownFileTypeError

    path = Path(path)
    if not path.exists():
        raise CorruptFileError(path, "file not found")
    if path.is_dir():
        raise CorruptFileError(path, "is a folder, not a structure file")
    if path.stat().st_size == 0:
        raise CorruptFileError(path, "the file is empty")
    try:
        atoms = read(path)
    except StopIteration:  # ase's parsers say "no frame" this way
        raise CorruptFileError(path, "no structure found in the file") from None
    except UnknownFileTypeError as exc:
        reason = f"not a structure format ase recognises ({exc}); try .xyz, .cif or POSCAR"
        raise CorruptFileError(path, reason) from None
    except Exception as exc:  # noqa: BLE001 - ase raises many kinds of errors on bad files
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise CorruptFileError(path, f"unreadable structure ({detail})") from None
    if len(atoms) == 0:
        raise CorruptFileError(path, "the structure has no atoms")
    return atoms


__all__ = ["LABELS", "ELEMENT", "GROUP_COLUMNS", "AFMFileError", "points_to_atoms", "atoms_to_points",
           "write_xyz", "read_xyz", "read_structure"]
