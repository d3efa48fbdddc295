"""AFMStack ↔ napari layer data, without importing napari.

The image layer holds the stack's frames unchanged (row 0 = bottom of the scan);
``scale`` and ``translate`` make napari's world coordinates the physical ones in
Å. The viewer shows the frames as the instrument software does once its y axis
points up (``viewer.camera.orientation2d = ("up", "right")``), which the HydrAFM
widgets set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .stack import AFMStack

STACK_KEY = "hydrafm_stack"
#: napari camera orientation that shows row 0 at the bottom, as SPM software does.
ORIENTATION_2D = ("up", "right")


def height_step(stack: AFMStack) -> float | None:
    """The constant spacing between heights (Å), or ``None`` when not uniform or unknown."""
    h = stack.heights
    if h is None or len(h) < 2:
        return None
    d = np.diff(h)
    if d.min() <= 0 or not np.allclose(d, d.mean(), rtol=0.05, atol=1e-3):
        return None
    return float(d.mean())


def stack_layer_data(stack: AFMStack, name: str | None = None) -> tuple[np.ndarray, dict[str, Any], str]:
    """A napari ``LayerDataTuple`` (image) for a stack, in physical units (Å)."""
    dz = height_step(stack)
    ny, nx = stack.data.shape[1:]
    sources = stack.metadata.get("sources") or []
    if name is None:
        name = _name_from_sources(sources)
    meta = dict(stack.metadata)
    meta[STACK_KEY] = {
        "pixel_size": list(stack.pixel_size),
        "origin": list(stack.origin),
        "heights": None if stack.heights is None else [float(h) for h in stack.heights],
    }
    finite = stack.data[np.isfinite(stack.data)]
    lo, hi = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))) if finite.size else (0, 1)
    if hi <= lo:
        hi = lo + 1.0
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": (dz or 1.0, *stack.pixel_size),
        "translate": (0.0, *stack.origin),
        "axis_labels": ("height", "y", "x"),
        "units": ("angstrom" if dz else "pixel", "angstrom", "angstrom"),
        "colormap": "gray",
        "contrast_limits": (lo, hi),
        "metadata": meta,
    }
    return stack.data, kwargs, "image"


def layer_stack(
    data: np.ndarray,
    metadata: dict[str, Any],
    scale: tuple[float, ...] | None = None,
    translate: tuple[float, ...] | None = None,
) -> AFMStack:
    """Rebuild the AFMStack behind an image layer made by :func:`stack_layer_data`.

    Other 3D image layers are taken as (height, y, x) with the layer's ``scale``
    and ``translate`` as Å, and the heights left unknown.
    """
    info = metadata.get(STACK_KEY)
    if info is None:
        arr = np.asarray(data)
        if scale is None or arr.ndim != 3:
            raise ValueError("this image layer was not loaded by HydrAFM and is not a 3D (height, y, x) stack")
        translate = translate if translate is not None else (0.0,) * 3
        return AFMStack(data=arr, pixel_size=(float(scale[-2]), float(scale[-1])),
                        origin=(float(translate[-2]), float(translate[-1])), metadata=dict(metadata))
    meta = {k: v for k, v in metadata.items() if k != STACK_KEY}
    return AFMStack(
        data=np.asarray(data),
        pixel_size=tuple(info["pixel_size"]),
        origin=tuple(info["origin"]),
        heights=None if info["heights"] is None else np.asarray(info["heights"]),
        metadata=meta,
    )


def _name_from_sources(sources: list[str]) -> str:
    from pathlib import Path

    if not sources:
        return "AFM stack"
    first = Path(sources[0])
    if len(sources) == 1:
        return first.stem
    return f"{first.parent.name or first.stem} ({len(sources)} frames)"


# ----------------------------------------------------------------- atoms
ATOMS_KEY = "hydrafm_atoms"
#: Point diameters (Å) by label: twice the a-vdW sphere radius, so atoms read like the paper's figures.
POINT_SIZE = {"O": 1.2, "Na": 1.6, "K": 1.9, "H_up": 0.7, "H_flat": 0.7, "H_down": 0.7}


def label_colormap() -> dict[str, tuple[float, float, float, float]]:
    """Label → RGBA, the paper's colours (O red, Na indigo, H_up green, H_flat light blue, H_down brown)."""
    from .simulate.labels import LABEL_COLORS

    return {k: (*v, 1.0) for k, v in LABEL_COLORS.items()}


def atoms_layer_data(atoms: Any, name: str = "atoms", metadata: dict[str, Any] | None = None):
    """A napari ``LayerDataTuple`` (points) for atoms with ``label``/``confidence``: (y, x) in Å.

    A 2D layer, so every atom is drawn over every frame of a stack (its frames are tip heights,
    not atom heights: a 3D point is drawn only on frames within 0.5 Å of it, which would hide a
    bilayer's lower half). Each atom's height is the ``z`` feature (Å), read back by
    :func:`~hydrafm.io.xyz.points_to_atoms`; a point added by hand takes napari's current feature
    values (those of the point last selected; z = 0 when none was). Colours and sizes
    follow the label. The features also hold ``mol`` and ``shell`` (−1 for atoms outside
    molecules, and for added points).
    """
    import pandas as pd

    from .io.xyz import LABELS, atoms_to_points

    coords, feats = atoms_to_points(atoms)
    # heavy atoms first, H last: in 2D the small H points are drawn over their O
    order = np.argsort([lab.startswith("H") for lab in feats["label"]], kind="stable")
    coords, feats = coords[order], {k: np.asarray(v)[order] for k, v in feats.items()}
    features = pd.DataFrame({"label": pd.Categorical(feats["label"], categories=list(LABELS)),
                             "confidence": feats["confidence"].astype(float),
                             "mol": feats["mol"], "shell": feats["shell"], "z": coords[:, 0].astype(float)})
    kwargs: dict[str, Any] = {
        "name": name,
        "features": features,
        "feature_defaults": {"label": "O", "confidence": 1.0, "mol": -1, "shell": -1, "z": 0.0},
        "face_color": "label",
        "face_color_cycle": label_colormap(),
        "border_color": "white",
        "border_width": 0.05,
        "size": point_sizes(features["label"]),
        "axis_labels": ("y", "x"),
        "units": ("angstrom", "angstrom"),
        "metadata": {ATOMS_KEY: dict(metadata or {})},
    }
    return coords[:, 1:].reshape(-1, 2), kwargs, "points"


def point_sizes(labels: Any) -> np.ndarray:
    """Point diameter (Å) for each label."""
    return np.array([POINT_SIZE.get(str(v), 1.0) for v in labels], dtype=float)
