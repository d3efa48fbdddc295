"""Structure pools: many small structures (windows of water, hydrates) in one compact file.

A pool is a compressed ``.npz`` holding every structure's atoms back to back:

* ``positions`` int16 ``(n_atoms, 3)`` in units of 0.01 Å, relative to the
  window's lower corner (x, y in the window, z above the window's bottom);
* ``numbers`` uint8 ``(n_atoms,)`` atomic numbers (1 H, 8 O, 11 Na, 19 K);
* ``offsets`` int64 ``(n_structures + 1,)``: structure ``i`` is atoms
  ``offsets[i]:offsets[i+1]``; waters are stored O, H, H;
* ``window`` float ``(3,)``: window size in Å;
* per-structure columns ``info_<name>`` (e.g. surface, temperature, n_waters);
* ``attrs_json``: provenance (the command and parameters that made the pool).

About 0.3 kB per water window after compression.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .._atomic import atomic_path

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["StructurePool", "POSITION_UNIT", "BadStructureError", "check_structure"]

POSITION_UNIT = 0.01  # Å per int16 step
KNOWN_NUMBERS = {1: "H", 8: "O", 11: "Na", 19: "K"}


class BadStructureError(ValueError):
    """A structure that cannot be simulated: atoms outside the window, unknown elements, overlaps."""


def check_structure(
    atoms: Atoms,
    window: Sequence[float] | None = None,
    *,
    margin: float = 1.5,
    min_distance: float = 0.8,
    name: str = "structure",
) -> None:
    """Raise :class:`BadStructureError` with a reason if ``atoms`` cannot be simulated.

    Checks: only H, O, Na, K; atoms inside the lateral window (within ``margin`` Å,
    which lets H atoms of edge molecules stick out); no two atoms closer than
    ``min_distance`` Å (covalent O–H bonds are ~1 Å).
    """
    check_structure_arrays(atoms.get_positions(), atoms.get_atomic_numbers(), window, margin=margin,
                           min_distance=min_distance, name=name)


def check_structure_arrays(
    positions: np.ndarray,
    numbers: Sequence[int],
    window: Sequence[float] | None = None,
    *,
    margin: float = 1.5,
    min_distance: float = 0.8,
    name: str = "structure",
) -> None:
    """:func:`check_structure` on ``(positions Å, atomic numbers)`` arrays (no ase needed)."""
    numbers = np.asarray(numbers).reshape(-1)
    bad = sorted({int(z) for z in numbers} - set(KNOWN_NUMBERS))
    if bad:
        try:
            from ase.data import chemical_symbols

            names = [chemical_symbols[z] for z in bad]
        except ImportError:  # a bare node without ase
            names = bad
        raise BadStructureError(
            f"{name}: unknown element(s) {names}; HydrAFM simulates H, O, Na, K"
        )
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(pos) == 0:
        raise BadStructureError(f"{name}: no atoms")
    if not np.all(np.isfinite(pos)):
        raise BadStructureError(f"{name}: non-finite atom positions")
    if window is not None:
        wx, wy = float(window[0]), float(window[1])
        out = (pos[:, 0] < -margin) | (pos[:, 0] > wx + margin) | (pos[:, 1] < -margin) | (pos[:, 1] > wy + margin)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise BadStructureError(
                f"{name}: {int(out.sum())} atom(s) outside the {wx:g} × {wy:g} Å window, "
                f"e.g. atom {i} at ({pos[i, 0]:.2f}, {pos[i, 1]:.2f}) Å"
            )
    if len(pos) > 1:
        from scipy.spatial import cKDTree

        pairs = cKDTree(pos).query_pairs(min_distance, output_type="ndarray")
        if len(pairs):
            i, j = (int(v) for v in pairs[0])
            d = float(np.linalg.norm(pos[i] - pos[j]))
            raise BadStructureError(
                f"{name}: {len(pairs)} pair(s) of overlapping atoms closer than {min_distance} Å, "
                f"e.g. atoms {i} and {j} at {d:.2f} Å"
            )


@dataclass
class StructurePool:
    """Many small structures in one compact array set; ``pool[i]`` is an ``ase.Atoms``."""

    positions: np.ndarray
    numbers: np.ndarray
    offsets: np.ndarray
    window: tuple[float, float, float]
    info: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    # -------------------------------------------------------------- building
    @classmethod
    def from_structures(
        cls,
        structures: Iterable[tuple[np.ndarray, np.ndarray, dict[str, Any]]],
        window: Sequence[float],
        attrs: dict[str, Any] | None = None,
    ) -> "StructurePool":
        """Build from ``(positions Å, atomic numbers, info)`` triples."""
        pos_list, num_list, infos = [], [], []
        offsets = [0]
        for pos, numbers, info in structures:
            pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
            q = np.round(pos / POSITION_UNIT)
            if np.abs(q).max(initial=0) > np.iinfo(np.int16).max:
                raise BadStructureError(f"positions beyond ±{32767 * POSITION_UNIT:g} Å cannot be pooled")
            pos_list.append(q.astype(np.int16))
            num_list.append(np.asarray(numbers, dtype=np.uint8).reshape(-1))
            offsets.append(offsets[-1] + len(pos))
            infos.append(info)
        keys = sorted({k for info in infos for k in info})
        info_cols = {k: np.asarray([info.get(k, np.nan) for info in infos]) for k in keys}
        return cls(
            positions=np.concatenate(pos_list) if pos_list else np.zeros((0, 3), np.int16),
            numbers=np.concatenate(num_list) if num_list else np.zeros(0, np.uint8),
            offsets=np.asarray(offsets, dtype=np.int64),
            window=tuple(float(v) for v in window),  # type: ignore[arg-type]
            info=info_cols,
            attrs=dict(attrs or {}),
        )

    @classmethod
    def concatenate(cls, pools: Sequence["StructurePool"], attrs: dict[str, Any] | None = None) -> "StructurePool":
        """One pool from several with the same window."""
        if not pools:
            raise ValueError("no pools to concatenate")
        window = pools[0].window
        for p in pools[1:]:
            if not np.allclose(p.window, window):
                raise ValueError(f"pool windows differ: {p.window} vs {window}")
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in pools:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        keys = sorted({k for p in pools for k in p.info})
        info = {
            k: np.concatenate([p.info.get(k, np.full(len(p), np.nan)) for p in pools]) for k in keys
        }
        return cls(
            np.concatenate([p.positions for p in pools]),
            np.concatenate([p.numbers for p in pools]),
            np.concatenate(offsets),
            window,
            info,
            dict(attrs or pools[0].attrs),
        )

    # ------------------------------------------------------------ accessing
    def __len__(self) -> int:
        return len(self.offsets) - 1

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(positions Å float64 (n, 3), atomic numbers (n,))`` of structure ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"structure {i} out of range for a pool of {len(self)}")
        i %= len(self)
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.positions[a:b].astype(np.float64) * POSITION_UNIT, self.numbers[a:b].astype(int)

    def __getitem__(self, i: int) -> "Atoms":
        from ase import Atoms

        pos, numbers = self.arrays(i)
        atoms = Atoms(numbers=numbers, positions=pos, cell=list(self.window), pbc=False)
        atoms.info.update({k: _py(v[i]) for k, v in self.info.items()})
        atoms.info["pool_index"] = int(i % len(self))
        return atoms

    def subset(self, indices: Sequence[int]) -> "StructurePool":
        """A new pool with the chosen structures, in that order."""
        items = []
        for i in indices:
            pos, numbers = self.arrays(int(i))
            items.append((pos, numbers, {k: v[int(i)] for k, v in self.info.items()}))
        return StructurePool.from_structures(items, self.window, self.attrs)

    # ------------------------------------------------------------ file I/O
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the pool as a compressed ``.npz`` (atomic; refuses to overwrite unless asked)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "positions": self.positions,
            "numbers": self.numbers,
            "offsets": self.offsets,
            "window": np.asarray(self.window, dtype=np.float64),
            "attrs_json": np.asarray(json.dumps(self.attrs, default=str)),
        }
        arrays.update({f"info_{k}": v for k, v in self.info.items()})
        with atomic_path(path, ".npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StructurePool":
        """Read a pool written by :meth:`save`; a damaged file raises ``ValueError`` naming it."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                positions, numbers, offsets = z["positions"], z["numbers"], z["offsets"]
                window = tuple(float(v) for v in z["window"])
                attrs = json.loads(str(z["attrs_json"])) if "attrs_json" in z else {}
                info = {k[5:]: z[k] for k in z.files if k.startswith("info_")}
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - report which file and why
            raise ValueError(f"{path}: not a HydrAFM structure pool ({exc})") from exc
        n = len(offsets) - 1
        if (
            positions.ndim != 2
            or positions.shape[1] != 3
            or len(numbers) != len(positions)
            or offsets[0] != 0
            or offsets[-1] != len(positions)
            or np.any(np.diff(offsets) < 0)
            or any(len(v) != n for v in info.values())
        ):
            raise ValueError(f"{path}: inconsistent structure pool arrays")
        return cls(positions, numbers, offsets, window, info, attrs)  # type: ignore[arg-type]


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
