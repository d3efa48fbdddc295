"""The O check: is an O peak of the structure network a real O, and where exactly is it?

On ice-like layers a sixth of the structure network's O peaks are not O: most sit 0.75–1.5 Å
from an O of a bilayer's lower half that the network saw but misplaced, the rest on nothing
(docs/structure-network.md, "The O check"). This small network looks at one peak at a time: the
stack (every height a channel, z-scored as a whole), the network's O map and its summed H maps on
a :data:`CROP` × :data:`CROP` Å grid centred on the peak. It returns the log-odds that a true O
lies within 1.5 Å, and the lateral offset from the peak to that O (Å, x then y). Trained by
``scripts/o_check.py`` on the structure network's own peaks on simulated *training* stacks.
Checkpoint format ``hydrafm-o-check/1``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import map_coordinates

from .checkpoint import write_payload
from .stacknet import load_stack_net, weights_file

__all__ = ["GRID", "O_CHECK_FORMAT", "SHIPPED_O_CHECK", "OCheckInfo", "OCheckNet", "load_o_check", "o_crops",
           "o_verdicts", "save_o_check", "shipped_o_check_path"]

O_CHECK_FORMAT = "hydrafm-o-check/1"
#: the check the package ships (``hydrafm/models/weights/o_check.pt``)
SHIPPED_O_CHECK = "o_check"
#: Å, the crop's sample points on each axis about the peak (6.4 Å across, 0.2 Å apart)
GRID = np.round(np.arange(-16, 17) * 0.2, 6)
H_LABELS = ("H_up", "H_flat", "H_down")


@dataclass
class OCheckInfo:
    """What the check expects (heights) and how Predict uses it."""

    n_heights: int = 10
    width: int = 32
    #: Predict drops an O peak whose probability of being a real O is below tau
    tau: float = 0.5
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class OCheckNet(torch.nn.Module):
    """Crops ``(B, Z + 2, len(GRID), len(GRID))`` → ``(B, 3)``: log-odds of a real O, offset x, offset y (Å)."""

    def __init__(self, info: OCheckInfo | None = None) -> None:
        super().__init__()
        self.info = info or OCheckInfo()
        c, w = self.info.n_heights + 2, self.info.width
        conv = torch.nn.Conv2d
        self.f = torch.nn.Sequential(
            conv(c, w, 3, padding=1), torch.nn.GELU(), conv(w, w, 3, padding=1), torch.nn.GELU(), torch.nn.MaxPool2d(2),
            conv(w, 2 * w, 3, padding=1), torch.nn.GELU(), conv(2 * w, 2 * w, 3, padding=1), torch.nn.GELU(),
            torch.nn.MaxPool2d(2), conv(2 * w, 2 * w, 3, padding=1), torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2 * w, 64), torch.nn.GELU(),
            torch.nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


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


def o_verdicts(net: OCheckNet, frames: np.ndarray, maps: np.ndarray, labels: Sequence[str],
               pixel_size: tuple[float, float], origin: tuple[float, float], xy: np.ndarray,
               batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(P(a real O), offset (n, 2) Å x, y)`` for each peak ``xy``."""
    if len(frames) != net.info.n_heights:
        raise ValueError(f"the O check takes {net.info.n_heights} heights, got {len(frames)}")
    crops = o_crops(frames, maps, labels, pixel_size, origin, xy)
    param = next(net.parameters())
    out = []
    with torch.no_grad():
        for s in range(0, len(crops), batch):
            x = torch.from_numpy(crops[s:s + batch]).to(device=param.device, dtype=param.dtype)
            out.append(net(x).float().cpu().numpy())
    o = np.concatenate(out) if out else np.zeros((0, 3), np.float32)
    return 1 / (1 + np.exp(-o[:, 0])), o[:, 1:]


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
