"""Heights for predicted atoms from the depth network's depth map (:mod:`hydrafm.models.depth`).

The structure network places atoms in the plane; :func:`place_at_depth` moves each molecule down
by how much deeper than the shallowest heavy atom the depth map says its O (ion) lies, so the
shallowest O, Na or K stays at z = 0 and the rest sit below it. Molecules move rigidly: their
H keep their geometry and class. Loose atoms (no ``mol``): each H moves with the nearest heavy
atom within 1.3 Å in the plane.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from scipy.ndimage import map_coordinates

from ..models.checkpoint import ModelInfo
from ..models.depth import DepthNet, load_depth, shipped_depth_path

__all__ = ["place_at_depth", "resolve_depth", "default_depth", "HEAVY_LABELS"]

HEAVY_LABELS = ("O", "Na", "K")


def default_depth(info: ModelInfo) -> bool | str:
    """Whether Predict gives the model's atoms heights (the card's ``depth``: ``True`` (default), ``False``,
    or the path of another height network)."""
    value = info.provenance.get("depth", True)
    return value if isinstance(value, str) else bool(value)


_DEPTH_NETS: dict[tuple[str, str], DepthNet] = {}


def resolve_depth(depth: bool | str | Path | DepthNet | None, info: ModelInfo,
                    device: str | torch.device = "cpu") -> DepthNet | None:
    """The depth network to use: ``None`` → as the model's card says (:func:`default_depth`; the shipped
    network, skipped when this installation has none or it does not fit the model's input); ``False`` → none;
    ``True`` → the shipped one; a path → that file; or a loaded :class:`DepthNet`."""
    implicit = depth is None
    if implicit:
        depth = default_depth(info)
    if depth is False:
        return None
    if isinstance(depth, DepthNet):
        net = depth.to(device).eval()
        path: Path | str = "the depth network"
    else:
        path = shipped_depth_path() if depth is True else Path(depth)
        if implicit and depth is True and not path.is_file():
            return None
        key = (str(Path(path).resolve()), str(device))
        if key not in _DEPTH_NETS:
            _DEPTH_NETS[key] = load_depth(path, map_location=device)
        net = _DEPTH_NETS[key]
    i = net.info
    fits = (i.n_heights == info.config.n_heights and abs(i.dz - info.dz) < 1e-6
            and abs(i.pixel_size - info.pixel_size) < 1e-3 and i.normalization == info.normalization)
    if not fits:
        if implicit:
            return None
        raise ValueError(f"{path}: the depth network takes {i.n_heights} heights {i.dz} Å apart at "
                         f"{i.pixel_size:.4f} Å/px ({i.normalization}); the model {info.config.n_heights} "
                         f"heights {info.dz} Å apart at {info.pixel_size:.4f} Å/px ({info.normalization})")
    return net


def place_at_depth(atoms: Atoms, depth: np.ndarray, pixel_size: tuple[float, float],
                  origin: tuple[float, float]) -> Atoms:
    """Move the atoms down by their depth below the shallowest heavy atom (in place; returns ``atoms``).

    ``depth`` is the depth map (Å below the closest probe) on the grid of the maps (``pixel_size`` and
    ``origin``, the first pixel centre, in Å (y, x)). Writes ``atoms.info["closest_probe"]``: the
    depth of the shallowest heavy atom, i.e. the estimated height of the closest probe above it.
    """
    if not len(atoms):
        return atoms
    lab = np.asarray(atoms.arrays["label"]).astype(str)
    heavy = np.flatnonzero(np.isin(lab, HEAVY_LABELS))
    if not len(heavy):
        return atoms
    pos = atoms.get_positions()
    rows = (pos[heavy, 1] - origin[0]) / pixel_size[0]
    cols = (pos[heavy, 0] - origin[1]) / pixel_size[1]
    d = map_coordinates(np.asarray(depth, np.float64), [rows, cols], order=1, mode="nearest")
    shift_heavy = float(d.min()) - d  # ≤ 0
    shift = np.zeros(len(atoms))
    mol = np.asarray(atoms.arrays["mol"], int) if "mol" in atoms.arrays else np.full(len(atoms), -1)
    shift[heavy] = shift_heavy
    by_mol = {int(m): s for m, s in zip(mol[heavy], shift_heavy) if m >= 0}
    for i in np.flatnonzero(~np.isin(lab, HEAVY_LABELS)):
        if mol[i] >= 0 and int(mol[i]) in by_mol:
            shift[i] = by_mol[int(mol[i])]
            continue
        r = np.hypot(*(pos[heavy, :2] - pos[i, :2]).T)
        if r.min() <= 1.3:
            shift[i] = shift_heavy[int(np.argmin(r))]
    pos[:, 2] += shift
    atoms.set_positions(pos)
    atoms.info["closest_probe"] = round(float(d.min()), 3)
    return atoms
