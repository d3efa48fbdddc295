"""From label maps to atoms: peaks, de-duplication, confidence, H → O assignment, z.

Each label map (0–1) is searched for local maxima above ``threshold`` (plus the label's
margin, if the model records one); a peak's position is refined to sub-pixel by the vertex
of a parabola through the log of the map (along its row and column) and its confidence is
the map value. Peaks of competing labels at one place are merged, keeping the most
confident: the three H classes within ``H_MERGE`` Å of each other, and O / Na / K within
``HEAVY_MERGE`` Å. Every H is assigned to the nearest O (lateral distance ≤ 1.3 Å) and
given a height from its class: H_up above its O, H_flat level with it, H_down below, with
an O–H bond of 0.96 Å. O, Na and K sit at z = 0 (the top layer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from ase import Atoms

from ..io.xyz import ELEMENT, LABELS

__all__ = ["maps_to_atoms", "label_threshold", "OH_BOND", "MIN_DISTANCE"]

OH_BOND = 0.96  # Å
H_MERGE = 0.5  # Å
HEAVY_MERGE = 1.2  # Å
#: minimum distance between two peaks of one label (Å)
MIN_DISTANCE = {"O": 1.6, "Na": 2.0, "K": 2.0, "H_up": 0.7, "H_flat": 0.7, "H_down": 0.7}
H_LABELS = ("H_up", "H_flat", "H_down")


def label_threshold(threshold: float, label: str, margins: Mapping[str, float] | None = None) -> float:
    """The confidence a peak of ``label`` needs: ``threshold`` plus the label's margin (which may be
    negative), kept within 0.01–0.99."""
    return min(max(float(threshold) + float((margins or {}).get(label, 0.0)), 0.01), 0.99)


def _peaks(m: np.ndarray, min_px: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak positions ``(row, col)`` and values of one map.

    Each local maximum is placed at the vertex of the parabola through the logarithm of the map
    along its row and its column: exact for the Gaussian blobs the network is trained to draw (a
    3 × 3 centroid pulls them towards the pixel's centre, by up to 0.1 Å at 0.2 Å pixels).
    """
    from skimage.feature import peak_local_max

    idx = peak_local_max(m, min_distance=max(1, min_px), threshold_abs=threshold, exclude_border=False)
    if len(idx) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    lg = np.log(np.clip(np.pad(m, 1, mode="edge"), 1e-6, None))
    r, c = idx[:, 0] + 1, idx[:, 1] + 1

    def vertex(minus: np.ndarray, centre: np.ndarray, plus: np.ndarray) -> np.ndarray:
        curv = minus - 2 * centre + plus
        ok = curv < -1e-6
        return np.where(ok, 0.5 * (minus - plus) / np.where(ok, curv, -1.0), 0.0).clip(-0.5, 0.5)

    out = np.column_stack([idx[:, 0] + vertex(lg[r - 1, c], lg[r, c], lg[r + 1, c]),
                           idx[:, 1] + vertex(lg[r, c - 1], lg[r, c], lg[r, c + 1])])
    return out, m[idx[:, 0], idx[:, 1]]


def _merge(xy: np.ndarray, conf: np.ndarray, radius: float) -> np.ndarray:
    """Indices to keep so no two kept points are closer than ``radius`` (most confident first)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(xy)
    suppressed = np.zeros(len(xy), bool)
    kept = []
    for i in np.argsort(-conf, kind="stable"):
        if suppressed[i]:
            continue
        kept.append(int(i))
        suppressed[tree.query_ball_point(xy[i], radius - 1e-9)] = True
    return np.array(sorted(kept), dtype=int)


def maps_to_atoms(
    maps: np.ndarray,
    pixel_size: float | tuple[float, float],
    origin: tuple[float, float] = (0.0, 0.0),
    threshold: float = 0.5,
    labels: tuple[str, ...] = LABELS,
    margins: Mapping[str, float] | None = None,
) -> Atoms:
    """Atoms from label maps ``(n_labels, ny, nx)`` with values in 0–1.

    Pixel ``(row, col)`` is at ``(origin_y + row·dy, origin_x + col·dx)`` Å. Returns
    ``ase.Atoms`` with per-atom arrays ``label`` and ``confidence``. ``margins``: extra
    confidence the peaks of some labels need above ``threshold`` (e.g. ``{"Na": 0.2}``; a
    model records its own, :func:`~hydrafm.predict.predictor.label_margins`).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != len(labels):
        raise ValueError(f"maps must be ({len(labels)}, ny, nx), got {maps.shape}")
    dy, dx = (pixel_size, pixel_size) if np.isscalar(pixel_size) else pixel_size  # type: ignore[misc]
    xs, ys, labs, confs = [], [], [], []
    for ch, name in enumerate(labels):
        rc, val = _peaks(maps[ch], int(round(MIN_DISTANCE.get(name, 1.0) / 2 / min(dy, dx))),
                         label_threshold(threshold, name, margins))
        xs.extend(origin[1] + rc[:, 1] * dx)
        ys.extend(origin[0] + rc[:, 0] * dy)
        labs.extend([name] * len(val))
        confs.extend(val.tolist())
    xy = np.column_stack([xs, ys]) if xs else np.zeros((0, 2))
    labs_a = np.array(labs, dtype="<U6")
    conf = np.array(confs, dtype=np.float64)
    keep = np.ones(len(labs_a), bool)
    for group, radius in ((H_LABELS, H_MERGE), (("O", "Na", "K"), HEAVY_MERGE)):
        members = np.flatnonzero(np.isin(labs_a, group))
        if len(members) > 1:
            kept = members[_merge(xy[members], conf[members], radius)]
            drop = np.setdiff1d(members, kept)
            keep[drop] = False
    xy, labs_a, conf = xy[keep], labs_a[keep], conf[keep]

    z = np.zeros(len(labs_a))
    o_idx = np.flatnonzero(labs_a == "O")
    for i in np.flatnonzero(np.isin(labs_a, H_LABELS)):
        if not len(o_idx):
            break
        d = np.hypot(*(xy[o_idx] - xy[i]).T)
        j = int(np.argmin(d))
        if d[j] > 1.3:
            continue
        lateral = min(d[j], OH_BOND)
        rise = math.sqrt(max(OH_BOND**2 - lateral**2, 0.0))
        if labs_a[i] == "H_up":
            z[i] = z[o_idx[j]] + max(rise, 0.3)
        elif labs_a[i] == "H_down":
            z[i] = z[o_idx[j]] - max(rise, 0.3)
    atoms = Atoms(
        symbols=[ELEMENT[str(v)] for v in labs_a],
        positions=np.column_stack([xy, z]) if len(labs_a) else np.zeros((0, 3)),
    )
    atoms.new_array("label", labs_a)
    atoms.new_array("confidence", conf)
    return atoms
