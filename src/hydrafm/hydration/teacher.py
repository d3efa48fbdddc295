"""The MD teacher's densities as network examples: slab channels in, water-O density out.

``scripts/hydration_md.py campaign`` writes one ``<surface>_v<vacancies>_s<seed>_density.npz``
per MD run (float16 density on the MD grid, with what is needed to rebuild the slab).
:func:`load_example` rebuilds the slab, makes its input channels on the network grid
(:func:`~hydrafm.hydration.density.slab_grid`) and resamples the MD density onto the
same grid (periodic in x and y, zero below the MD grid). With ``fold=True`` the density
is also averaged over every lateral symmetry of the slab that holds exactly on its atoms
(:func:`~hydrafm.hydration.surfaces.lateral_symmetries`: the repeats of the surface cell,
and the glide or mirror planes of the surface): a defect-free built-in slab of 12 surface
cells with a glide plane gets 24 copies of every voxel, which divides the counting
noise by about √24 at no cost; a slab with vacancies keeps the operations that still hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from .density import DensityModelInfo, slab_input
from .model import CLOSEST_APPROACH
from .surfaces import LateralSymmetry, lateral_symmetries
from .voxels import VoxelGrid

__all__ = ["closest_approach", "excluded_region", "Example", "load_example", "load_examples", "resample_density", "fold_repeats", "fold_symmetries",
           "TeacherError", "snapshots", "voxel_noise"]


#: Å: the closest any water O came to a C, O and Ca atom in the teacher campaign (all seven runs,
#: 36-40 ps each; :func:`closest_approach`): no water is found nearer in the MD
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
    """An MD density on ``grid``: each voxel takes the MD voxel nearest its centre (x, y periodic; NaN outside z).

    Nearest, not trilinear: the grids differ by ~1 % in x and y (and agree in z), and a
    count histogram re-indexed this way keeps its zeros where the MD had none, instead of
    smearing density 0.2 Å into the excluded region next to the slab atoms.
    """
    from scipy.ndimage import map_coordinates

    axes = []
    for k in range(3):
        c = grid.origin[k] + np.arange(grid.shape[k]) * grid.spacing[k]
        axes.append((c - md_origin[k]) / md_spacing[k])
    ix, iy, iz = np.meshgrid(*axes, indexing="ij")
    out = map_coordinates(md.astype(np.float32), [ix, iy, iz], order=0, mode="grid-wrap")
    outside = (axes[2] < -0.5) | (axes[2] > md.shape[2] - 0.5)
    out[:, :, outside] = np.nan
    return out.astype(np.float32)


def fold_symmetries(density: np.ndarray, ops: list[LateralSymmetry], cell: tuple[float, float]) -> np.ndarray:
    """Average a periodic density ``(nx, ny, nz)`` over lateral symmetry operations of its slab.

    Each operation ``(x, y) → (sx·x + tx, sy·y + ty)`` is applied on the grid: a sign flip
    reverses the voxel order (voxel centres sit at (i + ½)·spacing, so the mirror image of
    a centre is a centre), a translation by a whole number of voxels is a roll, and the
    fractional rest is linear interpolation between the two nearest rolls (no Fourier
    ringing: zeros stay zeros and nothing turns negative). On the built-in slabs most
    translations are whole voxels. The operations must form a group (as
    :func:`~hydrafm.hydration.surfaces.lateral_symmetries` returns them); NaN voxels (not
    sampled) stay NaN.
    """
    if len(ops) <= 1:
        return density
    nan = np.isnan(density)
    clean = np.nan_to_num(density).astype(np.float64)
    step = np.asarray(cell, float) / np.array(density.shape[:2])
    acc = np.zeros(clean.shape, np.float64)
    for op in ops:
        # ρ(s·x + t): flip the axis when s = −1, then read the value t/s further along it
        img = clean[:: op.sx, :: op.sy]
        for axis, (s, t) in enumerate(((op.sx, op.tx), (op.sy, op.ty))):
            v = s * t / step[axis]
            whole = int(np.floor(v + 1e-6))
            frac = v - whole if v - whole > 1e-6 else 0.0
            img = np.roll(img, -whole, axis=axis)
            if frac:
                img = (1 - frac) * img + frac * np.roll(img, -1, axis=axis)
        acc += img
    out = (acc / len(ops)).astype(np.float32)
    out[nan] = np.nan
    return out


def fold_repeats(density: np.ndarray, repeats: tuple[int, int]) -> np.ndarray:
    """Average a periodic density over ``repeats`` (nx, ny) copies of its surface cell (Fourier shifts)."""
    rx, ry = repeats
    cell = (float(density.shape[0]), float(density.shape[1]))  # in voxels
    ops = [LateralSymmetry(1, 1, i * cell[0] / rx, j * cell[1] / ry) for i in range(rx) for j in range(ry)]
    return fold_symmetries(density, ops, cell)


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
    if fold:  # average over every exact lateral symmetry of the slab (repeats, glides, mirrors)
        rho = fold_symmetries(rho, lateral_symmetries(slab), (float(slab.cell[0, 0]), float(slab.cell[1, 1])))
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


def closest_approach(examples: list[Example]) -> dict[str, float]:
    """The smallest distance (Å) from a voxel with water to the nearest C, O and Ca atom, over ``examples``.

    Measured on the network grid (voxel centres), so it is the distance the gate sees.
    """
    from .voxels import CHANNELS, slab_distances

    out = dict.fromkeys(CHANNELS, np.inf)
    for ex in examples:
        d = slab_distances(ex.slab, ex.grid)
        wet = np.nan_to_num(ex.density) > 0
        for c, name in enumerate(CHANNELS):
            out[name] = min(out[name], float(d[c][wet].min()))
    return {k: round(v, 2) for k, v in out.items()}


def excluded_region(slab: Atoms, grid: VoxelGrid,
                    radii: tuple[float, float, float] = CLOSEST_APPROACH) -> np.ndarray:
    """Voxels where the MD has no water: nearer a C, O or Ca atom than ``radii``, or under such a voxel.

    ``radii`` default to the campaign's closest approaches
    (:data:`~hydrafm.hydration.model.CLOSEST_APPROACH`). The second part is the inside of
    the slab: every voxel below one that is too close to an atom, in its column (x, y); a
    vacancy opens its column down to the next layer. In the seven campaign runs this
    region holds less than 3 × 10⁻⁷ of the water within 6 Å of the surface.
    """
    from .voxels import slab_distances

    d = slab_distances(slab, grid)
    near = np.any(d < np.asarray(radii, np.float32)[:, None, None, None], axis=0)
    return np.flip(np.maximum.accumulate(np.flip(near, 2), axis=2), 2)
