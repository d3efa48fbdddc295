"""Interfacial water from molecular dynamics: rigid SPC/E water on a fixed LJ metal(111) wall.

The set-up follows Tang et al. (Natl Sci Rev 2023, Methods): a vapour–liquid–solid
slab, periodic in all three directions, rigid SPC/E water, metal atoms fixed in place
and seen by the water only through Lennard-Jones terms (Lorentz–Berthelot mixing).
Au(111) is the hydrophobic wall, Pt(111) (smaller lattice constant) the hydrophilic
one; the wall parameters are in :data:`WALLS` and in ``docs/training-data.md``.

One :class:`MDRun` (wall, number of waters, temperature, seed) is run by
:func:`run_water_md`, a generator that yields :class:`~hydrafm.progress.Progress`
records and returns the sampled frames (water coordinates in Å). OpenMM is imported
lazily: it is only needed to *make* the structure pool, never to use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generator

import numpy as np

from ..progress import Progress

__all__ = ["WALLS", "Wall", "MDRun", "MDFrames", "build_wall", "add_spce_waters", "run_water_md"]

#: SPC/E (Berendsen et al. 1987): rigid, O–H 1.0 Å, H–O–H 109.47°.
SPCE_CHARGE_O = -0.8476
SPCE_CHARGE_H = 0.4238
SPCE_SIGMA_O = 3.166  # Å
SPCE_EPSILON_O = 0.1553  # kcal/mol
SPCE_OH = 1.0  # Å
SPCE_HOH_DEG = 109.47
KCAL = 4.184  # kJ/mol per kcal/mol


@dataclass(frozen=True)
class Wall:
    """A fixed fcc(111) metal wall seen by water through Lennard-Jones terms only."""

    element: str
    lattice_constant: float  # Å, fcc bulk
    sigma: float  # Å, metal LJ sigma (mixed with water O by Lorentz–Berthelot)
    epsilon: float  # kcal/mol
    source: str


#: Au: UFF parameters (Rappé et al. 1992) — a weakly binding, hydrophobic wall.
#: Pt: INTERFACE-FF parameters (Heinz et al. 2008) — a strongly binding, hydrophilic wall.
WALLS: dict[str, Wall] = {
    "Au": Wall("Au", 4.078, 2.934, 0.039, "UFF, Rappé et al. JACS 114, 10024 (1992)"),
    "Pt": Wall("Pt", 3.924, 2.534, 7.80, "INTERFACE FF, Heinz et al. JPCC 112, 17281 (2008)"),
}


@dataclass(frozen=True)
class MDRun:
    """One MD run: which wall, how many waters, at what temperature, for how long."""

    wall: str = "Au"
    n_waters: int = 200
    temperature: float = 260.0  # K
    seed: int = 0
    nx: int = 13  # surface atoms along x (rows along y: ny, even)
    ny: int = 16
    layers: int = 2
    equilibration_ps: float = 20.0
    production_ps: float = 60.0
    frame_every_ps: float = 2.0
    timestep_fs: float = 2.0
    box_height: float = 60.0  # Å; vapour above the film
    threads: int = 2

    @property
    def name(self) -> str:
        return f"{self.wall}_n{self.n_waters}_T{self.temperature:g}_s{self.seed}"


@dataclass
class MDFrames:
    """Sampled frames of one run: water coordinates (O, H, H per molecule) in Å.

    ``positions`` has shape ``(n_frames, 3 * n_waters, 3)``; z is measured from the
    top wall layer. ``cell`` is the lateral periodic cell ``(Lx, Ly)`` in Å.
    """

    run: MDRun
    positions: np.ndarray
    cell: tuple[float, float]
    times_ps: np.ndarray


def build_wall(wall: Wall, nx: int, ny: int, layers: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Atom positions (Å) of an fcc(111) slab in an orthogonal cell; top layer at z = 0.

    Returns ``(positions, (Lx, Ly))``. ``ny`` must be even so that the rectangular
    cell is periodic.
    """
    if ny % 2:
        raise ValueError(f"ny must be even for an orthogonal (111) cell, got {ny}")
    d = wall.lattice_constant / math.sqrt(2.0)  # nearest-neighbour distance
    dy = d * math.sqrt(3.0) / 2.0
    dz = wall.lattice_constant / math.sqrt(3.0)
    lx, ly = nx * d, ny * dy
    out = []
    for layer in range(layers):  # ABC stacking, counted down from the surface
        shift_x = (layer % 3) * d / 2.0
        shift_y = (layer % 3) * dy / 3.0 * 2.0
        for j in range(ny):
            for i in range(nx):
                x = (i * d + (j % 2) * d / 2.0 + shift_x) % lx
                y = (j * dy + shift_y) % ly
                out.append((x, y, -layer * dz))
    return np.asarray(out, dtype=np.float64), (lx, ly)


def _water_geometry() -> np.ndarray:
    """SPC/E molecule in its own frame: O at origin, H in the xz plane."""
    half = math.radians(SPCE_HOH_DEG) / 2.0
    return np.array(
        [
            [0.0, 0.0, 0.0],
            [SPCE_OH * math.sin(half), 0.0, SPCE_OH * math.cos(half)],
            [-SPCE_OH * math.sin(half), 0.0, SPCE_OH * math.cos(half)],
        ]
    )


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation matrix."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def initial_waters(n: int, cell: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Place ``n`` randomly oriented waters on a jittered lattice above z = 0 (Å)."""
    lx, ly = cell
    spacing = 3.1
    nxg, nyg = max(1, int(lx // spacing)), max(1, int(ly // spacing))
    per_layer = nxg * nyg
    slots = rng.permutation(per_layer * (n // per_layer + 1))[:n]
    mol = _water_geometry()
    out = np.empty((n, 3, 3))
    for k, s in enumerate(slots):
        layer, rest = divmod(int(s), per_layer)
        j, i = divmod(rest, nxg)
        centre = np.array([(i + 0.5) * lx / nxg, (j + 0.5) * ly / nyg, 3.0 + layer * 3.1])
        centre[:2] += rng.uniform(-0.3, 0.3, 2)
        out[k] = centre + mol @ random_rotation(rng).T
    return out.reshape(-1, 3)


def add_spce_waters(system, nb, n: int, oh: float = SPCE_OH) -> int:
    """Append ``n`` rigid SPC/E waters (O, H, H) to an OpenMM ``System`` and its ``NonbondedForce``.

    Returns the index of the first water atom. Bonds are constraints (SETTLE);
    intramolecular non-bonded terms are excluded. ``oh``: the O–H length (Å; SPC/E's 1.0 by default).
    """
    first = system.getNumParticles()
    d_hh = 2 * oh * math.sin(math.radians(SPCE_HOH_DEG) / 2)
    for _ in range(n):
        o = system.addParticle(15.9994)
        h1 = system.addParticle(1.008)
        h2 = system.addParticle(1.008)
        nb.addParticle(SPCE_CHARGE_O, SPCE_SIGMA_O / 10, SPCE_EPSILON_O * KCAL)
        nb.addParticle(SPCE_CHARGE_H, 0.1, 0.0)
        nb.addParticle(SPCE_CHARGE_H, 0.1, 0.0)
        for a, b, r in ((o, h1, oh), (o, h2, oh), (h1, h2, d_hh)):
            system.addConstraint(a, b, r / 10)
            nb.addException(a, b, 0.0, 0.1, 0.0)
    return first


def run_water_md(run: MDRun) -> Generator[Progress, None, MDFrames]:
    """Run one wall + water MD and sample frames; yields progress, returns :class:`MDFrames`."""
    import openmm
    from openmm import unit

    wall = WALLS[run.wall]
    rng = np.random.default_rng(run.seed)
    wall_xyz, (lx, ly) = build_wall(wall, run.nx, run.ny, run.layers)
    if min(lx, ly) < 18.0:
        raise ValueError(f"the MD cell {lx:.1f} × {ly:.1f} Å is too small for the 9 Å cut-off (needs ≥ 18 Å)")
    water_xyz = initial_waters(run.n_waters, (lx, ly), rng)
    z_shift = run.layers * wall.lattice_constant / math.sqrt(3.0) + 2.0  # keep the wall inside the box

    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(
        openmm.Vec3(lx / 10, 0, 0), openmm.Vec3(0, ly / 10, 0), openmm.Vec3(0, 0, run.box_height / 10)
    )
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    nb.setCutoffDistance(0.9)
    nb.setUseDispersionCorrection(False)
    for _ in range(len(wall_xyz)):
        system.addParticle(0.0)  # mass 0: fixed
        nb.addParticle(0.0, wall.sigma / 10, wall.epsilon * KCAL)
    first_water = len(wall_xyz)
    add_spce_waters(system, nb, run.n_waters)
    system.addForce(nb)
    # A soft ceiling keeps vapour molecules away from the underside of the periodic wall.
    ceiling = openmm.CustomExternalForce("k*max(0, z-zc)^2")
    ceiling.addGlobalParameter("k", 1000.0)
    ceiling.addGlobalParameter("zc", (run.box_height - 8.0) / 10)
    for m in range(run.n_waters):
        ceiling.addParticle(first_water + 3 * m, [])
    system.addForce(ceiling)

    integrator = openmm.LangevinMiddleIntegrator(
        run.temperature * unit.kelvin, 1.0 / unit.picosecond, run.timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(int(run.seed % 2**31) + 1)
    platform = openmm.Platform.getPlatformByName("CPU")
    sim_ctx = openmm.Context(system, integrator, platform, {"Threads": str(run.threads)})
    xyz = np.concatenate([wall_xyz, water_xyz]) + np.array([0.0, 0.0, z_shift])
    sim_ctx.setPositions(xyz / 10)
    sim_ctx.applyConstraints(1e-6)
    openmm.LocalEnergyMinimizer.minimize(sim_ctx, 10.0, 500)
    sim_ctx.setVelocitiesToTemperature(run.temperature * unit.kelvin, int(run.seed % 2**31) + 1)

    steps_per_frame = max(1, round(run.frame_every_ps * 1000 / run.timestep_fs))
    n_eq = max(0, round(run.equilibration_ps * 1000 / run.timestep_fs))
    n_frames = max(1, round(run.production_ps / run.frame_every_ps))
    total = n_eq + n_frames * steps_per_frame
    done = 0
    chunk = steps_per_frame
    while done < n_eq:
        k = min(chunk, n_eq - done)
        integrator.step(k)
        done += k
        yield Progress(f"MD {run.name} (equilibrating)", done, total)
    frames, times = [], []
    for f in range(n_frames):
        integrator.step(steps_per_frame)
        done += steps_per_frame
        state = sim_ctx.getState(getPositions=True)
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)[first_water:]
        pos = np.asarray(pos, dtype=np.float64) - np.array([0.0, 0.0, z_shift])
        frames.append(_unwrap_molecules(pos, (lx, ly)).astype(np.float32))
        times.append((f + 1) * run.frame_every_ps)
        yield Progress(f"MD {run.name}", done, total)
    return MDFrames(run, np.stack(frames), (lx, ly), np.asarray(times, dtype=np.float32))


def _unwrap_molecules(pos: np.ndarray, cell: tuple[float, float]) -> np.ndarray:
    """Wrap each O into the lateral cell and keep its H atoms next to it (whole molecules)."""
    lat = np.array([cell[0], cell[1], np.inf])
    mol = pos.reshape(-1, 3, 3).copy()
    o = mol[:, 0, :]
    shift = np.zeros_like(o)
    shift[:, :2] = np.floor(o[:, :2] / lat[:2]) * lat[:2]
    mol -= shift[:, None, :]
    for h in (1, 2):
        d = mol[:, h, :2] - mol[:, 0, :2]
        mol[:, h, :2] -= np.round(d / lat[:2]) * lat[:2]
    return mol.reshape(-1, 3)
