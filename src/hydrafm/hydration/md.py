"""The MD teacher: water on a frozen CaCO3 slab with the Raiteri et al. 2015 force field (OpenMM).

Force field (J. Phys. Chem. C 119, 24447 (2015); parameters as in the GPTA manual's
LAMMPS block, converted to OpenMM units; see ../shared/reference/hydration-physics.md):

- charges Ca +2, C +1.123285, O(carbonate) −1.041095, O(water) −0.82, H +0.41, PME with a
  9 Å real-space cut-off, all intramolecular 1-2 and 1-3 pairs excluded;
- water: flexible SPC/Fw (O–H 1.012 Å, k 443 157 kJ mol⁻¹ nm⁻²; H–O–H 113.24°,
  317.57 kJ mol⁻¹ rad⁻²), O–O Lennard-Jones ε 0.650311 kJ/mol, σ 3.165492 Å, plain
  9 Å cut-off with the long-range correction;
- slab–water: Buckingham O(w)–O(c), H–O(c), Lennard-Jones Ca–O(w), all tapered between
  6 and 9 Å with OpenMM's switching polynomial (the same as LAMMPS ``*/mdf``). The 2015
  set has no C–water term. Slab–slab short-range terms are left out: the slab is
  frozen (mass 0), so they only add a constant.

The run is NVT at 300 K (Langevin, 1 ps⁻¹, 1 fs) with the water filling the gap
between the slab and its periodic image. Water-O positions are binned on the hydration
grid (0.2 Å, z from ``z_min`` above the top Ca plane) during production; the density is
counts / (frames × voxel volume) in Å⁻³. Runs checkpoint (positions, velocities,
step, counts) atomically and resume where they stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generator

import numpy as np
from ase import Atoms

from .._atomic import atomic_path
from ..progress import Progress
from ..structures.water_md import initial_waters
from .surfaces import carbonate_groups

__all__ = ["HydrationRun", "RAITERI_2015", "build_system", "run_hydration_md", "HydrationDensity"]

EV = 96.48533212  # kJ/mol per eV

# type indices: 0 Ca, 1 C (carbonate), 2 O (carbonate), 3 O (water), 4 H (water)
CHARGES = (2.0, 1.123285, -1.041095, -0.82, 0.41)
MASSES = (40.08, 12.01, 16.00, 16.00, 1.01)

#: Raiteri 2015 slab–water short-range pairs: (type a, type b) → (kind, parameters in OpenMM units)
RAITERI_2015 = {
    (2, 3): ("buck", 12534.455133 * EV, 0.0202, 0.0),  # O(c)–O(w): A kJ/mol, rho nm, C kJ/mol nm^6
    (2, 4): ("buck", 340.0 * EV, 0.0217, 0.0),  # O(c)–H(w)
    (0, 3): ("lj", 0.00095 * EV, 0.335),  # Ca–O(w): eps kJ/mol, sigma nm
}
WATER_OO_LJ = (0.00674 * EV, 0.3165492)  # eps kJ/mol, sigma nm
SPCFW = {"r_oh": 0.1012, "k_oh": 2 * 22.965 * EV * 100, "theta": 113.24, "k_hoh": 2 * 1.64568 * EV}


@dataclass(frozen=True)
class HydrationRun:
    """One MD teacher run (Å, K, fs, ps)."""

    name: str
    temperature: float = 300.0
    timestep_fs: float = 1.0
    equilibration_ps: float = 20.0
    production_ps: float = 200.0
    sample_every_ps: float = 0.05
    checkpoint_every_ps: float = 5.0
    spacing: float = 0.2
    z_min: float = -1.0
    height: float = 20.0
    water_gap: float = 2.2  # Å kept free between the outermost slab atoms and the first waters
    seed: int = 0
    threads: int = 0  # CPU threads (0: all)


@dataclass
class HydrationDensity:
    """Water-O number density (Å⁻³) on the hydration grid of a slab."""

    density: np.ndarray  # (nx, ny, nz) float32
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # centre of voxel (0, 0, 0); z relative to the top Ca plane
    frames: int
    ps: float

    def profile(self) -> tuple[np.ndarray, np.ndarray]:
        """``(z, ρ(z))``: the density averaged over x and y."""
        z = self.origin[2] + np.arange(self.density.shape[2]) * self.spacing[2]
        return z, self.density.mean(axis=(0, 1))


def _types(slab: Atoms) -> np.ndarray:
    t = np.full(len(slab), -1)
    t[slab.numbers == 20] = 0
    t[slab.numbers == 6] = 1
    t[slab.numbers == 8] = 2
    if np.any(t < 0):
        bad = sorted(set(slab.get_chemical_symbols()[i] for i in np.flatnonzero(t < 0)))
        raise ValueError(f"the slab holds {bad}; the Raiteri 2015 force field here covers Ca, C and O only")
    return t


#: Å per interface subtracted from the gap between the outermost slab atoms of the slab and of its image
#: when counting waters: it makes the water between the two interfaces bulk-like (0.0334 Å⁻³) and takes
#: the dense first layers into account. Calibrated on calcite (10-14): counting with the 2.2 Å
#: placement gap left the bulk 16 % thin (0.028 Å⁻³ at 8-18 Å in a 60 ps run).
EXCLUDED = 0.3


def water_count(slab: Atoms, gap: float = EXCLUDED, density: float = 0.0334) -> int:
    """Waters for bulk density in the space between the slab and its periodic image."""
    lz = float(slab.cell[2, 2])
    free = lz - np.ptp(slab.positions[:, 2]) - 2 * gap
    if lz - np.ptp(slab.positions[:, 2]) < 15.0:
        raise ValueError(f"only {lz - np.ptp(slab.positions[:, 2]):.1f} Å between the slab and its image; give the slab ≥ 15 Å of vacuum")
    return int(round(density * slab.cell[0, 0] * slab.cell[1, 1] * free))


def build_system(slab: Atoms, n_waters: int, rng: np.random.Generator, gap: float = 2.2):
    """OpenMM ``System`` (slab frozen, SPC/Fw water above) and start positions (Å); water starts at atom len(slab)."""
    import openmm

    types = _types(slab)
    lx, ly, lz = (float(v) for v in np.diag(slab.cell.array))
    if min(lx, ly) < 18.0:
        raise ValueError(f"the slab is {lx:.1f} × {ly:.1f} Å; the 9 Å cut-off needs ≥ 18 Å (repeat it)")
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(lx / 10, 0, 0), openmm.Vec3(0, ly / 10, 0),
                                        openmm.Vec3(0, 0, lz / 10))
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    nb.setCutoffDistance(0.9)
    nb.setEwaldErrorTolerance(1e-5)
    nb.setUseDispersionCorrection(True)
    for t in types:
        system.addParticle(0.0)  # frozen
        nb.addParticle(CHARGES[t], 0.1, 0.0)
    for g in carbonate_groups(slab):  # intramolecular 1-2 and 1-3 pairs carry no non-bonded terms
        for i in range(4):
            for j in range(i + 1, 4):
                nb.addException(int(g[i]), int(g[j]), 0.0, 0.1, 0.0)
    first = len(slab)
    bonds = openmm.HarmonicBondForce()
    angles = openmm.HarmonicAngleForce()
    eps, sig = WATER_OO_LJ
    for m in range(n_waters):
        o = system.addParticle(MASSES[3])
        h1 = system.addParticle(MASSES[4])
        h2 = system.addParticle(MASSES[4])
        nb.addParticle(CHARGES[3], sig, eps)
        nb.addParticle(CHARGES[4], 0.1, 0.0)
        nb.addParticle(CHARGES[4], 0.1, 0.0)
        for a, b in ((o, h1), (o, h2), (h1, h2)):
            nb.addException(a, b, 0.0, 0.1, 0.0)
        bonds.addBond(o, h1, SPCFW["r_oh"], SPCFW["k_oh"])
        bonds.addBond(o, h2, SPCFW["r_oh"], SPCFW["k_oh"])
        angles.addAngle(h1, o, h2, math.radians(SPCFW["theta"]), SPCFW["k_hoh"])
    system.addForce(nb)
    system.addForce(bonds)
    system.addForce(angles)
    custom = _slab_water_force(types, n_waters, first)
    for k in range(nb.getNumExceptions()):  # OpenMM wants the same exclusions in every non-bonded force
        i, j, *_ = nb.getExceptionParameters(k)
        custom.addExclusion(i, j)
    system.addForce(custom)

    # waters on a lattice in the gap above the slab (bulk density), random orientations
    water = initial_waters(n_waters, (lx, ly), rng)  # molecules from z ≈ 2 Å up, 3.1 Å layers
    top, bottom = slab.positions[:, 2].max(), slab.positions[:, 2].min()
    lo, hi = top + gap + 1.0, bottom + lz - gap - 1.0  # room for the molecules' H
    z = water[:, 2]
    o_z = z[::3]
    span = o_z.max() - o_z.min()
    scale = min(1.0, (hi - lo) / span) if span > 0 else 1.0  # squeeze the layers into the gap if needed
    centre = np.repeat(o_z, 3)
    water[:, 2] = lo + (centre - o_z.min()) * scale + (z - centre)
    pos = np.concatenate([slab.positions, water])
    return system, pos, first


def _slab_water_force(types: np.ndarray, n_waters: int, first: int):
    import openmm

    n = 5
    A, R, C, E, S = (np.zeros((n, n)) for _ in range(5))
    R[:] = 1.0
    S[:] = 1.0
    for (a, b), par in RAITERI_2015.items():
        for i, j in ((a, b), (b, a)):
            if par[0] == "buck":
                A[i, j], R[i, j], C[i, j] = par[1], par[2], par[3]
            else:
                E[i, j], S[i, j] = par[1], par[2]
    f = openmm.CustomNonbondedForce(
        "A*exp(-r/R) - C/r^6 + 4*E*((S/r)^12 - (S/r)^6);"
        "A=tA(t1,t2); R=tR(t1,t2); C=tC(t1,t2); E=tE(t1,t2); S=tS(t1,t2)")
    for name, table in (("tA", A), ("tR", R), ("tC", C), ("tE", E), ("tS", S)):
        f.addTabulatedFunction(name, openmm.Discrete2DFunction(n, n, table.T.ravel().tolist()))
    f.addPerParticleParameter("t")
    f.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    f.setCutoffDistance(0.9)
    f.setUseSwitchingFunction(True)
    f.setSwitchingDistance(0.6)
    for t in types:
        f.addParticle([float(t)])
    for _ in range(n_waters):
        for t in (3, 4, 4):
            f.addParticle([float(t)])
    f.addInteractionGroup(list(range(first)), list(range(first, first + 3 * n_waters)))
    return f


def run_hydration_md(
    slab: Atoms, run: HydrationRun, checkpoint: str | Path, platform: str | None = None
) -> Generator[Progress, None, HydrationDensity]:
    """Run (or resume) the teacher MD for ``slab``; returns the water-O density on the hydration grid."""
    import openmm
    from openmm import unit

    checkpoint = Path(checkpoint)
    rng = np.random.default_rng(run.seed)
    n_waters = water_count(slab)
    system, pos, first = build_system(slab, n_waters, rng, run.water_gap)
    integrator = openmm.LangevinMiddleIntegrator(run.temperature * unit.kelvin, 1.0 / unit.picosecond,
                                                 run.timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(run.seed + 1)
    plat, props = _platform(platform, run.threads)
    ctx = openmm.Context(system, integrator, plat, props)
    lx, ly = float(slab.cell[0, 0]), float(slab.cell[1, 1])
    nx, ny, nz = round(lx / run.spacing), round(ly / run.spacing), round(run.height / run.spacing)
    dx, dy, dz = lx / nx, ly / ny, run.spacing
    counts = np.zeros((nx, ny, nz), np.float64)
    frames, step = 0, 0
    if checkpoint.exists():
        with np.load(checkpoint) as z:
            if z["n_atoms"] != system.getNumParticles() or str(z["run"]) != _run_key(run, slab):
                raise ValueError(f"{checkpoint}: a checkpoint of a different run; remove it or choose another path")
            ctx.setPositions(z["positions"] / 10)
            ctx.setVelocities(z["velocities"] / 10)
            counts, frames, step = z["counts"].astype(np.float64), int(z["frames"]), int(z["step"])
    else:
        ctx.setPositions(pos / 10)
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 1000)
        ctx.setVelocitiesToTemperature(run.temperature * unit.kelvin, run.seed + 1)
    ps_per_step = run.timestep_fs / 1000.0
    n_eq = round(run.equilibration_ps / ps_per_step)
    n_total = n_eq + round(run.production_ps / ps_per_step)
    every = max(1, round(run.sample_every_ps / ps_per_step))
    ckpt_every = max(every, round(run.checkpoint_every_ps / ps_per_step) // every * every)
    while step < n_total:
        k = every if step >= n_eq else min(every, n_eq - step)
        integrator.step(k)
        step += k
        if step > n_eq:
            o = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
            o = np.asarray(o)[first::3]
            _bin(o, counts, (dx, dy, dz), run.z_min, (lx, ly))
            frames += 1
        if step % ckpt_every == 0 or step >= n_total:
            _save(checkpoint, ctx, run, slab, counts, frames, step)
        stage = "equilibrating" if step <= n_eq else "sampling"
        yield Progress(f"MD {run.name} ({stage})", step, n_total)
    rho = counts / max(frames, 1) / (dx * dy * dz)
    return HydrationDensity(rho.astype(np.float32), (dx, dy, dz), (dx / 2, dy / 2, run.z_min + dz / 2), frames,
                            frames * run.sample_every_ps)


def _bin(o: np.ndarray, counts: np.ndarray, d: tuple[float, float, float], z_min: float,
         cell: tuple[float, float]) -> None:
    ix = np.floor(np.mod(o[:, 0], cell[0]) / d[0]).astype(int) % counts.shape[0]
    iy = np.floor(np.mod(o[:, 1], cell[1]) / d[1]).astype(int) % counts.shape[1]
    iz = np.floor((o[:, 2] - z_min) / d[2]).astype(int)
    ok = (iz >= 0) & (iz < counts.shape[2])
    np.add.at(counts, (ix[ok], iy[ok], iz[ok]), 1.0)


def _run_key(run: HydrationRun, slab: Atoms) -> str:
    d = asdict(run)
    d.pop("threads")
    d.pop("checkpoint_every_ps")
    d.pop("production_ps")  # a run may be extended
    return f"{d}|{len(slab)}|{np.round(np.diag(slab.cell.array), 4).tolist()}"


def _save(path: Path, ctx, run: HydrationRun, slab: Atoms, counts, frames: int, step: int) -> None:
    from openmm import unit

    st = ctx.getState(getPositions=True, getVelocities=True)
    pos = st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    vel = st.getVelocities(asNumpy=True).value_in_unit(unit.angstrom / unit.picosecond)
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(tmp, positions=np.asarray(pos), velocities=np.asarray(vel), counts=counts.astype(np.float32),
                 frames=frames, step=step, n_atoms=len(pos), run=_run_key(run, slab))


def _platform(name: str | None, threads: int):
    import openmm

    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name is None:
        name = "CUDA" if "CUDA" in names else "CPU"
    plat = openmm.Platform.getPlatformByName(name)
    props = {"Threads": str(threads)} if name == "CPU" and threads else {}
    return plat, props
