"""Slab atoms → 3-channel voxel densities (C, O, Ca), and tiling of windows over large slabs.

Ranawat et al. feed the network Gaussian-smeared densities of the surface's C, O and
Ca on a 0.2 Å grid over 10 × 10 × 20 Å windows. :func:`slab_channels` makes them
for a whole periodic slab (x and y periodic, z from ``z_min`` to ``z_min + height``
relative to the top Ca plane at z = 0); each atom's Gaussian integrates to 1, so a
channel is a number density in Å⁻³. :func:`tile_windows` and :func:`merge_windows`
cut a large grid into overlapping windows and put predictions back together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

__all__ = ["VoxelGrid", "slab_channels", "slab_distances", "tile_windows", "merge_windows", "CHANNELS"]

CHANNELS = ("C", "O", "Ca")
_Z = {"C": 6, "O": 8, "Ca": 20}


@dataclass(frozen=True)
class VoxelGrid:
    """The grid of a slab's voxels: ``shape`` (nx, ny, nz), ``spacing`` Å, ``origin`` Å of voxel (0, 0, 0)'s centre."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def z(self) -> np.ndarray:
        """Heights of the voxel centres (Å above the top Ca plane)."""
        return self.origin[2] + np.arange(self.shape[2]) * self.spacing[2]


def slab_channels(
    slab: Atoms,
    spacing: float = 0.2,
    z_min: float = -3.0,
    height: float = 20.0,
    sigma: float = 0.3,
    shape_xy: tuple[int, int] | None = None,
) -> tuple[np.ndarray, VoxelGrid]:
    """``(channels (3, nx, ny, nz) Å⁻³, grid)`` of the slab's C, O and Ca atoms.

    The slab must have z = 0 at its top Ca plane (as :mod:`~hydrafm.hydration.surfaces`
    makes it) and an orthogonal cell; x and y are periodic over the cell, and the grid
    spacing in x and y is adjusted so a whole number of voxels fits the cell (or
    ``shape_xy`` voxels, when given).
    """
    lx, ly = float(slab.cell[0, 0]), float(slab.cell[1, 1])
    if lx <= 0 or ly <= 0 or abs(slab.cell[0, 1]) > 1e-6 or abs(slab.cell[1, 0]) > 1e-6:
        raise ValueError("the slab needs an orthogonal cell with x and y vectors along the axes")
    nx, ny = shape_xy or (max(1, round(lx / spacing)), max(1, round(ly / spacing)))
    nz = int(round(height / spacing))
    dx, dy, dz = lx / nx, ly / ny, spacing
    grid = VoxelGrid((nx, ny, nz), (dx, dy, dz), (dx / 2, dy / 2, z_min + dz / 2))
    out = np.zeros((len(CHANNELS), nx, ny, nz), np.float32)
    reach = 3.0 * sigma
    norm = 1.0 / ((2 * np.pi) ** 1.5 * sigma**3)
    for c, name in enumerate(CHANNELS):
        for p in slab.positions[slab.numbers == _Z[name]]:
            iz0 = int(np.floor((p[2] - reach - grid.origin[2]) / dz))
            iz1 = int(np.ceil((p[2] + reach - grid.origin[2]) / dz)) + 1
            iz = np.arange(max(0, iz0), min(nz, iz1))
            if len(iz) == 0:
                continue
            ix = np.arange(int(np.floor((p[0] - reach) / dx)) - 1, int(np.ceil((p[0] + reach) / dx)) + 1)
            iy = np.arange(int(np.floor((p[1] - reach) / dy)) - 1, int(np.ceil((p[1] + reach) / dy)) + 1)
            gx = np.exp(-((grid.origin[0] + ix * dx - p[0]) ** 2) / (2 * sigma**2))
            gy = np.exp(-((grid.origin[1] + iy * dy - p[1]) ** 2) / (2 * sigma**2))
            gz = np.exp(-((grid.origin[2] + iz * dz - p[2]) ** 2) / (2 * sigma**2))
            block = norm * gx[:, None, None] * gy[None, :, None] * gz[None, None, :]
            np.add.at(out[c], (np.mod(ix, nx)[:, None, None], np.mod(iy, ny)[None, :, None], iz[None, None, :]),
                      block.astype(np.float32))
    return out, grid


def slab_distances(slab: Atoms, grid: VoxelGrid, cap: float = 3.0, below: float = 1.5) -> np.ndarray:
    """Distance (Å) from every voxel centre to the nearest C, O and Ca atom: ``(3, nx, ny, nz)``, capped.

    Periodic in x and y (the cell is ``grid.shape[:2] × grid.spacing[:2]``). Voxels farther
    than ``cap`` from every atom of an element hold ``cap``. Atoms more than ``below`` Å under
    the grid are left out (they are nearest only to voxels deep inside the slab). Each
    periodic image of an atom updates only the box of voxels within ``cap`` of it.
    """
    n = np.array(grid.shape)
    d, o = np.asarray(grid.spacing, float), np.asarray(grid.origin, float)
    cell = n[:2] * d[:2]
    r2 = np.full((len(CHANNELS), *n), cap**2, np.float32)
    reach = np.ceil(cap / cell).astype(int)
    shifts = np.array([(i * cell[0], j * cell[1], 0.0) for i in range(-reach[0], reach[0] + 1)
                       for j in range(-reach[1], reach[1] + 1)])
    top = o[2] + (n[2] - 0.5) * d[2] + cap
    for c, name in enumerate(CHANNELS):
        pos = slab.positions[slab.numbers == _Z[name]]
        pos = pos[(pos[:, 2] > o[2] - d[2] / 2 - below) & (pos[:, 2] < top)]
        pos[:, :2] = np.mod(pos[:, :2], cell)
        images = (pos[:, None, :] + shifts[None]).reshape(-1, 3)
        lo = np.maximum(np.floor((images - cap - o) / d).astype(int), 0)
        hi = np.minimum(np.ceil((images + cap - o) / d).astype(int) + 1, n)
        inside = np.all(hi > lo, axis=1)
        for p, a, b in zip(images[inside], lo[inside], hi[inside]):
            dx2, dy2, dz2 = ((o[k] + np.arange(a[k], b[k], dtype=np.float32) * d[k] - p[k]) ** 2 for k in range(3))
            view = r2[c, a[0]:b[0], a[1]:b[1], a[2]:b[2]]
            np.minimum(view, (dx2[:, None] + dy2[None, :])[:, :, None] + dz2, out=view)
    return np.sqrt(r2)


def tile_windows(shape_xy: tuple[int, int], window: int, overlap: int) -> list[tuple[int, int]]:
    """Lower corners ``(ix, iy)`` of ``window``-voxel windows covering a periodic ``shape_xy`` grid."""
    step = max(1, window - overlap)
    corners = []
    for n in shape_xy:
        k = max(1, int(np.ceil((n - overlap) / step))) if n > window else 1
        corners.append([(i * step) % n for i in range(k)] if n > window else [0])
    return [(x, y) for x in corners[0] for y in corners[1]]


def merge_windows(
    windows: list[np.ndarray], corners: list[tuple[int, int]], shape: tuple[int, int, int]
) -> np.ndarray:
    """Average overlapping windows ``(wx, wy, nz)`` back onto a periodic ``shape`` grid."""
    acc = np.zeros(shape, np.float64)
    count = np.zeros(shape[:2], np.float64)
    for w, (x, y) in zip(windows, corners):
        ix = np.mod(np.arange(x, x + w.shape[0]), shape[0])
        iy = np.mod(np.arange(y, y + w.shape[1]), shape[1])
        acc[np.ix_(ix, iy)] += w
        count[np.ix_(ix, iy)] += 1
    if np.any(count == 0):
        raise ValueError("the windows do not cover the grid")
    return (acc / count[:, :, None]).astype(np.float32)
