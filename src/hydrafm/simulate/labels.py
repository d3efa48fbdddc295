"""Atom labels and the label maps the structure network learns.

Labels: ``O``, ``Na``, ``K``, ``H_up``, ``H_flat``, ``H_down`` (``hydrafm.io.xyz.LABELS``).

The H rule
----------
Each H belongs to its nearest O (within 1.3 Å). With the O–H bond vector
``v`` and its elevation above the surface plane ``θ = asin(v_z / |v|)``:

* ``H_up``   if θ > +30° (O–H pointing obliquely up, towards the tip),
* ``H_down`` if θ < −30° (pointing down, towards the substrate),
* ``H_flat`` otherwise (O–H within 30° of the surface plane).

30° sits between the buckling of H-bonded in-plane O–H in ice-like layers
(≲ 20°) and the tilt of dangling O–H bonds (≳ 50°).

Maps
----
:func:`label_maps` renders one channel per label on the stack's pixel grid: a
Gaussian of width ``sigma`` (Å) and peak 1 at every atom's (x, y), channels
combined with ``max``. :func:`vdw_sphere_image` renders the paper's a-vdW sphere
picture (coloured spheres, nearer = brighter) for display.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..io.xyz import LABELS

__all__ = [
    "LABELS",
    "H_ANGLE_DEG",
    "atom_labels",
    "h_labels",
    "h_owners",
    "label_maps",
    "vdw_sphere_image",
    "LABEL_COLORS",
    "within_top",
]

H_ANGLE_DEG = 30.0
OH_BOND_MAX = 1.3  # Å
#: the rigid water that Predict assembles and Refine moves: O–H length (Å) and H–O–H angle (degrees)
OH_LENGTH = 0.97  # inside 0.96–1.0 Å
HOH_ANGLE = 104.5  # inside 100–110°

#: Display colours (RGB 0–1), as in Tang et al. Fig. 2: O red, Na indigo, K violet,
#: H_up green, H_flat light blue, H_down brown.
LABEL_COLORS: dict[str, tuple[float, float, float]] = {
    "O": (0.90, 0.10, 0.10),
    "Na": (0.29, 0.0, 0.51),
    "K": (0.58, 0.0, 0.83),
    "H_up": (0.20, 0.80, 0.20),
    "H_flat": (0.55, 0.85, 1.00),
    "H_down": (0.60, 0.40, 0.20),
}
#: Sphere radii (Å) for the a-vdW picture: vdW radii scaled by 0.5 so neighbours stay apart.
SPHERE_RADIUS = {"O": 0.76, "Na": 1.14, "K": 1.38, "H_up": 0.55, "H_flat": 0.55, "H_down": 0.55}


def atom_labels(positions: np.ndarray, numbers: Sequence[int]) -> np.ndarray:
    """Label of every atom (array of str) by element and, for H, by the O–H rule above.

    Raises ``ValueError`` for elements other than H, O, Na, K or an H with no O
    within 1.3 Å.
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    numbers = np.asarray(numbers).reshape(-1)
    out = np.empty(len(numbers), dtype="<U6")
    names = {8: "O", 11: "Na", 19: "K"}
    for z, name in names.items():
        out[numbers == z] = name
    unknown = ~np.isin(numbers, [1, 8, 11, 19])
    if unknown.any():
        raise ValueError(f"cannot label element(s) {sorted(set(numbers[unknown].tolist()))}: H, O, Na, K only")
    h = np.flatnonzero(numbers == 1)
    if h.size:
        o = np.flatnonzero(numbers == 8)
        if o.size == 0:
            raise ValueError("H atoms without any O atom")
        owner, dmin = h_owners(pos, numbers == 1, numbers == 8)
        if np.any(owner < 0):
            i = int(h[np.argmax(dmin)])
            raise ValueError(f"H atom {i} has no O within {OH_BOND_MAX} Å (nearest {dmin.max():.2f} Å)")
        out[h] = h_labels(pos[h] - pos[owner])
    return out


def h_owners(positions: np.ndarray, is_h: np.ndarray, is_o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The O each H belongs to: its nearest O within 1.3 Å.

    Returns, for each H of ``positions[is_h]``, the index into ``positions`` of its O
    (−1 when no O is within 1.3 Å) and the distance to the nearest O (inf without O).
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    h, o = np.flatnonzero(is_h), np.flatnonzero(is_o)
    if not o.size:
        return np.full(h.size, -1), np.full(h.size, np.inf)
    d = np.linalg.norm(pos[h, None, :] - pos[None, o, :], axis=2)
    nearest = d.argmin(axis=1)
    dmin = d[np.arange(h.size), nearest]
    return np.where(dmin <= OH_BOND_MAX, o[nearest], -1), dmin


def h_labels(bonds: np.ndarray) -> np.ndarray:
    """``H_up`` / ``H_flat`` / ``H_down`` of O–H bond vectors ``(n, 3)`` (O → H), by the rule above."""
    v = np.asarray(bonds, dtype=np.float64).reshape(-1, 3)
    elev = np.degrees(np.arcsin(np.clip(v[:, 2] / np.maximum(np.linalg.norm(v, axis=1), 1e-12), -1, 1)))
    return np.where(elev > H_ANGLE_DEG, "H_up", np.where(elev < -H_ANGLE_DEG, "H_down", "H_flat")).astype("<U6")


def within_top(positions: np.ndarray, depth: float) -> np.ndarray:
    """Mask of the atoms within ``depth`` Å of the structure's highest atom (what a scan sees)."""
    z = np.asarray(positions, dtype=np.float64).reshape(-1, 3)[:, 2]
    return z >= z.max() - depth if len(z) else np.zeros(0, bool)


def label_index(labels: Sequence[str]) -> np.ndarray:
    """Labels → indices into :data:`LABELS` (uint8)."""
    lut = {name: i for i, name in enumerate(LABELS)}
    return np.array([lut[str(v)] for v in labels], dtype=np.uint8)


def label_maps(
    positions: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    shape: tuple[int, int],
    pixel_size: float,
    origin: tuple[float, float] = (0.0, 0.0),
    sigma: float = 0.35,
) -> np.ndarray:
    """One Gaussian-blob channel per label, ``(len(LABELS), ny, nx)`` float32 in [0, 1].

    ``labels`` are names or indices into :data:`LABELS`; pixel ``(row, col)`` sits at
    ``(origin_y + row·d, origin_x + col·d)`` like an :class:`~hydrafm.stack.AFMStack`.
    """
    ny, nx = shape
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(labels)
    idx = labels.astype(np.int64) if labels.dtype.kind in "iu" else label_index(labels)
    maps = np.zeros((len(LABELS), ny, nx), dtype=np.float32)
    radius = int(math.ceil(3 * sigma / pixel_size))
    k = np.arange(-radius, radius + 1)
    for (x, y, _), c in zip(pos, idx):
        col, row = (x - origin[1]) / pixel_size, (y - origin[0]) / pixel_size
        c0, r0 = int(round(col)), int(round(row))
        cols, rows = c0 + k, r0 + k
        okc, okr = (cols >= 0) & (cols < nx), (rows >= 0) & (rows < ny)
        if not okc.any() or not okr.any():
            continue
        gx = np.exp(-0.5 * ((cols[okc] - col) * pixel_size / sigma) ** 2)
        gy = np.exp(-0.5 * ((rows[okr] - row) * pixel_size / sigma) ** 2)
        patch = gy[:, None] * gx[None, :]
        view = maps[c, rows[okr][0] : rows[okr][-1] + 1, cols[okc][0] : cols[okc][-1] + 1]
        np.maximum(view, patch, out=view)
    return maps


def vdw_sphere_image(
    positions: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    shape: tuple[int, int],
    pixel_size: float,
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """The a-vdW sphere picture: RGB float32 ``(ny, nx, 3)`` on a white background.

    Each atom is a sphere coloured by label; the sphere surface nearest the tip
    wins each pixel and is shaded by its height (higher = brighter), so the picture
    reads like the paper's structure representation.
    """
    ny, nx = shape
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(labels)
    names = [LABELS[int(i)] for i in labels] if labels.dtype.kind in "iu" else [str(v) for v in labels]
    zbuf = np.full((ny, nx), -np.inf)
    rgb = np.ones((ny, nx, 3), dtype=np.float32)
    if not len(pos):
        return rgb
    z_lo, z_hi = pos[:, 2].min() - 1.5, pos[:, 2].max() + 1.5
    yy = origin[0] + np.arange(ny) * pixel_size
    xx = origin[1] + np.arange(nx) * pixel_size
    for (x, y, z), name in zip(pos, names):
        r = SPHERE_RADIUS[name]
        cols = np.flatnonzero(np.abs(xx - x) <= r)
        rows = np.flatnonzero(np.abs(yy - y) <= r)
        if not cols.size or not rows.size:
            continue
        d2 = (yy[rows, None] - y) ** 2 + (xx[None, cols] - x) ** 2
        inside = d2 <= r * r
        h = z + np.sqrt(np.where(inside, r * r - d2, 0.0))
        sub = zbuf[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        win = inside & (h > sub)
        sub[win] = h[win]
        shade = 0.45 + 0.55 * np.clip((h - z_lo) / (z_hi - z_lo), 0, 1)
        col = np.asarray(LABEL_COLORS[name], dtype=np.float32)
        rgb_sub = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        rgb_sub[win] = (shade[win, None] * col[None, :]).astype(np.float32)
    return rgb
