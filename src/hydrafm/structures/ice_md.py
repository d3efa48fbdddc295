"""Ice-like windows relaxed by molecular dynamics: the built networks annealed and quenched on a substrate.

The windows of :mod:`hydrafm.structures.ice` are built, not simulated: ideal O–O distances, H on the
O···O lines, no thermal history. Real low-temperature scans show networks that formed at 100–160 K and
were cooled: bonds of varied length, bent H bonds, buckling set by the substrate. Here each built window
is put on a fixed substrate (the fcc(111) walls of :mod:`hydrafm.structures.water_md`, a Cu(111) wall, or
an ionic NaCl(001) surface), its waters made rigid SPC/E-like molecules, annealed at a temperature
drawn from :attr:`Anneal.hot` for :attr:`Anneal.hot_ps`, cooled to :attr:`Anneal.cold` and
energy-minimised (a quench). The window is a cut of a larger network, so the O within
:attr:`Anneal.edge` Å of its sides are held laterally near their places by springs (the network goes on
outside); islands' own edges inside the window are free.

OpenMM is imported lazily: it is needed to make the pool (``python scripts/make_ice_pool.py --annealed``),
never to use it.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..progress import Progress
from .ice import THICKNESS, WINDOW, family_windows, geometry_problems
from .pool import POSITION_UNIT, StructurePool
from .water_md import KCAL, SPCE_HOH_DEG, WALLS, Wall, add_spce_waters, build_wall

__all__ = ["SUBSTRATE_OF", "Anneal", "anneal_window", "make_ice_md_pool"]

#: Cu: INTERFACE FF (Heinz et al. JPCC 112, 17281 (2008)), like Pt in :data:`~hydrafm.structures.water_md.WALLS`
CU_WALL = Wall("Cu", 3.615, 2.330, 4.72, "INTERFACE FF, Heinz et al. JPCC 112, 17281 (2008)")
#: NaCl(001): a = 5.64 Å, ±1 e; Joung & Cheatham (JPCB 112, 9020 (2008)) ion parameters for SPC/E:
#: (charge e, sigma Å, epsilon kcal/mol)
NACL_A = 5.64
NACL_IONS = {"Na": (1.0, 2.159, 0.3526), "Cl": (-1.0, 4.830, 0.0128)}
#: the substrate each family is annealed on (the built families carry a lattice, not a substrate, for
#: flat hexagonal ice and the amorphous networks: weakly binding Au(111) and wetting Pt(111)). Square
#: ice on NaCl(001) is left out: built without a registry to the ions, it falls apart in the anneal
#: (``substrate="NaCl"`` is there to try it)
SUBSTRATE_OF = {"bilayer-Au111": "Au", "bilayer-Pt111": "Pt", "bilayer-Cu111": "Cu", "2d-flat-hex": "Au",
                "amorphous": "Pt", "amorphous-8ring": "Pt"}
#: O–H of the rigid waters (Å): SPC/E's 1.0 Å shortened so that the pool's 0.01 Å rounding keeps every
#: O–H within the 0.96–1.0 Å the labels and the geometry checks ask for; H–O–H stays SPC/E's 109.47°
OH = 0.98


@dataclass(frozen=True)
class Anneal:
    """How a window is annealed and quenched."""

    hot: tuple[float, float] = (100.0, 160.0)  # K, the anneal temperature, drawn per window
    hot_ps: float = 4.0
    cool_ps: float = 6.0  # linear cooling to ``cold``
    cold: float = 10.0  # K
    timestep_fs: float = 2.0
    friction: float = 5.0  # 1/ps (Langevin)
    edge: float = 3.0  # Å: O this close to the window's sides are held laterally (the network goes on outside)
    edge_k: float = 10.0  # kcal/mol/Å², the lateral spring on those O
    gap: float = 3.0  # Å from the top substrate layer to the lowest O at the start
    margin: float = 5.0  # Å of substrate beyond the window on every side
    threads: int = 1


def _substrate(name: str, lo: float, hi: float) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """Fixed substrate atoms covering ``lo``–``hi`` Å in x and y, top layer at z = 0: ``(positions,
    [(charge e, sigma Å, epsilon kcal/mol)] per atom)``."""
    span = hi - lo
    if name == "NaCl":
        n = math.ceil(span / (NACL_A / 2)) + 1
        pos, par = [], []
        for layer in range(2):
            for j in range(n):
                for i in range(n):
                    ion = "Na" if (i + j + layer) % 2 == 0 else "Cl"
                    pos.append((lo + i * NACL_A / 2, lo + j * NACL_A / 2, -layer * NACL_A / 2))
                    par.append(NACL_IONS[ion])
        return np.asarray(pos, float), par
    if name not in ("Cu", *WALLS):
        raise ValueError(f"unknown substrate {name!r}; choose Au, Pt, Cu or NaCl")
    wall = CU_WALL if name == "Cu" else WALLS[name]
    d = wall.lattice_constant / math.sqrt(2.0)
    nx = math.ceil(span / d) + 1
    ny = math.ceil(span / (d * math.sqrt(3.0) / 2)) + 1
    ny += ny % 2
    xyz, _ = build_wall(wall, nx, ny, 2)
    xyz[:, :2] += lo
    return xyz, [(0.0, wall.sigma, wall.epsilon)] * len(xyz)


def anneal_window(positions: np.ndarray, numbers: np.ndarray, substrate: str, seed: int,
                  anneal: Anneal = Anneal()) -> np.ndarray:
    """The window's atoms after the anneal and quench (same order; waters O, H, H only), Å, in the
    window's frame with the lowest O at 1 Å. ``substrate``: ``Au``, ``Pt``, ``Cu`` or ``NaCl``."""
    import openmm
    from openmm import unit

    numbers = np.asarray(numbers)
    if len(numbers) % 3 or not np.all(numbers.reshape(-1, 3) == [8, 1, 1]):
        raise ValueError("anneal_window takes waters only (O, H, H per molecule)")
    rng = np.random.default_rng(seed)
    hot = float(rng.uniform(*anneal.hot))
    water = np.asarray(positions, float).copy()
    z0 = water[0::3, 2].min()
    water[:, 2] += anneal.gap - z0  # lowest O ``gap`` above the top substrate layer (z = 0)
    sub, params = _substrate(substrate, -anneal.margin, WINDOW + anneal.margin)

    system = openmm.System()
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    for q, sigma, eps in params:
        system.addParticle(0.0)  # mass 0: fixed
        nb.addParticle(q, sigma / 10, eps * KCAL)
    n_sub = len(sub)
    for a in range(n_sub):  # the fixed substrate does not interact with itself
        for b in range(a + 1, n_sub):
            nb.addException(a, b, 0.0, 0.1, 0.0)
    add_spce_waters(system, nb, len(water) // 3, oh=OH)
    system.addForce(nb)
    hold = openmm.CustomExternalForce("0.5*k*((x-x0)^2+(y-y0)^2)")
    hold.addGlobalParameter("k", anneal.edge_k * KCAL * 100)  # kJ/mol/nm²
    hold.addPerParticleParameter("x0")
    hold.addPerParticleParameter("y0")
    o_xy = water[0::3, :2]
    near_side = np.any((o_xy < anneal.edge) | (o_xy > WINDOW - anneal.edge), axis=1)
    for m in np.flatnonzero(near_side):
        hold.addParticle(n_sub + 3 * int(m), [o_xy[m, 0] / 10, o_xy[m, 1] / 10])
    system.addForce(hold)

    integrator = openmm.LangevinMiddleIntegrator(hot * unit.kelvin, anneal.friction / unit.picosecond,
                                                 anneal.timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(int(seed % 2**31) + 1)
    platform = openmm.Platform.getPlatformByName("CPU")
    ctx = openmm.Context(system, integrator, platform, {"Threads": str(anneal.threads)})
    ctx.setPositions(np.concatenate([sub, water]) / 10)
    ctx.applyConstraints(1e-6)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 200)
    ctx.setVelocitiesToTemperature(hot * unit.kelvin, int(seed % 2**31) + 1)
    steps = max(1, round(anneal.hot_ps * 1000 / anneal.timestep_fs))
    integrator.step(steps)
    chunks = 10
    per = max(1, round(anneal.cool_ps * 1000 / anneal.timestep_fs / chunks))
    for c in range(1, chunks + 1):
        integrator.setTemperature((hot + (anneal.cold - hot) * c / chunks) * unit.kelvin)
        integrator.step(per)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 2000)
    out = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    out = np.asarray(out, float)[n_sub:]
    out[:, 2] += 1.0 - out[0::3, 2].min()
    return out


def make_ice_md_pool(n_per_family: int = 48, seed: int = 0, families: Sequence[str] | None = None,
                     anneal: Anneal = Anneal()) -> Generator[Progress, None, StructurePool]:
    """Anneal window ``i < n_per_family`` of each family of the ice pool (the same draws as
    :func:`~hydrafm.structures.ice.make_ice_pool` with this ``seed``:
    :func:`~hydrafm.structures.ice.family_windows`); yields progress, returns the pool.

    Families are the ice pool's water-only ones (:data:`SUBSTRATE_OF`); their names are kept, so the
    same families are held out (:func:`~hydrafm.structures.ice.held_out_mask`). A window whose waters
    leave the window's box or that fails :func:`~hydrafm.structures.ice.geometry_problems` after the
    quench is left out (counted in the pool's ``attrs["dropped"]``); the ``window`` column keeps each
    window's ``i``, so the built twin of any annealed window is ``family_windows``' window ``i``.
    """
    chosen = list(families) if families is not None else list(SUBSTRATE_OF)
    unknown = sorted(set(chosen) - set(SUBSTRATE_OF))
    if unknown:
        raise ValueError(f"no substrate for {unknown}; choose from {sorted(SUBSTRATE_OF)}")
    items: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = []
    dropped: dict[str, int] = {}
    total = n_per_family * len(chosen)
    for family, k_f, i, pos, numbers, row in family_windows(chosen, n_per_family, seed):
        new = anneal_window(pos, numbers, SUBSTRATE_OF[family],
                            int(np.random.SeedSequence([seed, k_f, i, 1]).generate_state(1)[0]), anneal)
        o = new[0::3]
        inside = np.all((o[:, :2] >= 0) & (o[:, :2] < WINDOW), axis=1).all() and o[:, 2].max() < THICKNESS
        if not inside or geometry_problems(np.round(new / POSITION_UNIT) * POSITION_UNIT, numbers):
            dropped[family] = dropped.get(family, 0) + 1
        else:
            items.append((new, numbers, {**row, "window": i}))
        yield Progress("annealing ice windows", len(items) + sum(dropped.values()), total)
    attrs = {
        "kind": "ice windows, annealed",
        "coordinates": "x, y from the window corner; z above the window bottom (lowest O at 1 Å); waters O, H, H",
        "substrates": {f: SUBSTRATE_OF[f] for f in chosen},
        "anneal": {k: getattr(anneal, k) for k in anneal.__dataclass_fields__},
        "water": f"rigid SPC/E charges and LJ, O-H {OH} A, H-O-H {SPCE_HOH_DEG} deg",
        "n_per_family": n_per_family,
        "seed": seed,
        "dropped": dropped,
        "made_by": "python scripts/make_ice_pool.py --annealed",
    }
    return StructurePool.from_structures(items, (WINDOW, WINDOW, THICKNESS), attrs)
