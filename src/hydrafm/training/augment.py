"""Augmentation of (stack, label maps) pairs, after Tang et al. and their successors.

Geometric changes (rotation by 90°, flips, random crops) move stack and maps together.
Instrument effects touch the stack only: per-frame pixel jitter and cumulative drift
between heights (frame 0, the closest, stays registered to the labels), a tilted
background plane, uniform or normal noise, and cutout rectangles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AugmentConfig", "augment", "random_crop"]


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation (0 switches it off)."""

    flips: bool = True
    max_jitter_px: int = 1  # independent integer shift of each frame
    max_drift_px: float = 2.0  # total drift from the closest to the farthest frame
    noise: float = 0.15  # noise amplitude, × the stack's std, × U(0, 1)
    max_cutouts: int = 3
    max_cutout_px: int = 16
    gradient: float = 0.3  # background plane amplitude, × the stack's std


def random_crop(
    stack: np.ndarray, maps: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The same random ``size × size`` window of a stack ``(Z, H, W)`` and its maps ``(C, H, W)``."""
    h, w = stack.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop {size} px is larger than the stack ({h} × {w} px)")
    r = int(rng.integers(0, h - size + 1))
    c = int(rng.integers(0, w - size + 1))
    return stack[..., r : r + size, c : c + size], maps[..., r : r + size, c : c + size]


def _shift(frame: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Integer shift with edge replication (no wrap-around)."""
    if dy == 0 and dx == 0:
        return frame
    h, w = frame.shape
    pad = max(abs(dy), abs(dx))
    p = np.pad(frame, pad, mode="edge")
    return p[pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def augment(
    stack: np.ndarray, maps: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """One random augmentation of a stack ``(Z, H, W)`` (frame 0 closest) and its maps ``(C, H, W)``."""
    stack = np.array(stack, dtype=np.float32, copy=True)
    maps = np.array(maps, dtype=np.float32, copy=True)
    if cfg.flips:
        k = int(rng.integers(4))
        stack, maps = np.rot90(stack, k, axes=(-2, -1)), np.rot90(maps, k, axes=(-2, -1))
        if rng.random() < 0.5:
            stack, maps = stack[..., ::-1], maps[..., ::-1]
        stack, maps = np.ascontiguousarray(stack), np.ascontiguousarray(maps)
    z, h, w = stack.shape
    scale = float(stack.std()) or 1.0
    if cfg.max_drift_px > 0 or cfg.max_jitter_px > 0:
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction) or 1.0
        total = rng.uniform(0, cfg.max_drift_px)
        for i in range(1, z):
            drift = direction * total * i / max(z - 1, 1)
            jitter = rng.integers(-cfg.max_jitter_px, cfg.max_jitter_px + 1, size=2) if cfg.max_jitter_px else 0
            dy, dx = np.round(drift + jitter).astype(int)
            stack[i] = _shift(stack[i], int(dy), int(dx))
    if cfg.gradient > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        gy, gx = rng.normal(size=2) * cfg.gradient * scale
        stack += (gy * (yy / h - 0.5) + gx * (xx / w - 0.5))[None]
    if cfg.noise > 0:
        amp = cfg.noise * scale * rng.random()
        if rng.random() < 0.5:
            stack += rng.uniform(-amp, amp, size=stack.shape).astype(np.float32)
        else:
            stack += rng.normal(0, amp / 2, size=stack.shape).astype(np.float32)
    for _ in range(int(rng.integers(0, cfg.max_cutouts + 1))):
        ch, cw = (int(v) for v in rng.integers(2, cfg.max_cutout_px + 1, size=2))
        r, c = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        frames = rng.random(z) < 0.5  # a cutout hits some heights only
        for i in np.flatnonzero(frames):
            stack[i, r : r + ch, c : c + cw] = stack[i].mean()
    return stack, maps
