"""How good is a prediction: per-label precision, recall, F1 and H-orientation accuracy.

Matching is lateral (x, y) and one-to-one (Hungarian assignment) within ``radius``
(0.75 Å). True atoms must be found only if they lie in the top ``top`` Å of the structure
(z ≥ z_max − 3 Å by default); predicted atoms carry no absolute height. With a tighter cut
(e.g. ``top=1.5``), a prediction left unmatched that lies on a real atom of its group below
the cut but still within ``visible`` (3 Å) of the top (one-to-one, within ``radius``) is
neither a hit nor a false positive: it found a visible atom the count did not ask for (a
"don't care" zone, as in detection benchmarks; the lower half of a bilayer sits 1.5–3 Å
below the highest H). Before 2026-11-27 such predictions counted as false positives;
``visible=None`` scores that way. Labels are scored as O, Na, K
and H (the three H classes together); among matched H, the orientation accuracy is the
fraction whose class (up / flat / down) is right.

Whole molecules: a true water is its O and the two H nearest to it (within 1.3 Å);
it is visible when all three lie in the top ``top`` Å, and found whole when its O and
both H are matched (the same one-to-one lateral matching as above). Counts add up over
many stacks (:meth:`Scores.add`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..simulate.labels import h_owners, within_top

__all__ = ["Scores", "score_atoms", "GROUPS"]

GROUPS = {"O": ("O",), "Na": ("Na",), "K": ("K",), "H": ("H_up", "H_flat", "H_down")}


@dataclass
class Scores:
    """TP / FP / FN per group and H-orientation hits; add them up over a dataset."""

    tp: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))
    fp: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))
    fn: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))
    deeper: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))  # on visible atoms below the cut
    h_matched: int = 0
    h_orientation_right: int = 0
    water_visible: int = 0
    water_whole: int = 0
    stacks: int = 0

    def add(self, other: "Scores") -> "Scores":
        for g in GROUPS:
            self.tp[g] += other.tp[g]
            self.fp[g] += other.fp[g]
            self.fn[g] += other.fn[g]
            self.deeper[g] += other.deeper[g]
        self.h_matched += other.h_matched
        self.h_orientation_right += other.h_orientation_right
        self.water_visible += other.water_visible
        self.water_whole += other.water_whole
        self.stacks += other.stacks
        return self

    def summary(self) -> dict[str, dict[str, float] | float | int]:
        """Precision, recall, F1 and support per group (groups with no atoms at all are left out).

        ``predicted`` counts the scored predictions (hits and false positives); ``deeper`` those
        on visible atoms below the cut, which are not scored.

        Also ``H_orientation`` (among matched H), ``whole_molecules`` (the fraction of visible
        true waters found whole) with ``water_molecules`` (how many were visible), and ``stacks``.
        """
        out: dict = {}
        for g in GROUPS:
            tp, fp, fn = self.tp[g], self.fp[g], self.fn[g]
            if tp + fp + fn + self.deeper[g] == 0:
                continue
            p = tp / (tp + fp) if tp + fp else 0.0
            r = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            out[g] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                      "true": tp + fn, "predicted": tp + fp, "deeper": self.deeper[g]}
        if self.h_matched:
            out["H_orientation"] = round(self.h_orientation_right / self.h_matched, 4)
        if self.water_visible:
            out["whole_molecules"] = round(self.water_whole / self.water_visible, 4)
            out["water_molecules"] = self.water_visible
        out["stacks"] = self.stacks
        return out


def score_atoms(
    pred_xy: np.ndarray,
    pred_labels: np.ndarray,
    true_xyz: np.ndarray,
    true_labels: np.ndarray,
    radius: float = 0.75,
    top: float = 3.0,
    visible: float | None = 3.0,
) -> Scores:
    """Scores of one stack: predicted (x, y) + labels against true (x, y, z) + labels (Å, names).

    Predictions on real atoms between the ``top`` cut and ``visible`` Å below the highest atom
    are not scored (``visible`` None, or not below ``top``: they are false positives; see the module
    docstring).
    """
    pred_xy = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    true_xyz = np.asarray(true_xyz, dtype=np.float64).reshape(-1, 3)
    pred_labels = np.asarray(pred_labels).astype(str)
    true_labels = np.asarray(true_labels).astype(str)
    is_h = np.isin(true_labels, GROUPS["H"])
    owner = np.full(len(true_xyz), -1)
    owner[is_h] = h_owners(true_xyz, is_h, true_labels == "O")[0]
    in_top = within_top(true_xyz, top) if len(true_xyz) else np.zeros(0, bool)
    kept = np.flatnonzero(in_top)
    zone = np.zeros_like(in_top)  # visible atoms below the cut: predictions on them are not scored
    if visible is not None and len(true_xyz):
        zone = ~in_top & within_top(true_xyz, visible)
    deep_xyz, deep_labels = true_xyz[zone], true_labels[zone]
    true_xyz, true_labels = true_xyz[in_top], true_labels[in_top]
    matched = np.zeros(len(in_top), bool)  # true atoms (all, before the top cut) matched by a prediction
    s = Scores(stacks=1)
    for g, members in GROUPS.items():
        pi = np.flatnonzero(np.isin(pred_labels, members))
        ti = np.flatnonzero(np.isin(true_labels, members))
        rows, cols = _match(pred_xy[pi], true_xyz[ti, :2], radius)
        if len(deep_xyz):
            rest = np.setdiff1d(np.arange(len(pi)), rows)
            s.deeper[g] = len(_match(pred_xy[pi[rest]], deep_xyz[np.isin(deep_labels, members), :2], radius)[0])
        s.tp[g] = len(rows)
        s.fp[g] = len(pi) - len(rows) - s.deeper[g]
        s.fn[g] = len(ti) - len(rows)
        matched[kept[ti[cols]]] = True
        if g == "H" and len(rows):
            s.h_matched = len(rows)
            s.h_orientation_right = int(np.sum(pred_labels[pi[rows]] == true_labels[ti[cols]]))
    s.water_visible, s.water_whole = _whole_waters(owner, in_top, matched)
    return s


def _match(pred_xy: np.ndarray, true_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one lateral matching within ``radius``: (prediction rows, true columns) of the pairs."""
    from scipy.optimize import linear_sum_assignment

    if not len(pred_xy) or not len(true_xy):
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    d = np.hypot(*(pred_xy[:, None, :] - true_xy[None, :, :]).transpose(2, 0, 1))
    cost = np.where(d <= radius, d, 1e6)
    rows, cols = linear_sum_assignment(cost)
    ok = cost[rows, cols] <= radius
    return rows[ok], cols[ok]


def _whole_waters(owner: np.ndarray, visible: np.ndarray, matched: np.ndarray) -> tuple[int, int]:
    """(visible true waters, those found whole) from each true H's O (``owner``, −1 for none or non-H)."""
    h = np.flatnonzero(owner >= 0)
    n_h = np.bincount(owner[h], minlength=len(owner))
    h_visible = np.bincount(owner[h], visible[h], minlength=len(owner))
    h_matched = np.bincount(owner[h], visible[h] & matched[h], minlength=len(owner))
    water = (n_h == 2) & visible & (h_visible == 2)
    return int(water.sum()), int((water & matched & (h_matched == 2)).sum())
