"""The MD teacher's densities as network examples: slab channels in, water-O density out.

``scripts/hydration_md.py campaign`` writes one ``<surface>_v<vacancies>_s<seed>_density.npz``
per MD run (float16 density on the MD grid, with what is needed to rebuild the slab).
:func:`load_example` rebuilds the slab, makes its input channels on the network grid
(:func:`~hydrafm.hydration.density.slab_grid`) and resamples the MD density onto the
same grid (periodic in x and y, zero below the MD grid). Defect-free built-in slabs are
repeats of one surface cell, so their density is also averaged over those repeats
(``fold=True``), which divides the counting noise by √repeats at no cost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from .density import DensityModelInfo, slab_input
from .voxels import VoxelGrid

__all__ = ["Example", "load_example", "load_examples", "resample_density", "fold_repeats", "TeacherError",
           "snapshots", "voxel_noise"]


class TeacherError(ValueError):
    """An MD density file that cannot be used (the message names it)."""


@dataclass
class Example:
    """One MD run on the network grid."""

    name: str
    split: str
    slab: Atoms
    channels: np.ndarray  # (3, nx, ny, nz)
    density: np.ndarray  # (nx, ny, nz) Å⁻³; NaN where the MD did not sample (below its grid)
    grid: VoxelGrid
    ps: float


def resample_density(md: np.ndarray, md_spacing, md_origin, grid: VoxelGrid) -> np.ndarray:
    """Trilinear resampling of an MD density onto ``grid`` (x, y periodic; NaN outside the MD's z range)."""
    from scipy.ndimage import map_coordinates

    axes = []
    for k in range(3):
        c = grid.origin[k] + np.arange(grid.shape[k]) * grid.spacing[k]
        axes.append((c - md_origin[k]) / md_spacing[k])
    ix, iy, iz = np.meshgrid(*axes, indexing="ij")
    out = map_coordinates(md.astype(np.float32), [ix, iy, iz], order=1, mode="grid-wrap")
    outside = (axes[2] < -0.5) | (axes[2] > md.shape[2] - 0.5)
    out[:, :, outside] = np.nan
    return out.astype(np.float32)


def fold_repeats(density: np.ndarray, repeats: tuple[int, int]) -> np.ndarray:
    """Average a periodic density over ``repeats`` (nx, ny) copies of its surface cell (Fourier shifts)."""
    rx, ry = repeats
    if rx * ry == 1:
        return density
    nan = np.isnan(density)
    f = np.fft.fft2(np.nan_to_num(density), axes=(0, 1))
    kx = np.fft.fftfreq(density.shape[0])[:, None, None]
    ky = np.fft.fftfreq(density.shape[1])[None, :, None]
    acc = np.zeros_like(f)
    for i in range(rx):
        for j in range(ry):
            sx, sy = i * density.shape[0] / rx, j * density.shape[1] / ry
            acc += f * np.exp(2j * np.pi * (kx * sx + ky * sy))
    out = np.real(np.fft.ifft2(acc / (rx * ry), axes=(0, 1))).astype(np.float32)
    out[nan] = np.nan
    return out


def load_example(path: str | os.PathLike, info: DensityModelInfo | None = None, fold: bool = True) -> Example:
    """One campaign density file as a network example."""
    from .surfaces import build_surface

    path = Path(path)
    try:
        with np.load(path) as z:
            md = z["density"].astype(np.float32)
            spacing, origin = tuple(z["spacing"]), tuple(z["origin"])
            surface, vac, seed = str(z["surface"]), int(z["vacancies"]), int(z["seed"])
            size, layers, ps = tuple(z["size"]), int(z["layers"]), float(z["ps"])
            split = str(z["split"]) if "split" in z else ""
    except Exception as exc:  # noqa: BLE001 - name the file and the reason
        raise TeacherError(f"{path}: not an MD density file ({type(exc).__name__}: {exc})") from None
    slab = build_surface(surface, size, layers, vacuum=25.0, vacancies=vac, seed=seed)
    if abs(slab.cell[0, 0] - spacing[0] * md.shape[0]) > 1e-3 or abs(slab.cell[1, 1] - spacing[1] * md.shape[1]) > 1e-3:
        raise TeacherError(f"{path}: the density's cell does not match the rebuilt {surface} slab")
    channels, grid = slab_input(slab, info)
    rho = resample_density(md, spacing, origin, grid)
    rho[:, :, grid.z() < origin[2] - spacing[2] / 2] = 0.0  # no water below the MD grid (inside the slab)
    if fold and vac == 0:
        rho = fold_repeats(rho, tuple(slab.info.get("repeats", (1, 1))))
    name = path.name.removesuffix("_density.npz")
    return Example(name, split, slab, channels, rho, grid, ps)


def load_examples(folder: str | os.PathLike, info: DensityModelInfo | None = None) -> list[Example]:
    """Every ``*_density.npz`` of a campaign folder (sorted by name)."""
    files = sorted(Path(folder).glob("*_density.npz"))
    if not files:
        raise TeacherError(f"{folder}: no MD densities (*_density.npz); run scripts/hydration_md.py campaign")
    return [load_example(f, info) for f in files]


def snapshots(folder: str | os.PathLike, run: str) -> dict[float, Path]:
    """The saved lengths of one campaign run: ``{ps: <run>_density_<ps>ps.npz}``, shortest first."""
    out = {}
    for p in Path(folder).glob(f"{run}_density_*ps.npz"):
        try:
            out[float(p.stem.split("_")[-1][:-2])] = p
        except ValueError:
            continue
    return dict(sorted(out.items()))


def voxel_noise(first_half: np.ndarray, full: np.ndarray, w: float, keep: np.ndarray) -> float:
    """Counting noise (RMS, Å⁻³) of ``full`` from a snapshot of the same run at fraction ``w`` of its length.

    The rest of the run alone is ``(full − w·first)/(1 − w)``. Variances of independent
    estimates add, so the difference of the two has variance σ²/w + σ²/(1 − w) in units of
    the full run's σ² (with w = 1/2: 4 σ²). RMS rather than MAE: it adds up correctly for
    sparse counts too, and a model's RMSE against the truth is √(RMSE² against the MD − noise²).
    """
    second = (full - w * first_half) / (1 - w)
    diff = (first_half - second)[:, :, keep]
    return float(np.sqrt(np.nanmean(diff**2) / (1 / w + 1 / (1 - w))))
