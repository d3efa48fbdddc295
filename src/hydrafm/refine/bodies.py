"""Molecules as rigid bodies: who belongs to whom, poses, H classes and the orientations that change them.

A water is its O and two H, an ion is one atom; each is a rigid body with a
translation ``t`` (Å) and a rotation vector ``ω`` (radians, axis × angle) about its
pivot (the O or the ion). Atoms come grouped by the ``mol`` array that Predict
writes; without it (or for atoms with ``mol`` −1, e.g. added by hand) each H joins
its nearest O within 1.3 Å (the rule of :mod:`hydrafm.simulate.labels`) and every
other atom is a body of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from ..simulate.labels import H_ANGLE_DEG, HOH_ANGLE, OH_LENGTH, h_labels, h_owners

__all__ = ["Bodies", "group_atoms", "rotation_matrices", "rotate", "h_class_of_bodies", "flip_orientations",
           "turned_orientations", "water_orientations", "hbond_orientations", "hbond_consistent"]

#: elevation (degrees) given to an O–H bond moved into a class: well inside the ±30° rule
CLASS_ELEVATION = {"H_up": 50.0, "H_flat": 0.0, "H_down": -50.0}
CLASS_MARGIN = 8.0  # degrees an O–H bond of a candidate keeps from the class boundaries


def group_atoms(atoms: Atoms) -> np.ndarray:
    """Body index (0, 1, …) of every atom: by ``mol`` where set, else H with their nearest O (1.3 Å)."""
    n = len(atoms)
    numbers = atoms.numbers
    mol = np.asarray(atoms.arrays["mol"], dtype=int) if "mol" in atoms.arrays else np.full(n, -1)
    body = np.full(n, -1)
    ids: dict[int, int] = {}
    for i in range(n):
        if mol[i] >= 0:
            body[i] = ids.setdefault(int(mol[i]), len(ids))
    loose = np.flatnonzero(mol < 0)
    is_h = np.zeros(n, bool)
    is_h[loose] = numbers[loose] == 1
    for i in loose[numbers[loose] != 1]:
        body[i] = len(ids)
        ids[-1 - int(i)] = body[i]
    if is_h.any():
        # loose H: nearest O within 1.3 Å (any O, in a molecule or not); else a body of its own
        owner, _ = h_owners(atoms.positions, is_h, numbers == 8)
        for i, o in zip(np.flatnonzero(is_h), owner):
            if o >= 0:
                body[i] = body[o]
            else:
                body[i] = len(ids)
                ids[-1 - int(i)] = body[i]
    return body


@dataclass
class Bodies:
    """Rigid bodies of a structure: reference positions, pivots and which atom is in which body."""

    positions: np.ndarray  # (N, 3) reference positions, Å
    numbers: np.ndarray  # (N,)
    body: np.ndarray  # (N,) body index of each atom
    pivot: np.ndarray  # (M, 3) the O / ion of each body (the mean position when it has neither)

    @classmethod
    def from_positions(cls, positions: np.ndarray, numbers: np.ndarray, body: np.ndarray) -> "Bodies":
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        body = np.asarray(body, dtype=int)
        m = int(body.max()) + 1 if len(body) else 0
        pivot = np.zeros((m, 3))
        for b in range(m):
            members = np.flatnonzero(body == b)
            heavy = members[numbers[members] != 1]
            pivot[b] = positions[heavy[0]] if len(heavy) else positions[members].mean(axis=0)
        return cls(positions, np.asarray(numbers, dtype=int), body, pivot)

    @property
    def n_bodies(self) -> int:
        return len(self.pivot)

    def members(self, b: int) -> np.ndarray:
        return np.flatnonzero(self.body == b)

    def posed(self, t: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
        """Positions ``(N, 3)`` of the atoms with body translations ``t`` and rotations ``omega`` ``(M, 3)``."""
        ref = torch.as_tensor(self.positions, dtype=t.dtype, device=t.device)
        piv = torch.as_tensor(self.pivot, dtype=t.dtype, device=t.device)
        idx = torch.as_tensor(self.body, device=t.device)
        R = rotation_matrices(omega)[idx]  # (N, 3, 3)
        rel = ref - piv[idx]
        return piv[idx] + t[idx] + torch.einsum("nij,nj->ni", R, rel)

    def baked(self, positions: np.ndarray) -> "Bodies":
        """The same bodies with new reference positions (after a fit: the pose becomes the reference)."""
        return Bodies.from_positions(positions, self.numbers, self.body)


def rotation_matrices(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(M, 3, 3)`` of rotation vectors ``(M, 3)`` (Rodrigues; smooth at zero)."""
    theta2 = (omega * omega).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-12)
    # sin(θ)/θ and (1 − cos θ)/θ² by series near zero
    small = theta2 < 1e-6
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-30))
    wx, wy, wz = omega.unbind(-1)
    z = torch.zeros_like(wx)
    K = torch.stack([torch.stack([z, -wz, wy], -1), torch.stack([wz, z, -wx], -1), torch.stack([-wy, wx, z], -1)],
                    -2)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def rotate(vectors: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """``vectors`` ``(n, 3)`` rotated by ``angle`` (radians) about the unit ``axis`` (numpy)."""
    w = torch.as_tensor(np.asarray(axis, dtype=np.float64) * angle)[None]
    R = rotation_matrices(w)[0].numpy()
    return np.asarray(vectors, dtype=np.float64) @ R.T


def _elevation(v: np.ndarray) -> np.ndarray:
    v = np.atleast_2d(v)
    return np.degrees(np.arcsin(np.clip(v[:, 2] / np.maximum(np.linalg.norm(v, axis=1), 1e-12), -1, 1)))


def _robust(elev: np.ndarray) -> bool:
    """Every bond at least CLASS_MARGIN degrees from the ±30° class boundaries."""
    return bool(np.all(np.abs(np.abs(elev) - H_ANGLE_DEG) >= CLASS_MARGIN))


def h_class_of_bodies(bodies: Bodies, positions: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Label of every atom from the geometry: H by its O–H bond in its body (labels.py rule), others by element.

    An H whose body has no O (a lone H peak: Predict saw the H but not its O) has no bond to be classed
    by: it keeps its class from ``labels`` where one is given (else ``H_flat``).
    """
    names = {8: "O", 11: "Na", 19: "K", 1: "H_flat"}
    out = np.array([names.get(int(z), "O") for z in bodies.numbers], dtype="<U6")
    if labels is not None:  # an H class given (not a bare "H"); replaced below wherever the body has an O
        given = np.asarray(labels).astype(str)
        keep = (bodies.numbers == 1) & np.char.startswith(given, "H_")
        out[keep] = given[keep]
    for b in range(bodies.n_bodies):
        members = bodies.members(b)
        o = members[bodies.numbers[members] == 8]
        h = members[bodies.numbers[members] == 1]
        if len(o) and len(h):
            out[h] = h_labels(positions[h] - positions[o[0]])
    return out


def flip_orientations(o: np.ndarray, hs: np.ndarray) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """Orientations of a water that change one H's class (up / flat / down), by the smallest rotation.

    ``o`` the O position, ``hs`` ``(2, 3)`` the H positions. For each H and each class it
    is not in, the rigid water is turned about its O — about the other O–H bond (which
    keeps the other H in place), or about the level axis across this bond (which sets its
    elevation) — and the smallest turn that puts the bond well inside the new class (and
    the other bond in a definite class) wins. Returns ``(classes of the two H, new H
    positions (2, 3))`` for each reachable change, at most four.
    """
    bonds = np.asarray(hs, dtype=np.float64) - o
    current = tuple(h_labels(bonds))
    options: list[tuple[float, np.ndarray]] = []
    for j in range(len(bonds)):
        other = bonds[1 - j] if len(bonds) == 2 else np.array([0.0, 0.0, 1.0])
        axis = other / np.linalg.norm(other)
        for deg in range(15, 360, 15):
            options.append((min(deg, 360 - deg), rotate(bonds, axis, math.radians(deg))))
        az = bonds[j, :2] / max(np.linalg.norm(bonds[j, :2]), 1e-9)
        level_axis = np.array([-az[1], az[0], 0.0])
        e = _elevation(bonds[j])[0]
        for target in CLASS_ELEVATION.values():
            for sign in (1, -1):
                new = rotate(bonds, level_axis, sign * math.radians(e - target))
                if abs(_elevation(new[j])[0] - target) < 1.0:
                    options.append((abs(e - target), new))
                    break
    best: dict[tuple[str, ...], tuple[float, np.ndarray]] = {}
    for angle, new in options:
        sig = tuple(h_labels(new))
        changed = [k for k in range(len(sig)) if sig[k] != current[k]]
        if len(changed) != 1 or not _robust(_elevation(new)):
            continue
        if sig not in best or angle < best[sig][0]:
            best[sig] = (angle, new)
    return [(sig, o + new) for sig, (_, new) in sorted(best.items(), key=lambda kv: kv[1][0])]


def turned_orientations(o: np.ndarray, hs: np.ndarray, n: int = 96, seed: int = 0) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """For every pair of H classes other than the current one, the smallest of ``n`` turns of the water
    (random axes through the O, 20–180°) that gives it; ``(classes, new H positions)`` each (at most 8)."""
    bonds = np.asarray(hs, dtype=np.float64) - o
    current = tuple(h_labels(bonds))
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(math.radians(20), math.pi, n)
    best: dict[tuple[str, ...], tuple[float, np.ndarray]] = {}
    for axis, angle in zip(axes, angles):
        new = rotate(bonds, axis, angle)
        sig = tuple(h_labels(new))
        if sig == current or not _robust(_elevation(new)):
            continue
        if sig not in best or angle < best[sig][0]:
            best[sig] = (angle, new)
    return [(sig, o + new) for sig, (_, new) in sorted(best.items(), key=lambda kv: kv[1][0])]


def water_orientations(n: int = 6) -> list[np.ndarray]:
    """O–H bond pairs ``(2, 3)`` of a rigid water (0.97 Å, 104.5°) in ``n`` orientations for a new molecule.

    Half lie flat (both H level) at evenly spread azimuths; half have one H pointing up
    (the dangling H of an ice-like layer).
    """
    r, half = OH_LENGTH, math.radians(HOH_ANGLE) / 2
    out = []
    for k in range(n):
        phi = 2 * math.pi * k / max(1, n)
        if k % 2 == 0:
            dirs = [(math.cos(phi + s * half), math.sin(phi + s * half), 0.0) for s in (1, -1)]
        else:
            up = math.radians(55.0)
            first = (math.cos(phi) * math.cos(up), math.sin(phi) * math.cos(up), math.sin(up))
            # the second bond level, 104.5° from the first
            c = math.cos(2 * half) / math.cos(up)
            dphi = math.acos(max(-1.0, min(1.0, c)))
            dirs = [first, (math.cos(phi + dphi), math.sin(phi + dphi), 0.0)]
        out.append(r * np.asarray(dirs))
    return out


#: O–O distances (Å) between waters that can share an H bond
HBOND_OO = (2.4, 3.4)
HBOND_ANGLE = 25.0  # degrees an O–H bond may deviate from an O–O direction and still donate along it
DANGLING_ELEVATION = 60.0  # degrees above (below) which an O–H bond dangles up (down)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _neighbour_directions(o: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Unit vectors from ``o`` to the other waters' O at H-bond distance."""
    if len(others) == 0:
        return np.zeros((0, 3))
    d = others - o
    r = np.linalg.norm(d, axis=1)
    return _unit(d[(r >= HBOND_OO[0]) & (r <= HBOND_OO[1])])


def hbond_consistent(o: np.ndarray, hs: np.ndarray, other_o: np.ndarray) -> bool:
    """True when each O–H bond of a water donates along an O–O direction or dangles straight up or down."""
    dirs = _neighbour_directions(o, np.asarray(other_o, dtype=np.float64))
    bonds = _unit(np.asarray(hs, dtype=np.float64) - o)
    for bond, elevation in zip(bonds, _elevation(bonds)):
        along = len(dirs) and np.degrees(np.arccos(np.clip(dirs @ bond, -1, 1))).min() <= HBOND_ANGLE
        if not along and abs(elevation) < DANGLING_ELEVATION:
            return False
    return True


def _water_along(d1: np.ndarray, d2: np.ndarray, r: float) -> np.ndarray:
    """The rigid water's two O–H bonds (length ``r``, 104.5°) placed symmetrically about two directions."""
    bis = d1 + d2
    if np.linalg.norm(bis) < 1e-6:  # opposite directions: any perpendicular bisector
        bis = np.cross(d1, [0.0, 0.0, 1.0] if abs(d1[2]) < 0.9 else [1.0, 0.0, 0.0])
    bis = _unit(bis)
    perp = d1 - (d1 @ bis) * bis
    perp = _unit(perp) if np.linalg.norm(perp) > 1e-6 else _unit(np.cross(bis, [0.0, 0.0, 1.0]))
    half = math.radians(HOH_ANGLE) / 2
    return r * np.stack([math.cos(half) * bis + math.sin(half) * perp, math.cos(half) * bis - math.sin(half) * perp])


def hbond_orientations(o: np.ndarray, hs: np.ndarray, other_o: np.ndarray,
                       other_h: np.ndarray) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """Orientations of a water whose H point along H bonds to its neighbours (the ice rules).

    Each candidate points the two O–H bonds (rigid, 104.5°, placed symmetrically) at two
    neighbouring O (2.4–3.4 Å), or one at a neighbour and one straight up or down (a
    dangling H). Dropped: candidates that put an H within 1.5 Å of another molecule's H
    (two H on one O–O bond) or within 1.4 Å of another O (the starting positions may be a
    few tenths of an Å off), and those within 20° of the current pose. Returns
    ``(classes, new H positions (2, 3))``: two H bonds before one, then the nearest turn
    first.
    """
    o = np.asarray(o, dtype=np.float64)
    hs = np.asarray(hs, dtype=np.float64)
    other_o = np.asarray(other_o, dtype=np.float64).reshape(-1, 3)
    other_h = np.asarray(other_h, dtype=np.float64).reshape(-1, 3)
    bonds = hs - o
    r = float(np.linalg.norm(bonds, axis=1).mean())
    dirs = list(_neighbour_directions(o, other_o))
    options = [(a, b, 2) for i, a in enumerate(dirs) for b in dirs[i + 1:]]
    options += [(a, np.array([0.0, 0.0, s]), 1) for a in dirs for s in (1.0, -1.0)]
    out: list[tuple[int, float, tuple[str, ...], np.ndarray]] = []
    for d1, d2, n_bonds in options:
        if np.degrees(np.arccos(np.clip(d1 @ d2, -1, 1))) < 70:  # no water bends that far
            continue
        new = _water_along(d1, d2, r)
        h = o + new
        if len(other_h) and np.linalg.norm(other_h[None] - h[:, None], axis=-1).min() < 1.5:
            continue
        if len(other_o) and np.linalg.norm(other_o[None] - h[:, None], axis=-1).min() < 1.4:
            continue
        # how far this is from the current pose (the H may swap)
        turn = min(np.abs(new - bonds).max(), np.abs(new[::-1] - bonds).max()) / r
        if turn < 2 * math.sin(math.radians(10)):
            continue
        out.append((-n_bonds, turn, tuple(h_labels(new)), h))
    out.sort(key=lambda x: x[:2])
    return [(sig, h) for _, _, sig, h in out]
