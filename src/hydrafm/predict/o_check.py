"""O peaks checked one by one before the assembly, as the O check reads the stack around them.

Every O peak of the structure network is shown to :mod:`hydrafm.models.o_check` with the stack and
the network's maps around it. A peak the check gives less than ``tau`` chance of being a real O
is dropped. A check whose ``info.move`` is set also moves the others to where it reads their O
(a misplaced O of a bilayer's lower half by up to ~1.5 Å), and of two O that end up closer than
:data:`CLASH` the less likely goes. The assembly then builds the waters from the checked peaks.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ..models.o_check import OCheckNet, o_verdicts

__all__ = ["CLASH", "check_o_peaks"]

#: Å: two checked O closer than this are one O seen twice
CLASH = 1.5


def check_o_peaks(loose: Atoms, frames: np.ndarray, maps: np.ndarray, labels: list[str],
                  pixel_size: tuple[float, float], origin: tuple[float, float], net: OCheckNet,
                  tau: float | None = None, move: bool | None = None,
                  min_move: float | None = None) -> tuple[Atoms, dict[str, int]]:
    """``loose`` peaks (``label``; x, y in Å) with unlikely O dropped (and the others moved).

    ``frames`` ``(Z, ny, nx)`` (the stack before normalisation) and ``maps`` ``(C, ny, nx)`` (the
    structure network's, ``labels`` naming its channels) on the grid ``pixel_size``/``origin``.
    ``tau`` (None: the check's own) is the probability below which an O peak is dropped. Returns
    the peaks and ``{"checked", "dropped", "moved"}`` (moved: by more than 0.2 Å). ``move`` (None:
    the check's own ``info.move``) also moves the kept O by the read offset and resolves clashes;
    ``min_move`` (None: the check's own ``info.min_move``, Å) leaves an O whose offset is shorter where it is.
    """
    tau = net.info.tau if tau is None else float(tau)
    move = net.info.move if move is None else bool(move)
    min_move = net.info.min_move if min_move is None else float(min_move)
    lab = np.asarray(loose.arrays["label"]).astype(str)
    o_idx = np.flatnonzero(lab == "O")
    counts = {"checked": len(o_idx), "dropped": 0, "moved": 0}
    if not len(o_idx):
        return loose, counts
    out = loose.copy()
    p, offset = o_verdicts(net, frames, maps, labels, pixel_size, origin, out.positions[o_idx, :2])
    keep = p >= tau
    drop = np.zeros(len(out), bool)
    drop[o_idx[~keep]] = True
    counts["dropped"] = int(drop.sum())
    if not move:
        return out[~drop], counts
    offset = np.where((np.hypot(*offset.T) < min_move)[:, None], 0.0, offset)
    out.positions[o_idx[keep], :2] += offset[keep]
    counts["moved"] = int(np.sum(np.hypot(*offset[keep].T) > 0.2))
    order = np.argsort(-p)
    xy = out.positions[:, :2]
    for n, i in enumerate(order):  # the likelier of two clashing O stays
        if drop[o_idx[i]]:
            continue
        for j in order[n + 1:]:
            if not drop[o_idx[j]] and np.hypot(*(xy[o_idx[j]] - xy[o_idx[i]])) < CLASH:
                drop[o_idx[j]] = True
    counts["dropped"] = int(drop.sum())
    return out[~drop], counts
