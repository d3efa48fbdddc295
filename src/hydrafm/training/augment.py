"""Augmentation of (stack, label maps) pairs: one implementation for every training path.

:func:`degrade` turns clean simulated stacks into what an instrument records, on any torch
device and batched: a random rotation by 90° and flip (stack and maps together), then, on the
stack only, a cumulative lateral drift between heights (frame 0, the closest, stays registered
to the labels), a background plane, white and 1/f noise, scan-line offsets, tip-change line
jumps, a per-frame contrast change and cutout rectangles. Amplitudes are multiples of each
frame's standard deviation, each drawn U(0, max) per stack (:class:`Degradations`).

Both training on the fly (:mod:`.onthefly`) and training or fine-tuning on a dataset folder
(:mod:`.train`) use it. The robustness *test* (:func:`hydrafm.predict.evaluate.degrade_like_experiment`)
is a separate, fixed protocol whose amplitudes are fractions of each frame's *range*: a frame's
range is ~5 standard deviations, so its 3 % noise is ~0.16 × the frame's std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Degradations", "degrade", "random_crop", "shift_frames"]


@dataclass(frozen=True)
class Degradations:
    """Experiment-like degradations of a stack (amplitudes × each frame's std, drawn U(0, max))."""

    white: float = 0.08
    pink: float = 0.08  # 1/f noise
    scan_lines: float = 0.05  # a random offset per scan line
    line_jumps: float = 0.3  # a tip change: offset from a random line to the end of the frame
    line_jump_prob: float = 0.2
    plane: float = 0.3  # background plane
    contrast: float = 0.15  # per-frame scale 1 ± this
    drift_px: float = 2.0  # cumulative lateral drift from the closest to the farthest frame
    cutouts: int = 2
    cutout_px: int = 12



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


def shift_frames(x: torch.Tensor, shift: np.ndarray, gather: bool | None = None) -> torch.Tensor:
    """Roll frame ``(b, i)`` of ``x`` ``(B, Z, H, W)`` by ``shift[b, i]`` = (rows, columns), wrapping round.

    ``gather`` (default: on any device but the CPU) moves every frame in one indexing operation
    instead of a ``torch.roll`` per frame: on a GPU that is one kernel, not B × Z launches; on a
    CPU the rolls are ~3× faster. Both give the same result.
    """
    B, Z, H, W = x.shape
    dev = x.device
    if not np.any(shift):
        return x
    if not (dev.type != "cpu" if gather is None else gather):
        x = x.clone()
        for b, i in zip(*np.nonzero(np.any(shift, axis=2))):
            x[b, i] = torch.roll(x[b, i], tuple(int(v) for v in shift[b, i]), (-2, -1))
        return x
    sh = torch.as_tensor(np.asarray(shift, np.int64), device=dev)
    rows = (torch.arange(H, device=dev) - sh[..., 0:1]) % H  # (B, Z, H)
    cols = (torch.arange(W, device=dev) - sh[..., 1:2]) % W  # (B, Z, W)
    bi = torch.arange(B, device=dev)[:, None, None, None]
    zi = torch.arange(Z, device=dev)[None, :, None, None]
    return x[bi, zi, rows[..., :, None], cols[..., None, :]]


def one_over_k(white: torch.Tensor, alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
    """White noise ``(..., H, W)`` filtered to an amplitude spectrum ∝ 1/k^alpha (``alpha`` a number, or
    one per leading index, broadcast), scaled to unit standard deviation per frame."""
    H, W = white.shape[-2:]
    k = torch.sqrt(torch.fft.fftfreq(H, device=white.device)[:, None] ** 2
                   + torch.fft.rfftfreq(W, device=white.device)[None, :] ** 2)
    k[0, 0] = 1.0
    if isinstance(alpha, torch.Tensor):
        k = k ** alpha.reshape(alpha.shape + (1,) * (white.dim() - alpha.dim()))
    elif alpha != 1.0:
        k = k**alpha
    out = torch.fft.irfft2(torch.fft.rfft2(white) / k, s=(H, W))
    return out / out.std(dim=(-2, -1), keepdim=True).clamp(min=1e-6)


def degrade(x: torch.Tensor, maps: torch.Tensor, rng: np.random.Generator, d: Degradations,
            turn: bool = True):
    """Random rotation/flip (stack and maps; not when ``turn`` is False, for data whose atom
    positions must stay put) and experiment-like degradations (stack only)."""
    B, Z, H, W = x.shape
    dev = x.device
    if turn:
        k = int(rng.integers(4))
        x, maps = torch.rot90(x, k, (-2, -1)), torch.rot90(maps, k, (-2, -1))
        if rng.random() < 0.5:
            x, maps = x.flip(-1), maps.flip(-1)
    # drawn on the batch's own device: on a GPU, drawing two (B, Z, H, W) noise fields on the CPU and
    # copying them over was most of a training step (H200, batches of 64 at 128 px)
    g = torch.Generator(device=dev).manual_seed(int(rng.integers(2**62)))

    def u(*shape):  # U(0, 1) on the device, reproducible from rng (per device type)
        return torch.rand(*shape, generator=g, device=dev)

    def nrm(*shape):
        return torch.randn(*shape, generator=g, device=dev)

    std = x.std(dim=(-2, -1), keepdim=True).clamp(min=1e-6)  # (B, Z, 1, 1)
    # drift: frame i shifted by i/(Z-1) of a random total (integer pixels; torch.roll wraps the edges round)
    if d.drift_px > 0:
        shift = np.zeros((B, Z, 2), np.int64)
        for b in range(B):
            total = float(rng.uniform(0, d.drift_px))
            ang = float(rng.uniform(0, 2 * math.pi))
            for i in range(1, Z):
                shift[b, i] = (int(round(total * math.sin(ang) * i / max(Z - 1, 1))),
                               int(round(total * math.cos(ang) * i / max(Z - 1, 1))))
        x = shift_frames(x, shift)
    yy = torch.linspace(-0.5, 0.5, H, device=dev)[:, None]
    xx = torch.linspace(-0.5, 0.5, W, device=dev)[None, :]
    plane = (nrm(B, Z, 1, 1) * yy + nrm(B, Z, 1, 1) * xx) * d.plane * u(B, 1, 1, 1)
    noise = nrm(B, Z, H, W) * d.white * u(B, 1, 1, 1)
    if d.pink > 0:
        noise = noise + one_over_k(nrm(B, Z, H, W)) * d.pink * u(B, 1, 1, 1)
    lines = nrm(B, Z, H, 1) * d.scan_lines * u(B, 1, 1, 1)
    jumps = torch.zeros_like(x)
    for b in range(B):
        for i in range(Z):
            if rng.random() < d.line_jump_prob / Z:
                r0 = int(rng.integers(H))
                jumps[b, i, r0:] = float(rng.normal()) * d.line_jumps
    x = x + (plane + noise + lines + jumps) * std
    x = x * (1 + d.contrast * (2 * u(B, Z, 1, 1) - 1))
    for b in range(B):
        for _ in range(int(rng.integers(0, d.cutouts + 1))):
            ch, cw = (int(v) for v in rng.integers(2, d.cutout_px + 1, size=2))
            r, c = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
            frames = torch.as_tensor(rng.random(Z) < 0.5, device=dev)
            region = x[b, :, r : r + ch, c : c + cw]
            mean = x[b].mean(dim=(-2, -1))[:, None, None]
            x[b, :, r : r + ch, c : c + cw] = torch.where(frames[:, None, None], mean.expand_as(region), region)
    return x, maps
