"""The bond-end classifier: which of the two O of an H-bond donates its level H, read off the stack.

A level H lies 0.97 Å from the O that donates it and ~1.8 Å from the one that accepts it. The
structure networks do not tell the two ends apart (docs/structure-network.md, "H-bond ends"), but
the stack does: moving the H to the other end changes the image around the bond by a quarter of
its standard deviation. This small network looks only there. Its input is the stack resampled on
a grid aligned with the bond — :data:`ALONG` × :data:`ACROSS` Å about the bond's midpoint, the
first O at negative ``along`` — every height a channel, the crop z-scored as a whole. Its output
is the log-odds that the *first* O donates. It is antisymmetric by construction (swapping the
ends negates it), so it cannot prefer either end of the grid. Trained by ``scripts/bond_ends.py``
on crops of true H-bonds of simulated training stacks. Checkpoint format ``hydrafm-bond-ends/1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import map_coordinates

from .checkpoint import write_payload
from .stacknet import load_stack_net, weights_file

__all__ = ["ALONG", "ACROSS", "BOND_COS", "BOND_ENDS_FORMAT", "BOND_OO", "SHIPPED_BOND_ENDS", "BondEndInfo",
           "BondEndNet", "bond_crops", "bond_partner",
           "donor_probability", "level_h_bonds", "load_bond_ends", "save_bond_ends", "shipped_bond_ends_path"]

BOND_ENDS_FORMAT = "hydrafm-bond-ends/1"
#: the classifier the package ships (``hydrafm/models/weights/bond_ends.pt``); see docs/structure-network.md
SHIPPED_BOND_ENDS = "bond_ends"
#: Å along the bond (first O at −1.4, the second at +1.4 for a 2.8 Å bond) and across it, 0.2 Å apart
ALONG = np.round(np.arange(-2.4, 2.41, 0.2), 6)
ACROSS = np.round(np.arange(-1.6, 1.61, 0.2), 6)


@dataclass
class BondEndInfo:
    """What the classifier expects (heights, their spacing) and how Predict uses it."""

    n_heights: int = 10
    dz: float = 0.1
    width: int = 32
    #: Predict moves a level H peak to the other end of its bond when P(its own O donates) < tau
    tau: float = 0.3
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class BondEndNet(torch.nn.Module):
    """Crops ``(B, Z, len(ALONG), len(ACROSS))`` → log-odds that the first O donates, ``(B,)``."""

    def __init__(self, info: BondEndInfo | None = None) -> None:
        super().__init__()
        self.info = info or BondEndInfo()
        c, w = self.info.n_heights, self.info.width
        conv = torch.nn.Conv2d
        self.features = torch.nn.Sequential(
            conv(c, w, 3, padding=1), torch.nn.GELU(), conv(w, w, 3, padding=1), torch.nn.GELU(),
            torch.nn.MaxPool2d(2), conv(w, 2 * w, 3, padding=1), torch.nn.GELU(),
            conv(2 * w, 2 * w, 3, padding=1), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d((3, 1)),
            torch.nn.Flatten(), torch.nn.Linear(6 * w, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # antisymmetric: the same crop seen from the other end gives the opposite answer
        return (self.features(x) - self.features(x.flip(-2)))[:, 0] / 2


def bond_crops(frames: np.ndarray, pixel_size: tuple[float, float], origin: tuple[float, float],
               first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The stack around bonds ``first[i]`` → ``second[i]`` (lateral x, y in Å, ``(n, 2)`` each).

    ``frames`` ``(Z, ny, nx)``; pixel ``(row, col)`` sits at ``(origin_y + row·dy, origin_x + col·dx)``.
    Returns ``(n, Z, len(ALONG), len(ACROSS))`` float32, each crop z-scored.
    """
    first = np.asarray(first, dtype=np.float64).reshape(-1, 2)
    second = np.asarray(second, dtype=np.float64).reshape(-1, 2)
    frames = np.asarray(frames, dtype=np.float32)
    out = np.zeros((len(first), frames.shape[0], len(ALONG), len(ACROSS)), np.float32)
    for i, (a, b) in enumerate(zip(first, second)):
        axis = (b - a) / max(float(np.linalg.norm(b - a)), 1e-9)
        across = np.array([-axis[1], axis[0]])
        grid = (a + b)[None, None] / 2 + ALONG[:, None, None] * axis + ACROSS[None, :, None] * across
        rows = (grid[..., 1] - origin[0]) / pixel_size[0]
        cols = (grid[..., 0] - origin[1]) / pixel_size[1]
        crop = np.stack([map_coordinates(f, [rows, cols], order=1, mode="nearest") for f in frames])
        out[i] = (crop - crop.mean()) / max(float(crop.std()), 1e-6)
    return out


def donor_probability(net: BondEndNet, frames: np.ndarray, pixel_size: tuple[float, float],
                      origin: tuple[float, float], first: np.ndarray, second: np.ndarray,
                      batch: int = 256) -> np.ndarray:
    """P(the first O of each bond donates its level H), ``(n,)``."""
    if len(frames) != net.info.n_heights:
        raise ValueError(f"the bond-end classifier takes {net.info.n_heights} heights, got {len(frames)}")
    crops = bond_crops(frames, pixel_size, origin, first, second)
    param = next(net.parameters())
    out = []
    with torch.no_grad():
        for s in range(0, len(crops), batch):
            x = torch.from_numpy(crops[s:s + batch]).to(device=param.device, dtype=param.dtype)
            out.append(torch.sigmoid(net(x)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


#: Å, the lateral O–O distances of an H-bond; the least cosine between an O–H and the bond it lies along
BOND_OO = (2.2, 3.4)
BOND_COS = 0.8


def bond_partner(o_xy: np.ndarray, own: int, h_xy: np.ndarray, min_cos: float = BOND_COS) -> int | None:
    """Index into ``o_xy`` (lateral O positions, Å) of the O the H at ``h_xy`` of O ``own`` points at.

    Among the O :data:`BOND_OO` from ``o_xy[own]`` (laterally), the one nearest the O–H's direction, if
    the cosine of that angle is at least ``min_cos``; else None.
    """
    o_xy = np.asarray(o_xy, dtype=np.float64)[:, :2]
    u = np.asarray(h_xy, dtype=np.float64)[:2] - o_xy[own]
    u = u / max(float(np.linalg.norm(u)), 1e-9)
    w = o_xy - o_xy[own]
    dw = np.linalg.norm(w, axis=1)
    sel = np.flatnonzero((dw > BOND_OO[0]) & (dw < BOND_OO[1]))
    if not len(sel):
        return None
    cos = (w[sel] / dw[sel, None]) @ u
    k = int(np.argmax(cos))
    return int(sel[k]) if cos[k] >= min_cos else None


def level_h_bonds(positions: np.ndarray, labels: np.ndarray, top: float = 1.5) -> list[tuple[int, int]]:
    """``(donor O, acceptor O)`` indices of a structure's H-bonds that carry a level H in its top ``top`` Å.

    The donor is the O nearest the ``H_flat`` atom (within 1.2 Å); the acceptor its :func:`bond_partner`
    (what the classifier is trained and scored on).
    """
    positions = np.asarray(positions, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    o = np.flatnonzero(labels == "O")
    out: list[tuple[int, int]] = []
    if len(o) < 2:
        return out
    ztop = positions[:, 2].max()
    for h in np.flatnonzero((labels == "H_flat") & (positions[:, 2] >= ztop - top)):
        d = np.linalg.norm(positions[o] - positions[h], axis=1)
        k = int(np.argmin(d))
        if d[k] > 1.2:
            continue
        j = bond_partner(positions[o], k, positions[h])
        if j is not None:
            out.append((int(o[k]), int(o[j])))
    return out


def save_bond_ends(path: str | os.PathLike, net: BondEndNet) -> Path:
    """Write a bond-end classifier atomically (``hydrafm-bond-ends/1``)."""
    return write_payload(path, BOND_ENDS_FORMAT, net.info.to_dict(), net)


def load_bond_ends(path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu") -> BondEndNet:
    """Read a bond-end classifier (eval mode; the shipped one when ``path`` is None); :class:`CheckpointError`
    naming the file when it is not one."""
    path = shipped_bond_ends_path() if path is None else path
    return load_stack_net(path, BOND_ENDS_FORMAT, "bond-end classifier",
                          lambda info: BondEndNet(BondEndInfo(**info)), map_location)


def shipped_bond_ends_path() -> Path:
    """The shipped classifier's file."""
    return weights_file(SHIPPED_BOND_ENDS)
