"""Level H peaks put on the donor end of their H-bond, as the bond-end classifier reads the stack.

The structure network places a level H (``H_flat``) peak on the right bond but, as often as not,
at the wrong end of it: 0.94 Å from the O that *accepts* it, where it is taken for that O's H
(docs/structure-network.md, "H-bond ends"). Before the molecules are assembled, every level H peak
that lies along an O–O bond (its nearest O within 1.3 Å, another O 2.2–3.4 Å away within ~37°
of its direction) is checked with :mod:`hydrafm.models.bond_ends`: when the classifier gives its
own O less than ``tau`` chance of donating, the peak is reflected through the bond's midpoint
onto the other end; where a level H peak sits there already (the network marked both ends), it
is dropped instead. The assembly then builds the waters from the corrected peaks.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ..models.bond_ends import BondEndNet, bond_partner, donor_probability

__all__ = ["put_level_h_on_donor_ends"]

#: Å: a level H peak this near an O belongs to its bonds (the assembly's reach)
PEAK_REACH = 1.3
#: Å: a level H peak already this near the other end makes the checked one a duplicate
DUPLICATE = 0.5


def put_level_h_on_donor_ends(loose: Atoms, frames: np.ndarray, pixel_size: tuple[float, float],
                              origin: tuple[float, float], net: BondEndNet,
                              tau: float | None = None) -> tuple[Atoms, dict[str, int]]:
    """``loose`` peaks (``label``; x, y in Å) with level H moved to their bonds' donor ends.

    ``frames`` ``(Z, ny, nx)``: the stack on the grid ``pixel_size``/``origin`` (pixel ``(row,
    col)`` at ``(origin_y + row·dy, origin_x + col·dx)``), as the structure network saw it before
    normalisation. ``tau`` (None: the classifier's own) is the donor probability below which a peak
    moves. Returns the peaks and ``{"checked", "moved", "dropped"}``.
    """
    tau = net.info.tau if tau is None else float(tau)
    lab = np.asarray(loose.arrays["label"]).astype(str)
    xy = loose.positions[:, :2]
    o_idx = np.flatnonzero(lab == "O")
    flat = np.flatnonzero(lab == "H_flat")
    counts = {"checked": 0, "moved": 0, "dropped": 0}
    if len(o_idx) < 2 or not len(flat):
        return loose, counts
    peaks, own, other = [], [], []
    for h in flat:
        d = np.hypot(*(xy[o_idx] - xy[h]).T)
        k = int(np.argmin(d))
        if d[k] > PEAK_REACH:
            continue
        j = bond_partner(xy[o_idx], k, xy[h])
        if j is None:
            continue
        peaks.append(h)
        own.append(o_idx[k])
        other.append(o_idx[j])
    counts["checked"] = len(peaks)
    if not peaks:
        return loose, counts
    p = donor_probability(net, frames, pixel_size, origin, xy[own], xy[other])
    pos = loose.positions.copy()
    drop = np.zeros(len(loose), bool)
    for h, a, b, q in zip(peaks, own, other, p):
        if q >= tau:
            continue
        new = xy[a] + xy[b] - xy[h]  # the reflection through the bond's midpoint
        rest = flat[(flat != h) & ~drop[flat]]
        if len(rest) and np.hypot(*(pos[rest, :2] - new).T).min() < DUPLICATE:
            drop[h] = True
            counts["dropped"] += 1
        else:
            pos[h, :2] = new
            counts["moved"] += 1
    out = loose.copy()
    out.positions = pos
    return out[~drop], counts
