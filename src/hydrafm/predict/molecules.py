"""From loose atoms to whole molecules: every O an H2O with two H, Na+/K+ with their hydration shell.

The network's peaks (:func:`~hydrafm.predict.atoms.maps_to_atoms`) are loose atoms:
an O may have no, one or three H near it. :func:`assemble_molecules` turns them into
molecules:

1. **H peaks → O.** Each H peak goes to an O within 1.3 Å laterally that has fewer
   than two H yet (pairs taken by :func:`_peak_cost`: the most confident peak first, then
   the one whose distance from the O best suits its class — about 0.93 Å for a level H,
   0.3 Å for an up / down one; the two bonds at least 60° apart). Where the network puts
   three H peaks around an O (the lower half of a bilayer: three equivalent H-bond
   directions), the weakest is the one left out. A peak sets the direction of one O–H
   bond so that the H lands on it: its lateral direction from the O, and an elevation
   from its class — ``H_up``/``H_down`` tilted by ``acos(lateral distance / bond)``,
   at least 40°; ``H_flat`` by the same up to 20°, up or down, whichever suits the
   molecule's other bond. An H peak with no O within 1.3 Å (the network saw the H but
   missed its O) stays as a single H with no molecule (``mol`` −1); one near O that
   have two H already is dropped.
2. **The missing H.** The O are visited depth-first through the H-bond network
   (starting from those with more H peaks and higher confidence), in two rounds:
   every O gets its first bond before any gets its second, so along a ring each O
   still finds a neighbour free to accept its H. A missing bond direction is chosen
   among candidates (directions around the O, or the cone of 104.5° around the
   first bond, and the directions of the neighbours) by a score: the H map value of
   its class where the H would sit (the maps below the threshold still say
   something), plus an H-bond bonus for a level bond pointing within 25° of a
   neighbouring O 2.5–3.2 Å away (±0.1 Å) that could accept it, minus penalties for
   pointing at a cation, at an O that already donates an H to this one (no O–O bond
   gets two H), at an O closer than that, or onto a spot where another H already
   is. With no evidence at all a dangling H points up (what the tip sees of
   ice-like layers), then level.
3. **A rigid water.** The two bond directions are met by a rigid H2O (O–H
   0.97 Å, H–O–H 104.5°) in their plane, splitting the angular misfit by their
   weights (an H peak weighs 1 + its confidence, an inferred H 1).
4. **Labels from geometry.** Each H is classed up / flat / down from its assembled
   O–H bond by the rule of :mod:`hydrafm.simulate.labels` (±30° elevation).
5. **Ion shells.** A water whose O lies within 3.1 Å (Na) or 3.4 Å (K) of an ion,
   laterally, belongs to that ion's hydration shell (the nearest such ion).
6. **No crowded O** (:func:`drop_crowded`, in :func:`maps_to_molecules`). A water
   H-bonds to at most four neighbours, so an O with more than four other O within
   3.3 Å laterally is not a water of the layer: in ice-like layers it is the empty
   centre of a ring (the network's commonest false O). The least confident of the
   crowded O goes, with its H, until none is crowded.

O, Na and K sit at z = 0 (the scan says nothing about their heights); the H sit at
their O's height ± the bond's vertical part.

Output: ``ase.Atoms`` ordered molecule by molecule (O, H, H for each water, then
the ions, then orphan H) with per-atom arrays ``label``, ``confidence``, ``mol`` and
``shell``:

* ``mol``: the molecule id, 0, 1, …: one per water (its O and two H) and one per
  ion; −1 for orphan H and for atoms added by hand (no molecule).
* ``shell``: the ``mol`` of the ion whose hydration shell the atom belongs to: the
  ion itself and the atoms of the waters in its shell; −1 otherwise. A hydrate
  cluster is all atoms sharing a ``shell``; ``mol`` stays the chemical molecule, so
  a water is always three atoms.
* ``confidence``: the atom's own evidence: the O (ion) peak's map value; an H's peak
  value, or for an inferred H the map value of its class where it sits (low when
  the maps do not show it). :func:`molecule_confidence` gives one per molecule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from ase import Atoms

from ..io.xyz import ELEMENT, LABELS
from ..simulate.labels import H_ANGLE_DEG, HOH_ANGLE, OH_BOND_MAX, OH_LENGTH, h_labels
from .atoms import H_LABELS, maps_to_atoms

__all__ = ["assemble_molecules", "drop_crowded", "ion_identity", "maps_to_molecules", "molecule_confidence",
           "molecule_members",
           "OH_LENGTH", "HOH_ANGLE", "SHELL_RADIUS", "ACCEPTOR"]

#: lateral O–ion distance (Å) within which a water belongs to the ion's hydration shell
SHELL_RADIUS = {"Na": 3.1, "K": 3.4}
ACCEPTOR = (2.4, 3.3)  # Å, lateral O···O distance of an H-bond (2.5–3.2 Å and 0.1 Å for the peaks' error)
MIN_TILT = 40.0  # degrees: smallest elevation given to an H_up / H_down peak
MAX_LEVEL_TILT = 20.0  # degrees: largest tilt given to an H_flat peak
PEAK_REACH = OH_BOND_MAX  # Å: lateral O–H peak distance within which a peak can be an O's H
MIN_BOND_ANGLE = 60.0  # degrees: two H peaks closer in direction than this are not one water's
HBOND_CONE = 25.0  # degrees: an H points at an acceptor within this angle
W_HBOND = 0.3  # score of a level O–H pointing straight at a free acceptor
W_SETTLED = 0.05  # extra for an acceptor that has chosen its own H already (the bond costs it nothing)
PENALTY = 1.0
PEAK_WEIGHT = 1.0  # an H peak's weight in the rigid fit is this + its confidence (an inferred H: 1)
#: weight of each of a water's H peaks, against its O peak's 1, when the whole water is slid sideways so that
#: its H land nearer their peaks (0: the O stays on its peak)
FIT_SHIFT = 0.0
MAX_NEIGHBOURS = 4  # O within ACCEPTOR[1] laterally that a water can have (four H-bonds at most)
PRIOR = {"H_up": 0.03, "H_flat": 0.02, "H_down": 0.0}  # tie-breakers without evidence
#: typical lateral O–H distance (Å) of an H of each class: a level bond is seen nearly whole (0.97 Å
#: tilted by up to 20°), an up / down bond (elevation 40–90°) foreshortened to 0–0.74 Å
PEAK_LATERAL = {"H_up": 0.3, "H_flat": 0.93, "H_down": 0.3}
PEAK_MISFIT = 0.3  # cost per Å of a peak's lateral distance from its O differing from PEAK_LATERAL
_REACH = max(ACCEPTOR[1], *SHELL_RADIUS.values())
#: Na⁺ or K⁺ by the hydration shell (:func:`ion_identity`): where both ion maps show a peak at a site,
#: the ion is K when (K map − Na map) + ION_SHELL_WEIGHT × (shell distance − ION_SHELL_SPLIT) > 0. The
#: shell distance is the mean lateral distance of the ion's nearest O (up to ION_SHELL_COUNT,
#: ION_SHELL_REACH[0]–[1] Å away): Na–O ≈ 2.4 Å, K–O ≈ 2.8 Å. 0: the larger map decides.
#: Off: 2.0 (with SPLIT 2.45) helped fixed tips, not random ones (docs/predict.md, "Na or K")
ION_SHELL_WEIGHT = 0.0
ION_SHELL_SPLIT = 2.45  # Å
ION_SHELL_REACH = (1.8, 3.2)  # Å
ION_SHELL_COUNT = 3


def _peak_cost(distance: float, confidence: float, label: str) -> float:
    """Cost of giving an O the H peak ``distance`` Å away: the peak's confidence first (a spurious
    third peak around an O is the weaker one), then how far the distance is from its class's."""
    return -confidence + PEAK_MISFIT * abs(distance - PEAK_LATERAL[label])


class _HMaps:
    """Bilinear samples of the three H maps at lateral positions (zeros without maps)."""

    def __init__(self, maps: np.ndarray | None, pixel_size, origin, labels) -> None:
        self.maps = None
        if maps is None:
            return
        maps = np.asarray(maps, dtype=np.float32)
        ny, nx = maps.shape[1:]
        self.maps = np.stack([maps[labels.index(h)] if h in labels else np.zeros((ny, nx), np.float32)
                              for h in H_LABELS])
        self.d = (pixel_size, pixel_size) if np.isscalar(pixel_size) else tuple(pixel_size)
        self.origin = origin

    def sample(self, cls: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Map values of H class indices ``cls`` (into ``H_LABELS``) at ``xy`` (Å, ``(n, 2)`` x, y)."""
        if self.maps is None:
            return np.zeros(len(xy))
        _, ny, nx = self.maps.shape
        r = np.clip((xy[:, 1] - self.origin[0]) / self.d[0], 0, ny - 1)
        c = np.clip((xy[:, 0] - self.origin[1]) / self.d[1], 0, nx - 1)
        r0, c0 = np.minimum(r.astype(int), max(ny - 2, 0)), np.minimum(c.astype(int), max(nx - 2, 0))
        r1, c1 = np.minimum(r0 + 1, ny - 1), np.minimum(c0 + 1, nx - 1)
        fr, fc = r - r0, c - c0
        m = self.maps
        return ((1 - fr) * ((1 - fc) * m[cls, r0, c0] + fc * m[cls, r0, c1])
                + fr * ((1 - fc) * m[cls, r1, c0] + fc * m[cls, r1, c1]))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product of two 3-vectors (np.cross is slow for single vectors)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _class_index(dirs: np.ndarray) -> np.ndarray:
    """Index into ``H_LABELS`` (up, flat, down) of unit O–H directions, by the labels.py elevation rule."""
    s = math.sin(math.radians(H_ANGLE_DEG))
    return np.where(dirs[:, 2] > s, 0, np.where(dirs[:, 2] < -s, 2, 1))


def _direction(az: np.ndarray, elev: float) -> np.ndarray:
    return np.array([az[0] * math.cos(elev), az[1] * math.cos(elev), math.sin(elev)])


def _peak_direction(offset: np.ndarray, label: str) -> tuple[np.ndarray, float]:
    """Unit O–H direction that puts the H on a peak at lateral ``offset`` (Å) with class ``label``.

    Also returns the tilt (radians) a level H would need to land exactly on the peak
    (``acos(d / bond)``, at most 20°): its sign is not in the maps, so the molecule
    picks it (:func:`_tilt_level_peaks`). Level peaks come back level.
    """
    d = float(np.hypot(*offset))
    az = offset / d if d > 1e-6 else np.array([1.0, 0.0])
    tilt = math.acos(min(d / OH_LENGTH, 1.0))
    if label == "H_flat":
        return _direction(az, 0.0), min(tilt, math.radians(MAX_LEVEL_TILT))
    elev = max(tilt, math.radians(MIN_TILT))
    return _direction(az, elev if label == "H_up" else -elev), 0.0


def _tilt_level_peaks(t1: np.ndarray, t2: np.ndarray, tilt1: float, tilt2: float) -> tuple[np.ndarray, np.ndarray]:
    """Tilt level peak targets up or down, whichever brings their angle closest to H–O–H."""
    best = (math.inf, t1, t2)
    for s1 in ((1, -1) if tilt1 else (0,)):
        for s2 in ((1, -1) if tilt2 else (0,)):
            a = _tilted(t1, s1 * tilt1) if s1 else t1
            b = _tilted(t2, s2 * tilt2) if s2 else t2
            miss = abs(math.degrees(math.acos(float(np.clip(a @ b, -1, 1)))) - HOH_ANGLE)
            if miss < best[0]:
                best = (miss, a, b)
    return best[1], best[2]


def _tilted(t: np.ndarray, elev: float) -> np.ndarray:
    lat = math.hypot(t[0], t[1])
    return _direction(t[:2] / lat, elev) if lat > 1e-9 else t


def _sphere_directions() -> np.ndarray:
    """Candidate directions for a free O–H: straight up and down, and rings at ±55° and 0° every 15°."""
    az = np.radians(np.arange(0, 360, 15))
    rows = [np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])]
    for e in np.radians([55.0, 0.0, -55.0]):
        ring = np.column_stack([np.cos(az) * np.cos(e), np.sin(az) * np.cos(e), np.full(az.size, np.sin(e))])
        rows.append(ring)
    return np.vstack(rows)


_SPHERE = _sphere_directions()
_PSI = np.radians(np.arange(0, 360, 10))


def _cone(t: np.ndarray) -> np.ndarray:
    """Unit directions at the H–O–H angle from ``t`` (36 around the cone)."""
    a = np.array([1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(_cross(t, a))
    e2 = _cross(t, e1)
    b = math.radians(HOH_ANGLE)
    return (math.cos(b) * t[None, :] + math.sin(b) * (np.cos(_PSI)[:, None] * e1[None, :]
                                                       + np.sin(_PSI)[:, None] * e2[None, :]))


def _rigid_pair(t1: np.ndarray, t2: np.ndarray, w1: float, w2: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit O–H directions of a rigid water closest to targets ``t1``, ``t2`` (weights ``w1``, ``w2``).

    Both bonds lie in the targets' plane; ``h1`` sits ``δ`` from ``t1`` towards ``t2``
    with ``tan δ = w2 sin Δ / (w1 + w2 cos Δ)``, ``Δ`` = angle(t1, t2) − H–O–H.
    """
    alpha = math.acos(float(np.clip(t1 @ t2, -1.0, 1.0)))
    n = _cross(t1, t2)
    if np.linalg.norm(n) < 1e-6:  # parallel or opposite targets: any plane through t1, preferring vertical
        a = np.array([0.0, 0.0, 1.0]) if abs(t1[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        n = _cross(t1, a)
    n = _unit(n)
    e2 = _cross(n, t1)
    delta = alpha - math.radians(HOH_ANGLE)
    d1 = math.atan2(w2 * math.sin(delta), w1 + w2 * math.cos(delta))
    d2 = d1 + math.radians(HOH_ANGLE)
    return math.cos(d1) * t1 + math.sin(d1) * e2, math.cos(d2) * t1 + math.sin(d2) * e2


def assemble_molecules(
    loose: Atoms,
    maps: np.ndarray | None = None,
    pixel_size: float | tuple[float, float] = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    labels: tuple[str, ...] = LABELS,
    keep_orphan_h: bool = True,
    prior: Mapping[str, float] | None = None,
) -> Atoms:
    """Whole molecules from loose atoms (``label``, ``confidence``), oriented by the H maps and H-bonds.

    Parameters
    ----------
    loose
        Atoms from :func:`~hydrafm.predict.atoms.maps_to_atoms` (x, y in Å; z ignored).
    maps
        The label maps ``(n_labels, ny, nx)`` the atoms came from, or ``None`` (then only
        the H peaks and the H-bond geometry orient the waters).
    pixel_size, origin
        The maps' grid: pixel ``(row, col)`` at ``(origin_y + row·dy, origin_x + col·dx)`` Å.
    labels
        The maps' channel names.
    keep_orphan_h
        Keep H peaks with no O within 1.3 Å as single atoms (``mol`` −1): the network saw
        an H whose O it missed. ``False`` drops them.
    prior
        Scores of the H classes for an inferred H where the maps and the H-bonds give no
        evidence (tie-breakers); the classes not given keep :data:`PRIOR`. A model may record
        its own (``assembly_prior``, :func:`~hydrafm.predict.predictor.assembly_prior`).

    Returns
    -------
    ase.Atoms
        Waters (O, H, H), ions, then orphan H, with ``label``, ``confidence``, ``mol`` and
        ``shell`` (see the module docstring).
    """
    from scipy.spatial import cKDTree

    lab = np.asarray(loose.arrays["label"]).astype(str)
    conf = np.asarray(loose.arrays.get("confidence", np.ones(len(loose))), dtype=np.float64)
    xy = loose.positions[:, :2]
    hmaps = _HMaps(maps, pixel_size, origin, labels)
    o_idx = np.flatnonzero(lab == "O")
    ion_idx = np.flatnonzero(np.isin(lab, ("Na", "K")))
    h_idx = np.flatnonzero(np.isin(lab, H_LABELS))
    heavy = np.concatenate([o_idx, ion_idx])  # O first: heavy index k < n_o is water k
    n_o = len(o_idx)
    hxy = xy[heavy]

    # 1. H peaks → O (most confident first, two per O, bonds at least 60° apart)
    targets: list[list[tuple[np.ndarray, float, float, bool, float]]] = [[] for _ in range(n_o)]
    peak_xy: list[list[np.ndarray]] = [[] for _ in range(n_o)]  # where each target's H peak is
    taken = xy[h_idx] if n_o else np.zeros((0, 2))
    near_o = np.zeros(len(h_idx), bool)  # H peaks with an O within reach; the others are orphans
    if n_o and len(h_idx):
        pairs = cKDTree(xy[h_idx]).query_ball_point(xy[o_idx], PEAK_REACH)
        near_o[[j for js in pairs for j in js]] = True
        cand = [(_peak_cost(float(np.hypot(*(xy[h_idx[j]] - xy[o_idx[k]]))), conf[h_idx[j]], lab[h_idx[j]]), k, j)
                for k, js in enumerate(pairs) for j in js]
        used = np.zeros(len(h_idx), bool)
        for _, k, j in sorted(cand):
            if used[j] or len(targets[k]) >= 2:
                continue
            i = h_idx[j]
            t, tilt = _peak_direction(xy[i] - xy[o_idx[k]], lab[i])
            if targets[k] and targets[k][0][0] @ t > math.cos(math.radians(MIN_BOND_ANGLE)):
                continue
            targets[k].append((t, PEAK_WEIGHT + conf[i], conf[i], True, tilt))
            peak_xy[k].append(xy[i])
            used[j] = True
        taken = xy[h_idx[used]]

    # 2. the missing H: one per O in a first round (so every O can donate an H-bond), then the second
    net = _Network(hxy, n_o, hmaps, prior)
    for k in range(n_o):
        for t in targets[k]:
            net.record(k, t[0])
    net.take(taken)
    order = net.walk(sorted(range(n_o), key=lambda k: (-len(targets[k]), -conf[o_idx[k]], k)))
    for want in (1, 2):
        for k in order:
            while len(targets[k]) < want:
                t, evidence = net.choose(k, targets[k][0][0] if targets[k] else None)
                targets[k].append((t, 1.0, evidence, False, 0.0))
                net.record(k, t)
                net.take(hxy[k] + t[None, :2] * OH_LENGTH)

    # 3. rigid waters; inferred H get the map value of their final class where they sit
    bonds = np.zeros((n_o, 2, 3))
    h_conf = np.zeros((n_o, 2))
    xy = xy.copy()
    for k, ((t1, w1, c1, p1, tilt1), (t2, w2, c2, p2, tilt2)) in enumerate(targets):
        bonds[k] = _rigid_pair(*_tilt_level_peaks(t1, t2, tilt1, tilt2), w1, w2)
        if FIT_SHIFT > 0 and peak_xy[k]:  # slide the rigid water so that its H land nearer their peaks
            miss = sum(p - (hxy[k] + bonds[k, m, :2] * OH_LENGTH) for m, p in enumerate(peak_xy[k]))
            hxy[k] = hxy[k] + FIT_SHIFT * miss / (1.0 + FIT_SHIFT * len(peak_xy[k]))
            xy[o_idx[k]] = hxy[k]
        ev = hmaps.sample(_class_index(bonds[k]), hxy[k] + bonds[k, :, :2] * OH_LENGTH)
        h_conf[k] = (c1 if p1 else ev[0], c2 if p2 else ev[1])
    orphans = h_idx[~near_o] if keep_orphan_h else np.zeros(0, int)
    return _molecules_atoms(lab, conf, xy, o_idx, ion_idx, bonds, h_conf, orphans)


class _Network:
    """The O and ions around each O, and which O already donate H-bonds to which."""

    def __init__(self, hxy: np.ndarray, n_o: int, hmaps: _HMaps, prior: Mapping[str, float] | None = None) -> None:
        from scipy.spatial import cKDTree

        self.hxy, self.n_o, self.hmaps = hxy, n_o, hmaps
        near = cKDTree(hxy).query_ball_point(hxy[:n_o], _REACH) if n_o else []
        self.nb, self.unit, self.dist = [], [], []
        for k in range(n_o):
            nb = np.array([j for j in near[k] if j != k], dtype=int)
            vec = hxy[nb] - hxy[k]
            dist = np.hypot(vec[:, 0], vec[:, 1]) if len(nb) else np.zeros(0)
            ok = dist > 1e-6
            self.nb.append(nb[ok])
            self.dist.append(dist[ok])
            self.unit.append(vec[ok] / dist[ok, None] if ok.any() else np.zeros((0, 2)))
        self.donates: set[tuple[int, int]] = set()  # (donor O, acceptor O), heavy indices
        self.accepted = np.zeros(n_o, int)
        self.spots = np.zeros((2 * n_o, 2))  # lateral H positions already taken (the first n_spots)
        self.n_spots = 0
        self.settled = np.zeros(n_o, int)  # O–H directions chosen per O so far
        self.prior = np.array([{**PRIOR, **(prior or {})}[h] for h in H_LABELS])

    def walk(self, priority: list[int]) -> list[int]:
        """The O in depth-first order through the H-bond network (≤ 3.2 Å), starting from and preferring
        the first of ``priority``: along a ring each O then finds a neighbour still free to accept."""
        rank = np.empty(self.n_o, int)
        rank[priority] = np.arange(self.n_o)
        seen = np.zeros(self.n_o, bool)
        order: list[int] = []
        for start in priority:
            stack = [start]
            while stack:
                k = stack.pop()
                if seen[k]:
                    continue
                seen[k] = True
                order.append(k)
                nb = self.nb[k][(self.nb[k] < self.n_o) & (self.dist[k] <= ACCEPTOR[1])]
                nb = nb[~seen[nb]]
                stack.extend(nb[np.argsort(-rank[nb])].tolist())  # best-ranked popped first
        return order

    def take(self, xy: np.ndarray) -> None:
        """Mark lateral H positions ``(n, 2)`` as taken."""
        need = self.n_spots + len(xy)
        if need > len(self.spots):
            grown = np.zeros((max(need, 2 * len(self.spots)), 2))
            grown[: self.n_spots] = self.spots[: self.n_spots]
            self.spots = grown
        self.spots[self.n_spots : need] = xy
        self.n_spots = need

    def record(self, k: int, t: np.ndarray) -> None:
        """Note an O–H direction ``t`` of O ``k`` and the H-bond it makes (level, pointing at an acceptor)."""
        self.settled[k] += 1
        lat = math.hypot(t[0], t[1])
        nb = self.nb[k]
        if not len(nb) or abs(t[2]) > math.sin(math.radians(30)) or lat == 0:
            return
        cosang = (self.unit[k] @ t[:2]) / lat
        dist = self.dist[k]
        hit = np.flatnonzero((nb < self.n_o) & (cosang >= math.cos(math.radians(HBOND_CONE)))
                             & (dist >= ACCEPTOR[0]) & (dist <= ACCEPTOR[1]))
        if len(hit):
            j = int(nb[hit[np.argmax(cosang[hit])]])
            self.donates.add((k, j))
            self.accepted[j] += 1

    def choose(self, k: int, first: np.ndarray | None) -> tuple[np.ndarray, float]:
        """The best direction (and its map evidence) for a missing O–H of O ``k``, given its ``first`` bond."""
        nb, dist, unit = self.nb[k], self.dist[k], self.unit[k]
        is_ion = nb >= self.n_o
        gives_to_us = np.array([(int(j), k) in self.donates for j in nb], bool)
        full = np.array([j >= self.n_o or self.accepted[j] >= 2 for j in nb], bool)
        acceptor = ~is_ion & (dist >= ACCEPTOR[0]) & (dist <= ACCEPTOR[1]) & ~gives_to_us & ~full
        avoid = np.where(is_ion | gives_to_us, PENALTY, np.where(dist < ACCEPTOR[0], PENALTY / 2, 0.0))
        level_acc = np.column_stack([unit[acceptor], np.zeros(int(acceptor.sum()))])
        if first is not None:
            cands = np.vstack([_cone(first), level_acc])
            ang = np.degrees(np.arccos(np.clip(cands @ first, -1, 1)))
            cands = cands[np.abs(ang - HOH_ANGLE) <= 25]
        else:
            cands = np.vstack([_SPHERE, level_acc])
        cls = _class_index(cands)
        spot = cands[:, :2] * OH_LENGTH
        evidence = self.hmaps.sample(cls, spot + self.hxy[k])
        score = evidence + self.prior[cls]
        lat = np.hypot(cands[:, 0], cands[:, 1])
        if len(nb):
            cos_hb = math.cos(math.radians(HBOND_CONE))
            cosang = (cands[:, :2] @ unit.T) / np.maximum(lat, 1e-9)[:, None]  # (candidates, neighbours)
            level = np.abs(cands[:, 2]) <= math.sin(math.radians(30))
            worth = acceptor * (W_HBOND + W_SETTLED * (self.settled[np.minimum(nb, self.n_o - 1)] > 0))
            hb = np.clip((cosang - cos_hb) / (1 - cos_hb), 0, 1) * worth[None, :]
            score += level * hb.max(axis=1)
            pointing = (cosang > math.cos(math.radians(30))) & (lat > 0.5)[:, None]
            score -= (pointing * avoid[None, :]).max(axis=1)
        taken = self.spots[: self.n_spots] - self.hxy[k]
        taken = taken[np.abs(taken).max(axis=1) < 2 * OH_LENGTH]
        if len(taken):
            d = np.hypot(*(spot[:, None, :] - taken[None, :, :]).transpose(2, 0, 1))
            score -= PENALTY * (d.min(axis=1) < 0.6)
        best = int(np.argmax(score))
        return cands[best], float(evidence[best])


def _molecules_atoms(lab, conf, xy, o_idx, ion_idx, bonds, h_conf, orphans) -> Atoms:
    """Assemble the output Atoms: waters (O, H, H), ions, orphan H, with the shell of every atom."""
    n_o, n_ion, n_orphan = len(o_idx), len(ion_idx), len(orphans)
    o_pos = np.column_stack([xy[o_idx], np.zeros(n_o)])
    h_pos = o_pos[:, None, :] + bonds * OH_LENGTH  # (n_o, 2, 3)
    h_lab = h_labels(bonds.reshape(-1, 3)).reshape(n_o, 2)
    pos = np.concatenate([np.stack([o_pos, h_pos[:, 0], h_pos[:, 1]], axis=1).reshape(-1, 3),
                          np.column_stack([xy[ion_idx], np.zeros(n_ion)]),
                          np.column_stack([xy[orphans], np.zeros(n_orphan)])])
    labels = np.concatenate([np.column_stack([np.full(n_o, "O"), h_lab]).reshape(-1),
                             lab[ion_idx], lab[orphans]]).astype("<U6")
    confidence = np.concatenate([np.column_stack([conf[o_idx], h_conf]).reshape(-1), conf[ion_idx],
                                 conf[orphans]])
    mol = np.concatenate([np.repeat(np.arange(n_o), 3), n_o + np.arange(n_ion), np.full(n_orphan, -1)])
    # hydration shells: the nearest ion within its radius, laterally
    o_shell = np.full(n_o, -1)
    if n_o and n_ion:
        d = np.hypot(*(xy[o_idx][:, None, :] - xy[ion_idx][None, :, :]).transpose(2, 0, 1))
        radius = np.array([SHELL_RADIUS[str(v)] for v in lab[ion_idx]])
        d = np.where(d <= radius[None, :], d, np.inf)
        nearest = d.argmin(axis=1)
        o_shell = np.where(np.isfinite(d[np.arange(n_o), nearest]), n_o + nearest, -1)
    shell = np.concatenate([np.repeat(o_shell, 3), n_o + np.arange(n_ion), np.full(n_orphan, -1)])
    atoms = Atoms(symbols=[ELEMENT[str(v)] for v in labels], positions=pos.reshape(-1, 3))
    atoms.new_array("label", labels)
    atoms.new_array("confidence", confidence.astype(np.float64))
    atoms.new_array("mol", mol.astype(int))
    atoms.new_array("shell", shell.astype(int))
    return atoms


def maps_to_molecules(
    maps: np.ndarray,
    pixel_size: float | tuple[float, float],
    origin: tuple[float, float] = (0.0, 0.0),
    threshold: float = 0.5,
    labels: tuple[str, ...] = LABELS,
    margins: Mapping[str, float] | None = None,
    prior: Mapping[str, float] | None = None,
    peaks: Callable[[Atoms], Atoms] | None = None,
) -> Atoms:
    """Whole molecules from label maps: :func:`maps_to_atoms`, :func:`assemble_molecules` (``prior``: its H-class
    tie-breakers), :func:`drop_crowded`. ``peaks``, if given, corrects the loose peaks before the assembly
    (e.g. :func:`~hydrafm.predict.bond_ends.put_level_h_on_donor_ends`)."""
    loose = maps_to_atoms(maps, pixel_size, origin, threshold, labels, margins)
    loose = ion_identity(loose, maps, pixel_size, origin, threshold, labels, margins)
    if peaks is not None:
        loose = peaks(loose)
    return drop_crowded(assemble_molecules(loose, maps, pixel_size, origin, labels, prior=prior))


def ion_identity(
    loose: Atoms,
    maps: np.ndarray,
    pixel_size: float | tuple[float, float],
    origin: tuple[float, float] = (0.0, 0.0),
    threshold: float = 0.5,
    labels: tuple[str, ...] = LABELS,
    margins: Mapping[str, float] | None = None,
) -> Atoms:
    """Loose atoms with each contested ion named Na or K by its hydration shell as well as by the maps.

    A site is contested when both the Na and the K map pass their thresholds (``threshold`` plus the
    label's margin) within a pixel of the ion's peak. There the network often hesitates between the two
    (a deep K⁺ looks like a Na⁺); the distance to the ion's water O tells them apart (Na–O ≈ 2.4 Å,
    K–O ≈ 2.8 Å): the ion is K when ``(K − Na) + ION_SHELL_WEIGHT · (d − ION_SHELL_SPLIT) > 0``,
    with ``d`` the mean lateral distance of its nearest O (see the constants). Without O in reach, or with
    ``ION_SHELL_WEIGHT`` 0 (the default: with 2 it helped on the benchmark's fixed tip and not over
    random tips, docs/predict.md), the larger map value decides, as in
    :func:`~hydrafm.predict.atoms.maps_to_atoms`, and ``loose`` is returned unchanged.
    """
    from .atoms import label_threshold

    if maps is None or "Na" not in labels or "K" not in labels or not ION_SHELL_WEIGHT:
        return loose
    lab = np.asarray(loose.arrays["label"]).astype("<U6")
    ions = np.flatnonzero(np.isin(lab, ("Na", "K")))
    if not len(ions):
        return loose
    maps = np.asarray(maps, dtype=np.float32)
    ny, nx = maps.shape[1:]
    dy, dx = (pixel_size, pixel_size) if np.isscalar(pixel_size) else pixel_size  # type: ignore[misc]
    xy = loose.positions[:, :2]
    o_xy = xy[lab == "O"]
    na_map, k_map = maps[labels.index("Na")], maps[labels.index("K")]
    na_t, k_t = label_threshold(threshold, "Na", margins), label_threshold(threshold, "K", margins)
    out = lab.copy()
    conf = np.asarray(loose.arrays.get("confidence", np.ones(len(loose))), dtype=np.float64).copy()
    for i in ions:
        r = int(np.clip(round((xy[i, 1] - origin[0]) / dy), 0, ny - 1))
        c = int(np.clip(round((xy[i, 0] - origin[1]) / dx), 0, nx - 1))
        win = (slice(max(r - 1, 0), r + 2), slice(max(c - 1, 0), c + 2))
        na, k = float(na_map[win].max()), float(k_map[win].max())
        if na < na_t or k < k_t:
            continue
        d = np.sort(np.hypot(*(o_xy - xy[i]).T)) if len(o_xy) else np.zeros(0)
        d = d[(d >= ION_SHELL_REACH[0]) & (d <= ION_SHELL_REACH[1])][:ION_SHELL_COUNT]
        shell = ION_SHELL_WEIGHT * (float(d.mean()) - ION_SHELL_SPLIT) if len(d) else 0.0
        out[i] = "K" if (k - na) + shell > 0 else "Na"
        conf[i] = k if out[i] == "K" else na
    if np.array_equal(out, lab):
        return loose
    loose = loose.copy()
    loose.set_chemical_symbols([ELEMENT[str(v)] for v in out])
    loose.arrays["label"] = out
    loose.arrays["confidence"] = conf
    return loose


def drop_crowded(atoms: Atoms, radius: float = ACCEPTOR[1], max_neighbours: int = MAX_NEIGHBOURS) -> Atoms:
    """The molecules without the waters whose O has more than ``max_neighbours`` O within ``radius``.

    A water H-bonds to at most four others; an O with more O around it (laterally) sits in
    the centre of a ring of the layer, where the network's false O are. The least confident
    crowded O is dropped with its H, one at a time, until no O is crowded (so dropping a
    ring's centre leaves the ring). Molecule ids (``mol``, ``shell``) are renumbered 0, 1, ….

    Parameters
    ----------
    atoms
        Molecules from :func:`assemble_molecules` (``label``, ``confidence``, ``mol``).
    radius
        Å, lateral O–O distance counted as a neighbour (default: the longest H-bond, 3.3 Å).
    max_neighbours
        Neighbours an O may have.
    """
    from scipy.spatial import cKDTree

    lab = np.asarray(atoms.arrays["label"]).astype(str)
    mol = np.asarray(atoms.arrays["mol"], dtype=int)
    conf = np.asarray(atoms.arrays.get("confidence", np.ones(len(atoms))), dtype=np.float64)
    o_idx = np.flatnonzero(lab == "O")
    xy = atoms.positions[o_idx, :2]
    alive = np.ones(len(o_idx), bool)
    while alive.sum() > max_neighbours + 1:
        live = np.flatnonzero(alive)
        count = np.array([len(n) - 1 for n in cKDTree(xy[live]).query_ball_point(xy[live], radius)])
        crowded = live[count > max_neighbours]
        if not len(crowded):
            break
        alive[crowded[np.argmin(conf[o_idx[crowded]])]] = False
    if alive.all():
        return atoms
    gone = np.isin(mol, mol[o_idx[~alive]]) & (mol >= 0)
    out = atoms[~gone]
    kept = np.unique(mol[~gone][mol[~gone] >= 0])
    renumber = np.full(max(int(mol.max()) + 1, 1), -1)
    renumber[kept] = np.arange(len(kept))
    for key in ("mol", "shell"):
        if key in out.arrays:
            v = np.asarray(out.arrays[key], dtype=int)
            out.arrays[key] = np.where(v >= 0, renumber[np.maximum(v, 0)], -1)
    return out


def molecule_confidence(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """One confidence per molecule: ``(mol ids, confidences)``.

    A water's is its O's confidence times ``(1 + mean of its H's confidences) / 2``: an O
    whose two H the maps show keeps its O confidence, one whose H were inferred from
    geometry alone gets half of it. A molecule without O (an ion) keeps its atoms' mean.
    """
    mol = np.asarray(atoms.arrays.get("mol", np.full(len(atoms), -1)), dtype=int)
    conf = np.asarray(atoms.arrays.get("confidence", np.ones(len(atoms))), dtype=np.float64)
    lab = np.asarray(atoms.arrays.get("label", atoms.get_chemical_symbols())).astype(str)
    ids, inv = np.unique(mol[mol >= 0], return_inverse=True)
    m, c, is_h, is_o = inv, conf[mol >= 0], np.char.startswith(lab[mol >= 0], "H"), lab[mol >= 0] == "O"
    n = len(ids)
    n_h = np.bincount(m, is_h, n)
    mean_h = np.bincount(m, c * is_h, n) / np.maximum(n_h, 1)
    o_conf = np.bincount(m, c * is_o, n) / np.maximum(np.bincount(m, is_o, n), 1)
    mean_all = np.bincount(m, c, n) / np.maximum(np.bincount(m, None, n), 1)
    has_o = np.bincount(m, is_o, n) > 0
    return ids, np.where(has_o, o_conf * (1 + np.where(n_h > 0, mean_h, 0.0)) / 2, mean_all)


def molecule_members(mol: np.ndarray, shell: np.ndarray | None, indices) -> np.ndarray:
    """Indices of all atoms in the molecules of ``indices`` (sorted).

    An ion brings its hydration shell (the atoms whose ``shell`` is its ``mol``); atoms
    with ``mol`` −1 (added by hand) stand alone.
    """
    mol = np.asarray(mol, dtype=int)
    idx = np.asarray(sorted(indices), dtype=int)
    if not len(idx):
        return idx
    mols = np.unique(mol[idx][mol[idx] >= 0])
    members = np.isin(mol, mols) & (mol >= 0)
    if shell is not None and len(mols):
        shell = np.asarray(shell, dtype=int)
        centres = mol[(shell == mol) & (mol >= 0)]  # ions: their own shell
        members |= np.isin(shell, mols[np.isin(mols, centres)]) & (shell >= 0)
    out = np.flatnonzero(members)
    return np.union1d(out, idx)
