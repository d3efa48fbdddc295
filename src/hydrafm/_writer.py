"""napari writer hook: Points layers as extended XYZ (Å) through ase.

The atom element comes from the ``label`` feature (O, Na, K, H_up, H_flat,
H_down → O, Na, K, H); ``label`` and ``confidence`` are written as per-atom
columns. Coordinates are written in world units (Å): ``data * scale + translate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .io.xyz import points_to_atoms, write_xyz


def write_points_xyz(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Points layer to ``path`` (.xyz); returns the written path."""
    pts = np.asarray(data, dtype=np.float64)
    scale = np.asarray(attributes.get("scale", np.ones(pts.shape[1])), dtype=np.float64)
    translate = np.asarray(attributes.get("translate", np.zeros(pts.shape[1])), dtype=np.float64)
    world = pts * scale + translate if pts.size else pts.reshape(0, len(scale))
    features = attributes.get("features")
    atoms = points_to_atoms(world, features, axis_labels=attributes.get("axis_labels"))
    out = write_xyz(atoms, Path(path), overwrite=True)
    return [str(out)]
