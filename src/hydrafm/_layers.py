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


def layer_stack(data: np.ndarray, metadata: dict[str, Any]) -> AFMStack:
    """Rebuild the AFMStack behind an image layer made by :func:`stack_layer_data`."""
    info = metadata.get(STACK_KEY)
    if info is None:
        raise ValueError("this image layer was not loaded by HydrAFM (no stack information)")
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
