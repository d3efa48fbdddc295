"""Ice-like water networks as microscopists scan them: bilayer ice, 2D ice, amorphous networks, hydrates.

Every structure is built in three steps:

1. **Oxygen network** – O positions and the H-bond graph between them (which O
   pairs share an H bond): a hexagonal ice-Ih (0001)-like bilayer with a
   substrate-commensurate lattice constant, a flat square (NaCl(001)) or flat
   hexagonal 2D ice, or an amorphous network of 4–8-membered rings. Variants add
   vacancies, Stone–Wales 5-7 ring defects, two rotated domains or finite islands.
   Na⁺/K⁺ hydrates (the ion and its waters from :mod:`.hydrates`) can be embedded,
   displacing the network waters in their way.
2. **Proton order** – every H bond gets a direction (donor → acceptor) from an
   ice-rule sampler (:func:`sample_proton_order`): each O donates at most two and
   accepts at most two H bonds; what it does not donate inside the network is a
   dangling H. Random proton order comes from loop moves (reversing directed cycles
   keeps every O's count) and path moves (which move a dangling H from one O to
   another).
3. **Hydrogens** – donated H on the O···O line (bent where H–O–H must stay in
   100–110°), dangling H placed away from other atoms and towards the preferred side
   (up on the upper sublattice of a bilayer, down on the lower).

Structures are 25 × 25 Å windows as the water pool's: positions relative to the
window corner, the lowest O 1 Å above the window bottom, waters stored O, H, H,
then the ions as single atoms. Networks are built on a larger area and cut, so the
molecules at the window edge keep their proton order towards the outside.

The families (:data:`FAMILIES`), and which are held out for validation by default
(:data:`DEFAULT_HELD_OUT`), are described in ``docs/training-data.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generator, Iterator, Sequence

import numpy as np
from scipy.spatial import cKDTree

from ..progress import Progress
from .hydrates import ION_WATER, IONS, _initial
from .pool import POSITION_UNIT, StructurePool

__all__ = [
    "FAMILIES",
    "SUBSTRATES",
    "HeldOut",
    "DEFAULT_HELD_OUT",
    "WINDOW",
    "sample_proton_order",
    "hydrogen_bonds",
    "ring_sizes",
    "geometry_problems",
    "hexagonal_bilayer",
    "square_ice",
    "flat_hexagonal_ice",
    "amorphous_network",
    "hydrates_in_network",
    "make_structure",
    "make_ice_pool",
    "held_out_mask",
]

WINDOW = 25.0  # Å, the scan window
THICKNESS = 6.0  # Å, the pool's window height (lowest O at 1 Å)
MARGIN = 5.0  # Å of network built around the window, cut afterwards
OH_BOND = 0.98  # Å (0.96–1.0 Å even after the pool's 0.01 Å rounding)
HOH_RANGE = (101.0, 109.0)  # degrees, H–O–H as built (checked against 100–110° after rounding)
HOH_DANGLING = 104.5  # degrees, angle used when a molecule has a dangling H
OO_MIN = 2.5  # Å, closest non-bonded-by-construction O–O kept when joining networks
HBOND_MAX = 3.1  # Å, longest O–O taken as an H bond when bonds are found from geometry

#: Substrate → hexagonal lattice constant (Å) of the commensurate ice bilayer and how it fits.
SUBSTRATES: dict[str, tuple[float, str]] = {
    "Au111": (11 * 2.884 / 7, "7 × 7 ice cells on 11 × 11 Au(111) cells (coincidence, 4.532 Å)"),
    "Pt111": (2.775 * math.sqrt(3), "(√3 × √3)R30° on Pt(111) (4.806 Å, the classic strained bilayer)"),
    "Cu111": (2.556 * math.sqrt(3), "(√3 × √3)R30° on Cu(111) (4.427 Å)"),
}
NACL_OO = 2.82  # Å, O–O of square 2D ice commensurate with NaCl(001) (the Na–Cl distance)

#: Family name → what it holds (the ``family`` column of the pool).
FAMILIES: dict[str, str] = {
    "bilayer-Au111": "hexagonal ice-Ih(0001) bilayer, lattice constant commensurate with Au(111)",
    "bilayer-Pt111": "hexagonal bilayer, (√3 × √3)R30° on Pt(111) (expanded, O–O ≈ 2.9 Å)",
    "bilayer-Cu111": "hexagonal bilayer, (√3 × √3)R30° on Cu(111) (compressed, O–O ≈ 2.73 Å)",
    "2d-NaCl001": "flat square/rectangular 2D ice, O–O 2.82 Å (NaCl(001)), all H in plane",
    "2d-flat-hex": "flat hexagonal 2D ice (honeycomb, buckling ≤ 0.3 Å): in-plane H bonds, dangling H "
                   "up/down",
    "amorphous": "amorphous network of 4–8-membered rings (Voronoi construction), O–O 2.6–3.0 Å",
    "amorphous-8ring": "amorphous network rich in 4- and 8-membered rings (disordered 4.8.8 tiling)",
    "hydrate-in-network-Na": "1–3 Na⁺·nH2O (n = 1–8) embedded in a bilayer, flat or amorphous network",
    "hydrate-in-network-K": "1–3 K⁺·nH2O (n = 1–8) embedded in a bilayer, flat or amorphous network",
}


@dataclass(frozen=True)
class HeldOut:
    """Which structures are held out for validation: whole families, and hydrates by water count n."""

    families: tuple[str, ...] = ("bilayer-Pt111", "amorphous-8ring")
    hydration_numbers: tuple[int, ...] = (5,)


#: The default validation split: Pt(111) bilayers, 4-8-ring-rich amorphous networks and every
#: hydrate-in-network window whose hydrates have n = 5 waters.
DEFAULT_HELD_OUT = HeldOut()


# ----------------------------------------------------------------------------- small geometry helpers
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rot2(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _perpendicular_basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to the unit vector ``d`` and to each other."""
    x, y, z = (float(v) for v in d)
    e1 = np.array([0.0, z, -y]) if abs(x) < 0.9 else np.array([-z, 0.0, x])
    e1 /= math.sqrt(float(e1 @ e1))
    return e1, np.array([y * e1[2] - z * e1[1], z * e1[0] - x * e1[2], x * e1[1] - y * e1[0]])


def _fibonacci_sphere(n: int) -> np.ndarray:
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = k * math.pi * (3 - math.sqrt(5))
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _molecule_orientations(n_axes: int = 96, n_turns: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Unit O→H directions ``(k, 3)`` of both H for ``n_axes × n_turns`` orientations of a free molecule."""
    gamma = math.radians(HOH_DANGLING)
    u1, u2 = [], []
    for bis in _fibonacci_sphere(n_axes):
        e1, e2 = _perpendicular_basis(bis)
        for t in np.linspace(0, math.pi, n_turns, endpoint=False):
            perp = math.cos(t) * e1 + math.sin(t) * e2
            u1.append(math.cos(gamma / 2) * bis + math.sin(gamma / 2) * perp)
            u2.append(math.cos(gamma / 2) * bis - math.sin(gamma / 2) * perp)
    return np.asarray(u1), np.asarray(u2)


_FREE_H1, _FREE_H2 = _molecule_orientations()


def _lattice_points(basis: np.ndarray, motif: np.ndarray, rotation: float, lo: float, hi: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points of a 2D lattice (rows of ``basis``) with a motif, randomly shifted and rotated, in a square.

    Returns ``(xy (n, 2), (n, 3) int array of cell i, cell j, motif index)`` for the
    points inside ``[lo, hi)²``.
    """
    centre = np.array([(lo + hi) / 2, (lo + hi) / 2])
    reach = (hi - lo) * math.sqrt(2) / 2 + 2 * float(np.abs(basis).max())
    k = int(math.ceil(reach / min(np.linalg.norm(basis, axis=1)) * 1.3)) + 2
    i, j = np.meshgrid(np.arange(-k, k + 1), np.arange(-k, k + 1), indexing="ij")
    cells = np.stack([i.ravel(), j.ravel()], axis=1)
    shift = basis.T @ rng.random(2)
    rot = _rot2(rotation)
    pts, idx = [], []
    for m, mv in enumerate(motif):
        p = (cells @ basis + mv + shift) @ rot.T + centre
        pts.append(p)
        idx.append(np.column_stack([cells, np.full(len(cells), m)]))
    xy, idx_all = np.concatenate(pts), np.concatenate(idx)
    inside = np.all((xy >= lo) & (xy < hi), axis=1)
    return xy[inside], idx_all[inside]


# ----------------------------------------------------------------------------- the network
@dataclass
class _Network:
    """O atoms and H-bond graph of a network on the build area (window plus margin)."""

    oxygens: np.ndarray  # (n, 3)
    edges: np.ndarray  # (m, 2) int, undirected H bonds
    prefer: np.ndarray  # (n, 3) preferred direction of a dangling H (zero: none)
    side: np.ndarray  # (n,) +1 should carry a dangling H, -1 should not, 0 free (degree-3 O only)
    donations: np.ndarray | None = None  # (m, 2) fixed proton order (donor, acceptor), else sampled
    ions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    ion_numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    first_shell: np.ndarray | None = None  # (n,) bool: water touching an ion (accepts ≤ 1 H bond)
    info: dict[str, Any] = field(default_factory=dict)

    def subset(self, keep: np.ndarray) -> "_Network":
        """The network restricted to the O atoms in ``keep`` (bool mask); bonds between kept O stay."""
        keep = np.asarray(keep, bool)
        new = -np.ones(len(keep), int)
        new[keep] = np.arange(int(keep.sum()))

        def remap(e: np.ndarray | None) -> np.ndarray | None:
            if e is None:
                return None
            e = e[keep[e[:, 0]] & keep[e[:, 1]]] if len(e) else e
            return new[e].reshape(-1, 2)

        return replace(
            self,
            oxygens=self.oxygens[keep],
            edges=remap(self.edges),
            prefer=self.prefer[keep],
            side=self.side[keep],
            donations=remap(self.donations),
            first_shell=None if self.first_shell is None else self.first_shell[keep],
        )


def _degrees(n: int, edges: np.ndarray) -> np.ndarray:
    return np.bincount(edges.reshape(-1), minlength=n) if len(edges) else np.zeros(n, int)


def _hbond_graph(oxygens: np.ndarray, r_max: float = HBOND_MAX, min_angle: float = 70.0,
                 fixed: np.ndarray | None = None,
                 allowed: Callable[[int, int], bool] | None = None) -> np.ndarray:
    """H bonds from geometry: O pairs closer than ``r_max``, shortest first, ≤ 4 per O, ≥ ``min_angle`` apart.

    ``fixed`` bonds are kept first; ``allowed(i, j)`` can veto a pair.
    """
    n = len(oxygens)
    pairs = cKDTree(oxygens).query_pairs(r_max, output_type="ndarray")
    if len(pairs):
        d = np.linalg.norm(oxygens[pairs[:, 0]] - oxygens[pairs[:, 1]], axis=1)
        pairs = pairs[np.argsort(d, kind="stable")]
    bonds: list[list[int]] = [[] for _ in range(n)]
    out: list[tuple[int, int]] = []
    cos_min = math.cos(math.radians(min_angle))
    have = set()
    candidates = [tuple(p) for p in (fixed if fixed is not None else np.zeros((0, 2), int))]
    candidates += [tuple(p) for p in pairs]
    for k, (i, j) in enumerate(candidates):
        i, j = int(i), int(j)
        key = (min(i, j), max(i, j))
        if key in have:
            continue
        is_fixed = fixed is not None and k < len(fixed)
        if not is_fixed:
            if len(bonds[i]) >= 4 or len(bonds[j]) >= 4 or (allowed is not None and not allowed(i, j)):
                continue
            v = _unit(oxygens[j] - oxygens[i])
            if any(float(v @ _unit(oxygens[m] - oxygens[i])) > cos_min for m in bonds[i]):
                continue
            if any(float(-v @ _unit(oxygens[m] - oxygens[j])) > cos_min for m in bonds[j]):
                continue
        bonds[i].append(j)
        bonds[j].append(i)
        have.add(key)
        out.append(key)
    return np.asarray(out, dtype=int).reshape(-1, 2)


# ----------------------------------------------------------------------------- proton order
def sample_proton_order(
    n: int,
    edges: np.ndarray,
    rng: np.random.Generator,
    low: np.ndarray | None = None,
    high: np.ndarray | None = None,
    sweeps: int = 10,
) -> np.ndarray | None:
    """Direct every H bond (donor → acceptor) obeying the ice rules, in random proton order.

    Each O ``v`` with ``k`` bonds donates between ``low[v]`` and ``high[v]`` of them
    (default: ``max(k − 2, min(k, 1))`` to ``min(k, 2)``, i.e. it donates at most two
    and accepts at most two H bonds; the H it does not donate are dangling). Starts
    from a random orientation repaired by reversing directed paths, then makes
    ``sweeps × n`` random moves: a walk along donated bonds that closes a loop
    reverses the loop (every O keeps its counts); a walk that ends on an O that may
    donate one more reverses the path (a dangling H moves from one O to the other).

    Returns the ``(m, 2)`` array of ``(donor, acceptor)`` or ``None`` if the bounds
    cannot be met.
    """
    edges = np.asarray(edges, dtype=int).reshape(-1, 2)
    m = len(edges)
    k = _degrees(n, edges)
    lo = np.maximum(k - 2, np.minimum(k, 1)) if low is None else np.asarray(low, int)
    hi = np.minimum(k, 2) if high is None else np.asarray(high, int)
    if np.any(lo > hi) or lo.sum() > m or hi.sum() < m:
        return None
    flip = rng.random(m) < 0.5
    tail = np.where(flip, edges[:, 1], edges[:, 0]).tolist()
    head = np.where(flip, edges[:, 0], edges[:, 1]).tolist()
    incident: list[list[int]] = [[] for _ in range(n)]
    for e, (a, b) in enumerate(edges.tolist()):
        incident[a].append(e)
        incident[b].append(e)
    out = np.bincount(np.asarray(tail, int), minlength=n).tolist()
    lo, hi = lo.tolist(), hi.tolist()

    def reverse(path: list[int]) -> None:
        for e in path:
            tail[e], head[e] = head[e], tail[e]

    def search(start: int, forward: bool, good: Callable[[int], bool]) -> list[int] | None:
        """Bonds of a directed path from (forward) or to (backward) ``start`` ending at a ``good`` O."""
        prev = {start: -1}
        queue = [start]
        for v in queue:
            for e in incident[v]:
                if (tail[e] if forward else head[e]) != v:
                    continue
                w = head[e] if forward else tail[e]
                if w in prev:
                    continue
                prev[w] = e
                if good(w):
                    path = []
                    while w != start:
                        e2 = prev[w]
                        path.append(e2)
                        w = tail[e2] if forward else head[e2]
                    return path
                queue.append(w)
        return None

    for v in range(n):
        while out[v] > hi[v]:
            path = search(v, True, lambda w: out[w] < hi[w])
            if path is None:
                return None
            end = head[path[0]]
            reverse(path)
            out[v] -= 1
            out[end] += 1
        while out[v] < lo[v]:
            path = search(v, False, lambda w: out[w] > lo[w])
            if path is None:
                return None
            start = tail[path[0]]
            reverse(path)
            out[v] += 1
            out[start] -= 1

    buffer: list[float] = []

    def uniform() -> float:  # random numbers drawn in blocks (fast, and still one stream from ``rng``)
        if not buffer:
            buffer.extend(rng.random(4096).tolist())
        return buffer.pop()

    for _ in range(sweeps * n):
        v = int(uniform() * n)
        where = {v: 0}
        path: list[int] = []
        cur = v
        while True:
            outs = [e for e in incident[cur] if tail[e] == cur]
            if not outs:
                break
            e = outs[int(uniform() * len(outs))]
            nxt = head[e]
            path.append(e)
            if nxt in where:  # a loop: reverse it, counts unchanged
                reverse(path[where[nxt]:])
                break
            where[nxt] = len(path)
            if out[v] > lo[v] and out[nxt] < hi[nxt] and uniform() < 0.25:  # move a dangling H
                reverse(path)
                out[v] -= 1
                out[nxt] += 1
                break
            cur = nxt
    return np.column_stack([np.asarray(tail, int), np.asarray(head, int)])


# ----------------------------------------------------------------------------- hydrogens
def _penalty(points: np.ndarray, oxygens: np.ndarray, hydrogens: np.ndarray, ions: np.ndarray) -> np.ndarray:
    """Clash penalty of candidate H positions ``(c, 3)`` against nearby atoms."""
    pen = np.zeros(len(points))
    for atoms, reach in ((oxygens, 2.4), (hydrogens, 2.0), (ions, 3.0)):
        if len(atoms):
            diff = points[:, None, :] - atoms[None, :, :]
            d = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
            pen += np.square(np.maximum(reach - d, 0.0)).sum(axis=1)
    return pen


def _place_hydrogens(net: _Network, donations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """H positions ``(n, 2, 3)``: donated H along their bonds, dangling H where they fit best."""
    o = net.oxygens
    n = len(o)
    acceptors: list[list[int]] = [[] for _ in range(n)]
    for d, a in donations:
        acceptors[int(d)].append(int(a))
    h = np.full((n, 2, 3), np.nan)
    dangling: list[int] = []
    for v in range(n):
        dirs = [_unit(o[a] - o[v]) for a in acceptors[v]]
        if len(dirs) == 2:
            d1, d2 = dirs
            angle = math.degrees(math.acos(float(np.clip(d1 @ d2, -1, 1))))
            half = math.radians(float(np.clip(angle, *HOH_RANGE)) / 2)
            s = d1 + d2
            if np.linalg.norm(s) < 0.2:  # donors nearly opposite: bend both towards the preferred side
                p = net.prefer[v] if np.linalg.norm(net.prefer[v]) > 0 else _perpendicular_basis(d1)[0]
                s = p - (p @ d1) * d1
            bis = _unit(s)
            perp = d1 - (d1 @ bis) * bis
            perp = _unit(perp) if np.linalg.norm(perp) > 1e-6 else _perpendicular_basis(bis)[0]
            h[v, 0] = o[v] + OH_BOND * (math.cos(half) * bis + math.sin(half) * perp)
            h[v, 1] = o[v] + OH_BOND * (math.cos(half) * bis - math.sin(half) * perp)
        else:
            if dirs:
                h[v, 0] = o[v] + OH_BOND * dirs[0]
            dangling.append(v)
    tree = cKDTree(o)
    gamma = math.radians(HOH_DANGLING)
    phis = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    for v in rng.permutation(np.asarray(dangling, dtype=int)):
        near = [w for w in tree.query_ball_point(o[v], 3.6) if w != v]
        obs_o = o[near]
        obs_h = np.concatenate([h[near].reshape(-1, 3), h[v, :1]])
        obs_h = obs_h[np.isfinite(obs_h[:, 0])]
        pref = net.prefer[v]
        if acceptors[v]:  # one donated H: the other turns about its bond
            d1 = _unit(o[acceptors[v][0]] - o[v])
            e1, e2 = _perpendicular_basis(d1)
            turn = np.cos(phis)[:, None] * e1 + np.sin(phis)[:, None] * e2
            u = math.cos(gamma) * d1 + math.sin(gamma) * turn
            cand = o[v] + OH_BOND * u
            score = u @ pref - 20 * _penalty(cand, obs_o, obs_h, net.ions)
            h[v, 1] = cand[int(np.argmax(score))]
        else:  # no donated H: orient the whole molecule
            c1, c2 = o[v] + OH_BOND * _FREE_H1, o[v] + OH_BOND * _FREE_H2
            score = (_FREE_H1 + _FREE_H2) @ pref - 20 * (_penalty(c1, obs_o, obs_h, net.ions)
                                                          + _penalty(c2, obs_o, obs_h, net.ions))
            i = int(np.argmax(score))
            h[v, 0], h[v, 1] = c1[i], c2[i]
    return h


# ----------------------------------------------------------------------------- checks and analysis
def geometry_problems(positions: np.ndarray, numbers: np.ndarray, *, min_oo: float = 2.4) -> list[str]:
    """What is unphysical in a structure (waters O, H, H first, then ions); empty when all is well.

    Checks O–H 0.96–1.0 Å, H–O–H 100–110°, O–O ≥ ``min_oo``, H–H between molecules
    ≥ 1.5 Å, H to another molecule's O ≥ 1.45 Å, ion–O ≥ 2.2 Å and ion–H ≥ 2.2 Å.
    """
    pos = np.asarray(positions, float)
    numbers = np.asarray(numbers)
    n_w = 0
    while 3 * n_w + 2 < len(numbers) and tuple(numbers[3 * n_w : 3 * n_w + 3]) == (8, 1, 1):
        n_w += 1
    problems = []
    if np.any(np.isin(numbers[3 * n_w :], [1, 8])):
        problems.append("waters are not all stored as O, H, H before the ions")
    mol = pos[: 3 * n_w].reshape(-1, 3, 3)
    oh = np.linalg.norm(mol[:, 1:] - mol[:, :1], axis=2)
    if oh.size and (oh.min() < 0.96 - 1e-3 or oh.max() > 1.0 + 1e-3):
        problems.append(f"O–H {oh.min():.3f}–{oh.max():.3f} Å outside 0.96–1.0 Å")
    if n_w:
        a, b = mol[:, 1] - mol[:, 0], mol[:, 2] - mol[:, 0]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        hoh = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        if hoh.min() < 100.0 - 0.5 or hoh.max() > 110.0 + 0.5:
            problems.append(f"H–O–H {hoh.min():.1f}–{hoh.max():.1f}° outside 100–110°")
    mol_id = np.concatenate([np.repeat(np.arange(n_w), 3), -1 - np.arange(len(numbers) - 3 * n_w)])
    limits = {(8, 8): min_oo, (1, 1): 1.5, (1, 8): 1.45, (8, 11): 2.2, (8, 19): 2.2, (1, 11): 2.2,
              (1, 19): 2.2, (11, 11): 3.5, (11, 19): 3.5, (19, 19): 3.5}
    pairs = cKDTree(pos).query_pairs(3.5, output_type="ndarray")
    if len(pairs):
        pairs = pairs[mol_id[pairs[:, 0]] != mol_id[pairs[:, 1]]]
        d = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)
        za, zb = numbers[pairs[:, 0]], numbers[pairs[:, 1]]
        for (p, q), lim in limits.items():
            sel = ((za == p) & (zb == q)) | ((za == q) & (zb == p))
            if np.any(d[sel] < lim):
                problems.append(f"Z{p}–Z{q} distance {d[sel].min():.2f} Å below {lim} Å")
    return problems


def hydrogen_bonds(positions: np.ndarray, numbers: np.ndarray, max_distance: float = 2.3,
                   min_angle: float = 130.0) -> np.ndarray:
    """H bonds found from geometry: ``(k, 2)`` (donor O index, acceptor O index) into ``positions``.

    An H (of a water stored O, H, H) donates to another O within ``max_distance`` Å
    when the O–H···O angle is at least ``min_angle`` degrees; each H to its best O.
    """
    pos = np.asarray(positions, float)
    numbers = np.asarray(numbers)
    o_idx = np.flatnonzero(numbers == 8)
    h_idx = np.flatnonzero(numbers == 1)
    if not len(o_idx) or not len(h_idx):
        return np.zeros((0, 2), int)
    tree = cKDTree(pos[o_idx])
    own = o_idx[tree.query(pos[h_idx])[1]]
    out = []
    for h, do in zip(h_idx, own):
        best, best_d = -1, np.inf
        for j in tree.query_ball_point(pos[h], max_distance):
            acc = o_idx[j]
            if acc == do:
                continue
            v1, v2 = pos[do] - pos[h], pos[acc] - pos[h]
            cos = float(v1 @ v2 / np.linalg.norm(v1) / np.linalg.norm(v2))
            ang = math.degrees(math.acos(min(1.0, max(-1.0, cos))))
            d = float(np.linalg.norm(v2))
            if ang >= min_angle and d < best_d:
                best, best_d = acc, d
        if best >= 0:
            out.append((int(do), int(best)))
    return np.asarray(out, dtype=int).reshape(-1, 2)


def ring_sizes(points: np.ndarray, edges: np.ndarray, largest: int = 12) -> np.ndarray:
    """Sizes of the rings (faces) of a planar network seen from above, up to ``largest`` members."""
    xy = np.asarray(points, float)[:, :2]
    n = len(xy)
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for a, b in np.asarray(edges, int).reshape(-1, 2):
        nbrs[a].append(int(b))
        nbrs[b].append(int(a))
    order = []
    for v in range(n):
        ang = [math.atan2(xy[w, 1] - xy[v, 1], xy[w, 0] - xy[v, 0]) for w in nbrs[v]]
        order.append([nbrs[v][i] for i in np.argsort(ang)])
    pos_in = [{w: i for i, w in enumerate(order[v])} for v in range(n)]
    seen: set[tuple[int, int]] = set()
    sizes = []
    for u in range(n):
        for v in order[u]:
            if (u, v) in seen:
                continue
            size, a, b = 0, u, v
            while (a, b) not in seen and size <= largest + 1:
                seen.add((a, b))
                size += 1
                i = pos_in[b][a]
                a, b = b, order[b][(i - 1) % len(order[b])]  # turn right: the face on the left
            if 3 <= size <= largest and (a, b) == (u, v):
                sizes.append(size)
    return np.asarray(sizes, dtype=int)


# ----------------------------------------------------------------------------- relaxation, defects
def _relax_xy(xy: np.ndarray, z: np.ndarray, edges: np.ndarray, length: float, movable: np.ndarray,
              steps: int = 300, step: float = 0.2, repel: float = 3.3) -> np.ndarray:
    """Move the ``movable`` O laterally: bonds towards ``length`` (3D), non-bonded O ≥ ``repel`` apart."""
    xy = xy.copy()
    n = len(xy)
    i, j = edges[:, 0], edges[:, 1]
    dz = z[i] - z[j]
    bonded = np.sort(edges, axis=1) @ np.array([n, 1])
    nb = np.zeros((0, 2), int)
    fixed = ~np.asarray(movable, bool)
    for it in range(steps):
        if it % 25 == 0:
            pairs = cKDTree(np.column_stack([xy, z])).query_pairs(repel + 0.5, output_type="ndarray")
            nb = pairs[~np.isin(pairs @ np.array([n, 1]), bonded)] if len(pairs) else pairs
        d = xy[i] - xy[j]
        r = np.sqrt((d * d).sum(1) + dz * dz)
        f = ((r - length) / r)[:, None] * d
        src, dst, force = [i, j], [f, -f], None
        if len(nb):
            p, q = nb[:, 0], nb[:, 1]
            d = xy[p] - xy[q]
            r = np.sqrt((d * d).sum(1) + (z[p] - z[q]) ** 2)
            f = (-np.maximum(repel - r, 0.0) / r)[:, None] * d
            src += [p, q]
            dst += [f, -f]
        idx = np.concatenate(src)
        force = np.concatenate(dst)
        grad = np.column_stack([np.bincount(idx, force[:, 0], n), np.bincount(idx, force[:, 1], n)])
        grad[fixed] = 0
        xy -= step * grad
    return xy


def _bond_lengths_ok(o: np.ndarray, edges: np.ndarray, lo: float = 2.55, hi: float = 3.05,
                     nonbonded: float = 2.9, region: tuple[float, float] | None = None) -> bool:
    """All bonds within ``lo``–``hi`` Å and non-bonded O ≥ ``nonbonded`` Å apart (inside ``region``)."""
    inside = np.ones(len(o), bool)
    if region is not None:
        inside = np.all((o[:, :2] > region[0]) & (o[:, :2] < region[1]), 1)
    if len(edges):
        sel = inside[edges[:, 0]] | inside[edges[:, 1]]
        d = np.linalg.norm(o[edges[sel, 0]] - o[edges[sel, 1]], axis=1)
        if len(d) and (d.min() < lo or d.max() > hi):
            return False
    n = len(o)
    pairs = cKDTree(o).query_pairs(nonbonded, output_type="ndarray")
    if len(pairs):
        codes = pairs @ np.array([n, 1])
        pairs = pairs[~np.isin(codes, np.sort(edges, 1) @ np.array([n, 1]))]
        pairs = pairs[inside[pairs[:, 0]] | inside[pairs[:, 1]]]
    return len(pairs) == 0


def _stone_wales(net: _Network, rng: np.random.Generator, count: int, length: float,
                 sizes: tuple[int, int] = (5, 7)) -> int:
    """Rotate ``count`` bonds by 90° (a 5-7-7-5 ring defect in a honeycomb); returns how many worked.

    The O around each rotated bond are relaxed laterally; a rotation that leaves bonds
    outside 2.55–3.05 Å, O closer than 2.9 Å or rings outside ``sizes`` is undone.
    """
    o = net.oxygens
    done = 0
    centres: list[np.ndarray] = []
    for _ in range(count * 8):
        if done == count:
            break
        deg = _degrees(len(o), net.edges)
        mid_all = (o[net.edges[:, 0], :2] + o[net.edges[:, 1], :2]) / 2
        ok = (deg[net.edges[:, 0]] == 3) & (deg[net.edges[:, 1]] == 3)
        ok &= np.all((mid_all > 4) & (mid_all < WINDOW - 4), axis=1)
        for c in centres:
            ok &= np.linalg.norm(mid_all - c, axis=1) > 7.5
        if not ok.any():
            break
        k = int(rng.choice(np.flatnonzero(ok)))
        u, v = (int(x) for x in net.edges[k])
        mid = (o[u, :2] + o[v, :2]) / 2
        rot = _rot2(math.pi / 2)
        new_u = mid + rot @ (o[u, :2] - mid)
        new_v = mid + rot @ (o[v, :2] - mid)
        axis = o[v, :2] - o[u, :2]

        def side(p: np.ndarray) -> float:
            return float(np.sign(axis[0] * (p[1] - mid[1]) - axis[1] * (p[0] - mid[0])))

        nb_u = [int(w) for e in net.edges for w in e if u in e and w not in (u, v)]
        nb_v = [int(w) for e in net.edges for w in e if v in e and w not in (u, v)]
        su = side(new_u)
        a_keep = [w for w in nb_u if side(o[w, :2]) == su]
        a_give = [w for w in nb_u if side(o[w, :2]) != su]
        b_take = [w for w in nb_v if side(o[w, :2]) == su]
        if len(a_keep) != 1 or len(a_give) != 1 or len(b_take) != 1:
            continue
        edges = [tuple(e) for e in net.edges.tolist()]
        edges = [e for e in edges if set(e) not in ({u, a_give[0]}, {v, b_take[0]})]
        edges += [(u, b_take[0]), (v, a_give[0])]
        new_edges = np.asarray(edges, int)
        xy = o[:, :2].copy()
        xy[u], xy[v] = new_u, new_v
        local = np.linalg.norm(xy - mid, axis=1) < 10.0
        local_edges = _reindex(new_edges, local)
        for relaxed in (False, True):  # rings from the topology first (cheap), then after relaxing
            rings = ring_sizes(np.column_stack([xy[local], o[local, 2]]), local_edges)
            if rings.min(initial=6) < sizes[0] or rings.max(initial=6) > sizes[1]:
                break
            if not relaxed:
                movable = np.linalg.norm(xy[local] - mid, axis=1) < 7.0
                xy[local] = _relax_xy(xy[local], o[local, 2], local_edges, length, movable, steps=250)
        else:
            trial = np.column_stack([xy, o[:, 2]])
            if _bond_lengths_ok(trial[local], local_edges):
                net.oxygens = o = trial
                net.edges = new_edges
                centres.append(mid)
                done += 1
    return done


def _reindex(edges: np.ndarray, keep: np.ndarray) -> np.ndarray:
    new = -np.ones(len(keep), int)
    new[keep] = np.arange(int(keep.sum()))
    e = edges[keep[edges[:, 0]] & keep[edges[:, 1]]]
    return new[e].reshape(-1, 2)


def _keep_largest_component(net: _Network, min_degree: int = 2) -> _Network:
    """Drop O with fewer than ``min_degree`` bonds (repeatedly), then keep the largest connected piece."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    while True:
        deg = _degrees(len(net.oxygens), net.edges)
        weak = deg < min_degree
        if not weak.any() or weak.all():
            break
        net = net.subset(~weak)
    n = len(net.oxygens)
    if n == 0:
        return net
    e = net.edges
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)) if len(e) else coo_matrix((n, n))
    _, comp = connected_components(adj, directed=False)
    return net.subset(comp == np.bincount(comp).argmax())


# ----------------------------------------------------------------------------- variants
def _island_mask(xy: np.ndarray, rng: np.random.Generator, rotation: float) -> np.ndarray:
    """A finite island inside the window: a hexagon (zigzag or armchair edges) or a blob of discs."""
    radius = rng.uniform(8.0, 15.0)
    centre = rng.uniform(0.6 * radius, WINDOW - 0.6 * radius, 2)
    rel = xy - centre
    if rng.random() < 0.6:
        turn = rotation + (math.pi / 6 if rng.random() < 0.5 else 0.0)
        angles = turn + np.arange(6) * math.pi / 3
        normals = np.column_stack([np.cos(angles), np.sin(angles)])
        return np.all(rel @ normals.T <= radius * math.sqrt(3) / 2, axis=1)
    mask = np.linalg.norm(rel, axis=1) < radius * 0.75
    for _ in range(int(rng.integers(1, 3))):
        c = centre + rng.normal(0, radius * 0.35, 2)
        r = rng.uniform(0.35, 0.6) * radius
        mask |= np.linalg.norm(xy - c, axis=1) < r
    return mask


def _apply_variant(net: _Network, variant: str, rng: np.random.Generator, rotation: float,
                   length: float) -> _Network:
    """Vacancies, 5-7 defects or an island on an ideal network (domains are built by the caller)."""
    xy = net.oxygens[:, :2]
    if variant in ("island", "island-defects"):
        net = _keep_largest_component(net.subset(_island_mask(xy, rng, rotation)))
        if variant == "island-defects" and len(net.oxygens) > 20:
            net = _remove_vacancies(net, rng, rng.uniform(0.02, 0.06))
            net = _keep_largest_component(net)
    elif variant == "vacancies":
        net = _remove_vacancies(net, rng, rng.uniform(0.02, 0.08))
        net = _keep_largest_component(net, min_degree=1)
    elif variant == "5-7":
        _stone_wales(net, rng, int(rng.integers(1, 4)), length)
        net.info["defects"] = "5-7"
    elif variant != "ideal":
        raise ValueError(f"unknown variant {variant!r}")
    return net


def _remove_vacancies(net: _Network, rng: np.random.Generator, fraction: float) -> _Network:
    n = len(net.oxygens)
    gone = rng.random(n) < fraction
    return net.subset(~gone)


# ----------------------------------------------------------------------------- networks
def _honeycomb_network(a: float, dz: float, rng: np.random.Generator, rotation: float | None = None,
                       lo: float = -MARGIN, hi: float = WINDOW + MARGIN) -> tuple[_Network, np.ndarray]:
    """A honeycomb of O (lower sublattice at z = 1, upper at 1 + ``dz``); the network and sublattices."""
    rotation = rng.uniform(0, 2 * math.pi) if rotation is None else rotation
    basis = a * np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    motif = np.array([[0.0, 0.0], (basis[0] + basis[1]) / 3])
    xy, idx = _lattice_points(basis, motif, rotation, lo, hi, rng)
    sub = idx[:, 2]
    o = np.column_stack([xy, 1.0 + dz * sub])
    net = _Network(o, _hbond_graph(o), np.zeros((len(o), 3)), np.zeros(len(o), int))
    return net, sub


def _bilayer_dangling(sub: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Preferred dangling-H direction (up on the upper sublattice, down on the lower) and ice-rule side."""
    prefer = np.zeros((len(sub), 3))
    prefer[:, 2] = np.where(sub == 1, 1.0, -1.0)
    if mode == "H-up":
        side = np.where(sub == 1, 1, -1)
    elif mode == "H-down":
        side = np.where(sub == 0, 1, -1)
    else:
        side = np.zeros(len(sub), int)
    return prefer, side


def _bilayer_net(a: float, rng: np.random.Generator, variant: str, dangling: str) -> _Network:
    o_o = a / math.sqrt(3)
    dz = rng.uniform(0.90, 1.00)
    rotation = rng.uniform(0, 2 * math.pi)
    net, sub = _honeycomb_network(a, dz, rng, rotation)
    if variant == "domains":
        net = _join_domains(net, sub, _honeycomb_network(a, dz, rng, rotation + rng.uniform(0.17, 0.87) * (
            1 if rng.random() < 0.5 else -1)), rng)
        sub = (net.oxygens[:, 2] > 1.0 + dz / 2).astype(int)
    net.prefer, net.side = _bilayer_dangling(sub, dangling)
    if variant != "domains":
        net = _apply_variant(net, variant, rng, rotation, math.hypot(o_o, dz))
    net.info.update(variant=variant, dangling=dangling, lattice_constant=a,
                    rotation_deg=math.degrees(rotation) % 360)
    return net


def _join_domains(first: _Network, sub: np.ndarray, second: tuple[_Network, np.ndarray],
                  rng: np.random.Generator) -> _Network:
    """Two domains meeting along a straight boundary through the window; bonds across found from geometry."""
    other, _ = second
    angle = rng.uniform(0, math.pi)
    normal = np.array([math.cos(angle), math.sin(angle)])
    point = np.array([WINDOW / 2, WINDOW / 2]) + rng.uniform(-4, 4, 2)
    a = first.subset((first.oxygens[:, :2] - point) @ normal < 0)
    b = other.subset((other.oxygens[:, :2] - point) @ normal >= 0)
    if len(b.oxygens) and len(a.oxygens):
        d, _ = cKDTree(a.oxygens).query(b.oxygens)
        b = b.subset(d >= 2.6)
    o = np.concatenate([a.oxygens, b.oxygens])
    fixed = np.concatenate([a.edges, b.edges + len(a.oxygens)])
    edges = _hbond_graph(o, fixed=fixed)
    n = len(o)
    return _Network(o, edges, np.zeros((n, 3)), np.zeros(n, int))


def _square_net(rng: np.random.Generator, variant: str) -> _Network:
    """Flat square (or slightly rectangular) 2D ice; every O donates one bond along x and one along y.

    Bonds along a row all point the same way, as do bonds along a column (random per
    row and column), so each O donates two bonds 90° apart and accepts two: the ice
    rules with no H–O–H wider than the lattice allows.
    """
    ax = NACL_OO
    ay = NACL_OO if rng.random() < 0.5 else rng.uniform(2.75, 2.95)
    rotation = rng.uniform(0, 2 * math.pi)
    xy, idx = _lattice_points(np.array([[ax, 0.0], [0.0, ay]]), np.zeros((1, 2)), rotation, -MARGIN,
                              WINDOW + MARGIN, rng)
    o = np.column_stack([xy, 1.0 + rng.normal(0, 0.05, len(xy))])
    lookup = {(int(i), int(j)): k for k, (i, j, _) in enumerate(idx)}
    row_sign = {j: rng.random() < 0.5 for j in set(idx[:, 1].tolist())}
    col_sign = {i: rng.random() < 0.5 for i in set(idx[:, 0].tolist())}
    edges, donations = [], []
    for (i, j), k in lookup.items():
        for (di, dj), forward in (((1, 0), row_sign[j]), ((0, 1), col_sign[i])):
            w = lookup.get((i + di, j + dj))
            if w is None:
                continue
            edges.append((k, w))
            donations.append((k, w) if forward else (w, k))
    n = len(o)
    prefer = np.zeros((n, 3))
    prefer[:, 2] = np.where(rng.random(n) < 0.5, 0.3, -0.3)
    net = _Network(o, np.asarray(edges), prefer, np.zeros(n, int), donations=np.asarray(donations))
    if variant in ("5-7", "domains"):
        variant = "vacancies"
    net = _apply_variant(net, variant, rng, rotation, NACL_OO)
    net.info.update(variant=variant, dangling="none", lattice_constant=ay,
                    rotation_deg=math.degrees(rotation) % 360)
    return net


def _flat_hex_net(rng: np.random.Generator, variant: str) -> _Network:
    """Flat hexagonal 2D ice: a honeycomb buckled by at most 0.3 Å, dangling H up or down at random."""
    length = rng.uniform(2.70, 2.82)
    dz = rng.uniform(0.0, 0.3)
    a = math.sqrt(3) * math.sqrt(length ** 2 - dz ** 2)
    rotation = rng.uniform(0, 2 * math.pi)
    net, sub = _honeycomb_network(a, dz, rng, rotation)
    n = len(sub)
    net.prefer = np.zeros((n, 3))
    net.prefer[:, 2] = np.where(rng.random(n) < rng.uniform(0.3, 0.7), 1.0, -1.0)
    net = _apply_variant(net, variant if variant != "domains" else "vacancies", rng, rotation, length)
    net.info.update(variant=variant if variant != "domains" else "vacancies", dangling="mixed",
                    lattice_constant=a, rotation_deg=math.degrees(rotation) % 360)
    return net


def _amorphous_net(rng: np.random.Generator, rings: str, variant: str = "ideal") -> _Network:
    """An amorphous ring network; ``rings`` 'mixed' (Voronoi, 4–8 rings) or '4-8' (disordered 4.8.8 tiling).

    The graph is relaxed to O–O ≈ 2.75 Å; a network with rings outside 4–8 inside
    the window, bonds outside 2.55–3.05 Å or non-bonded O closer than 2.9 Å is redrawn.
    """
    lo, hi = -MARGIN - 3, WINDOW + MARGIN + 3
    for _ in range(30):
        length = rng.uniform(2.70, 2.85)
        rotation = rng.uniform(0, 2 * math.pi)
        if rings == "mixed":
            xy, edges = _voronoi_graph(rng, length, rotation, lo, hi)
        else:
            xy, edges = _ring48_graph(rng, length, rotation, lo, hi)
        z = 1.0 + np.clip(rng.normal(0, 0.12, len(xy)), -0.3, 0.3)
        xy = _relax_xy(xy, z, edges, length, np.ones(len(xy), bool), steps=400)
        n = len(xy)
        prefer = np.zeros((n, 3))
        prefer[:, 2] = np.where(rng.random(n) < 0.5, 1.0, -1.0)
        net = _Network(np.column_stack([xy, z]), edges, prefer, np.zeros(n, int))
        if rings != "mixed":
            _stone_wales(net, rng, int(rng.integers(1, 4)), length, sizes=(4, 8))
        net = net.subset(np.all((net.oxygens[:, :2] > -MARGIN) & (net.oxygens[:, :2] < WINDOW + MARGIN), 1))
        net = _keep_largest_component(net, min_degree=2)
        inside = np.all((net.oxygens[:, :2] > -1) & (net.oxygens[:, :2] < WINDOW + 1), 1)
        sizes = ring_sizes(net.oxygens[inside], _reindex(net.edges, inside), largest=10)
        if not len(sizes) or sizes.min() < 4 or sizes.max() > 8:
            continue
        if not _bond_lengths_ok(net.oxygens, net.edges, 2.6, 3.0, region=(-2.0, WINDOW + 2.0)):
            continue
        if variant != "ideal":
            net = _apply_variant(net, variant, rng, rotation, length)
        counts = np.bincount(sizes, minlength=9)
        net.info.update(variant=variant, dangling="mixed", lattice_constant=length,
                        rotation_deg=math.degrees(rotation) % 360,
                        **{f"rings_{k}": float(counts[k] / counts.sum()) for k in range(4, 9)})
        return net
    raise RuntimeError("could not build an amorphous network with 4–8 rings in 30 tries")


def _voronoi_graph(rng: np.random.Generator, length: float, rotation: float, lo: float,
                   hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Edges of the Voronoi cells of jittered triangular-lattice seeds (triangles contracted to points)."""
    from scipy.spatial import Voronoi

    s = math.sqrt(3) * length * rng.uniform(0.95, 1.05)
    triangular = s * np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    seeds, _ = _lattice_points(triangular, np.zeros((1, 2)), rotation, lo - 2 * s, hi + 2 * s, rng)
    seeds = seeds + rng.normal(0, rng.uniform(0.18, 0.30) * s, seeds.shape)
    vor = Voronoi(seeds)
    verts = vor.vertices
    keep = np.all((verts > lo) & (verts < hi), axis=1)
    ridges = np.asarray([r for r in vor.ridge_vertices if -1 not in r and keep[r[0]] and keep[r[1]]], int)
    return _merge_short(verts, ridges, 0.3 * length)


def _merge_short(xy: np.ndarray, edges: np.ndarray, shortest: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge the ends of bonds shorter than ``shortest``, collapse 3-rings into one O, drop unused points."""
    parent = np.arange(len(xy))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    size = np.ones(len(xy), int)  # points merged into each root: merge only pristine points (no cascades)
    for a, b in edges:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb and size[ra] == size[rb] == 1 and np.linalg.norm(xy[a] - xy[b]) < shortest:
            parent[ra] = rb
            size[rb] = 2
    for _ in range(5):
        roots = np.array([root(i) for i in range(len(xy))])
        e = np.unique(np.sort(roots[edges], axis=1), axis=0)
        e = e[e[:, 0] != e[:, 1]]
        merged = False
        nbrs: dict[int, set[int]] = {}
        for a, b in e:
            nbrs.setdefault(int(a), set()).add(int(b))
            nbrs.setdefault(int(b), set()).add(int(a))
        for a, b in e:
            common = nbrs[int(a)] & nbrs[int(b)]
            if common:  # a triangle a, b, c: one point
                c = min(common)
                ra, rb, rc = root(int(a)), root(int(b)), root(c)
                if len({ra, rb, rc}) == 3 and size[ra] + size[rb] + size[rc] <= 4:
                    parent[ra] = rc
                    parent[rb] = rc
                    size[rc] = size[ra] + size[rb] + size[rc]
                    merged = True
        if not merged:
            break
    roots = np.array([root(i) for i in range(len(xy))])
    e = np.unique(np.sort(roots[edges], axis=1), axis=0)
    e = e[e[:, 0] != e[:, 1]]
    groups = np.unique(roots)
    centre = np.array([xy[roots == g].mean(0) for g in groups])
    new = {int(g): k for k, g in enumerate(groups)}
    e = np.array([[new[int(a)], new[int(b)]] for a, b in e], int).reshape(-1, 2)
    deg = _degrees(len(groups), e)
    if np.any(deg > 4):  # too crowded: drop the bonds of the worst points
        bad = deg > 4
        e = e[~(bad[e[:, 0]] | bad[e[:, 1]])]
    used = np.zeros(len(groups), bool)
    used[e.reshape(-1)] = True
    return centre[used], _reindex(e, used)


def _ring48_graph(rng: np.random.Generator, length: float, rotation: float, lo: float,
                  hi: float) -> tuple[np.ndarray, np.ndarray]:
    """The 4.8.8 tiling (squares and octagons, every O three-bonded), jittered."""
    h = length / math.sqrt(2)
    s = length * (1 + math.sqrt(2))
    motif = np.array([[h, 0.0], [0.0, h], [-h, 0.0], [0.0, -h]])
    xy, idx = _lattice_points(s * np.eye(2), motif, rotation, lo, hi, rng)
    lookup = {tuple(int(v) for v in row): k for k, row in enumerate(idx)}
    edges = []
    for (i, j, m), k in lookup.items():
        across = ((i + 1, j, 2),) if m == 0 else ((i, j + 1, 3),) if m == 1 else ()  # to the next cell
        for other in ((i, j, (m + 1) % 4),) + across:
            w = lookup.get(other)
            if w is not None:
                edges.append((k, w))
    xy = xy + rng.normal(0, 0.12, xy.shape)
    return xy, np.asarray(edges, int)


def _embed_hydrates(net: _Network, ion: str, n_waters: int, n_ions: int,
                    rng: np.random.Generator) -> _Network:
    """Put ``n_ions`` ion·nH2O hydrates (from :func:`.hydrates._initial`) into the network.

    Each hydrate is rotated at random about z and set with its ion ~0.2 Å below the
    network's mean O height at a random spot inside the window (ions ≥ 8 Å apart);
    network waters closer than 2.6 Å to a hydrate O or inside the ion's first shell
    are displaced (removed). Bonds between hydrate waters and the network come from
    geometry, never pointing from a first-shell water towards its ion.
    """
    z_ref = float(np.mean(net.oxygens[:, 2])) - 0.2
    ions, waters, shell_flags = [], [], []
    for _ in range(n_ions * 40):
        if len(ions) == n_ions:
            break
        site = rng.uniform(6.0, WINDOW - 6.0, 2)
        if any(np.linalg.norm(site - p[:2]) < 8.0 for p in ions):
            continue
        cluster = _initial(ion, n_waters, rng)
        phi = rng.uniform(0, 2 * math.pi)
        cluster[:, :2] = (cluster[:, :2] - cluster[0, :2]) @ _rot2(phi).T + site
        cluster[:, 2] += z_ref - cluster[0, 2]
        o = cluster[1::3]
        if len(o) > 1 and cKDTree(o).query_pairs(2.55):  # the hydrate builder could not space its waters
            continue
        if waters and (cKDTree(np.concatenate(waters)).query(o)[0].min() < 2.6
                       or np.linalg.norm(np.asarray(ions) - cluster[0], axis=1).min() < 8.0):
            continue
        ions.append(cluster[0])
        waters.append(o)
        shell_flags.append(np.linalg.norm(o - cluster[0], axis=1) < ION_WATER[ion] + 0.6)
    ion_xyz = np.asarray(ions)
    hyd_o = np.concatenate(waters)
    first = np.concatenate(shell_flags)
    d_h, _ = cKDTree(hyd_o).query(net.oxygens)
    d_i, _ = cKDTree(ion_xyz).query(net.oxygens)
    net = net.subset((d_h >= 2.6) & (d_i >= ION_WATER[ion] + 1.0))
    n_net = len(net.oxygens)
    o = np.concatenate([net.oxygens, hyd_o])
    shell = np.concatenate([np.zeros(n_net, bool), first])
    ion_near = ion_xyz[cKDTree(ion_xyz).query(o)[1]]

    def allowed(i: int, j: int) -> bool:
        for a, b in ((i, j), (j, i)):
            if shell[a]:
                to_ion, to_b = _unit(ion_near[a] - o[a]), _unit(o[b] - o[a])
                if float(to_ion @ to_b) > math.cos(math.radians(70)):
                    return False
        return True

    edges = _hbond_graph(o, fixed=net.edges, allowed=allowed)
    prefer = np.concatenate([net.prefer, np.zeros((len(hyd_o), 3))])
    away = _unit(o - ion_near)
    near_ion = np.linalg.norm(o - ion_near, axis=1) < 5.5
    prefer[near_ion] = away[near_ion]
    side = np.concatenate([net.side, np.zeros(len(hyd_o), int)])
    out = _Network(o, edges, prefer, side, ions=ion_xyz, ion_numbers=np.full(len(ion_xyz), IONS[ion][3]),
                   first_shell=shell, info=dict(net.info))
    deg = _degrees(len(o), edges)
    return out.subset((deg > 0) | (np.arange(len(o)) >= n_net))


# ----------------------------------------------------------------------------- network → atoms
def _bounds(net: _Network, side: bool = True, shell: bool = True, edge_min: int = 1) -> tuple[np.ndarray,
                                                                                              np.ndarray]:
    """How many bonds each O may donate: the ice rules, plus (optionally) the preferred dangling side of
    three-bonded O, at most one accepted bond for first-shell waters (the ion takes a lone pair), and at least
    ``edge_min`` donated bond for O with fewer bonds."""
    k = _degrees(len(net.oxygens), net.edges)
    lo = np.maximum(k - 2, np.minimum(k, edge_min))
    hi = np.minimum(k, 2)
    if side:
        three = k == 3
        hi = np.where(three & (net.side > 0), 1, hi)
        lo = np.where(three & (net.side < 0), 2, lo)
    if shell and net.first_shell is not None:
        lo = np.where(net.first_shell, np.maximum(lo, np.minimum(k - 1, hi)), lo)
    return lo, hi


def _finish(net: _Network, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Proton order, hydrogens, and the cut to the window: ``(positions, numbers, info)``."""
    n = len(net.oxygens)
    donations = net.donations
    if donations is None:
        # strictest first; then let edge O accept two bonds, drop the preferred side, drop the ion's lone pair
        for side, shell, edge_min in ((True, True, 1), (True, True, 0), (False, True, 0), (False, False, 0)):
            donations = sample_proton_order(n, net.edges, rng, *_bounds(net, side, shell, edge_min))
            if donations is not None:
                break
        if donations is None:
            raise _Retry("no proton order obeys the ice rules")
        if not side and net.info.get("dangling") in DANGLING_MODES:
            net.info["dangling"] = "mixed"
    h = _place_hydrogens(net, donations, rng)
    o = net.oxygens
    inside = np.all((o[:, :2] >= 0.3) & (o[:, :2] < WINDOW - 0.3), axis=1)
    mol = np.concatenate([o[:, None, :], h], axis=1)[inside]
    in_window = np.all((net.ions[:, :2] >= 0) & (net.ions[:, :2] < WINDOW), axis=1)
    ions = net.ions[in_window]
    positions = np.concatenate([mol.reshape(-1, 3), ions])
    numbers = np.concatenate([np.tile([8, 1, 1], len(mol)), net.ion_numbers[in_window]]).astype(int)
    if len(mol) < 4:
        raise _Retry("fewer than 4 molecules in the window")
    positions[:, 2] += 1.0 - mol[:, 0, 2].min()
    info = dict(net.info)
    info["n_waters"] = int(len(mol))
    info["n_ions"] = int(len(ions))
    return positions, numbers, info


class _Retry(Exception):
    """This random draw gave an unusable structure; draw again."""


def _build(make_net: Callable[[np.random.Generator], _Network], rng: np.random.Generator,
           tries: int = 20) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    last = ""
    for _ in range(tries):
        try:
            pos, numbers, info = _finish(make_net(rng), rng)
        except _Retry as exc:
            last = str(exc)
            continue
        problems = geometry_problems(np.round(pos / POSITION_UNIT) * POSITION_UNIT, numbers)  # as pooled
        if not problems:
            return pos, numbers, info
        last = "; ".join(problems)
    raise RuntimeError(f"no physical structure in {tries} tries (last: {last})")


# ----------------------------------------------------------------------------- public builders
BILAYER_VARIANTS = ("ideal", "vacancies", "5-7", "domains", "island", "island-defects")
DANGLING_MODES = ("H-up", "H-down", "mixed")


def hexagonal_bilayer(substrate: str, rng: np.random.Generator, variant: str = "ideal",
                      dangling: str = "H-up") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A hexagonal ice bilayer window on ``substrate`` ('Au111', 'Pt111', 'Cu111').

    Two O sublattices 0.90–1.00 Å apart in z, lattice constant from
    :data:`SUBSTRATES`, random in-plane rotation and offset. ``dangling``: 'H-up'
    (every upper O carries a dangling H pointing up, lower O none), 'H-down' (lower
    O point one H down), 'mixed' (both, as the proton order falls). ``variant``:
    one of :data:`BILAYER_VARIANTS`.

    Returns ``(positions Å, atomic numbers, info)``.
    """
    a = SUBSTRATES[substrate][0]
    pos, numbers, info = _build(lambda r: _bilayer_net(a, r, variant, dangling), rng)
    info["family"] = f"bilayer-{substrate}"
    return pos, numbers, info


def square_ice(rng: np.random.Generator, variant: str = "ideal") -> tuple[np.ndarray, np.ndarray,
                                                                          dict[str, Any]]:
    """Flat square/rectangular 2D ice commensurate with NaCl(001) (O–O 2.82 Å); all H in plane."""
    pos, numbers, info = _build(lambda r: _square_net(r, variant), rng)
    info["family"] = "2d-NaCl001"
    return pos, numbers, info


def flat_hexagonal_ice(rng: np.random.Generator, variant: str = "ideal") -> tuple[np.ndarray, np.ndarray,
                                                                                   dict[str, Any]]:
    """Flat hexagonal 2D ice (buckling ≤ 0.3 Å): two in-plane H bonds per molecule, dangling H up or down."""
    pos, numbers, info = _build(lambda r: _flat_hex_net(r, variant), rng)
    info["family"] = "2d-flat-hex"
    return pos, numbers, info


def amorphous_network(rng: np.random.Generator, rings: str = "mixed",
                      variant: str = "ideal") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """An amorphous water network; ``rings`` 'mixed' (4–8 rings, mostly 5–7) or '4-8' (rich in 4, 8 rings)."""
    pos, numbers, info = _build(lambda r: _amorphous_net(r, rings, variant), rng)
    info["family"] = "amorphous" if rings == "mixed" else "amorphous-8ring"
    return pos, numbers, info


HYDRATE_BASES = ("bilayer-Au111", "bilayer-Cu111", "2d-flat-hex", "amorphous")


def hydrates_in_network(ion: str, n_waters: int, rng: np.random.Generator, n_ions: int = 1,
                        base: str | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``n_ions`` ion·``n_waters``H2O hydrates (ion 'Na' or 'K') embedded in a water network.

    ``base`` is one of :data:`HYDRATE_BASES` (random when ``None``); bases never come
    from held-out families. Ion–O ≈ 2.4 Å (Na) / 2.8 Å (K) as built by
    :mod:`.hydrates` (first shell ≤ 5 waters, the rest on a second shell).
    """
    if n_waters < 1 or n_waters > 8:
        raise ValueError(f"n_waters must be 1–8, got {n_waters}")
    chosen = base or HYDRATE_BASES[int(rng.integers(len(HYDRATE_BASES)))]

    def make(r: np.random.Generator) -> _Network:
        if chosen.startswith("bilayer"):
            net = _bilayer_net(SUBSTRATES[chosen.split("-")[1]][0], r, "ideal",
                               DANGLING_MODES[int(r.integers(3))])
        elif chosen == "2d-flat-hex":
            net = _flat_hex_net(r, "ideal")
        else:
            net = _amorphous_net(r, "mixed")
        return _embed_hydrates(net, ion, n_waters, n_ions, r)

    pos, numbers, info = _build(make, rng, tries=40)
    info.update(family=f"hydrate-in-network-{ion}", base=chosen, hydration_number=n_waters)
    return pos, numbers, info


def make_structure(family: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One random window of ``family`` (a key of :data:`FAMILIES`), its variant drawn from ``rng``."""
    if family.startswith("bilayer-"):
        variant = str(rng.choice(BILAYER_VARIANTS, p=[0.25, 0.15, 0.15, 0.15, 0.15, 0.15]))
        dangling = str(rng.choice(DANGLING_MODES, p=[0.5, 0.2, 0.3]))
        return hexagonal_bilayer(family.split("-")[1], rng, variant, dangling)
    if family == "2d-NaCl001":
        return square_ice(rng, str(rng.choice(["ideal", "vacancies", "island", "island-defects"])))
    if family == "2d-flat-hex":
        return flat_hexagonal_ice(rng, str(rng.choice(["ideal", "vacancies", "5-7", "island"])))
    if family in ("amorphous", "amorphous-8ring"):
        variant = str(rng.choice(["ideal", "vacancies", "island"], p=[0.5, 0.25, 0.25]))
        return amorphous_network(rng, "mixed" if family == "amorphous" else "4-8", variant)
    if family.startswith("hydrate-in-network-"):
        ion = family.rsplit("-", 1)[1]
        return hydrates_in_network(ion, int(rng.integers(1, 9)), rng, int(rng.integers(1, 4)))
    raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")


INFO_DEFAULTS: dict[str, Any] = {
    "family": "", "variant": "ideal", "dangling": "", "base": "", "hydration_number": 0, "n_waters": 0,
    "n_ions": 0, "lattice_constant": float("nan"), "rotation_deg": float("nan"),
    **{f"rings_{k}": float("nan") for k in range(4, 9)},
}


def family_windows(families: Sequence[str], n_per_family: int, seed: int = 0) -> Iterator[
        tuple[str, int, int, np.ndarray, np.ndarray, dict[str, Any]]]:
    """Window ``i < n_per_family`` of each family in turn: ``(family, k_f, i, positions, numbers, pool
    row)``. Window ``i`` of family ``f`` is drawn from ``SeedSequence([seed, k_f, i])`` alone (``k_f``
    its index in :data:`FAMILIES`), so pools of any size agree on their common windows; the row holds
    the window's :data:`INFO_DEFAULTS` columns."""
    names = list(FAMILIES)
    for family in families:
        k_f = names.index(family)
        for i in range(n_per_family):
            pos, numbers, info = make_structure(family, np.random.default_rng(np.random.SeedSequence([seed, k_f, i])))
            row = dict(INFO_DEFAULTS)
            row.update({k: v for k, v in info.items() if k in INFO_DEFAULTS})
            yield family, k_f, i, pos, numbers, row


def make_ice_pool(n_per_family: int = 300, seed: int = 0,
                  families: Sequence[str] | None = None) -> Generator[Progress, None, StructurePool]:
    """Build ``n_per_family`` windows of every family (:func:`family_windows`); yields progress, returns
    the pool."""
    chosen = list(families) if families is not None else list(FAMILIES)
    items = []
    total = n_per_family * len(chosen)
    for _, _, _, pos, numbers, row in family_windows(chosen, n_per_family, seed):
        items.append((pos, numbers, row))
        yield Progress("building ice windows", len(items), total)
    attrs = {
        "kind": "ice windows",
        "coordinates": "x, y from the window corner; z above the window bottom (lowest O at 1 Å); "
                       "waters O, H, H, then ions",
        "families": FAMILIES,
        "substrates": {k: v[1] for k, v in SUBSTRATES.items()},
        "held_out_default": {"families": list(DEFAULT_HELD_OUT.families),
                             "hydration_numbers": list(DEFAULT_HELD_OUT.hydration_numbers)},
        "n_per_family": n_per_family,
        "seed": seed,
        "made_by": "python scripts/make_ice_pool.py",
    }
    return StructurePool.from_structures(items, (WINDOW, WINDOW, THICKNESS), attrs)


def held_out_mask(pool: StructurePool, held_out: HeldOut = DEFAULT_HELD_OUT) -> np.ndarray:
    """True for the pool's structures held out for validation (whole families, hydrates by n)."""
    family = np.asarray(pool.info["family"]).astype(str)
    mask = np.isin(family, list(held_out.families))
    if "hydration_number" in pool.info and held_out.hydration_numbers:
        hydrate = np.char.startswith(family, "hydrate-")
        mask |= hydrate & np.isin(pool.info["hydration_number"].astype(int), list(held_out.hydration_numbers))
    return mask
