"""The O check: is an O peak of the structure network a real O, and where exactly is it?

On ice-like layers a sixth of the structure network's O peaks are not O: most sit 0.75–1.5 Å
from an O of a bilayer's lower half that the network saw but misplaced, the rest on nothing
(docs/structure-network.md, "The O check"). This small network looks at one peak at a time: the
stack (every height a channel, z-scored as a whole), the network's O map and its summed H maps on
a 6.4 × 6.4 Å grid (:data:`GRID`) centred on the peak. It returns the probability that a true O
lies within 1.5 Å, and the lateral offset from the peak to that O (Å, x then y). Two heads: the
first checks (``head="offset"``) give a log-odds and regress the offset, which averages the
directions a misplaced O may lie in; ``head="cells"`` says in which of :data:`CELLS` ×
:data:`CELLS` cells of 0.4 Å the O lies, or that there is none, and where within that cell. Trained by
``scripts/o_check.py`` on the structure network's own peaks on simulated *training* stacks.
Checkpoint format ``hydrafm-o-check/1``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import map_coordinates

from .checkpoint import write_payload
from .stacknet import load_stack_net, weights_file

__all__ = [
    "CELLS",
    "GRID",
    "O_CHECK_FORMAT",
    "SHIPPED_O_CHECK",
    "VIEW_AGREE",
    "OCheckInfo",
    "OCheckNet",
    "cell_targets",
    "decode_cells",
    "load_o_check",
    "o_crops",
    "o_verdicts",
    "save_o_check",
    "shipped_o_check_path",
    "turn_crops",
]

O_CHECK_FORMAT = "hydrafm-o-check/1"
#: the check the package ships (``hydrafm/models/weights/o_check.pt``)
SHIPPED_O_CHECK = "o_check"
#: Å, the crop's sample points on each axis about the peak (6.4 Å across, 0.2 Å apart)
GRID = np.round(np.arange(-16, 17) * 0.2, 6)
H_LABELS = ("H_up", "H_flat", "H_down")
#: cells per side of the ``cells`` head, over the crop's first 32 × 32 samples (0.4 Å each)
CELLS = 16
_STEP = float(GRID[1] - GRID[0])
#: Å: the views' offsets this close to their medoid are averaged (:attr:`OCheckInfo.views`)
VIEW_AGREE = 0.5
_VIEWS = {1: ((0, False),), 4: ((0, False), (0, True), (2, False), (2, True)),
          8: tuple((k, f) for k in range(4) for f in (False, True))}
_CENTRE = len(GRID) // 2


@dataclass
class OCheckInfo:
    """What the check expects (heights) and how Predict uses it."""

    n_heights: int = 10
    width: int = 32
    #: Predict drops an O peak whose probability of being a real O is below tau
    tau: float = 0.5
    #: Predict also moves the kept O by the offset the check reads (and then drops the less likely of
    #: two O closer than :data:`~hydrafm.predict.o_check.CLASH`); False: it only drops
    move: bool = True
    #: Å: a kept O whose read offset is shorter than this stays where the network put it (its H peaks
    #: then keep their distances to it); 0: every kept O is moved
    min_move: float = 0.0
    #: views each peak's crop is read in (1; 4: turned 0 and 2 quarter turns, each also mirrored; 8: all
    #: quarter turns, each also mirrored): P(O) is their mean, the offset the mean of the views' offsets
    #: (turned back) within :data:`VIEW_AGREE` Å of their medoid
    views: int = 1
    #: "offset": a log-odds and a regressed offset; "cells": one of CELLS × CELLS cells or none
    head: str = "offset"
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class OCheckNet(torch.nn.Module):
    """Crops ``(B, Z + 2, len(GRID), len(GRID))`` → the check's raw output; :meth:`verdicts` reads it.

    ``head="offset"``: ``(B, 3)``, log-odds of a real O, offset x, offset y (Å). ``head="cells"``:
    ``(logits (B, CELLS² + 1), in-cell offsets (B, 2, CELLS, CELLS))``, the last logit for "no O".
    """

    def __init__(self, info: OCheckInfo | None = None) -> None:
        super().__init__()
        self.info = info or OCheckInfo()
        c, w = self.info.n_heights + 2, self.info.width
        conv = torch.nn.Conv2d
        if self.info.head == "cells":
            gelu = torch.nn.GELU
            self.e1 = torch.nn.Sequential(conv(c, w, 3, padding=1), gelu(), conv(w, w, 3, padding=1), gelu())
            self.e2 = torch.nn.Sequential(torch.nn.MaxPool2d(2), conv(w, 2 * w, 3, padding=1), gelu(),
                                          conv(2 * w, 2 * w, 3, padding=1), gelu())
            self.e3 = torch.nn.Sequential(torch.nn.MaxPool2d(2), conv(2 * w, 64, 3, padding=1), gelu(),
                                          conv(64, 64, 3, padding=1), gelu())
            self.none = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                            torch.nn.Linear(64, 32), gelu(), torch.nn.Linear(32, 1))
            self.d = torch.nn.Sequential(conv(2 * w + 64, 48, 3, padding=1), gelu(), conv(48, 3, 1))
            return
        if self.info.head != "offset":
            raise ValueError(f"unknown O check head {self.info.head!r} (offset or cells)")
        self.f = torch.nn.Sequential(
            conv(c, w, 3, padding=1), torch.nn.GELU(), conv(w, w, 3, padding=1), torch.nn.GELU(), torch.nn.MaxPool2d(2),
            conv(w, 2 * w, 3, padding=1), torch.nn.GELU(), conv(2 * w, 2 * w, 3, padding=1), torch.nn.GELU(),
            torch.nn.MaxPool2d(2), conv(2 * w, 2 * w, 3, padding=1), torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2 * w, 64), torch.nn.GELU(),
            torch.nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.info.head == "offset":
            return self.f(x)
        f2 = self.e2(self.e1(x[..., :2 * CELLS, :2 * CELLS]))
        f3 = self.e3(f2)
        up = torch.nn.functional.interpolate(f3, size=f2.shape[-2:], mode="nearest")
        h = self.d(torch.cat([f2, up], 1))
        return torch.cat([h[:, 0].flatten(1), self.none(f3)], 1), h[:, 1:]

    def with_views(self, views: int) -> OCheckNet:
        """The same check (the same weights, shared) reading each crop in ``views`` views (1, 4 or 8)."""
        if views not in _VIEWS:
            raise ValueError(f"the O check reads 1, 4 or 8 views, not {views}")
        twin = copy.copy(self)
        twin.info = replace(self.info, views=int(views))
        return twin

    def verdicts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P(a real O) (B,), offset to it (B, 2) Å x, y)`` for crops ``x``."""
        if self.info.head == "cells":
            return decode_cells(*self(x))
        o = self(x)
        return torch.sigmoid(o[:, 0]), o[:, 1:]


def cell_targets(offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``cells`` head's answer for O at ``offset`` ``(B, 2)`` (Å, x then y) from the crop's centre:
    the cell (``row · CELLS + col``) and the place within it ``(B, 2)`` (x, y; cell widths from its middle)."""
    p = _CENTRE + offset / _STEP  # crop samples, x then y
    cell = torch.clamp(torch.floor(p / 2), 0, CELLS - 1)
    return (cell[:, 1] * CELLS + cell[:, 0]).long(), p / 2 - cell - 0.5


def decode_cells(logits: torch.Tensor, within: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``cells`` head's raw output → ``(P(a real O), offset (B, 2) Å)``: the likeliest cell, and the
    place within it."""
    prob = torch.softmax(logits, 1)
    cell = prob[:, :-1].argmax(1)
    row, col, b = cell // CELLS, cell % CELLS, torch.arange(len(cell), device=cell.device)
    x = (col + 0.5 + within[b, 0, row, col].clamp(-0.5, 0.5)) * 2
    y = (row + 0.5 + within[b, 1, row, col].clamp(-0.5, 0.5)) * 2
    return 1 - prob[:, -1], torch.stack([x - _CENTRE, y - _CENTRE], 1) * _STEP


def o_crops(frames: np.ndarray, maps: np.ndarray, labels: Sequence[str], pixel_size: tuple[float, float],
            origin: tuple[float, float], xy: np.ndarray) -> np.ndarray:
    """The check's input around each peak ``xy`` ``(n, 2)`` (x, y in Å): ``(n, Z + 2, 33, 33)`` float32.

    ``frames`` ``(Z, ny, nx)`` and ``maps`` ``(C, ny, nx)`` (the structure network's, ``labels`` naming
    its channels) share the grid: pixel ``(row, col)`` at ``(origin_y + row·dy, origin_x + col·dx)``.
    The frames are z-scored over the crop; the O map and the sum of the H maps follow as they are.
    """
    labels = list(labels)
    o_map = np.asarray(maps[labels.index("O")], np.float32)
    h_map = sum(np.asarray(maps[labels.index(n)], np.float32) for n in H_LABELS)
    frames = np.asarray(frames, np.float32)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    out = np.zeros((len(xy), len(frames) + 2, len(GRID), len(GRID)), np.float32)
    for i, (x, y) in enumerate(xy):
        rows = np.broadcast_to((y + GRID[:, None] - origin[0]) / pixel_size[0], (len(GRID), len(GRID)))
        cols = np.broadcast_to((x + GRID[None, :] - origin[1]) / pixel_size[1], (len(GRID), len(GRID)))
        st = np.stack([map_coordinates(f, [rows, cols], order=1, mode="nearest") for f in frames])
        out[i, :-2] = (st - st.mean()) / max(float(st.std()), 1e-6)
        out[i, -2] = map_coordinates(o_map, [rows, cols], order=1, mode="constant")
        out[i, -1] = map_coordinates(h_map, [rows, cols], order=1, mode="constant")
    return out


def turn_crops(x: torch.Tensor, offset: torch.Tensor, k: int, mirror: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops ``x`` ``(B, C, n, n)`` turned ``k`` quarter turns (rows y, columns x), then mirrored in x, with
    their offsets ``(B, 2)`` (Å, x then y) turned the same way (how the check is trained to see any view)."""
    x = torch.rot90(x, k, (-2, -1))
    dx, dy = offset[:, 0], offset[:, 1]
    for _ in range(k):  # a quarter turn takes (dy, dx) to (-dx, dy)
        dy, dx = -dx, dy
    if mirror:
        x, dx = x.flip(-1), -dx
    return x, torch.stack([dx, dy], 1)


def _offset_back(offset: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """An offset read in the view ``(k, mirror)`` of :func:`turn_crops`, in the crop's own frame."""
    dx, dy = offset[:, 0], offset[:, 1]
    if mirror:
        dx = -dx
    for _ in range(k):  # undo a quarter turn: (dy, dx) back from (-dx, dy)
        dy, dx = dx, -dy
    return torch.stack([dx, dy], 1)


def _agreed(offsets: torch.Tensor) -> torch.Tensor:
    """``(V, B, 2)`` offsets of V views → ``(B, 2)``: the mean of those within :data:`VIEW_AGREE` of the medoid."""
    d = torch.linalg.norm(offsets[:, None] - offsets[None, :], dim=-1)  # (V, V, B)
    medoid = offsets[d.sum(1).argmin(0), torch.arange(offsets.shape[1], device=offsets.device)]  # (B, 2)
    near = (torch.linalg.norm(offsets - medoid[None], dim=-1) <= VIEW_AGREE).float()[..., None]
    return (offsets * near).sum(0) / near.sum(0)


def o_verdicts(net: OCheckNet, frames: np.ndarray, maps: np.ndarray, labels: Sequence[str],
               pixel_size: tuple[float, float], origin: tuple[float, float], xy: np.ndarray,
               batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(P(a real O), offset (n, 2) Å x, y)`` for each peak ``xy``, read in the check's
    :attr:`~OCheckInfo.views`."""
    if len(frames) != net.info.n_heights:
        raise ValueError(f"the O check takes {net.info.n_heights} heights, got {len(frames)}")
    views = _VIEWS.get(int(net.info.views))
    if views is None:
        raise ValueError(f"the O check reads 1, 4 or 8 views, not {net.info.views}")
    crops = o_crops(frames, maps, labels, pixel_size, origin, xy)
    param = next(net.parameters())
    p, off = [np.zeros(0, np.float32)], [np.zeros((0, 2), np.float32)]
    with torch.no_grad():
        for s in range(0, len(crops), batch):
            x = torch.from_numpy(crops[s:s + batch]).to(device=param.device, dtype=param.dtype)
            zero = torch.zeros(len(x), 2, device=x.device)
            pb, ob = net.verdicts(torch.cat([turn_crops(x, zero, k, mirror)[0] for k, mirror in views]))
            pb, ob = pb.float().reshape(len(views), len(x)), ob.float().reshape(len(views), len(x), 2)
            offs = torch.stack([_offset_back(ob[v], k, mirror) for v, (k, mirror) in enumerate(views)])
            p.append(pb.mean(0).cpu().numpy())
            off.append((_agreed(offs) if len(views) > 1 else offs[0]).cpu().numpy())
    return np.concatenate(p), np.concatenate(off)


def save_o_check(path: str | os.PathLike, net: OCheckNet) -> Path:
    """Write an O check atomically (``hydrafm-o-check/1``)."""
    return write_payload(path, O_CHECK_FORMAT, net.info.to_dict(), net)


def load_o_check(path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu") -> OCheckNet:
    """Read an O check (eval mode; the shipped one when ``path`` is None); :class:`CheckpointError` naming
    the file when it is not one."""
    path = shipped_o_check_path() if path is None else path
    return load_stack_net(path, O_CHECK_FORMAT, "O check", lambda info: OCheckNet(OCheckInfo(**info)), map_location)


def shipped_o_check_path() -> Path:
    """The shipped check's file."""
    return weights_file(SHIPPED_O_CHECK)
