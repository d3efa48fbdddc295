"""Input normalisation shared by training and prediction (stored by name in checkpoints)."""

from __future__ import annotations

import numpy as np

__all__ = ["normalize_stack", "NORMALIZATIONS"]


def _frame_zscore(data: np.ndarray) -> np.ndarray:
    d = np.asarray(data, dtype=np.float32)
    mean = d.mean(axis=(-2, -1), keepdims=True)
    std = d.std(axis=(-2, -1), keepdims=True)
    return (d - mean) / np.maximum(std, 1e-6)


def _stack_zscore(data: np.ndarray) -> np.ndarray:
    d = np.asarray(data, dtype=np.float32)
    mean = d.mean(axis=(-3, -2, -1), keepdims=True)
    std = d.std(axis=(-3, -2, -1), keepdims=True)
    return (d - mean) / np.maximum(std, 1e-6)


#: ``frame-zscore``: every frame to mean 0, std 1 (insensitive to Δf units, offsets and drift
#: between frames; loses the contrast growth with height). ``stack-zscore``: one mean/std for
#: the whole stack (keeps the growth of contrast as the tip approaches).
NORMALIZATIONS = {"frame-zscore": _frame_zscore, "stack-zscore": _stack_zscore}


def normalize_stack(data: np.ndarray, method: str = "stack-zscore") -> np.ndarray:
    """Normalise a stack ``(..., n_heights, ny, nx)`` with a named method (float32 out)."""
    try:
        return NORMALIZATIONS[method](data)
    except KeyError:
        raise ValueError(f"unknown normalisation {method!r}; choose one of {sorted(NORMALIZATIONS)}") from None
