"""Train a density network on MD teacher examples, and score it (MAE in Å⁻³, peak heights).

Each step takes one whole periodic example, shifted by a random whole number of voxels
in x and y (an exact symmetry of a periodic cell) and mirrored in x and/or y at random
(the force field has no handedness, so the mirror image of an MD system is an equally
valid system whose density is the mirror image), and fits density × ``scale`` with a
mean-squared error over the voxels the MD sampled. Training state is checkpointed every
``save_every`` steps and resumed from there. Used by ``scripts/train_hydration.py``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generator

import numpy as np
import torch

from ..progress import Progress
from .model import DensityConfig, DensityUNet
from .teacher import Example, excluded_region

__all__ = ["train_density", "score", "profile_peaks", "EpochStats"]


@dataclass
class EpochStats:
    """One epoch: mean training loss and the seconds since the start."""

    epoch: int
    loss: float
    seconds: float


def _tensors(ex: Example, shift: tuple[int, int] = (0, 0),
             flip: tuple[bool, bool] = (False, False)) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.roll(ex.channels, shift, axis=(1, 2))
    y = np.roll(ex.density, shift, axis=(0, 1))
    for axis, f in enumerate(flip):  # voxel centres at (i + ½)·spacing: the mirror image is a reversal
        if f:
            x, y = np.flip(x, axis + 1), np.flip(y, axis)
    return torch.from_numpy(np.ascontiguousarray(x))[None], torch.from_numpy(np.ascontiguousarray(y))[None]


def train_density(
    examples: list[Example], config: DensityConfig | None = None, *, steps: int = 600,
    lr: float = 2e-3, seed: int = 0, log_every: int = 20, init: dict | None = None,
    checkpoint: str | os.PathLike | None = None, save_every: int = 25, profile_weight: float = 0.0,
) -> Generator[Progress | EpochStats, None, DensityUNet]:
    """Train for ``steps`` steps (one example per step); yields progress, returns the net.

    The loss is the voxels' mean-squared error plus ``profile_weight`` × the mean-squared
    error of ρ(z), the density averaged over each xy plane (both on density × ``scale``).
    The voxels of a short MD are mostly counting noise, so their MSE carries a weak signal
    for the slowly varying part (the bulk level, the layers' heights); ρ(z) is converged
    after a few ps and carries it cleanly.

    ``init`` is a state dict to start from (e.g. an earlier model's weights; parameters it
    lacks, such as a new exclusion gate, keep their initial values). With ``checkpoint``,
    the network, optimiser, random state and step are written there (atomically)
    every ``save_every`` steps, and a run that finds the file continues from it (the cosine
    learning-rate schedule is recomputed from the step, so a resumed run may end sooner or later).
    """
    if not examples:
        raise ValueError("no training examples")
    config = config or DensityConfig(base_channels=4)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = DensityUNet(config)
    if init is not None:
        missing, unexpected = net.load_state_dict(init, strict=False)
        if unexpected or any(not k.startswith("gate.") for k in missing):
            raise ValueError(f"the initial weights do not fit this network (missing {missing}, unexpected {unexpected})")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    start, losses = 0, []
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start, losses = int(state["step"]), list(state["losses"])
    t0 = time.perf_counter() - (float(state["seconds"]) if start else 0.0)
    for step in range(start + 1, steps + 1):
        for group in opt.param_groups:  # cosine schedule in closed form: a resumed run may change ``steps``
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * (step - 1) / steps))
        ex = examples[int(rng.integers(len(examples)))]
        shift = (int(rng.integers(ex.density.shape[0])), int(rng.integers(ex.density.shape[1])))
        flip = (bool(rng.integers(2)), bool(rng.integers(2)))
        x, y = _tensors(ex, shift, flip)
        ok = ~torch.isnan(y)
        pred = net(x)
        loss = torch.mean((pred[ok] - y[ok]) ** 2) * config.scale**2
        if profile_weight:
            loss = loss + profile_weight * _profile_mse(pred, y, ok) * config.scale**2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        yield Progress("training the density network", step, steps)
        if step % log_every == 0 or step == steps:
            yield EpochStats(step, float(np.mean(losses[-log_every:])), time.perf_counter() - t0)
        if checkpoint is not None and (step % save_every == 0 or step == steps):
            from .._atomic import atomic_path

            with atomic_path(checkpoint, ".pt") as tmp:
                torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "step": step,
                            "losses": losses, "seconds": time.perf_counter() - t0}, tmp)
    net.eval()
    return net


def _profile_mse(pred: torch.Tensor, y: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Mean-squared difference of the xy-plane means over the sampled voxels, planes with any."""
    n = ok.sum(dim=(1, 2))
    keep = n > 0
    p = (pred * ok).sum(dim=(1, 2))[keep] / n[keep]
    t = torch.where(ok, y, 0).sum(dim=(1, 2))[keep] / n[keep]
    return torch.mean((p - t) ** 2)


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
    """Scores against the MD over the water-accessible voxels, ρ(z) peaks, and the density where the MD has none.

    ``mae``/``rmse`` (Å⁻³) over the voxels from ``z_range[0]`` to ``z_range[1]`` Å above the
    top Ca plane that the MD sampled; ``excluded_max``/``excluded_mean`` over
    :func:`~hydrafm.hydration.teacher.excluded_region` (inside the slab and the gap above it,
    where the MD has no water), with ``excluded_over_1e-4`` the fraction of those voxels above
    10⁻⁴ Å⁻³ and ``inside_slab_max`` the maximum under the top Ca plane;
    ``below_first_water_max`` over every plane below the lowest one with water in the MD.
    """
    x, _ = _tensors(ex)
    with torch.no_grad():
        pred = net(x)[0].numpy()
    z = ex.grid.z()
    keep = (z >= z_range[0]) & (z <= z_range[1])
    truth = ex.density[:, :, keep]
    ok = ~np.isnan(truth)
    p_md = profile_peaks(z, np.nanmean(ex.density, axis=(0, 1)))
    p_net = profile_peaks(z, pred.mean(axis=(0, 1)))
    empty = excluded_region(ex.slab, ex.grid)
    wet = np.nan_to_num(ex.density).max(axis=(0, 1)) > 0
    first = z[np.argmax(wet)] if wet.any() else z[-1]  # the lowest plane with any water in the MD
    return {
        "surface": ex.name, "split": ex.split, "md_ps": ex.ps,
        "mae": float(np.abs(pred[:, :, keep][ok] - truth[ok]).mean()),
        "rmse": float(np.sqrt(np.mean((pred[:, :, keep][ok] - truth[ok]) ** 2))),
        "mae_bulk_mean_predictor": float(np.abs(np.nanmean(truth) - truth[ok]).mean()),
        "rmse_bulk_mean_predictor": float(np.sqrt(np.mean((np.nanmean(truth) - truth[ok]) ** 2))),
        "peaks_md": [round(p, 3) for p in p_md], "peaks_net": [round(p, 3) for p in p_net],
        "excluded_max": float(pred[empty].max()), "excluded_mean": float(pred[empty].mean()),
        "excluded_over_1e-4": float((pred[empty] > 1e-4).mean()),
        "inside_slab_max": float(pred[empty & (z < 0)].max()),  # under the top Ca plane
        "first_water_z": float(first), "below_first_water_max": float(pred[:, :, z < first].max()),
    }
