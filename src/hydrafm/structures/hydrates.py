"""Na+·nH2O and K+·nH2O hydrates relaxed on a fixed NaCl(001)-like surface.

Each hydrate starts as an ion 2.4–2.8 Å above the surface with n randomly oriented
SPC/E waters on its first shell (n ≤ 5) and, for larger n, in a second shell by the
surface; it is energy-minimised with OpenMM (SPC/E water, Joung–Cheatham 2008 ion
parameters for SPC/E, a rigid two-layer NaCl(001) slab of ±1 e point charges), warmed
briefly (2 ps from 60 K velocities) and minimised again. Structures whose ion loses its water or whose
waters fly off are rejected. The substrate is not kept: as in Tang et al., AFM images
are simulated from the hydrate alone.

Pool coordinates: x, y relative to the ion, z above the top NaCl layer. Windows for
simulation are composed from the pool at random positions and orientations
(:func:`compose_hydrate_window`), one or several per window.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Sequence

import numpy as np

from ..progress import Progress
from .pool import StructurePool
from .water_md import KCAL, _water_geometry, add_spce_waters, random_rotation

__all__ = ["IONS", "make_hydrate", "make_hydrate_pool", "compose_hydrate_window", "NACL_SPACING"]

#: Joung & Cheatham, J. Phys. Chem. B 112, 9020 (2008), SPC/E set: (charge e, σ Å, ε kcal/mol, Z).
IONS = {
    "Na": (1.0, 2.159, 0.3526, 11),
    "K": (1.0, 2.838, 0.4297, 19),
    "Cl": (-1.0, 4.830, 0.0128, 17),
}
NACL_SPACING = 2.82  # Å, Na–Cl nearest-neighbour distance on NaCl(001)
ION_WATER = {"Na": 2.4, "K": 2.8}  # Å, first-shell ion–O distance to start from


def _substrate(n: int = 8, layers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A finite NaCl(001) slab centred at x = y = 0, top layer at z = 0; returns (xyz, charges)."""
    xyz, q = [], []
    for layer in range(layers):
        for i in range(n):
            for j in range(n):
                x = (i - (n - 1) / 2) * NACL_SPACING
                y = (j - (n - 1) / 2) * NACL_SPACING
                na = (i + j + layer) % 2 == 0
                xyz.append((x, y, -layer * NACL_SPACING))
                q.append(1.0 if na else -1.0)
    return np.asarray(xyz), np.asarray(q)


@dataclass
class _Relaxer:
    """An OpenMM context for one (ion, n) pair, reused for every hydrate of that kind."""

    ion: str
    n_waters: int
    threads: int = 1

    def __post_init__(self) -> None:
        import openmm

        sub_xyz, sub_q = _substrate()
        self.sub_xyz = sub_xyz
        system = openmm.System()
        nb = openmm.NonbondedForce()
        nb.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
        for q in sub_q:
            system.addParticle(0.0)  # fixed
            p = IONS["Na" if q > 0 else "Cl"]
            nb.addParticle(q, p[1] / 10, p[2] * KCAL)
        q, s, e, _ = IONS[self.ion]
        self.first = system.addParticle(22.99 if self.ion == "Na" else 39.10)
        nb.addParticle(q, s / 10, e * KCAL)
        add_spce_waters(system, nb, self.n_waters)
        system.addForce(nb)
        # Verlet, not Langevin: the warm-up must depend only on the seed given to relax() (resumable pools)
        self.integrator = openmm.VerletIntegrator(0.001)
        platform = openmm.Platform.getPlatformByName("CPU")
        self.context = openmm.Context(system, self.integrator, platform, {"Threads": str(self.threads)})

    def relax(self, xyz: np.ndarray, seed: int) -> np.ndarray:
        """Minimise, warm 2 ps at 60 K, minimise again; return ion + water positions (Å)."""
        import openmm

        self.context.setPositions(np.concatenate([self.sub_xyz, xyz]) / 10)
        self.context.applyConstraints(1e-6)
        openmm.LocalEnergyMinimizer.minimize(self.context, 5.0, 2000)
        self.context.setVelocitiesToTemperature(60.0, int(seed % 2**31) + 1)
        self.integrator.step(2000)
        openmm.LocalEnergyMinimizer.minimize(self.context, 1.0, 5000)
        state = self.context.getState(getPositions=True)
        pos = np.asarray(state.getPositions(asNumpy=True)._value) * 10.0
        return pos[self.first :]


def _initial(ion: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Ion above the centre of the slab plus n waters (O, H, H), before relaxation."""
    ion_xyz = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(2.4, 2.8)])
    r1 = ION_WATER[ion]
    first = min(n, 5)
    mol = _water_geometry()
    placed_o: list[np.ndarray] = []
    out = [ion_xyz]
    for k in range(n):
        for _ in range(500):
            if k < first:  # first shell: upper hemisphere and the equator
                v = rng.normal(size=3)
                v[2] = abs(v[2]) * 0.8
                o = ion_xyz + r1 * v / np.linalg.norm(v)
            else:  # second shell, lying on the surface
                phi = rng.uniform(0, 2 * np.pi)
                r = rng.uniform(4.0, 5.2)
                o = ion_xyz + np.array([r * np.cos(phi), r * np.sin(phi), 0.0])
                o[2] = rng.uniform(2.6, 3.4)
            if o[2] < 2.2:
                continue
            if all(np.linalg.norm(o - p) >= 2.6 for p in placed_o):
                break
        placed_o.append(o)
        # Orient the water with its H atoms pointing away from the cation, plus noise.
        away = o - ion_xyz
        away /= np.linalg.norm(away)
        rot = random_rotation(rng)
        h = mol @ rot.T
        bis = (h[1] + h[2]) / 2
        bis /= np.linalg.norm(bis)
        axis = np.cross(bis, away)
        s, c = np.linalg.norm(axis), float(bis @ away)
        if s > 1e-8:
            axis /= s
            ang = math.atan2(s, c) * rng.uniform(0.6, 1.0)
            kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            r_align = np.eye(3) + math.sin(ang) * kx + (1 - math.cos(ang)) * kx @ kx
            h = h @ r_align.T
        out.extend(o + h)
    return np.asarray(out)


def _acceptable(pos: np.ndarray, n: int) -> bool:
    ion = pos[0]
    o = pos[1::3]
    if np.any(pos[:, 2] < 0.8) or np.any(pos[:, 2] > 8.0):
        return False
    d = np.linalg.norm(o - ion, axis=1)
    if np.sum(d < 3.3) < min(n, 2):
        return False
    # Every water within H-bond reach of the ion or of another water: one cluster.
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import cdist

    pts = np.concatenate([ion[None], o])
    adj = cdist(pts, pts) < 3.6
    return connected_components(adj, directed=False)[0] == 1


def make_hydrate(
    ion: str, n_waters: int, rng: np.random.Generator, relaxer: "_Relaxer | None" = None
) -> np.ndarray | None:
    """One relaxed ion + n waters (positions Å, ion first, then O H H); ``None`` if rejected."""
    import openmm

    relaxer = relaxer or _Relaxer(ion, n_waters)
    start = _initial(ion, n_waters, rng)
    try:
        pos = relaxer.relax(start, int(rng.integers(2**31)))
    except openmm.OpenMMException:  # blew up (NaN): reject; the next setPositions resets the context
        return None
    if not np.all(np.isfinite(pos)) or not _acceptable(pos, n_waters):
        return None
    pos = pos.copy()
    pos[:, :2] -= pos[0, :2]
    return pos


def _sizes(rng: np.random.Generator) -> tuple[str, int]:
    ion = "Na" if rng.random() < 0.7 else "K"
    r = rng.random()
    n = 3 if r < 0.25 else 4 if r < 0.55 else int(rng.integers(5, 10))
    return ion, n


def _save_checkpoint(path: Path, items: list, rng: np.random.Generator, tries: int) -> None:
    pool = StructurePool.from_structures(items, (0.0, 0.0, 8.0), {
        "rng_state": rng.bit_generator.state, "tries": tries})
    pool.save(path, overwrite=True)


def make_hydrate_pool(
    out: str | os.PathLike | None,
    n: int = 2400,
    seed: int = 0,
    overwrite: bool = False,
    threads: int = 1,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
) -> Generator[Progress, None, StructurePool]:
    """Relax ``n`` hydrates (70 % Na+, 30 % K+; n_water 3, 4 or 5–9) and write the pool.

    With ``checkpoint`` (a ``.npz`` path), progress is saved every
    ``checkpoint_every`` hydrates together with the random state, and a re-run
    resumes from it with the same result as an uninterrupted run.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    relaxers: dict[tuple[str, int], _Relaxer] = {}
    items: list = []
    tries = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        part = StructurePool.load(ckpt)
        items = [(*part.arrays(i), {k: v[i] for k, v in part.info.items()}) for i in range(len(part))]
        rng.bit_generator.state = part.attrs["rng_state"]
        tries = int(part.attrs["tries"])
    while len(items) < n:
        ion, k = _sizes(rng)
        key = (ion, k)
        if key not in relaxers:
            relaxers[key] = _Relaxer(ion, k, threads)
        tries += 1
        pos = make_hydrate(ion, k, rng, relaxers[key])
        if pos is not None:
            numbers = np.concatenate([[IONS[ion][3]], np.tile([8, 1, 1], k)])
            items.append((pos, numbers, {"ion": IONS[ion][3], "n_waters": k, "surface": 2}))
        if tries > 3 * n + 50:
            raise RuntimeError(f"only {len(items)} of {n} hydrates passed the checks after {tries} tries")
        if ckpt is not None and pos is not None and len(items) % checkpoint_every == 0:
            _save_checkpoint(ckpt, items, rng, tries)
        yield Progress("relaxing hydrates", len(items), n)
    attrs = {
        "kind": "hydrates",
        "coordinates": "x, y relative to the ion; z above the top NaCl(001) layer",
        "ions": {k: v for k, v in IONS.items()},
        "tries": tries,
        "seed": seed,
        "made_by": "hydrafm pool hydrates",
    }
    pool = StructurePool.from_structures(items, (0.0, 0.0, 8.0), attrs)
    if out is not None:
        pool.save(out, overwrite=overwrite)
    return pool


def compose_hydrate_window(
    pool: StructurePool,
    rng: np.random.Generator,
    window: Sequence[float] = (25.0, 25.0),
    n_clusters: tuple[int, int] = (1, 3),
    margin: float = 3.0,
    min_gap: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Place 1–3 pool hydrates at random positions and in-plane orientations in a window.

    Returns ``(positions Å, atomic numbers, pool indices)``; clusters keep at least
    ``min_gap`` Å between atoms and stay ``margin`` Å inside the window edges.
    """
    from scipy.spatial.distance import cdist

    wx, wy = float(window[0]), float(window[1])
    want = int(rng.integers(n_clusters[0], n_clusters[1] + 1))
    pos_all: list[np.ndarray] = []
    num_all: list[np.ndarray] = []
    used: list[int] = []
    for _ in range(want * 30):
        if len(used) == want:
            break
        i = int(rng.integers(len(pool)))
        pos, numbers = pool.arrays(i)
        phi = rng.uniform(0, 2 * np.pi)
        c, s = math.cos(phi), math.sin(phi)
        p = pos @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
        lo, hi = p[:, :2].min(0), p[:, :2].max(0)
        span = hi - lo
        if span[0] > wx - 2 * margin or span[1] > wy - 2 * margin:
            continue
        shift = np.array(
            [rng.uniform(margin - lo[0], wx - margin - hi[0]), rng.uniform(margin - lo[1], wy - margin - hi[1]), 0.0]
        )
        p = p + shift
        if pos_all and cdist(p, np.concatenate(pos_all)).min() < min_gap:
            continue
        pos_all.append(p)
        num_all.append(numbers)
        used.append(i)
    return np.concatenate(pos_all), np.concatenate(num_all), used
