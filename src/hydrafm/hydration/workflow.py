"""What the Hydration widget and ``hydrafm hydrate`` share: pick a slab, predict, write a cube.

``slab_from_spec("calcite-104", vacancies=2)`` builds a built-in surface;
``slab_from_spec("my_slab.cif")`` loads a user slab (checked, z = 0 at its top Ca plane).
:func:`write_density_cube` writes the water-O number density (Å⁻³) as a Gaussian cube
over the slab's cell, in the slab's own coordinates (a user file's original z).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms

from .._atomic import atomic_path
from .md import HydrationDensity
from .surfaces import SURFACES, build_surface, load_surface

__all__ = ["slab_from_spec", "write_density_cube", "density_profile_peaks"]


def slab_from_spec(spec: str | os.PathLike, *, vacancies: int = 0, seed: int = 0,
                   size: tuple[float, float] = (25.0, 25.0), layers: int = 3) -> Atoms:
    """A built-in surface name (see :data:`SURFACES`) or a structure file ase can read."""
    if str(spec) in SURFACES:
        return build_surface(str(spec), size, layers, vacuum=25.0, vacancies=vacancies, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec}: neither a built-in surface ({', '.join(SURFACES)}) nor a file")
    slab = load_surface(path)
    if vacancies:
        from .surfaces import add_vacancies

        slab = add_vacancies(slab, vacancies, seed)
    return slab


def write_density_cube(path: str | os.PathLike, slab: Atoms, density: HydrationDensity,
                       overwrite: bool = False) -> Path:
    """Write ``density`` as a Gaussian cube (Å⁻³, grid over the cell, the slab's atoms in it); atomic."""
    from ase.io.cube import write_cube

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; choose another name or allow overwriting")
    shift = float(slab.info.get("z_shift", 0.0))
    atoms = slab.copy()
    atoms.positions[:, 2] -= shift
    nx, ny, nz = density.density.shape
    atoms.set_cell(np.diag([density.spacing[0] * nx, density.spacing[1] * ny, density.spacing[2] * nz]))
    origin = np.array(density.origin, float)
    origin[2] -= shift
    with atomic_path(path, ".cube") as tmp, open(tmp, "w") as fh:
        write_cube(fh, atoms, data=density.density.astype(np.float64), origin=origin,
                   comment="HydrAFM water-O number density (1/Angstrom^3)")
    return path


def density_profile_peaks(density: HydrationDensity, n: int = 2) -> list[float]:
    """Heights (Å above the top Ca plane) of the first ``n`` maxima of ρ(z)."""
    from .train import profile_peaks

    z, rho = density.profile()
    return profile_peaks(z, rho, n)
