"""CaCO3 surfaces as ``ase.Atoms`` slabs: orthogonal cells, whole carbonates, whole layers.

Built-in surfaces (``build_surface(name, ...)``):

- ``calcite-104``: calcite (10-14), R-3c hexagonal setting, a = 4.991, c = 17.062 Å,
  x(O) = 0.2573 (the Raiteri group's GULP cell). The oblique cell ase cuts is re-chosen
  as the orthogonal 8.097 × 4.991 Å rectangle (x along [-4 2 1]-ish, y along
  [0 1 0]-hexagonal ``b``); layers are the stoichiometric, non-polar (104) planes
  3.03 Å apart, with Ca and CO3 in one plane.
- ``aragonite-010`` and ``aragonite-001``: aragonite in the **Pmcn** setting
  (a = 4.96062, b = 7.97006, c = 5.74181 Å; Antao & Hassan 2009); (010) and (001) are
  in that setting, i.e. (001) and (100) of the Pnma setting.
- ``vaterite-010``: vaterite as the **ordered orthorhombic (Meyer-type, Pbnm) model** of
  the hexagonal 2H sub-cell, a = 4.13, b = 7.15 (= √3 a), c = 8.48 Å: Ca in hexagonal
  layers stacked straight above each other, every carbonate in a Ca trigonal prism with
  its plane parallel to c, the apical O towards a prism edge, alternating by the 6₃
  screw. (010) of this cell is (010) of the hexagonal setting (a prism face). It is not
  the P3₂21 model of Demichelis et al. 2012, whose coordinates were not reachable here;
  load a slab file for that.

Slabs are cut where their dipole along z vanishes (formal charges), in whole
stoichiometric layers (one d_hkl each: 3.04 Å for calcite (10-14), 7.97 Å for
aragonite (010), 5.74 Å for aragonite (001)).

Every slab is periodic in x and y with z non-periodic, z = 0 at the top Ca plane and
vacuum above. Vacancies remove a Ca2+ and a whole CO3 2- from the top layer, as the
neutral pairs of Ranawat et al. Any slab file ase reads can be used instead
(:func:`load_surface`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from ase import Atoms

__all__ = ["SURFACES", "build_surface", "load_surface", "surface_plane", "add_vacancies", "SurfaceError",
           "carbonate_groups", "LateralSymmetry", "lateral_symmetries"]

SURFACES = ("calcite-104", "aragonite-010", "aragonite-001", "vaterite-010")
CO_BOND_MAX = 1.5  # Å


class SurfaceError(ValueError):
    """A slab that cannot be used (the message says why)."""


@dataclass(frozen=True)
class _Cut:
    bulk: Atoms
    normal_hkl: tuple[int, int, int]
    layer: float  # Å between stoichiometric layers (for sanity checks)


def _calcite() -> Atoms:
    from ase.spacegroup import crystal

    return crystal(["Ca", "C", "O"], basis=[(0, 0, 0), (0, 0, 0.25), (0.2573, 0, 0.25)], spacegroup=167,
                   cellpar=[4.991, 4.991, 17.062, 90, 90, 120])


def _aragonite() -> Atoms:
    from ase.spacegroup import crystal

    # Pmcn = No. 62 in the "c a b"-type setting; ase wants the setting as a Hall-free symbol, so build the
    # standard Pnma cell and relabel the axes: a_Pnma = c_Pmcn, b_Pnma = a_Pmcn, c_Pnma = b_Pmcn.
    a, b, c = 4.96062, 7.97006, 5.74181  # Pmcn
    sites_pmcn = {"Ca": (0.25, 0.41502, 0.75770), "C": (0.25, 0.76160, -0.08080),
                  "O": (0.25, 0.92200, -0.09440), "O2": (0.47500, 0.68240, -0.09050)}
    to_pnma = lambda p: (p[2], p[0], p[1])  # noqa: E731 - fractional (x, y, z)_Pmcn → Pnma
    pnma = crystal(["Ca", "C", "O", "O"], basis=[to_pnma(sites_pmcn[k]) for k in ("Ca", "C", "O", "O2")],
                   spacegroup=62, cellpar=[c, a, b, 90, 90, 90])
    # back to Pmcn axes: x_Pmcn = y_Pnma, y_Pmcn = z_Pnma, z_Pmcn = x_Pnma
    pos = pnma.positions[:, [1, 2, 0]]
    return Atoms(pnma.get_chemical_symbols(), positions=pos, cell=np.diag([a, b, c]), pbc=True)


def _vaterite() -> Atoms:
    """The ordered orthorhombic vaterite cell (4 CaCO3, 2.66 g cm⁻³) described in the module docstring."""
    a, c, r = 4.13, 8.48, 1.28  # Å; C–O as in calcite
    b = np.sqrt(3) * a
    cell = np.diag([a, b, c])
    ca = [(0, 0, 0), (0.5, 0.5, 0), (0, 0, 0.5), (0.5, 0.5, 0.5)]
    # carbonate centres (fractional) and the direction (±b) of their apical O
    co3 = [((0, 1 / 3, 0.25), -1), ((0.5, 5 / 6, 0.25), -1), ((0.5, 1 / 6, 0.75), 1), ((0, 2 / 3, 0.75), 1)]
    symbols, pos = [], []
    for f in ca:
        symbols.append("Ca")
        pos.append(np.array(f) @ cell)
    for f, sign in co3:
        centre = np.array(f) @ cell
        u = np.array([0, sign, 0.0])
        symbols += ["C", "O", "O", "O"]
        pos += [centre, centre + r * u, centre - 0.5 * r * u + [0, 0, r * np.sqrt(3) / 2],
                centre - 0.5 * r * u - [0, 0, r * np.sqrt(3) / 2]]
    return Atoms(symbols, positions=np.array(pos), cell=cell, pbc=True)


def carbonate_groups(atoms: Atoms) -> list[np.ndarray]:
    """Indices ``[C, O, O, O]`` of each carbonate (O within 1.5 Å of C, minimum image in x, y)."""
    from ase.geometry import get_distances

    c_idx = np.flatnonzero(atoms.numbers == 6)
    o_idx = np.flatnonzero(atoms.numbers == 8)
    if len(c_idx) == 0:
        return []
    _, d = get_distances(atoms.positions[c_idx], atoms.positions[o_idx], cell=atoms.cell, pbc=atoms.pbc)
    groups = []
    for k, c in enumerate(c_idx):
        near = o_idx[np.argsort(d[k])[:3]]
        groups.append(np.concatenate([[c], near]))
    return groups


def _whole_carbonates(atoms: Atoms) -> Atoms:
    """Move each carbonate O to the periodic image nearest its C."""
    from ase.geometry import find_mic

    atoms = atoms.copy()
    for g in carbonate_groups(atoms):
        vec, _ = find_mic(atoms.positions[g[1:]] - atoms.positions[g[0]], atoms.cell, atoms.pbc)
        atoms.positions[g[1:]] = atoms.positions[g[0]] + vec
    return atoms


def _orthogonal_calcite_104(n_layers: int) -> Atoms:
    from ase.build import surface

    slab = surface(_calcite(), (1, 0, 4), n_layers, vacuum=None)
    c0, c1 = slab.cell[0], slab.cell[1]
    a_new = c0 + 2 * c1  # orthogonal to c1; 3 × 8.097 Å
    if abs(np.dot(a_new, c1)) > 1e-6:
        raise SurfaceError("calcite (10-14): the re-chosen cell is not orthogonal")
    # rotate: x ∥ a_new, y ∥ c1 (z stays the surface normal)
    ex = a_new / np.linalg.norm(a_new)
    ey = np.cross([0, 0, 1.0], ex)
    rot = np.array([ex, ey, [0, 0, 1.0]])
    pos = slab.positions @ rot.T
    lx, ly = np.linalg.norm(a_new) / 3, np.linalg.norm(c1)
    thick = np.ptp(pos[:, 2]) + 20.0
    out = Atoms(slab.get_chemical_symbols(), positions=pos, cell=[lx, ly, thick], pbc=(True, True, False))
    out.wrap()
    # the 24.29 Å cell is three copies of the 8.097 Å rectangle: keep one copy's worth of atoms
    keep = _unique_in_cell(out)
    return _whole_carbonates(out[keep])


def _unique_in_cell(atoms: Atoms, tol: float = 0.05) -> np.ndarray:
    """Indices of atoms that are not periodic images of an earlier atom (after wrapping)."""
    from scipy.spatial import cKDTree

    cell = np.diag(atoms.cell.array)[:2]
    frac = atoms.positions[:, :2] / cell
    frac = frac - np.floor(frac)
    pts = np.column_stack([frac * cell, atoms.positions[:, 2] - atoms.positions[:, 2].min()])
    pts[:, :2] = np.minimum(pts[:, :2], np.nextafter(cell, 0))
    tree = cKDTree(pts, boxsize=[cell[0], cell[1], 1e6])
    keep = np.ones(len(atoms), bool)
    for i, j in sorted(tree.query_pairs(tol)):
        if keep[i] and atoms.numbers[i] == atoms.numbers[j]:
            keep[j] = False
    return np.flatnonzero(keep)


def _layers(atoms: Atoms, period: float, top: float | None = None) -> np.ndarray:
    """Layer index of each atom: windows one ``period`` (d_hkl) thick, counted down from ``top``.

    A carbonate's O belong to its C's layer, so every window holds whole, stoichiometric
    CaCO3 units. ``top`` defaults to 0.5 Å above the highest Ca.
    """
    z = atoms.positions[:, 2].copy()
    for g in carbonate_groups(atoms):
        z[g[1:]] = z[g[0]]
    if top is None:
        top = atoms.positions[atoms.numbers == 20, 2].max() + 0.5
    return np.floor((top - z) / period).astype(int)


#: formal charges for the dipole check (Raiteri et al. 2015: Ca +2, C +1.123285, O −1.041095)
_CHARGE = {20: 2.0, 6: 1.123285, 8: -1.041095}


def _nonpolar_layers(unit: Atoms, period: float, n_layers: int) -> Atoms:
    """``n_layers`` whole windows of the slab, cut where the slab's dipole along z is smallest.

    The top window of the raw slab may be incomplete, so windows are counted from the
    second one down; the window boundary is moved through one period in 0.05 Å steps
    and the cut with the smallest |Σ q z| is kept (ties: the cut closest to the top Ca).
    """
    q = np.array([_CHARGE.get(int(z), 0.0) for z in unit.numbers])
    top_ca = unit.positions[unit.numbers == 20, 2].max()
    best = None
    for delta in np.arange(0.5, 0.5 + period, 0.05):
        layer = _layers(unit, period, top_ca + delta)
        keep = (layer >= 1) & (layer <= n_layers)
        dipole = abs(float(np.sum(q[keep] * unit.positions[keep, 2])))
        if best is None or dipole < best[0] - 1e-3:
            best = (dipole, keep)
    assert best is not None
    return unit[best[1]]


def _d_spacing(bulk: Atoms, hkl: tuple[int, int, int]) -> float:
    g = np.asarray(hkl, float) @ bulk.cell.reciprocal()
    return float(1.0 / np.linalg.norm(g))


def build_surface(
    name: str,
    size: tuple[float, float] = (25.0, 25.0),
    n_layers: int = 4,
    vacuum: float = 30.0,
    vacancies: int = 0,
    seed: int = 0,
) -> Atoms:
    """A built-in CaCO3 slab at least ``size`` Å wide, ``n_layers`` thick, z = 0 at the top Ca plane.

    ``vacancies`` removes that many Ca2+ / CO3 2- neutral pairs from the top layer at
    random (``seed``).
    """
    if name == "calcite-104":
        unit = _orthogonal_calcite_104(n_layers + 3)
        period = _d_spacing(_calcite(), (1, 0, 4))
    elif name in ("aragonite-010", "aragonite-001", "vaterite-010"):
        bulk = _vaterite() if name.startswith("vaterite") else _aragonite()
        hkl = (0, 0, 1) if name == "aragonite-001" else (0, 1, 0)
        unit = _orthorhombic_slab(name, bulk, hkl, n_layers + 3)
        period = _d_spacing(bulk, hkl)
    else:
        raise SurfaceError(f"unknown surface {name!r}; built in: {', '.join(SURFACES)} (or give a slab file)")
    unit = _nonpolar_layers(unit, period, n_layers)
    lx, ly = np.diag(unit.cell.array)[:2]
    reps = (max(1, int(np.ceil(size[0] / lx - 1e-6))), max(1, int(np.ceil(size[1] / ly - 1e-6))), 1)
    slab = unit.repeat(reps)
    slab = _place(slab, vacuum)
    slab.info["surface"] = name
    slab.info["repeats"] = (int(reps[0]), int(reps[1]))  # copies of the surface cell in x and y
    if vacancies:
        slab = add_vacancies(slab, vacancies, seed)
    return slab


def _orthorhombic_slab(name: str, bulk: Atoms, hkl: tuple[int, int, int], n_layers: int) -> Atoms:
    from ase.build import surface

    slab = surface(bulk, hkl, n_layers, vacuum=None)
    cell = slab.cell.array
    lx, ly = np.linalg.norm(cell[0]), np.linalg.norm(cell[1])
    if abs(np.dot(cell[0], cell[1])) > 1e-6:
        raise SurfaceError(f"{name}: the surface cell is not orthogonal")
    ex = cell[0] / lx
    ey = np.cross([0, 0, 1.0], ex)
    pos = slab.positions @ np.array([ex, ey, [0, 0, 1.0]]).T
    out = Atoms(slab.get_chemical_symbols(), positions=pos, cell=[lx, ly, np.ptp(pos[:, 2]) + 20],
                pbc=(True, True, False))
    out.wrap()
    return _whole_carbonates(out)


def _place(slab: Atoms, vacuum: float) -> Atoms:
    """Shift so the top Ca plane is at z = 0; the cell's z spans the slab plus ``vacuum`` (and 2 Å)."""
    slab = slab.copy()
    top = surface_plane(slab)
    slab.positions[:, 2] -= top
    bottom = slab.positions[:, 2].min()
    slab.cell[2] = [0, 0, slab.positions[:, 2].max() - bottom + vacuum + 2.0]
    slab.info["z_top_ca"] = 0.0
    slab.info["z_bottom"] = float(bottom - 2.0)
    return slab


def surface_plane(slab: Atoms) -> float:
    """Height (Å) of the top Ca plane: the mean z of the Ca within 1 Å of the highest Ca."""
    ca = slab.positions[slab.numbers == 20, 2]
    if len(ca) == 0:
        raise SurfaceError("the slab has no Ca atoms, so it has no surface Ca plane")
    return float(ca[ca >= ca.max() - 1.0].mean())


def add_vacancies(slab: Atoms, n: int, seed: int = 0) -> Atoms:
    """Remove ``n`` neutral Ca2+ / CO3 2- pairs from the top layer (each CO3 the nearest to its Ca)."""
    rng = np.random.default_rng(seed)
    slab = slab.copy()
    z = slab.positions[:, 2]
    top = surface_plane(slab)
    top_ca = np.flatnonzero((slab.numbers == 20) & (z >= top - 1.0))
    groups = [g for g in carbonate_groups(slab) if z[g[0]] >= top - 1.5]
    if n > min(len(top_ca), len(groups)):
        raise SurfaceError(f"cannot make {n} vacancies in a top layer of {len(top_ca)} CaCO3")
    from ase.geometry import get_distances

    remove: list[int] = []
    for ca in rng.choice(top_ca, size=n, replace=False):
        free = [g for g in groups if g[0] not in remove]
        _, d = get_distances(slab.positions[[ca]], slab.positions[[g[0] for g in free]], cell=slab.cell,
                             pbc=slab.pbc)
        g = free[int(np.argmin(d[0]))]
        remove.extend([int(ca), *map(int, g)])
    keep = np.setdiff1d(np.arange(len(slab)), remove)
    out = slab[keep]
    out.info["vacancies"] = int(n)
    return out


def load_surface(path: str | os.PathLike, vacuum_needed: float = 10.0) -> Atoms:
    """A user slab from any file ase reads; checked for Ca, C and O, an orthogonal cell and vacuum above."""
    from ..io.errors import AFMFileError
    from ..io.xyz import read_structure

    try:
        slab = read_structure(path)
    except AFMFileError as exc:
        raise SurfaceError(str(exc)) from None
    missing = [e for e, z in (("Ca", 20), ("C", 6), ("O", 8)) if not np.any(slab.numbers == z)]
    if missing:
        raise SurfaceError(f"{path}: no {', '.join(missing)} atoms; a CaCO3 slab needs Ca, C and O")
    cell = slab.cell.array
    if np.linalg.norm(cell[2]) == 0:
        raise SurfaceError(f"{path}: the cell has no z vector; give a slab with a cell and vacuum above it")
    off = abs(cell[0] @ cell[1]) + abs(cell[0] @ cell[2]) + abs(cell[1] @ cell[2])
    if off > 1e-3:
        raise SurfaceError(f"{path}: the cell is not orthogonal (cell angles {slab.cell.cellpar()[3:].round(2)})")
    slab.pbc = (True, True, False)
    gap = float(cell[2][2] - np.ptp(slab.positions[:, 2]))
    if gap < vacuum_needed:
        raise SurfaceError(f"{path}: only {gap:.1f} Å of vacuum above the slab (at least {vacuum_needed:g} Å "
                           "needed for the water)")
    slab = _whole_carbonates(slab)
    top_ca = surface_plane(slab)
    slab.positions[:, 2] -= top_ca
    slab.info["surface"] = str(path)
    slab.info["z_shift"] = -top_ca  # add −z_shift to get back to the file's coordinates
    return slab


@dataclass(frozen=True)
class LateralSymmetry:
    """An isometry of a periodic slab that keeps z: ``(x, y) → (sx·x + tx, sy·y + ty)`` (Å), modulo the cell.

    ``sx = sy = 1`` is a translation (a repeat of the surface cell), one sign −1 a mirror or
    glide plane, both −1 a two-fold axis along z.
    """

    sx: int
    sy: int
    tx: float
    ty: float

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """The images of ``(n, 2)`` lateral positions (not wrapped)."""
        return np.column_stack([self.sx * xy[:, 0] + self.tx, self.sy * xy[:, 1] + self.ty])


def lateral_symmetries(slab: Atoms, tol: float = 1e-3) -> list[LateralSymmetry]:
    """Every z-preserving isometry that maps the whole slab onto itself (the identity first).

    Candidates come from sending one reference atom onto each atom of its element at
    its height, for each of the four sign combinations; a candidate is kept only if
    *every* atom lands within ``tol`` Å of an atom of the same element (checked on
    the atoms, periodic in x and y). Vacancies, adsorbates or a user's edits break
    the operations they do not respect, so a defective slab keeps only those that
    still hold (often just the identity).
    """
    from scipy.spatial import cKDTree

    cell = np.array([slab.cell[0, 0], slab.cell[1, 1]], float)
    pos = slab.positions.copy()
    pos[:, :2] = np.mod(pos[:, :2], cell)
    z_span = float(np.ptp(pos[:, 2])) + 10.0
    # element as a large z offset: a match must be the same element at the same height
    key = np.column_stack([pos, slab.numbers * (z_span + 10.0)])
    pts = np.column_stack([pos[:, :2], pos[:, 2] + key[:, 3]])
    pts[:, :2] = np.minimum(pts[:, :2], np.nextafter(cell, 0))
    tree = cKDTree(pts, boxsize=[cell[0], cell[1], 1e9])
    ref = int(np.argmax(slab.numbers * 1000 + pos[:, 2]))  # the top atom of the heaviest element
    same = np.flatnonzero((slab.numbers == slab.numbers[ref]) & (np.abs(pos[:, 2] - pos[ref, 2]) < tol))
    found: list[LateralSymmetry] = []
    for sx, sy in ((1, 1), (-1, 1), (1, -1), (-1, -1)):
        for j in same:
            t = np.mod(pos[j, :2] - np.array([sx, sy]) * pos[ref, :2], cell)
            op = LateralSymmetry(sx, sy, float(t[0]), float(t[1]))
            img = np.column_stack([np.mod(op.apply(pos[:, :2]), cell), pts[:, 2]])
            img[:, :2] = np.minimum(img[:, :2], np.nextafter(cell, 0))
            d, k = tree.query(img, distance_upper_bound=tol)
            if np.all(np.isfinite(d)) and len(np.unique(k)) == len(pos):
                found.append(op)
    def is_identity(o: LateralSymmetry) -> bool:
        off = np.minimum([o.tx, o.ty], cell - [o.tx, o.ty])
        return o.sx == 1 and o.sy == 1 and bool(np.all(off < tol))

    return sorted(found, key=lambda o: (not is_identity(o), -o.sx, -o.sy, o.tx, o.ty))
