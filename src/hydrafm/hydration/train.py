"""Train a density network on MD teacher examples, and score it (MAE in Å⁻³, peak heights).

Each step takes one whole periodic example, shifted by a random whole number of voxels
in x and y (an exact symmetry of a periodic cell), and fits density × ``scale`` with a
mean-squared error over the voxels the MD sampled. Used by ``scripts/train_hydration.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Generator

import numpy as np
import torch

from ..progress import Progress
from .model import DensityConfig, DensityUNet
from .teacher import Example

__all__ = ["train_density", "score", "profile_peaks", "EpochStats"]


@dataclass
class EpochStats:
    """One epoch: mean training loss and the seconds since the start."""

    epoch: int
    loss: float
    seconds: float


def _tensors(ex: Example, shift: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.roll(ex.channels, shift, axis=(1, 2))
    y = np.roll(ex.density, shift, axis=(0, 1))
    return torch.from_numpy(np.ascontiguousarray(x))[None], torch.from_numpy(np.ascontiguousarray(y))[None]


def train_density(
    examples: list[Example], config: DensityConfig | None = None, *, steps: int = 600,
    lr: float = 2e-3, seed: int = 0, log_every: int = 20,
) -> Generator[Progress | EpochStats, None, DensityUNet]:
    """Train from scratch for ``steps`` steps (one example per step); yields progress, returns the net."""
    if not examples:
        raise ValueError("no training examples")
    config = config or DensityConfig(base_channels=4)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = DensityUNet(config)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        ex = examples[int(rng.integers(len(examples)))]
        shift = (int(rng.integers(ex.density.shape[0])), int(rng.integers(ex.density.shape[1])))
        x, y = _tensors(ex, shift)
        ok = ~torch.isnan(y)
        pred = net(x)
        loss = torch.mean((pred[ok] - y[ok]) ** 2) * config.scale**2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        yield Progress("training the density network", step, steps)
        if step % log_every == 0 or step == steps:
            yield EpochStats(step, float(np.mean(losses[-log_every:])), time.perf_counter() - t0)
    net.eval()
    return net


def profile_peaks(z: np.ndarray, rho: np.ndarray, n: int = 2, above: float = 1.0) -> list[float]:
    """Heights (Å) of the first ``n`` maxima of ρ(z) above ``above`` Å, refined by a parabola through 3 bins."""
    rho = np.nan_to_num(rho)
    smooth = np.convolve(rho, np.ones(3) / 3, mode="same")
    out = []
    for i in range(1, len(z) - 1):
        if z[i] > above and smooth[i] > smooth[i - 1] and smooth[i] >= smooth[i + 1] and smooth[i] > 0.02:
            a, b, c = rho[i - 1], rho[i], rho[i + 1]
            d = a - 2 * b + c
            off = 0.5 * (a - c) / d if d < 0 else 0.0
            out.append(float(z[i] + np.clip(off, -1, 1) * (z[1] - z[0])))
            if len(out) == n:
                break
    return out


def score(net: DensityUNet, ex: Example, z_range: tuple[float, float] = (-1.0, 16.0)) -> dict:
    """MAE and RMSE (Å⁻³) against the MD over the water-accessible voxels, and the first two peaks of ρ(z)."""
    x, _ = _tensors(ex)
    with torch.no_grad():
        pred = net(x)[0].numpy()
    z = ex.grid.z()
    keep = (z >= z_range[0]) & (z <= z_range[1])
    truth = ex.density[:, :, keep]
    ok = ~np.isnan(truth)
    p_md = profile_peaks(z, np.nanmean(ex.density, axis=(0, 1)))
    p_net = profile_peaks(z, pred.mean(axis=(0, 1)))
    return {
        "surface": ex.name, "split": ex.split, "md_ps": ex.ps,
        "mae": float(np.abs(pred[:, :, keep][ok] - truth[ok]).mean()),
        "rmse": float(np.sqrt(np.mean((pred[:, :, keep][ok] - truth[ok]) ** 2))),
        "mae_bulk_mean_predictor": float(np.abs(np.nanmean(truth) - truth[ok]).mean()),
        "peaks_md": [round(p, 3) for p in p_md], "peaks_net": [round(p, 3) for p in p_net],
    }
