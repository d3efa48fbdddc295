"""Input normalisation shared by training and prediction (stored by name in checkpoints)."""

from __future__ import annotations

import numpy as np

__all__ = ["normalize_stack", "normalize_stack_torch", "NORMALIZATIONS"]


#: The axes each method standardises over. ``frame-zscore``: every frame to mean 0, std 1
#: (insensitive to Δf units, offsets and drift between frames; loses the contrast growth with
#: height). ``stack-zscore``: one mean/std for the whole stack (keeps the growth of contrast as
#: the tip approaches).
NORMALIZATIONS = {"frame-zscore": (-2, -1), "stack-zscore": (-3, -2, -1)}


def _axes(method: str) -> tuple[int, ...]:
    try:
        return NORMALIZATIONS[method]
    except KeyError:
        raise ValueError(f"unknown normalisation {method!r}; choose one of {sorted(NORMALIZATIONS)}") from None


def normalize_stack(data: np.ndarray, method: str = "stack-zscore") -> np.ndarray:
    """Normalise a stack ``(..., n_heights, ny, nx)`` with a named method (float32 out)."""
    axes = _axes(method)
    d = np.asarray(data, dtype=np.float32)
    return (d - d.mean(axis=axes, keepdims=True)) / np.maximum(d.std(axis=axes, keepdims=True), 1e-6)


def normalize_stack_torch(x, method: str = "stack-zscore"):
    """:func:`normalize_stack` for a torch tensor ``(..., n_heights, ny, nx)`` on any device."""
    axes = _axes(method)
    std = x.std(dim=axes, keepdim=True, unbiased=False)
    return (x - x.mean(dim=axes, keepdim=True)) / std.clamp(min=1e-6)
